"""Paper eq. 3: the unified adversarial loss, hinge by default (Miyato et al. 2018), per sample."""

from __future__ import annotations

import torch
import torch.nn.functional as F

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
    """Share of real videos scored > 0 and of generated ones < 0, averaged (0.5 = chance): a discriminator that
    never leaves chance gives the generator no adversarial signal (a logged statistic, not a loss)."""
    with torch.no_grad():
        return 0.5 * ((logits_real > 0).float().mean() + (logits_fake < 0).float().mean())
