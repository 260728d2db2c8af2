"""Paper eq. 5: the conditional SDS loss toward the frozen teacher (real score), per sample.

L_C-SDS = || x0_gen - f_real(sg(x_t'), t') ||^2 where x_t' re-noises the generator's sample. The teacher
sees the same conditioning (first-frame latent and image tokens), so its x0 prediction keeps the
conditional frame consistent: that is what stops conditional-frame collapse.
"""

from __future__ import annotations

import torch

from vpae import flow, randomness
from vpae.conditioning import Conditioning

Tensor = torch.Tensor


def conditional_sds_loss(x0_gen: Tensor, x0_teacher: Tensor) -> Tensor:
    """Mean over (C, F, H, W) of (x0_gen - sg(x0_teacher))^2."""
    return (x0_gen - x0_teacher.detach()).pow(2).flatten(1).mean(1)


class ConditionalSDSLoss:
    """Eq. 5 with its noise: t' ~ U(band), x_t' = the detached generator sample re-noised, the teacher's (real
    score's) x0 prediction with CFG `guidance` as the target."""

    def __init__(self, band, guidance: float = 1.0):
        self.band, self.guidance = tuple(band), guidance

    def __call__(self, x0_gen: Tensor, cond: Conditioning, scores) -> Tensor:
        t = randomness.uniform(x0_gen.shape[0], self.band, x0_gen.device)
        x_t = flow.add_noise(x0_gen.detach(), randomness.randn_like(x0_gen), t)
        with torch.no_grad():
            x0_teacher = scores.real_x0(x_t, t, cond, self.guidance)
        return conditional_sds_loss(x0_gen, x0_teacher)
