"""Mode-seeking regularisation (Mao et al., "Mode Seeking Generative Adversarial Networks for Diverse Image
Synthesis", CVPR 2019, eq. 3), not in the V-PAE paper: an option against per-condition mode collapse.

For two noises z1, z2 of the SAME condition, L_ms = d_z(z1, z2) / (d_I(G(z1), G(z2)) + eps) with d = mean
absolute difference; minimising it maximises how far apart the two samples of one condition land relative to
their noises. A one-step generator that picks the same mode for every noise of a condition (or the same partial
average) has d_I ~ 0 there and gets the largest push; two samples already in different modes get almost none.
"""

from __future__ import annotations

import torch

Tensor = torch.Tensor


def mode_seeking_loss(x0_a: Tensor, x0_b: Tensor, z_a: Tensor, z_b: Tensor, eps: float = 1e-5) -> Tensor:
    """Per pair: mean|z_a - z_b| / (mean|x0_a - x0_b| + eps), means over (C, F, H, W)."""
    d_img = (x0_a - x0_b).abs().flatten(1).mean(1)
    d_z = (z_a - z_b).abs().flatten(1).mean(1)
    return d_z / (d_img + eps)
