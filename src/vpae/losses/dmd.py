"""Paper eq. 1-2: distribution matching (DMD / VSD) with a real and a fake score.

Eq. 1 in score form is -(s_real - s_fake) dmu/dtheta. With s = -(x_t + (1 - t) v) / t (FIELD_NOTES 1),
s_real - s_fake = (1 - t) / t^2 * (x0_real - x0_fake), so the KL gradient with respect to the generator
sample points along (x0_fake - x0_real). Public DMD code replaces the time-dependent weight with a
per-sample normalisation by mean |x0_gen - x0_real|, which we follow.
"""

from __future__ import annotations

from typing import Protocol

import torch

from vpae import flow, randomness
from vpae.conditioning import Conditioning
from vpae.errors import DivergenceError

Tensor = torch.Tensor


def _per_sample_mean(x: Tensor) -> Tensor:
    return x.flatten(1).mean(1)


def dmd_gradient(x0_gen: Tensor, x0_real: Tensor, x0_fake: Tensor) -> Tensor:
    """grad = (x0_fake - x0_real) / mean_{C,F,H,W} |x0_gen - x0_real|  (eq. 1, normalised); no graph."""
    with torch.no_grad():
        weight = _per_sample_mean((x0_gen - x0_real).abs()).clamp_min(1e-8)
        grad = (x0_fake - x0_real) / weight.reshape(-1, *([1] * (x0_gen.ndim - 1)))
        if not torch.isfinite(grad).all():  # report, never hide: a NaN here means a score or the generator diverged
            parts = {"generator sample": x0_gen, "real score x0": x0_real, "fake score x0": x0_fake}
            bad = [n for n, t in parts.items() if not torch.isfinite(t).all()] or ["the normalised difference"]
            raise DivergenceError(f"non-finite DMD gradient (non-finite: {', '.join(bad)})")
        return grad


def dmd_loss(x0_gen: Tensor, x0_real: Tensor, x0_fake: Tensor) -> Tensor:
    """Per-sample surrogate whose gradient with respect to x0_gen is dmd_gradient / numel:
    0.5 * mean (x0_gen - sg(x0_gen - grad))^2. Gradient descent moves x0_gen toward the real score."""
    grad = dmd_gradient(x0_gen, x0_real, x0_fake)
    target = (x0_gen - grad).detach()
    return 0.5 * _per_sample_mean((x0_gen - target) ** 2)


def fake_score_loss(v_fake: Tensor, x0_gen: Tensor, eps: Tensor) -> Tensor:
    """Eq. 2: flow matching of the fake score on detached generator samples, target v = eps - x0."""
    return _per_sample_mean((eps - x0_gen.detach() - v_fake) ** 2)


class ScorePair(Protocol):
    """The two scores of eq. 1 as x0 predictions (vpae.training.model.Networks is one): the real score with
    classifier-free guidance, the fake score, and the fake score's velocity with a graph (eq. 2)."""

    def real_x0(self, x_t: Tensor, t: Tensor, cond: Conditioning, guidance: float = 1.0) -> Tensor: ...

    def fake_x0(self, x_t: Tensor, t: Tensor, cond: Conditioning) -> Tensor: ...

    def fake_velocity(self, x_t: Tensor, t: Tensor, cond: Conditioning) -> Tensor: ...


class DistributionMatchingLoss:
    """Eq. 1: the generator's sample is detached, re-noised at t ~ U(band) and read by the real score (CFG
    `guidance`) and the fake score; the per-sample surrogate `dmd_loss` carries the normalised difference."""

    def __init__(self, band, guidance: float = 1.0):
        self.band, self.guidance = tuple(band), guidance

    def __call__(self, x0_gen: Tensor, cond: Conditioning, scores: ScorePair) -> tuple[Tensor, Tensor]:
        """-> (per-sample loss (B,), mean |x0_real - x0_fake| (a logged gap))."""
        t = randomness.uniform(x0_gen.shape[0], self.band, x0_gen.device)
        x_t = flow.add_noise(x0_gen.detach(), randomness.randn_like(x0_gen), t)
        with torch.no_grad():
            x0_real = scores.real_x0(x_t, t, cond, self.guidance)
            x0_fake = scores.fake_x0(x_t, t, cond)
        return dmd_loss(x0_gen, x0_real, x0_fake), (x0_real - x0_fake).abs().mean()


class FakeScoreLoss:
    """Eq. 2: flow matching of the fake score on detached generator samples re-noised at t ~ U(band)."""

    def __init__(self, band):
        self.band = tuple(band)

    def __call__(self, x0_gen: Tensor, cond: Conditioning, scores: ScorePair) -> Tensor:
        t = randomness.uniform(x0_gen.shape[0], self.band, x0_gen.device)
        eps = randomness.randn_like(x0_gen)
        v_fake = scores.fake_velocity(flow.add_noise(x0_gen, eps, t), t, cond)
        return fake_score_loss(v_fake, x0_gen, eps)
