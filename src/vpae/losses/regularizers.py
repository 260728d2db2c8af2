"""Paper eq. 4: the spatiotemporal approximated R1 (finite differences, no double backward).

Perturbation delta = sigma_s * eps_s + sigma_t * eps_t with
  eps_s ~ N(0, I) of shape (B, C, F, H, W): independent per element (the per-frame "pixel" term);
  eps_t ~ N(0, I) of shape (B, C, F, 1, 1) broadcast over H, W: one offset per channel and frame, constant
        within a frame and independent across frames, i.e. a perturbation that varies across frames only
        (a temporal flicker of the frame distribution). Chosen so the temporal term cannot be absorbed
        into the spatial one and so every frame of the video is disturbed differently.
Penalty per sample: |D(x + delta) - D(x)|^2 / ||delta||^2.
"""

from __future__ import annotations

import torch

from vpae import randomness

Tensor = torch.Tensor


def spatiotemporal_perturbation(like: Tensor, sigma_s: float, sigma_t: float) -> Tensor:
    """delta = sigma_s eps_s + sigma_t eps_t for a video batch like (B, C, F, H, W) (per-sample streams in a
    training step: vpae.randomness)."""
    b, c, f, _, _ = like.shape
    eps_s = randomness.randn_like(like)
    eps_t = randomness.randn((b, c, f, 1, 1), device=like.device, dtype=like.dtype)
    return sigma_s * eps_s + sigma_t * eps_t


def st_r1_penalty(logits_perturbed: Tensor, logits_clean: Tensor, delta: Tensor) -> Tensor:
    """Eq. 4 per sample: |D(x~) - D(x)|^2 / ||sigma_s eps_s + sigma_t eps_t||^2."""
    diff = (logits_perturbed - logits_clean).reshape(logits_clean.shape[0], -1)
    return diff.pow(2).sum(1) / delta.flatten(1).pow(2).sum(1)


class SpatiotemporalR1:
    """Eq. 4 with its perturbation: draws delta (spatiotemporal_perturbation) and scores D(x + delta) against
    the clean logits. `discriminate(x, t)` -> logits."""

    def __init__(self, sigma_s: float, sigma_t: float):
        self.sigma_s, self.sigma_t = sigma_s, sigma_t

    def __call__(self, discriminate, x: Tensor, t: Tensor, logits: Tensor) -> Tensor:
        delta = spatiotemporal_perturbation(x, self.sigma_s, self.sigma_t)
        return st_r1_penalty(discriminate(x + delta, t), logits, delta)
