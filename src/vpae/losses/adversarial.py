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
    """Share of real videos scored > 0 and of generated ones < 0, averaged (0.5 = chance): a discriminator that
    never leaves chance gives the generator no adversarial signal (a logged statistic, not a loss)."""
    with torch.no_grad():
        return 0.5 * ((logits_real > 0).float().mean() + (logits_fake < 0).float().mean())


class AdversarialLoss:
    """Eq. 3 with its noise: real and generated videos are re-noised at t ~ U(band) before the discriminator
    (`discriminate(x_t, t)` -> logits (B,)). `generator` keeps the graph to the generated video (eq. 6's
    adversarial term); `discriminator` returns eq. 7's per-sample loss and what ST-R1 and the logs need."""

    def __init__(self, kind: str = "hinge", band=(0.0, 1.0)):
        if kind not in ("hinge", "non_saturating"):
            raise ValueError(f"unknown adversarial loss {kind!r}")
        self.kind, self.band = kind, tuple(band)

    def renoise(self, x0: Tensor) -> tuple[Tensor, Tensor]:
        t = randomness.uniform(x0.shape[0], self.band, x0.device)
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
