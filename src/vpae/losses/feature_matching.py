"""Feature matching (Salimans et al. 2016), as DCM's detail expert uses it (Lv et al. 2025, sec. 3.4): the
discriminator backbone's features of the prediction should match those of the target, layer by layer.
    L_fm = mean_l || F_l(x_pred) - F_l(x_target) ||^2
"""

from __future__ import annotations

import torch

Tensor = torch.Tensor


def feature_matching_loss(feats_pred: list[Tensor], feats_target: list[Tensor]) -> Tensor:
    """Per sample: the mean over layers of the mean squared difference of (B, N, D) features."""
    terms = [(p - t.detach()).pow(2).flatten(1).mean(1) for p, t in zip(feats_pred, feats_target, strict=True)]
    return torch.stack(terms).mean(0)
