"""LADD's adversarial loss with its noise (Sauer et al. 2024a, "Fast High-Resolution Image Synthesis with Latent
Adversarial Diffusion Distillation", sec. 3): the student's x0 and the real latents are both re-noised to a
teacher noise level t_hat drawn from a logit-normal pi(t; m, s), t_hat = sigmoid(m + s n), n ~ N(0, 1), before the
frozen teacher's features are read by the discriminator heads. LADD shifts the draw toward high noise (m = 1,
s = 1 in its noise-distribution ablation, as we read it): there the teacher's features carry the global layout
the adversarial signal should fix. The losses themselves are eq. 3's (hinge or non-saturating,
losses/adversarial.py); the two sides draw independent t_hat and noise (FastGen's LADD default,
`gan_use_same_t_noise=False`).
"""

from __future__ import annotations

import torch

from vpae import randomness
from vpae.losses.adversarial import AdversarialLoss

Tensor = torch.Tensor


class LADDAdversarialLoss(AdversarialLoss):
    """AdversarialLoss whose re-noising level is LADD's logit-normal instead of a uniform band:
    `generator(discriminate, x0_fake)` -> per-sample generator loss (graph to x0_fake kept),
    `discriminator(discriminate, x0_real, x0_fake)` -> {"loss" (B,), "real"/"fake": (x_t, t, logits)}."""

    def __init__(self, kind: str = "hinge", t_mean: float = 1.0, t_std: float = 1.0):
        super().__init__(kind, band=(0.0, 1.0))
        self.t_mean, self.t_std = float(t_mean), float(t_std)

    def draw_t(self, n: int, device=None) -> Tensor:
        """t_hat = sigmoid(t_mean + t_std n), n ~ N(0, 1) per sample: in (0, 1), median sigmoid(t_mean)
        (0.73 at LADD's m = 1)."""
        return torch.sigmoid(self.t_mean + self.t_std * randomness.randn((n,), device))
