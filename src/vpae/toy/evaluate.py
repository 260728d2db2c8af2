"""Sampling and oracle evaluation of teachers and generators on the toy world's held-out split."""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from vpae import flow
from vpae.backbones.base import Backbone
from vpae.sampling import euler_sample, few_step_sample, few_step_sigmas, initial_noise, phase_edges, teacher_sample
from vpae.toy.oracle import mode_report, oracle_report
from vpae.toy.world import AXIS_PHRASES, ToyBatch, axis_of


@dataclass(frozen=True)
class SamplerSpec:
    """A way to sample a model: `euler` (teacher baseline, `steps` Euler steps over shifted sigmas with CFG) or
    `few_step` (x0 prediction + re-noising over few_step_sigmas(steps, shift, schedule); 1 step = one-step) or
    `phased` (deterministic Euler over phase_edges(steps, shift, schedule): PCM's and DCM's sampler)."""
    name: str
    sampler: str
    steps: int
    guidance: float = 1.0
    shift: float = 1.0
    schedule: str = "trailing"


def sampler_from_spec(spec: str, cfg) -> tuple[Backbone, SamplerSpec]:
    """'PATH:SAMPLER:STEPS' (PATH a diffusers folder or builtin:toy; SAMPLER few_step or euler) -> the model in eval
    mode and its SamplerSpec (no CFG; the config's sigma shift when STEPS > 1), as the diagnostic scripts take them."""
    from vpae.models import load_wan_backbone, resolve_model_path
    parts = spec.rsplit(":", 2)
    if len(parts) != 3 or parts[1] not in ("few_step", "euler") or not parts[2].isdigit() or int(parts[2]) < 1:
        raise ValueError(f"sampler spec {spec!r} is not PATH:SAMPLER:STEPS with SAMPLER few_step or euler and STEPS >= 1 "
                         f"(e.g. outputs/demo/run/generator:few_step:1)")
    path, sampler, steps = parts[0], parts[1], int(parts[2])
    model = load_wan_backbone(resolve_model_path(path), torch.float32, cfg.model.text_len or cfg.data.text_tokens)
    return model.eval(), SamplerSpec(spec, sampler, steps, 1.0, cfg.sampling.shift if steps > 1 else 1.0)


def teacher_methods(steps: int = 50, guidance: float = 5.0, shift: float = 3.0, sampler: str = "euler") -> list[SamplerSpec]:
    """The teacher's multi-step baseline (config sampling.teacher_sampler: euler, or stochastic = x0 prediction
    + fresh noise over the same shifted sigmas), then 4 and 1 Euler steps without CFG."""
    nfe = 2 * steps if guidance != 1 else steps
    how = f"{steps} {'stochastic ' if sampler == 'stochastic' else ''}steps" + \
        (f" + CFG {guidance:g}" if guidance != 1 else "")
    first = SamplerSpec(f"teacher {nfe} NFE ({how})", "few_step" if sampler == "stochastic" else "euler", steps,
                        guidance, shift)
    return [first, SamplerSpec("teacher 4 NFE", "euler", 4, 1.0, shift),
            SamplerSpec("teacher 1 NFE", "euler", 1, 1.0, shift)]


def teacher_sweep(steps: int = 50, shift: float = 3.0, guidances=(1.0, 2.0, 3.0, 5.0)) -> list[SamplerSpec]:
    """The teacher's samplers compared when choosing its sampler: `steps` Euler steps at each CFG scale, the
    stochastic sampler over the same sigmas, then 4 and 1 Euler steps without CFG."""
    out = [SamplerSpec(f"teacher {steps} steps w={w:g} ({2 * steps if w != 1 else steps} NFE)", "euler", steps, w, shift)
           for w in guidances]
    out.append(SamplerSpec(f"teacher {steps} stochastic steps ({steps} NFE)", "few_step", steps, 1.0, shift))
    return out + [SamplerSpec("teacher 4 NFE", "euler", 4, 1.0, shift), SamplerSpec("teacher 1 NFE", "euler", 1, 1.0, shift)]


@torch.no_grad()
def generate(backbone: Backbone, data, batch: ToyBatch, spec: SamplerSpec, seed: int = 0,
             chunk: int = 32) -> tuple[torch.Tensor, int, float]:
    """Videos (B, 3, F, H, W) in [-1, 1] for a held-out batch, the NFE per video and seconds.
    Noise for video i depends only on (seed, i), so every sampler sees the same noise."""
    was_training = backbone.training
    backbone.eval()
    outs, nfe, t0 = [], 0, time.perf_counter()
    for start in range(0, len(batch), chunk):
        sub = ToyBatch(batch.video[start:start + chunk], batch.params[start:start + chunk],
                       batch.captions[start:start + chunk])
        x_data, cond = data.encode(sub)
        noise = torch.stack([initial_noise(x_data.shape[1:], seed * 100003 + start + i) for i in range(len(sub))]).to(x_data)
        if spec.sampler == "euler":
            r = teacher_sample(backbone, noise, cond, spec.steps, spec.guidance, spec.shift)
        elif spec.sampler == "phased":
            r = euler_sample(backbone, noise, cond, phase_edges(spec.steps, spec.shift, spec.schedule), spec.guidance)
        else:
            r = few_step_sample(backbone, noise, cond, few_step_sigmas(spec.steps, spec.shift, spec.schedule), spec.guidance,
                                seed)
        outs.append(data.codec.decode(r.x0).clamp(-1, 1).float().cpu())
        nfe = r.nfe
    backbone.train(was_training)
    return torch.cat(outs), nfe, time.perf_counter() - t0


