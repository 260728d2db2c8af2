"""Latency benchmark: teacher 50 steps + CFG (100 NFE) vs teacher 4/1 steps vs student 1/4 steps.

All configurations run in one process and are timed the same way (`time_interleaved`): every timed
function gets the same warm-up calls first, then each of the `repeats` rounds times every function once,
in turn, so machine load, clocks and caches hit all configurations alike (equal work, equal time); the
median per function is reported. "diffusion" is the sampler alone; "total" adds start-noise creation,
the codec decode (if a codec is given) and the conversion to uint8 frames. CUDA is synchronised around
every timed region.

Model folders are loaded with `local_files_only=True`: a path that is not a local folder is an error,
never a hub download.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from vpae import sampling
from vpae.backbones.base import Backbone
from vpae.conditioning import Conditioning
from vpae.eval.video import EvalError

BASELINE_NFE = 100


def sync_device(device) -> None:
    """Wait for queued CUDA work on `device` (no-op on CPU), so wall-clock timings are real."""
    if torch.device(device).type == "cuda" and torch.cuda.is_available():
        torch.cuda.synchronize(device)


def time_interleaved(fns: Sequence[tuple[str, Callable[[], Any]]], device, warmup: int,
                     repeats: int) -> tuple[dict[str, list[float]], dict[str, Any]]:
    """Time every (name, fn) the same way: `warmup` untimed calls of each (in order), then `repeats`
    rounds, each timing every fn once in order (interleaved). Returns ({name: [seconds per round]},
    {name: last output})."""
    if repeats < 1:
        raise EvalError(f"repeats must be >= 1, got {repeats}")
    if warmup < 0:
        raise EvalError(f"warmup must be >= 0, got {warmup}")
    outs: dict[str, Any] = {}
    for _ in range(warmup):
        for name, fn in fns:
            outs[name] = fn()
    sync_device(device)
    times: dict[str, list[float]] = {name: [] for name, _ in fns}
    for _ in range(repeats):
        for name, fn in fns:
            sync_device(device)
            t0 = time.perf_counter()
            outs[name] = fn()
            sync_device(device)
            times[name].append(time.perf_counter() - t0)
    return times, outs


@torch.no_grad()
def bench_latency(teacher: Backbone, cond: Conditioning, latent_shape: Sequence[int], *,
                  student: Backbone | None = None, codec: Any = None, teacher_steps: int = 50,
                  guidance: float = 5.0, shift: float = 3.0, few_steps: Sequence[int] = (4, 1),
                  student_steps: Sequence[int] = (1, 4), student_shift: float = 1.0, student_schedule: str = "trailing",
                  few_step_guidance: float | None = None, warmup: int = 1, repeats: int = 3,
                  device=None, seed: int = 0) -> dict[str, Any]:
    """Time generation configurations; returns {"rows": [...], "baseline": name, "device": ..., ...}.

    teacher/student: Backbones (already on `device`); cond: Conditioning for a batch (latent_shape[0]
    must equal its batch size); latent_shape: (B, C, F, H, W). codec: optional object with
    `decode(latents) -> video (B, 3, F, H, W) in [-1, 1]`, timed as part of the total.
    Rows: teacher_{teacher_steps}step_cfg (guidance, the 100-NFE baseline), teacher_{k}step for k in
    few_steps (Euler with `few_step_guidance`, default = guidance, so CFG doubles NFE), and
    student_{k}step for k in student_steps (x0-prediction sampler, unguided).
    Timing: `time_interleaved` over every configuration's diffusion and total functions (same warm-up for
    each, then interleaved rounds), so identical configurations get the same time up to noise.
    Each row: nfe, diffusion_s / total_s (medians) and all repeats, speedup (baseline diffusion / row
    diffusion), total_speedup, nfe_ratio (baseline NFE / NFE), and speedup_vs_nfe_ratio (how close the
    measured diffusion speedup comes to the NFE ratio; 1.0 = perfectly proportional).
    """
    device = torch.device(device) if device is not None else next(teacher.parameters()).device
    shape = tuple(latent_shape)
    if shape[0] != cond.batch_size:
        raise ValueError(f"latent batch {shape[0]} != conditioning batch {cond.batch_size}")
    cond = cond.to(device)
    fg = guidance if few_step_guidance is None else few_step_guidance
    configs: list[tuple[str, Callable[[torch.Tensor], sampling.SampleResult]]] = [
        (f"teacher_{teacher_steps}step_cfg",
         lambda z: sampling.teacher_sample(teacher, z, cond, teacher_steps, guidance, shift))]
    for k in few_steps:
        configs.append((f"teacher_{k}step", lambda z, k=k: sampling.teacher_sample(teacher, z, cond, k, fg, shift)))
    if student is not None:
        for k in student_steps:
            sig = sampling.few_step_sigmas(k, student_shift, student_schedule)
            configs.append((f"student_{k}step", lambda z, s=sig: sampling.few_step_sample(student, z, cond, s, 1.0, seed)))

    noise = sampling.initial_noise(shape, seed, device)

    def whole(fn):
        z = sampling.initial_noise(shape, seed, device)
        x0 = fn(z).x0
        video = codec.decode(x0) if codec is not None else x0
        return ((video.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu()

    # Timed functions keyed by position, so configurations with equal names stay apart.
    fns: list[tuple[str, Callable[[], Any]]] = []
    for i, (_, fn) in enumerate(configs):
        fns.append((f"{i}/diffusion", lambda fn=fn: fn(noise)))
        fns.append((f"{i}/total", lambda fn=fn: whole(fn)))
    times, outs = time_interleaved(fns, device, warmup, repeats)
    rows = []
    for i, (name, _) in enumerate(configs):
        d_times, t_times = times[f"{i}/diffusion"], times[f"{i}/total"]
        rows.append({"name": name, "nfe": int(outs[f"{i}/diffusion"].nfe), "diffusion_s": statistics.median(d_times),
                     "total_s": statistics.median(t_times), "diffusion_runs_s": d_times, "total_runs_s": t_times})
    base = rows[0]
    for r in rows:
        r["speedup"] = base["diffusion_s"] / r["diffusion_s"]
        r["total_speedup"] = base["total_s"] / r["total_s"]
        r["nfe_ratio"] = base["nfe"] / r["nfe"]
        r["speedup_vs_nfe_ratio"] = r["speedup"] / r["nfe_ratio"]
    return {"rows": rows, "baseline": base["name"], "baseline_nfe": base["nfe"], "device": str(device),
            "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "latent_shape": list(shape), "warmup": warmup, "repeats": repeats,
            "codec": type(codec).__name__ if codec else None,
            "torch": torch.__version__}


def latency_markdown(res: dict[str, Any]) -> str:
    lines = [f"Device: {res['device_name']} ({res['device']}), latent {res['latent_shape']}, "
             f"median of {res['repeats']} after {res['warmup']} warm-up", "",
             "| config | NFE | diffusion s | total s | speedup | NFE ratio | speedup / NFE ratio |",
             "|---|---|---|---|---|---|---|"]
    for r in res["rows"]:
        lines.append(f"| {r['name']} | {r['nfe']} | {r['diffusion_s']:.4f} | {r['total_s']:.4f} | "
                     f"{r['speedup']:.2f}x | {r['nfe_ratio']:.1f}x | {r['speedup_vs_nfe_ratio']:.2f} |")
    return "\n".join(lines)


def random_condition(backbone, latent_shape: Sequence[int], seed: int = 0, text_len: int = 8,
                     image_tokens: int = 257) -> Conditioning:
    """Random conditioning shaped for a WanBackbone's config (timing does not depend on content)."""
    from vpae.conditioning import first_frame_condition
    cfg = backbone.model.config
    b, c, f, h, w = latent_shape
    g = torch.Generator().manual_seed(seed)
    text = torch.randn(b, text_len, cfg.text_dim, generator=g)
    if cfg.image_dim is None:
        return Conditioning(text=text)
    image = torch.randn(b, image_tokens, cfg.image_dim, generator=g)
    cl, cm = first_frame_condition(torch.randn(b, c, 1, h, w, generator=g), f, backbone.mask_channels)
    return Conditioning(text=text, image=image, cond_latent=cl, cond_mask=cm)


