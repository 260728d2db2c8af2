"""The discriminator D = [backbone; heads] of eq. 3: light heads reading any backbone's features.

The backbone is any Backbone (the generator's EMA copy in V-PAE; the teacher or a trained copy in the
ablations; the fake score in DMD2; the frozen teacher in ADD and DCM; a trained copy in APT). Its parameters
are never touched here; its features stay differentiable with respect to the input so the generator
receives the adversarial gradient through it (`backbone_grad=True`; running the backbone under no_grad would
cut that gradient, the bug of an unofficial APT port).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from vpae.backbones.base import Backbone
from vpae.conditioning import Conditioning

Tensor = torch.Tensor


class FeatureDiscriminator(nn.Module):
    """Heads over the features a backbone gives at `layers` (depth fractions or block indices)."""

    def __init__(self, heads: nn.Module, layers: Sequence[int | float]):
        super().__init__()
        self.heads = heads
        self.layers = tuple(layers)

    def forward(self, backbone: Backbone, x_t: Tensor, sigma: Tensor, cond: Conditioning,
                backbone_grad: bool = True) -> Tensor:
        """Logits (B,). backbone_grad=False runs the backbone without a graph (the discriminator step,
        where only the heads learn); True keeps it (the generator step and ST-R1)."""
        with torch.set_grad_enabled(backbone_grad and torch.is_grad_enabled()):
            feats = backbone.features(x_t, sigma, cond, self.layers)
        # The heads run in their own parameter dtype (float32 heads on a bf16 backbone; float64 in tests).
        dtype = next(self.heads.parameters()).dtype
        feats = [f.to(dtype) for f in feats]
        grid = backbone.token_grid(x_t)
        image = None if cond.image is None else cond.image.to(dtype)
        return self.heads(feats, grid, cond.text.to(dtype), cond.text_mask, image)


def blur_frames(x: Tensor, sigma: float) -> Tensor:
    """Separable Gaussian blur of every frame of x (B, C, F, H, W) over H and W (std `sigma` pixels, radius
    ceil(3 sigma), replicate padding); differentiable, so the generator's adversarial gradient passes through it.
    Also the toy oracle's "blur" corruption."""
    if sigma <= 0:
        return x
    r = max(1, math.ceil(3 * sigma))
    k = torch.exp(-torch.arange(-r, r + 1, dtype=x.dtype, device=x.device) ** 2 / (2 * sigma ** 2))
    k = k / k.sum()
    b, c, f, h, w = x.shape
    y = x.transpose(1, 2).reshape(b * f * c, 1, h, w)
    y = F.conv2d(F.pad(y, (r, r, 0, 0), mode="replicate"), k.view(1, 1, 1, -1))
    y = F.conv2d(F.pad(y, (0, 0, r, r), mode="replicate"), k.view(1, 1, -1, 1))
    return y.reshape(b, f, c, h, w).transpose(1, 2)
