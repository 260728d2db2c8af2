"""The approximated R1 of APT (Lin et al. 2025a, "Diffusion Adversarial Post-Training for One-Step Video
Generation", sec. 3.4): R1 = ||grad_x D(x)||^2 needs a double backward that flash attention lacks, so APT
penalises the change of the logit under a small Gaussian perturbation instead,
    L_aR1 = lambda || D(x, c) - D(N(x, sigma I), c) ||^2   (sigma 0.01 images, 0.1 video; lambda 100).
Unlike V-PAE's ST-R1 (losses/regularizers.py, eq. 4) it is not normalised by the perturbation's norm. ADD's
R1 (weight 1e-5) is computed the same way here, for the same reason.
"""

from __future__ import annotations

import torch

from vpae import randomness

Tensor = torch.Tensor


def gaussian_perturbation(like: Tensor, sigma: float) -> Tensor:
    """sigma * N(0, I) shaped like the batch (per-sample streams in a training step)."""
    return sigma * randomness.randn_like(like)


def approximated_r1_penalty(logits_perturbed: Tensor, logits_clean: Tensor) -> Tensor:
    """Per sample |D(x + delta) - D(x)|^2."""
    return (logits_perturbed - logits_clean).reshape(logits_clean.shape[0], -1).pow(2).sum(1)


class ApproximatedR1:
    """APT's approximated R1 with its perturbation: delta = sigma * N(0, I), penalty |D(x + delta) - D(x)|^2.
    `discriminate(x)` -> logits (it may add its own noise level)."""

    def __init__(self, sigma: float):
        self.sigma = sigma

    def __call__(self, discriminate, x: Tensor, logits: Tensor) -> Tensor:
        delta = gaussian_perturbation(x, self.sigma)
        return approximated_r1_penalty(discriminate(x + delta), logits)
