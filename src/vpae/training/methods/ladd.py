"""LADD (Sauer et al. 2024a, Fast High-Resolution Image Synthesis with Latent Adversarial Diffusion Distillation;
SD3-Turbo; NVlabs/FastGen's LADDModel and its Wan config). The student denoises real videos noised to the few-step
sigmas (few_step_sigmas with sampling.few_step_schedule; nfe 1: pure noise at sigma 1, FastGen's one-step
branch). Its x0 is re-noised to t_hat ~ logit-normal(ladd.disc_t_mean, ladd.disc_t_std) (LADD: m = 1, s = 1,
shifted toward high noise; losses/ladd.py), and so is the real side with its own draw; the frozen teacher
(adapters off) gives features of the noisy latents at comparison.layers, which trainable heads read (conditioned
on the text and the image; the noise level reaches them only through the features). Loss: ladd.loss (LADD's
hinge by default), no distillation term (ladd.distill_weight 0; > 0 adds ADD's, losses/add.py) and no R1.

Where this differs from the originals:
- real side: LADD trains on teacher-generated synthetic latents; here the data stands in (the toy world's and
  the video data's real latents), as for ADD.
- heads: LADD's are per-layer convolutional heads conditioned on the noise level and pooled text; ours are
  comparison.head (original = conv, vpae.discriminator.heads) on text/image tokens, without an explicit t input.
- updates: one generator and one heads update per step (ADD's loop); FastGen alternates them
  (student_update_freq 5 by default, 2 for Wan) and its Wan config uses a shifted-uniform t_hat (shift 5),
  the same t_hat and noise for both sides, and approximated R1 (weight 0.1, alpha 0.1); not taken here.
"""

from __future__ import annotations

from typing import Iterator

import torch
from torch import nn

from vpae.conditioning import Conditioning
from vpae.discriminator import FeatureDiscriminator
from vpae.losses.add import ADDDistillationLoss
from vpae.losses.adversarial import discriminator_accuracy
from vpae.losses.ladd import LADDAdversarialLoss
from vpae.registry import register_method
from vpae.sampling import few_step_sigmas
from vpae.training.collapse import collapse_logs
from vpae.training.methods.base import Method, OptimizerSpec, Phase, Update, adam_on, requires_grad, student_inputs
from vpae.training.model import Networks, generator_checkpoint_view, real_score

Tensor = torch.Tensor


class LADDPhase(Phase):
    name, stream = "ladd", 3

    def __init__(self, nets: Networks, cfg):
        super().__init__(nets, cfg)
        self.comparison, self.settings = cfg.comparison, cfg.ladd
        self.steps, self.batch_size = self.comparison.steps, self.comparison.batch_size
        self.sigmas = few_step_sigmas(self.comparison.nfe, self.comparison.shift, cfg.sampling.few_step_schedule)
        self.disc = FeatureDiscriminator(nets.heads, self.comparison.layers)
        self.adv = LADDAdversarialLoss(self.settings.loss, self.settings.disc_t_mean, self.settings.disc_t_std)
        self.distill = ADDDistillationLoss(self.comparison.guidance)

    def optimizers(self) -> dict[str, OptimizerSpec]:
        c = self.comparison
        return {"generator": adam_on(self.nets.generator, c),
                "heads": OptimizerSpec(self.nets.head_params(), c.disc_lr, c.disc_betas, c.grad_clip)}

    def modules(self) -> dict[str, nn.Module]:
        return {"generator": generator_checkpoint_view(self.nets.generator), "heads": self.nets.heads}

    def logits(self, x_t: Tensor, t: Tensor, cond: Conditioning, backbone_grad: bool) -> Tensor:
        """The frozen teacher's features of x_t at t (adapters off), read by the heads."""
        with real_score(self.nets.teacher):
            return self.disc(self.nets.teacher, x_t, t, cond, backbone_grad)

    def generator_loss(self, x0_gen: Tensor, cond: Conditioning) -> tuple[Tensor, dict]:
        """The adversarial loss through the teacher's features (+ distill_weight x ADD's distillation)."""
        with requires_grad(self.nets.head_params(), False):
            adv = self.adv.generator(lambda x, t: self.logits(x, t, cond, True), x0_gen).mean()
        loss, logs = adv, {"loss/g_adv": adv.item()}
        if self.settings.distill_weight > 0:  # skipped at 0: LADD has no teacher-target pass
            distill = self.distill(x0_gen, cond, self.nets).mean()
            loss = loss + self.settings.distill_weight * distill
            logs["loss/distill"] = distill.item()
        logs["loss/g_total"] = loss.item()
        return loss, logs

    def discriminator_loss(self, x_data: Tensor, x0_fake: Tensor, cond: Conditioning) -> tuple[Tensor, dict]:
        """Heads only: the backbone runs without a graph (its features are inputs)."""
        out = self.adv.discriminator(lambda x, t: self.logits(x, t, cond, False), x_data, x0_fake)
        d = out["loss"].mean()
        logits_real, logits_fake = out["real"][2], out["fake"][2]
        return d, {"loss/d": d.item(), "d/logits_real": logits_real.mean().item(),
                   "d/logits_fake": logits_fake.mean().item(),
                   "d/accuracy": discriminator_accuracy(logits_real, logits_fake).item(),
                   "d/t_mean": out["fake"][1].mean().item()}

    def step(self, step: int, x_data: Tensor, cond: Conditioning) -> Iterator[Update | dict]:
        x0_gen, _ = student_inputs(self.nets.generator, x_data, cond, self.sigmas, False)
        with requires_grad(self.nets.head_params(), False), real_score(self.nets.teacher):
            yield Update("generator", *self.generator_loss(x0_gen, cond))
        yield Update("heads", *self.discriminator_loss(x_data, x0_gen.detach(), cond))
        yield collapse_logs(x0_gen, x_data)


@register_method("ladd")
class LADD(Method):
    name = "ladd"
    paper = "Sauer et al. 2024a, Fast High-Resolution Image Synthesis with Latent Adversarial Diffusion Distillation"
    sampler, needs_heads = "few_step", True
    distributed = True  # the same networks and reads as ADD: generator, teacher (adapters off), heads
    original_head = "conv"  # LADD's heads: per-layer convolutional heads on the teacher's token features

    def phases(self, nets: Networks) -> list[Phase]:
        return [LADDPhase(nets, self.cfg)]
