"""The Backbone interface the whole method talks to. Wan is the first adapter (backbones/wan.py)."""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from vpae.conditioning import Conditioning

Tensor = torch.Tensor


def resolve_layers(layers: Sequence[int | float], num_layers: int) -> list[int]:
    """Block indices from indices or depth fractions.

    An int is a block index (negative counts from the end); a float in (0, 1] is a fraction of the
    depth, mapped to block ceil(f * num_layers) - 1 (so 1.0 is the last block, 0.5 the middle one).
    Returned sorted and de-duplicated.
    """
    out = []
    for layer in layers:
        if isinstance(layer, bool):
            raise TypeError("layers must be ints or floats")
        if isinstance(layer, float):
            if not 0.0 < layer <= 1.0:
                raise ValueError(f"depth fraction must be in (0, 1], got {layer}")
            # ceil(f * L) - 1, rounding away float noise first (0.14 * 50 = 7.000000000000001 is block 6)
            idx = max(0, math.ceil(round(layer * num_layers, 9)) - 1)
        else:
            idx = layer + num_layers if layer < 0 else layer
        if not 0 <= idx < num_layers:
            raise ValueError(f"layer {layer} out of range for a backbone with {num_layers} blocks")
        out.append(idx)
    return sorted(set(out))


class Backbone(nn.Module):
    """A velocity-predicting video diffusion backbone.

    velocity(x_t, sigma, cond) -> v, shape of x_t (B, C, F, H, W); sigma is (B,) in [0, 1].
    features(x_t, sigma, cond, layers) -> list of token features (B, N, D), one per requested block
        (in increasing depth); the forward stops after the deepest requested block. Differentiable
        with respect to x_t even when parameters are frozen.
    """

    num_layers: int
    feature_dim: int
    latent_channels: int

    def velocity(self, x_t: Tensor, sigma: Tensor, cond: Conditioning) -> Tensor:  # pragma: no cover
        raise NotImplementedError

    def features(self, x_t: Tensor, sigma: Tensor, cond: Conditioning,
                 layers: Sequence[int | float]) -> list[Tensor]:  # pragma: no cover
        raise NotImplementedError

    def token_grid(self, x_t: Tensor) -> tuple[int, int, int]:  # pragma: no cover
        """(F', H', W') of the feature tokens for an input shaped like x_t."""
        raise NotImplementedError

    def forward(self, x_t: Tensor, sigma: Tensor, cond: Conditioning) -> Tensor:
        return self.velocity(x_t, sigma, cond)
