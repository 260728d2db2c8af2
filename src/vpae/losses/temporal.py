"""DCM's temporal coherence loss (Lv et al. 2025, "DCM: Dual-Expert Consistency Model", sec. 3.3): the semantic
expert's prediction must reproduce the target's frame-to-frame motion, not only its frames:
    L_tc = || (x_pred[f+1] - x_pred[f]) - (x_target[f+1] - x_target[f]) ||^2, mean over (C, F-1, H, W).
"""

from __future__ import annotations

import torch

Tensor = torch.Tensor


def temporal_coherence_loss(pred: Tensor, target: Tensor) -> Tensor:
    """Per sample, for videos (B, C, F, H, W); the target carries no gradient."""
    d_pred = pred[:, :, 1:] - pred[:, :, :-1]
    d_tgt = (target[:, :, 1:] - target[:, :, :-1]).detach()
    return (d_pred - d_tgt).pow(2).flatten(1).mean(1)
