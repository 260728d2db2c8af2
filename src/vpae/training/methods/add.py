"""ADD (Sauer et al. 2024b, Adversarial Diffusion Distillation). The student denoises real videos noised to the
few-step sigmas (few_step_sigmas with sampling.few_step_schedule; trailing: ADD's tau = 999, 749, 499, 249); its
loss is the hinge adversarial loss of a discriminator made of a frozen feature network (the teacher, adapters
off; ADD uses DINOv2) with trainable heads, plus lambda = 2.5 times the score-distillation loss toward the teacher
(eq. 5, weight c(t) = alpha_t; losses/add.py). The heads train with the hinge loss and R1 on real data:
add.r1_weight (ADD: 1e-5) times the exact R1 |grad_x D|^2, estimated without a double backward by the
approximated R1 over sigma^2 (losses/approx_r1.py, normalized).
"""

from __future__ import annotations

from typing import Iterator

import torch
from torch import nn

from vpae import flow, randomness
from vpae.conditioning import Conditioning
from vpae.discriminator import FeatureDiscriminator
from vpae.losses import (
    ADDDistillationLoss,
    ApproximatedR1,
    discriminator_accuracy,
    discriminator_loss,
    generator_adversarial_loss,
)
from vpae.registry import register_method
from vpae.sampling import few_step_sigmas
from vpae.training.collapse import collapse_logs
from vpae.training.methods.base import Method, OptimizerSpec, Phase, Update, adam_on, requires_grad, student_inputs
from vpae.training.model import Networks, generator_checkpoint_view, real_score

Tensor = torch.Tensor


class ADDPhase(Phase):
    name, stream = "add", 3

    def __init__(self, nets: Networks, cfg):
        super().__init__(nets, cfg)
        self.comparison, self.settings = cfg.comparison, cfg.add
        self.steps, self.batch_size = self.comparison.steps, self.comparison.batch_size
        self.sigmas = few_step_sigmas(self.comparison.nfe, self.comparison.shift, cfg.sampling.few_step_schedule)
        self.disc = FeatureDiscriminator(nets.heads, self.comparison.layers)
        self.distill = ADDDistillationLoss(self.comparison.guidance)
        self.r1 = ApproximatedR1(self.settings.r1_sigma, normalized=True)

    def optimizers(self) -> dict[str, OptimizerSpec]:
        c = self.comparison
        return {"generator": adam_on(self.nets.generator, c),
                "heads": OptimizerSpec(self.nets.head_params(), c.disc_lr, c.disc_betas, c.grad_clip)}

    def modules(self) -> dict[str, nn.Module]:
        return {"generator": generator_checkpoint_view(self.nets.generator), "heads": self.nets.heads}

    def noised(self, x0: Tensor) -> tuple[Tensor, Tensor]:
        """x0 noised to add.disc_sigma (0: the clean video, as ADD's DINOv2 reads) -> (x_t, sigma)."""
        s = torch.full((x0.shape[0],), self.settings.disc_sigma, device=x0.device)
        return flow.add_noise(x0, randomness.randn_like(x0), s), s

    def logits(self, x_t: Tensor, s: Tensor, cond: Conditioning, backbone_grad: bool) -> Tensor:
        """The frozen teacher's features of x_t (adapters off), read by the heads."""
        with real_score(self.nets.teacher):
            return self.disc(self.nets.teacher, x_t, s, cond, backbone_grad)

    def discriminate(self, x0: Tensor, cond: Conditioning, backbone_grad: bool) -> Tensor:
        return self.logits(*self.noised(x0), cond, backbone_grad)

    def generator_loss(self, x0_gen: Tensor, cond: Conditioning) -> tuple[Tensor, dict]:
        """ADD eq. 5: adversarial + distill_weight x distillation."""
        with requires_grad(self.nets.head_params(), False):
            adv = generator_adversarial_loss(self.discriminate(x0_gen, cond, True), "hinge").mean()
        distill = self.distill(x0_gen, cond, self.nets).mean()
        loss = adv + self.settings.distill_weight * distill
        return loss, {"loss/g_adv": adv.item(), "loss/distill": distill.item(), "loss/g_total": loss.item()}

    def discriminator_loss(self, x_data: Tensor, x0_fake: Tensor, cond: Conditioning) -> tuple[Tensor, dict]:
        """Hinge + r1_weight x R1 on real data (the normalised approximation of |grad_x D|^2)."""
        x_real, s_real = self.noised(x_data)
        logits_real = self.logits(x_real, s_real, cond, False)
        logits_fake = self.discriminate(x0_fake, cond, False)
        d = discriminator_loss(logits_real, logits_fake, "hinge").mean()
        # perturbed around the same noised input (its noise redrawn would count as the input's change)
        r1 = self.r1(lambda x: self.logits(x, s_real, cond, False), x_real, logits_real).mean()
        loss = d + self.settings.r1_weight * r1
        return loss, {"loss/d": d.item(), "loss/r1": r1.item(), "d/logits_real": logits_real.mean().item(),
                      "d/logits_fake": logits_fake.mean().item(),
                      "d/accuracy": discriminator_accuracy(logits_real, logits_fake).item()}

    def step(self, step: int, x_data: Tensor, cond: Conditioning) -> Iterator[Update | dict]:
        x0_gen, _ = student_inputs(self.nets.generator, x_data, cond, self.sigmas, False)
        with requires_grad(self.nets.head_params(), False), real_score(self.nets.teacher):
            yield Update("generator", *self.generator_loss(x0_gen, cond))
        yield Update("heads", *self.discriminator_loss(x_data, x0_gen.detach(), cond))
        yield collapse_logs(x0_gen, x_data)


@register_method("add")
class ADD(Method):
    name, paper, sampler, needs_heads = "add", "Sauer et al. 2024b, Adversarial Diffusion Distillation", "few_step", True
    distributed = True
    original_head = "conv"  # ADD's heads: small convolutional heads on the frozen DINOv2 features

    def phases(self, nets: Networks) -> list[Phase]:
        return [ADDPhase(nets, self.cfg)]
