"""sCM's continuous-time consistency loss (Lu & Song 2024, Simplifying, Stabilizing and Scaling Continuous-Time
Consistency Models, eq. 8 and sec. 4; the form NVlabs/rcm trains rCM with, Zheng et al. 2025), written for a
rectified-flow backbone.

Consistency function: f(x_s, s) = x_s - s v_theta(x_s, s) (the x0 prediction; f(x, 0) = x by construction).
The continuous-time limit of the L2 consistency loss ||f_theta(x_s, s) - f_theta-(x_{s-ds}, s-ds)||^2 has the
gradient (sCM eq. 8, up to a time weight)

    grad_theta E[ f_theta(x_s, s) . sg(df_theta-/ds) ],   df/ds = d/ds f(x_s, s) along the teacher's PF-ODE
    df/ds = dx/ds - v_theta- - s (dv_theta-/ds),        dx/ds = v_teacher(x_s, s) (with CFG),

where dv/ds is one forward-mode JVP of the backbone with tangents (v_teacher, 1) in (x_s, s). It is trained
through the surrogate (rCM's `_student_scm_step`)

    g   = (1 - r) (v_teacher - v_theta-) + r df_theta-/ds     tangent warm-up r: 0 -> 1 (sCM sec. 4.2)
    g^  = g / (||g||_2 + c)                                    tangent normalisation (sCM sec. 4.2, c = 0.1)
    L   = 0.5 mean (v_theta - sg(v_theta) - g^)^2              its gradient is -g^ . dv/dtheta / numel

Descending moves v_theta along g^, so f = x - s v moves against df/ds: toward f one step nearer the data, the
consistency direction. At r = 0 the loss pulls the student's velocity toward the teacher's (a diffusion-like
start, as sCM's warm-up); r multiplies the whole JVP term.

Choices where the RF version cannot follow TrigFlow literally (rCM trains in TrigFlow time t = arctan(s / (1 - s))
with F-prediction): g is df/ds in the velocity's units (time weight 1 in v, 1/s in f), not cos(t) df/dt in F's;
rCM's warm-up keeps the JVP term at full weight and ramps only its cos t sin t x_t term (with sqrt(1 - r^2
sin^2 t) on the other), which has no RF counterpart, so r ramps the JVP term here as in sCM's paper. The
normalisation is over the whole sample as rCM's. rCM zeroes samples with a NaN tangent; here a NaN is left to
surface (the loop's divergence check). Noise levels: logit(s) ~ N(t_mean, t_std), which is rCM's p_G (a
log-normal EDM sigma = s / (1 - s)).
"""

from __future__ import annotations

import contextlib
from typing import Callable

import torch

from vpae import flow, randomness
from vpae.conditioning import Conditioning

Tensor = torch.Tensor


@contextlib.contextmanager
def jvp_attention():
    """Attention that forward-mode AD goes through: torch's composite math SDPA. The CPU and CUDA fused kernels
    (flash, memory-efficient, cuDNN) have no forward-AD formula; the math path materialises the L x L scores,
    which is fine on the toy and infeasible at Wan-14B sequence lengths (rCM ships a JVP FlashAttention kernel,
    rcm/utils/flash_attention_jvp_triton.py)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    with sdpa_kernel([SDPBackend.MATH]):
        yield


def velocity_jvp(backbone, x_t: Tensor, s: Tensor, cond: Conditioning, dx_ds: Tensor) -> tuple[Tensor, Tensor]:
    """(v(x_t, s), dv/ds along the path with tangents (dx_ds, 1)): one forward-mode JVP (torch.func.jvp)."""
    with jvp_attention():
        return torch.func.jvp(lambda x, t: backbone.velocity(x, t, cond), (x_t, s), (dx_ds, torch.ones_like(s)))


def consistency_derivative(backbone, x_t: Tensor, s: Tensor, cond: Conditioning,
                           dx_ds: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(v, f, df/ds) of the consistency function f = x - s v(x, s) along (dx_ds, 1): df/ds = dx_ds - v - s dv/ds."""
    v, dv = velocity_jvp(backbone, x_t, s, cond, dx_ds)
    sig = flow.expand_sigma(s, x_t)
    return v, x_t - sig * v, dx_ds - v - sig * dv


def logit_normal(n: int, mean: float, std: float, device=None) -> Tensor:
    """s = sigmoid(N(mean, std)) per sample: (n,)."""
    return torch.sigmoid(mean + std * randomness.randn((n,), device))


class ContinuousConsistencyLoss:
    """sCM eq. 8 as rCM trains it (see the module doc): per-sample 0.5 mean (v - sg(v) - g^)^2.

    teacher_velocity(x_t, s) -> dx/ds of the teacher's PF-ODE (with CFG), read without a graph. The target
    network theta- is the online generator with its gradient stopped (sCM)."""

    def __init__(self, t_mean: float = 0.0, t_std: float = 1.6, norm_c: float = 0.1, warmup_steps: int = 0):
        self.t_mean, self.t_std, self.norm_c, self.warmup_steps = t_mean, t_std, norm_c, warmup_steps

    def warmup_ratio(self, step: int) -> float:
        return 1.0 if self.warmup_steps == 0 else min(1.0, step / self.warmup_steps)

    def __call__(self, generator, x_data: Tensor, cond: Conditioning,
                 teacher_velocity: Callable[[Tensor, Tensor], Tensor], step: int) -> tuple[Tensor, Tensor]:
        """-> (per-sample loss (B,), per-sample rms of the unnormalised tangent g (a logged scale))."""
        b, dev = x_data.shape[0], x_data.device
        s = logit_normal(b, self.t_mean, self.t_std, dev)
        x_t = flow.add_noise(x_data, randomness.randn_like(x_data), s)
        r = self.warmup_ratio(step)
        with torch.no_grad():
            v_teacher = teacher_velocity(x_t, s)
            v_minus, _, df_ds = consistency_derivative(generator, x_t, s, cond, v_teacher)
            g = (1 - r) * (v_teacher - v_minus) + r * df_ds
            norm = g.flatten(1).norm(dim=1)
            g_hat = g / (norm + self.norm_c).reshape(-1, *([1] * (g.ndim - 1)))
        v = generator.velocity(x_t, s, cond)
        loss = 0.5 * ((v - v.detach() - g_hat) ** 2).flatten(1).mean(1)
        return loss, norm / g[0].numel() ** 0.5
