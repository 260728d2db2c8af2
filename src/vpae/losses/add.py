"""ADD's score-distillation loss (Sauer et al. 2024b, "Adversarial Diffusion Distillation", eq. 4-5): the student
sample x_theta is re-noised to a teacher timestep t and the teacher's denoised estimate is its target,
    L_distill = c(t) d(x_theta, x_psi(sg(x_theta,t), t)),   c(t) = alpha_t (ADD's "exponential" weighting),
with d the squared L2 distance. In rectified flow alpha_t = 1 - t (x_t = (1 - t) x0 + t eps), so the weight
vanishes where the teacher sees pure noise. The adversarial half of ADD is losses/adversarial.py (hinge).
"""

from __future__ import annotations

import torch

from vpae import flow, randomness
from vpae.conditioning import Conditioning

Tensor = torch.Tensor


def add_distillation_loss(x0_student: Tensor, x0_teacher: Tensor, t: Tensor) -> Tensor:
    """Per sample c(t) * mean (x0_student - sg(x0_teacher))^2 with c(t) = alpha_t = 1 - t."""
    return (1 - t) * (x0_student - x0_teacher.detach()).pow(2).flatten(1).mean(1)



class ADDDistillationLoss:
    """ADD eq. 4-5 with its noise: a teacher timestep t ~ U(0, 1) (clamped to >= 1e-3), the detached student
    sample re-noised there, the teacher's (real score's) x0 prediction with CFG `guidance` as the target."""

    def __init__(self, guidance: float = 1.0):
        self.guidance = guidance

    def __call__(self, x0_student: Tensor, cond: Conditioning, scores) -> Tensor:
        t = randomness.rand(x0_student.shape[0], x0_student.device).clamp_min(1e-3)
        x_t = flow.add_noise(x0_student.detach(), randomness.randn_like(x0_student), t)
        with torch.no_grad():
            x0_teacher = scores.real_x0(x_t, t, cond, self.guidance)
        return add_distillation_loss(x0_student, x0_teacher, t)