def oracle_eval(backbone: Backbone, data, batch: ToyBatch, spec: SamplerSpec, seed: int = 0,
                mode_samples: int | None = None) -> tuple[dict, torch.Tensor]:
    """Sample the batch with `spec` and score it with the oracle: (report + nfe + sample_seconds, videos).
    In a multimodal world (captions silent on the speed) the batch is sampled `mode_samples` times (default
    MODE_SAMPLES; noise seeds seed, seed+1, ...) and the report adds mode_coverage / mode_diversity /
    mode_assigned (vpae.toy.oracle.mode_report); the other metrics and the returned videos are the first set's."""
    cfg = data.world.cfg
    k = (MODE_SAMPLES if mode_samples is None else mode_samples) if cfg.multimodal else 1
    videos, nfe, secs = generate(backbone, data, batch, spec, seed)
    rep = oracle_report(videos, batch.params, batch.first_frame, cfg)
    if k > 1:
        sets = [videos] + [generate(backbone, data, batch, spec, seed + j)[0] for j in range(1, k)]
        rep.update(mode_report(sets, batch.params, cfg))
    rep.update(nfe=nfe, sample_seconds=secs)
    return rep, videos


MODE_SAMPLES = 4
"""Samples per condition for the mode-coverage metrics (the data itself scores mode_diversity 0.875 at 4)."""


def ground_truth_report(data, batch: ToyBatch, mode_samples: int = MODE_SAMPLES, seed: int = 0) -> dict:
    """The oracle metrics of the world itself: the held-out videos, and for the mode metrics videos drawn
    with a random caption-consistent trajectory for each condition (the reference row of every table)."""
    import numpy as np

    from vpae.toy.world import caption_modes, render
    cfg = data.world.cfg
    rep = oracle_report(batch.video, batch.params, batch.first_frame, cfg)
    if cfg.multimodal:
        rng = np.random.default_rng(seed)
        sets = []
        for _ in range(mode_samples):
            sets.append(torch.stack([render(m[rng.integers(len(m))], cfg)
                                     for m in (caption_modes(p, cfg) for p in batch.params)]))
        rep.update(mode_report(sets, batch.params, cfg))
    return rep


def oracle_columns(rep: dict) -> dict:
    """An oracle_eval report as result-table columns ("oracle/<metric>"; counts and timings left out)."""
    return {f"oracle/{k}": v for k, v in rep.items() if k not in ("n", "nfe", "sample_seconds", "mode_samples")}


OPPOSITE_DIRECTION = {"left": "right", "right": "left", "up": "down", "down": "up"}


def opposite_direction_captions(batch: ToyBatch) -> list[str]:
    """The batch's captions with the motion direction replaced by its opposite (nothing else changes); an
    axis-only caption ("moves left or right") gets the other axis."""
    out = []
    for c, p in zip(batch.captions, batch.params):
        if not p.sign_stated:
            axis = axis_of(p.direction)
            other = next(a for a in AXIS_PHRASES if a != axis)
            out.append(c.replace(f"moves {AXIS_PHRASES[axis]}", f"moves {AXIS_PHRASES[other]}"))
            continue
        words = c.split(" ")
        words[words.index(p.direction)] = OPPOSITE_DIRECTION[p.direction]
        out.append(" ".join(words))
    return out


@torch.no_grad()
def direction_sensitivity(backbone: Backbone, data, batch: ToyBatch, sigmas=(0.97, 0.9, 0.7, 0.5),
                          seed: int = 0) -> dict[float, float]:
    """How much a model relies on the caption's direction word, per noise level sigma: the flow-matching
    loss with the opposite direction in the caption divided by the loss with the true caption (same
    videos, same noise). 1.0 means the direction word is ignored (motion can then only be guessed);
    a text-following teacher is clearly above 1 at high sigma, where the noisy input does not show the
    motion yet. This is the cheap check that a teacher learned text-conditioned motion."""
    was_training = backbone.training
    backbone.eval()
    x, cond = data.encode(batch)
    _, cond_opp = data.encode(ToyBatch(batch.video, batch.params, opposite_direction_captions(batch)))
    eps = initial_noise(x.shape, seed).to(x)
    out = {}
    for s in sigmas:
        sig = torch.full((x.shape[0],), float(s), device=x.device)
        x_t, target = flow.add_noise(x, eps, sig), flow.velocity_target(x, eps)
        loss_true = (backbone.velocity(x_t, sig, cond) - target).pow(2).mean()
        loss_opp = (backbone.velocity(x_t, sig, cond_opp) - target).pow(2).mean()
        out[float(s)] = float(loss_opp / loss_true)
    backbone.train(was_training)
    return out


def proxy_metrics(videos: torch.Tensor, batch: ToyBatch, k: int, ref_feats=None, ecfg=None) -> dict:
    """Offline-tier VBench-I2V proxy dimensions (+ aggregates) and the Frechet distance to the held-out real
    videos, on the first k videos (feature networks dominate CPU time). ref_feats: cached features of
    batch.video[:k]."""
    from vpae.eval import EvalConfig, evaluate_videos, fd_features, fd_scores
    ecfg = ecfg or EvalConfig(progress=False, niqe_max_frames=3)
    k = min(k, len(batch))
    ev = evaluate_videos(list(videos[:k]), list(batch.first_frame[:k]), ecfg)
    row = {f"proxy/{dim}": rec["value"] for dim, rec in ev["dimensions"].items() if rec.get("value") is not None}
    row.update({key: v for key, v in ev.get("aggregates", {}).items() if isinstance(v, (int, float))})
    if ref_feats is None:
        ref_feats = fd_features(list(batch.video[:k]), ecfg)
    row.update(fd_scores(fd_features(list(videos[:k]), ecfg), ref_feats))
    return row
