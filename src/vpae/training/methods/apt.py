"""APT (Lin et al. 2025a, Diffusion Adversarial Post-Training for One-Step Video Generation): one-step generation
from pure noise trained only adversarially (non-saturating loss) against a discriminator whose backbone is
initialised from the diffusion model and trained (nets.others["disc_backbone"]) with heads (the project's heads;
APT's are cross-attention with learnable tokens at several depths, our `ca` head), regularised by the
approximated R1 on real videos (sigma 0.1 for video, lambda 100; losses/approx_r1.py). Discriminator inputs
are noised to t ~ U(apt.disc_band).
"""

from __future__ import annotations

from typing import Iterator

import torch
from torch import nn

from vpae import randomness
from vpae.conditioning import Conditioning
from vpae.discriminator import FeatureDiscriminator
from vpae.losses import AdversarialLoss, ApproximatedR1, discriminator_accuracy
from vpae.registry import register_method
from vpae.training.collapse import collapse_logs
from vpae.training.methods.base import Method, OptimizerSpec, Phase, Update, adam_on, one_step_x0, requires_grad
from vpae.training.model import Networks, generator_checkpoint_view, trainable_parameters

Tensor = torch.Tensor


class APTPhase(Phase):
    name, stream = "apt", 3

    def __init__(self, nets: Networks, cfg):
        super().__init__(nets, cfg)
        self.comparison, self.settings = cfg.comparison, cfg.apt
        self.steps, self.batch_size = self.comparison.steps, self.comparison.batch_size
        self.disc = FeatureDiscriminator(nets.heads, self.comparison.layers)
        self.adversarial = AdversarialLoss("non_saturating", self.settings.disc_band)
        self.r1 = ApproximatedR1(self.settings.r1_sigma)

    @property
    def backbone(self):
        return self.nets.others["disc_backbone"]

    def disc_params(self) -> list[nn.Parameter]:
        return self.nets.head_params() + trainable_parameters(self.backbone)

    def optimizers(self) -> dict[str, OptimizerSpec]:
        c = self.comparison
        return {"generator": adam_on(self.nets.generator, c),
                "discriminator": OptimizerSpec(self.disc_params(), c.disc_lr, c.disc_betas, c.grad_clip)}

    def modules(self) -> dict[str, nn.Module]:
        return {"generator": generator_checkpoint_view(self.nets.generator), "heads": self.nets.heads,
                "disc_backbone": self.backbone}

    def discriminate(self, cond: Conditioning):
        return lambda x_t, t: self.disc(self.backbone, x_t, t, cond, True)

    def generator_loss(self, x0_gen: Tensor, cond: Conditioning) -> tuple[Tensor, dict]:
        with requires_grad(self.disc_params(), False):
            adv = self.adversarial.generator(self.discriminate(cond), x0_gen).mean()
        return adv, {"loss/g_adv": adv.item()}

    def discriminator_loss(self, x_data: Tensor, x0_fake: Tensor, cond: Conditioning) -> tuple[Tensor, dict]:
        """Non-saturating loss + r1_weight x the approximated R1 on the re-noised real videos."""
        out = self.adversarial.discriminator(self.discriminate(cond), x_data, x0_fake)
        d = out["loss"].mean()
        x_real, t_real, logits_real = out["real"]
        logits_fake = out["fake"][2]
        r1 = self.r1(lambda x: self.disc(self.backbone, x, t_real, cond, True), x_real, logits_real).mean()
        loss = d + self.settings.r1_weight * r1
        return loss, {"loss/d": d.item(), "loss/r1": r1.item(), "loss/d_total": loss.item(),
                      "d/logits_real": logits_real.mean().item(), "d/logits_fake": logits_fake.mean().item(),
                      "d/accuracy": discriminator_accuracy(logits_real, logits_fake).item()}

    def step(self, step: int, x_data: Tensor, cond: Conditioning) -> Iterator[Update | dict]:
        x0_gen = one_step_x0(self.nets.generator, randomness.randn_like(x_data), cond)
        with requires_grad(self.disc_params(), False):
            yield Update("generator", *self.generator_loss(x0_gen, cond))
        yield Update("discriminator", *self.discriminator_loss(x_data, x0_gen.detach(), cond))
        yield collapse_logs(x0_gen, x_data)


@register_method("apt")
class APT(Method):
    name, sampler, needs_heads, distributed = "apt", "few_step", True, True
    paper = "Lin et al. 2025a, Diffusion Adversarial Post-Training for One-Step Video Generation (APT)"

    def add_roles(self, nets: Networks, before_sharding: bool) -> None:
        nets.make_copy("disc_backbone", trains="all")  # initialised from the teacher: the generator is its copy here

    def phases(self, nets: Networks) -> list[Phase]:
        return [APTPhase(nets, self.cfg)]
