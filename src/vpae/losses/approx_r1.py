"""The approximated R1 of APT (Lin et al. 2025a, "Diffusion Adversarial Post-Training for One-Step Video
Generation", sec. 3.4): R1 = ||grad_x D(x)||^2 needs a double backward that flash attention lacks, so APT
penalises the change of the logit under a small Gaussian perturbation instead,
    L_aR1 = lambda || D(x, c) - D(N(x, sigma I), c) ||^2   (sigma 0.01 images, 0.1 video; lambda 100).
Unlike V-PAE's ST-R1 (losses/regularizers.py, eq. 4) it is not normalised by the perturbation's norm.

`normalized=True` divides it by sigma^2, which makes it an estimate of the exact R1 |grad_x D(x)|^2, so a
weight defined on the exact R1 (ADD's 1e-5) keeps its meaning. With delta = sigma n, n ~ N(0, I), g = grad_x D(x)
and H its Hessian, D(x + delta) - D(x) = sigma g.n + sigma^2 n^T H n / 2 + O(sigma^3), so
    |D(x + delta) - D(x)|^2 / sigma^2 = (g.n)^2 + sigma (g.n)(n^T H n) + O(sigma^2),
whose mean is E (g.n)^2 = g^T E[n n^T] g = |g|^2 (the sigma term is odd in n: mean 0), a bias O(sigma^2). The
estimate is one draw of |g|^2 chi^2_1 (g.n ~ N(0, |g|^2)): its variance is 2 |g|^4 per sample, a standard error
of sqrt(2 / B) |g|^2 over B samples. Several logits per sample sum, as the exact R1 of a vector D does.
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
    """APT's approximated R1 with its perturbation: delta = sigma * N(0, I), penalty |D(x + delta) - D(x)|^2, or
    with `normalized` that over sigma^2, an unbiased-to-O(sigma^2) estimate of the exact R1 |grad_x D|^2 (module
    doc). `discriminate(x)` -> logits at the same noise level (and noise) as `logits`."""

    def __init__(self, sigma: float, normalized: bool = False):
        if sigma <= 0:
            raise ValueError(f"the perturbation's sigma must be > 0, got {sigma}")
        self.sigma, self.normalized = sigma, normalized

    def __call__(self, discriminate, x: Tensor, logits: Tensor) -> Tensor:
        delta = gaussian_perturbation(x, self.sigma)
        penalty = approximated_r1_penalty(discriminate(x + delta), logits)
        return penalty / self.sigma ** 2 if self.normalized else penalty
