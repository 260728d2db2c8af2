"""ADD's score-distillation loss (Sauer et al. 2024b, "Adversarial Diffusion Distillation", eq. 4-5): the student
sample x_theta is re-noised to a teacher timestep t and the teacher's denoised estimate is its target,
    L_distill = c(t) d(x_theta, x_psi(sg(x_theta,t), t)),   c(t) = alpha_t (ADD's "exponential" weighting),
with d the squared L2 distance. In rectified flow alpha_t = 1 - t (x_t = (1 - t) x0 + t eps), so the weight
vanishes where the teacher sees pure noise. The adversarial half of ADD is losses/adversarial.py (hinge).
"""

from __future__ import annotations

import torch

Tensor = torch.Tensor


def add_distillation_loss(x0_student: Tensor, x0_teacher: Tensor, t: Tensor) -> Tensor:
    """Per sample c(t) * mean (x0_student - sg(x0_teacher))^2 with c(t) = alpha_t = 1 - t."""
    return (1 - t) * (x0_student - x0_teacher.detach()).pow(2).flatten(1).mean(1)

