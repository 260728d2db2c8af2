"""Paper eq. 3: the unified adversarial loss, hinge by default (Miyato et al. 2018), per sample."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from vpae import flow, randomness

Tensor = torch.Tensor


def generator_adversarial_loss(logits_fake: Tensor, kind: str = "hinge") -> Tensor:
    """L_UAE-G. hinge: -D(fake); non_saturating: softplus(-D(fake))."""
    if kind == "hinge":
        return -logits_fake
    if kind == "non_saturating":
        return F.softplus(-logits_fake)
    raise ValueError(f"unknown adversarial loss {kind!r}")


def discriminator_loss(logits_real: Tensor, logits_fake: Tensor, kind: str = "hinge") -> Tensor:
    """L_UAE-D. hinge: relu(1 - D(real)) + relu(1 + D(fake)); non_saturating: softplus(-D(real)) + softplus(D(fake))."""
    if kind == "hinge":
        return F.relu(1 - logits_real) + F.relu(1 + logits_fake)
    if kind == "non_saturating":
        return F.softplus(-logits_real) + F.softplus(logits_fake)
    raise ValueError(f"unknown adversarial loss {kind!r}")


def discriminator_accuracy(logits_real: Tensor, logits_fake: Tensor) -> Tensor:
    """Pair accuracy P(D(real) > D(fake)) over every (real, generated) pair, ties counted half: the AUC of the
    logits as a real/fake score (0.5 = chance, 1 = every pair ranked right). It reads the order of the logits,
    not their sign, so a head whose logits all share a sign but rank every pair right reads 1 (a logged
    statistic, not a loss)."""
    with torch.no_grad():
        diff = logits_real.detach().flatten()[:, None] - logits_fake.detach().flatten()[None, :]
        return (diff > 0).float().mean() + 0.5 * (diff == 0).float().mean()


def band_bins(band, bins: int = 4) -> list[tuple[float, float]]:
    """The noise band cut into `bins` equal parts, lowest t first (the bins the discriminator signals use)."""
    lo, hi = (float(b) for b in band)
    return [(lo + (hi - lo) * k / bins, lo + (hi - lo) * (k + 1) / bins) for k in range(bins)]


def pair_counts_by_bin(logits_real: Tensor, t_real: Tensor, logits_fake: Tensor, t_fake: Tensor, band,
                       bins: int = 4) -> dict[str, float]:
    """Per noise-level bin k of the band: "d/bin{k}_ranked" (real-generated pairs with both t in the bin that
    the discriminator ranks right, ties half) and "d/bin{k}_pairs" (how many such pairs). Counts, not ratios, so
    that a bin without samples in a step is a 0, and the pair accuracy of a bin over any window of steps (or
    ranks) is sum(ranked) / sum(pairs) (vpae.training.tracking.binned_accuracy)."""
    out = {}
    with torch.no_grad():
        lr, lf = logits_real.detach().flatten().float(), logits_fake.detach().flatten().float()
        tr, tf = t_real.detach().flatten().float(), t_fake.detach().flatten().float()
        edges = band_bins(band, bins)
        for k, (a, b) in enumerate(edges):
            last = k == bins - 1
            in_r = (tr >= a) & ((tr <= b) if last else (tr < b))
            in_f = (tf >= a) & ((tf <= b) if last else (tf < b))
            diff = lr[in_r][:, None] - lf[in_f][None, :]
            out[f"d/bin{k}_ranked"] = float((diff > 0).sum() + 0.5 * (diff == 0).sum())
            out[f"d/bin{k}_pairs"] = float(diff.numel())
    return out


class AdversarialLoss:
    """Eq. 3 with its noise: real and generated videos are re-noised at t ~ U(band) before the discriminator
    (`discriminate(x_t, t)` -> logits (B,)). `generator` keeps the graph to the generated video (eq. 6's
    adversarial term); `discriminator` returns eq. 7's per-sample loss and what ST-R1 and the logs need."""

    def __init__(self, kind: str = "hinge", band=(0.0, 1.0), power: float = 1.0):
        if kind not in ("hinge", "non_saturating"):
            raise ValueError(f"unknown adversarial loss {kind!r}")
        self.kind, self.band, self.power = kind, tuple(band), float(power)

    def draw_t(self, n: int, device=None) -> Tensor:
        """t = lo + (hi - lo) u^power, u ~ U[0, 1): uniform over the band at power 1 (the paper), weighted toward
        its low end at power > 1 (power 3: half the draws in the lowest eighth)."""
        lo, hi = self.band
        u = randomness.uniform(n, (0.0, 1.0), device)
        return lo + (hi - lo) * u.pow(self.power)  # u^1 is u exactly: power 1 draws what the uniform band drew

    def renoise(self, x0: Tensor) -> tuple[Tensor, Tensor]:
        t = self.draw_t(x0.shape[0], x0.device)
        return flow.add_noise(x0, randomness.randn_like(x0), t), t

    def generator(self, discriminate, x0_fake: Tensor) -> Tensor:
        x_t, t = self.renoise(x0_fake)  # not detached: the gradient reaches the generator
        return generator_adversarial_loss(discriminate(x_t, t), self.kind)

    def discriminator(self, discriminate, x0_real: Tensor, x0_fake: Tensor) -> dict[str, Tensor]:
        """-> {"loss" (B,), "real"/"fake": (x_t, t, logits) of each side}."""
        x_real, t_real = self.renoise(x0_real)
        x_fake, t_fake = self.renoise(x0_fake.detach())
        logits_real, logits_fake = discriminate(x_real, t_real), discriminate(x_fake, t_fake)
        return {"loss": discriminator_loss(logits_real, logits_fake, self.kind),
                "real": (x_real, t_real, logits_real), "fake": (x_fake, t_fake, logits_fake)}