def tiny_setup(frames: int = 5, height: int = 16, width: int = 16, batch: int = 1, seed: int = 0,
               device="cpu", student: bool = True):
    """A tiny random I2V Wan teacher (+ student copy) and matching conditioning, built offline; latent
    frames/height/width are latent sizes. For smoke tests and the CLI's default mode."""
    from vpae.backbones.wan import WanBackbone, tiny_wan_config
    torch.manual_seed(seed)
    cfg = tiny_wan_config()
    t = WanBackbone.from_config(cfg).to(device).eval()
    s = WanBackbone.from_config(cfg).to(device).eval() if student else None
    shape = (batch, cfg["out_channels"], frames, height, width)
    return t, s, random_condition(t, shape, seed, image_tokens=4).to(device), shape


def load_wan_transformer(path, dtype: torch.dtype, what: str = "model"):
    """A diffusers WanTransformer3DModel from a LOCAL folder (local_files_only=True: never the hub);
    raises EvalError naming the path when it is not a local folder."""
    p = Path(path).expanduser()
    if not p.is_dir():
        raise EvalError(f"--{what} {path}: not found as a local folder; it must be a local diffusers "
                        f"WanTransformer3DModel folder (hub names are not downloaded)")
    from diffusers import WanTransformer3DModel
    return WanTransformer3DModel.from_pretrained(str(p), torch_dtype=dtype, local_files_only=True)
