"""MagicDistillation's ground-truth supervision (Shao et al. 2025, sec. 3: besides weak-to-strong distribution
matching, "minimise the discrepancy between the fake data distribution and the ground truth distribution").
The paper gives no closed form we could check; our reading, chosen and written down in docs/COMPARISON_METHODS.md: for a
generator input noised from the real video at sigma s, pull the generated video toward that video, weighted by
the signal the input still holds,
    L_gt = (1 - s) || x0_gen - x_data ||^2   (zero at s = 1, where the input is pure noise).
"""

from __future__ import annotations

import torch

Tensor = torch.Tensor


def ground_truth_loss(x0_gen: Tensor, x_data: Tensor, s: Tensor) -> Tensor:
    """Per sample (1 - s) * mean (x0_gen - x_data)^2."""
    return (1 - s) * (x0_gen - x_data).pow(2).flatten(1).mean(1)
