"""Samplers: the teacher's Euler + CFG baseline, one-step and few-step generation. Each counts NFE.

NFE = number of backbone evaluations on a batch (a CFG step with both branches counts 2, as in the paper:
50 steps with CFG = 100 NFE).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from vpae import flow
from vpae.backbones.base import Backbone
from vpae.conditioning import Conditioning

Tensor = torch.Tensor


@dataclass
class SampleResult:
    x0: Tensor   # (B, C, F, H, W) generated latents
    nfe: int     # backbone evaluations used


def initial_noise(shape: Sequence[int], seed: int, device="cpu", dtype=torch.float32) -> Tensor:
    """Deterministic start noise for a seed (generated on CPU so every device gets the same numbers)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float32).to(device=device, dtype=dtype)


def guided_velocity(backbone: Backbone, x: Tensor, sigma: Tensor, cond: Conditioning,
                    guidance: float) -> tuple[Tensor, int]:
    """Classifier-free guidance, standard convention: v = v_neg + w (v_pos - v_neg); w = 1 is unguided.

    The negative branch changes only the text (image tokens and the condition latent stay).
    Returns the velocity and the NFE it cost.
    """
    v = backbone.velocity(x, sigma, cond)
    if guidance == 1.0:
        return v, 1
    v_neg = backbone.velocity(x, sigma, cond.negative())
    return v_neg + guidance * (v - v_neg), 2


@torch.no_grad()
def euler_sample(backbone: Backbone, noise: Tensor, cond: Conditioning, sigmas: Sequence[float] | Tensor,
                 guidance: float = 1.0, progress: bool = False) -> SampleResult:
    """The teacher baseline: Euler over the given sigmas (decreasing, ending at 0) with CFG."""
    sigmas = torch.as_tensor(sigmas, dtype=torch.float32)
    if sigmas.ndim != 1 or len(sigmas) < 2:
        raise ValueError("sigmas must be a 1-D list of at least 2 values (start ... 0)")
    x, nfe = noise, 0
    b = noise.shape[0]
    steps = range(len(sigmas) - 1)
    if progress:
        from tqdm.auto import tqdm
        steps = tqdm(steps, desc="euler", leave=False)
    for i in steps:
        s, s_next = sigmas[i].item(), sigmas[i + 1].item()
        v, n = guided_velocity(backbone, x, torch.full((b,), s, device=x.device), cond, guidance)
        nfe += n
        x = flow.euler_step(x, v, s, s_next)
    return SampleResult(x, nfe)


def teacher_sample(backbone: Backbone, noise: Tensor, cond: Conditioning, steps: int = 50,
                   guidance: float = 5.0, shift: float = 3.0, progress: bool = False) -> SampleResult:
    """Euler over `steps` shifted sigmas with CFG (50 steps, w=5 -> 100 NFE, the paper's baseline)."""
    return euler_sample(backbone, noise, cond, flow.sigma_schedule(steps, shift), guidance, progress)


def predict_x0(backbone: Backbone, x_t: Tensor, sigma: Tensor | float, cond: Conditioning,
               guidance: float = 1.0) -> tuple[Tensor, int]:
    """x0 prediction from x_t at sigma (with optional CFG). Differentiable (no no_grad here)."""
    b = x_t.shape[0]
    sig = torch.as_tensor(sigma, dtype=torch.float32, device=x_t.device).reshape(-1).expand(b)
    v, n = guided_velocity(backbone, x_t, sig, cond, guidance)
    return flow.x0_from_velocity(x_t, v, sig), n


@torch.no_grad()
def few_step_sample(backbone: Backbone, noise: Tensor, cond: Conditioning, sigmas: Sequence[float],
                    guidance: float = 1.0, seed: int = 0) -> SampleResult:
    """x0-prediction sampling for distilled generators: predict x0 at sigmas[0] from the noise, re-noise
    to the next sigma with fresh noise, repeat (a trailing 0 is ignored). One sigma = one-step generation.
    """
    sig = [float(s) for s in sigmas if float(s) > 0]
    if not sig:
        raise ValueError("few-step sampling needs at least one sigma > 0")
    g = torch.Generator().manual_seed(seed + 1)
    x, nfe = noise, 0
    for i, s in enumerate(sig):
        x0, n = predict_x0(backbone, x, s, cond, guidance)
        nfe += n
        if i + 1 < len(sig):
            eps = torch.randn(x0.shape, generator=g, dtype=torch.float32).to(x0)
            x = flow.add_noise(x0, eps, sig[i + 1])
    return SampleResult(x0, nfe)


def one_step_sample(backbone: Backbone, noise: Tensor, cond: Conditioning, guidance: float = 1.0) -> SampleResult:
    """One-step generation from pure noise: x0 = z - v(z, 1)."""
    return few_step_sample(backbone, noise, cond, [1.0], guidance)


def few_step_sigmas(steps: int, shift: float = 1.0, schedule: str = "trailing") -> list[float]:
    """The sigmas of a few-step sampler (and of the few-step methods' training), one per step; steps=1 gives
    [1.0] for every schedule.
    trailing: 1, (n-1)/n, ..., 1/n, then shifted s -> k s / (1 + (k - 1) s): every step denoises (DMD2's and ADD's
    999/749/499/249 of 1000, FastVideo's [1000, 750, 500, 250]; at shift 5 FastGen's Wan [0.999, 0.937, 0.833,
    0.624]). linspace: diffusers' FlowMatchEulerDiscreteScheduler(shift).set_timesteps(n) without its trailing 0
    (1, 0.667, 0.334, 0.001 at n = 4: the last step is a near-identity), what a diffusers pipeline samples."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if schedule == "linspace":
        return flow.sigma_schedule(steps, shift)[:-1].tolist()
    if schedule != "trailing":
        raise ValueError(f"schedule must be trailing or linspace, got {schedule!r}")
    return [shift * u / (1.0 + (shift - 1.0) * u) for u in (1.0 - k / steps for k in range(steps))]


def phase_edges(phases: int, shift: float = 1.0, schedule: str = "trailing") -> list[float]:
    """The edges of a phased consistency model's phases (PCM, DCM): the few-step sigmas and a final 0."""
    return few_step_sigmas(phases, shift, schedule) + [0.0]
