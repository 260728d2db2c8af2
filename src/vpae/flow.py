"""Rectified-flow math exactly as Wan uses it (FIELD_NOTES 1). Pure functions of tensors.

Conventions: x_t = (1 - s) x0 + s eps, s in [0, 1] (s = 1 is pure noise); the network predicts the
velocity v = eps - x0 and is called with timestep = 1000 * s.
"""

from __future__ import annotations

import torch

Tensor = torch.Tensor

TIMESTEP_SCALE = 1000.0


def expand_sigma(sigma: Tensor | float, like: Tensor) -> Tensor:
    """Broadcast a per-sample sigma (B,) or scalar to the shape of `like` (B, C, F, H, W)."""
    sigma = torch.as_tensor(sigma, dtype=like.dtype, device=like.device)
    if sigma.ndim == 0:
        return sigma
    return sigma.reshape(-1, *([1] * (like.ndim - 1)))


def add_noise(x0: Tensor, eps: Tensor, sigma: Tensor | float) -> Tensor:
    """x_t = (1 - s) x0 + s eps."""
    s = expand_sigma(sigma, x0)
    return (1 - s) * x0 + s * eps


def velocity_target(x0: Tensor, eps: Tensor) -> Tensor:
    """The flow-matching target v = eps - x0."""
    return eps - x0


def x0_from_velocity(x_t: Tensor, v: Tensor, sigma: Tensor | float) -> Tensor:
    """x0 = x_t - s v."""
    return x_t - expand_sigma(sigma, x_t) * v


def eps_from_velocity(x_t: Tensor, v: Tensor, sigma: Tensor | float) -> Tensor:
    """eps = x_t + (1 - s) v."""
    return x_t + (1 - expand_sigma(sigma, x_t)) * v


def velocity_from_x0(x_t: Tensor, x0: Tensor, sigma: Tensor | float) -> Tensor:
    """v = (x_t - x0) / s (undefined at s = 0)."""
    return (x_t - x0) / expand_sigma(sigma, x_t)


def score_from_velocity(x_t: Tensor, v: Tensor, sigma: Tensor | float) -> Tensor:
    """score(x_t) = -eps_hat / s = -(x_t + (1 - s) v) / s  (paper eq. 1 with mu = velocity)."""
    return -eps_from_velocity(x_t, v, sigma) / expand_sigma(sigma, x_t)


def shift_sigma(sigma: Tensor | float, shift: float) -> Tensor | float:
    """Timestep shift s' = k s / (1 + (k - 1) s); k = 1 is the identity."""
    return shift * sigma / (1 + (shift - 1) * sigma)


def model_timestep(sigma: Tensor) -> Tensor:
    """The float timestep the Wan transformer takes: 1000 * s, shape (B,)."""
    return sigma * TIMESTEP_SCALE


def euler_step(x: Tensor, v: Tensor, sigma: Tensor | float, sigma_next: Tensor | float) -> Tensor:
    """One Euler step of dx/ds = v from s to s_next: x_next = x + (s_next - s) v."""
    return x + (expand_sigma(sigma_next, x) - expand_sigma(sigma, x)) * v


def sigma_schedule(num_steps: int, shift: float = 1.0) -> Tensor:
    """Shifted sigmas for Euler sampling: num_steps + 1 values from 1 down to a terminal 0.

    Taken from diffusers' FlowMatchEulerDiscreteScheduler(shift=k).set_timesteps(n), the schedule
    Wan's pipelines use, so our Euler sampler and diffusers' agree step for step.
    """
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    from diffusers import FlowMatchEulerDiscreteScheduler

    sched = FlowMatchEulerDiscreteScheduler(shift=shift)
    sched.set_timesteps(num_steps)
    return sched.sigmas.float().cpu()
