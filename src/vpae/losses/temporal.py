"""DCM's temporal coherence loss (Lv et al. 2025, "DCM: Dual-Expert Consistency Model", sec. 3.3): the semantic
expert's prediction must reproduce the target's motion over `stride` frames, not only its frames:
    L_tc = || (x_pred[f+k] - x_pred[f]) - (x_target[f+k] - x_target[f]) ||^2, mean over (C, F-k, H, W),
k = 3 in the release (Vchitect/DCM fastvideo/distill_dcm_wan_semantic_expert.py:355-358).
"""

from __future__ import annotations

import torch

Tensor = torch.Tensor


def temporal_coherence_loss(pred: Tensor, target: Tensor, stride: int = 1) -> Tensor:
    """Per sample, for videos (B, C, F, H, W); the target carries no gradient. The stride is clipped to F - 1
    (short clips still get a motion term); a one-frame clip has no motion: 0."""
    k = min(stride, pred.shape[2] - 1)
    if k < 1:
        return pred.new_zeros(pred.shape[0])
    d_pred = pred[:, :, k:] - pred[:, :, :-k]
    d_tgt = (target[:, :, k:] - target[:, :, :-k]).detach()
    return (d_pred - d_tgt).pow(2).flatten(1).mean(1)
