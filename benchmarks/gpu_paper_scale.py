"""One GPU, a few minutes: a random Wan2.1-T2V-1.3B-shaped model at a 480p latent (16 x 21 x 60 x 104 = 32,760
tokens), trained through vpae.recipes.run_distill: phase I and phase II (unified = EMA discriminator backbone, and
equilibrium.backbone trained), step time and peak GPU memory of each, then 1-NFE vs 50-step CFG (100-NFE) latency.

    .venv/bin/python benchmarks/gpu_paper_scale.py --out outputs/benchmarks/gpu_paper_scale   # CUDA
    .venv/bin/python benchmarks/gpu_paper_scale.py --tiny --out /tmp/gps                      # CPU, tiny: a test

Config: configs/wan/t2v_1_3b.yaml with overrides: model.teacher "" and model.wan_config = Wan2.1-T2V-1.3B's
transformer config (30 layers, 12 heads x 128, FFN 8960, text 4096, in = out = 16; random weights), data.kind
cache over a cache of random latents and text written here with vpae.data.cache.CacheWriter (speed and memory do
not depend on the values), batch 1, --steps steps per phase, train.log_every 1 (the step times are the loop's
time/step_s of each logged step; the first step of each phase is left out as warm-up).

Precision: fp32 master weights (model.dtype float32) with bf16 compute. One process does not shard, so
parallel.param_dtype (FSDP2's MixedPrecisionPolicy) and model.frozen_dtype (applied when sharding) do not act;
the script runs everything inside torch.autocast(bfloat16) instead: matmuls and attention in bf16, weights,
gradients and Adam states in fp32 (the frozen teacher and the EMA too, unlike under torchrun with frozen_dtype
bfloat16). cp 1 (one GPU).

Peak memory: torch.cuda.max_memory_allocated() after reset_peak_memory_stats() around each run_distill call,
minus the bytes allocated before it: the phase's networks, optimizer states, activations and its checkpoint
save (0 on CPU: not measured there). Step time: the training loop reads gradient norms back to the host inside
each step, so a step's GPU work is waited for except the tail of its optimizer step, which falls into the next
step's time. Phase I runs in one run folder; phase II (unified) continues there from phase I's checkpoint; phase II
(trained) runs in a second folder whose priming/ links to the first's. Writes OUT/gpu_paper_scale.json and
OUT/gpu_paper_scale.md.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import math
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from reporting import ROOT, command_line, machine_info, md_table  # noqa: E402

WAN_1_3B = dict(patch_size=[1, 2, 2], num_attention_heads=12, attention_head_dim=128, in_channels=16,
                out_channels=16, text_dim=4096, freq_dim=256, ffn_dim=8960, num_layers=30, cross_attn_norm=True,
                qk_norm="rms_norm_across_heads", eps=1e-6, image_dim=None, added_kv_proj_dim=None,
                rope_max_seq_len=1024)
TINY = {**WAN_1_3B, "num_attention_heads": 2, "attention_head_dim": 16, "ffn_dim": 64, "num_layers": 2,
        "text_dim": 32}


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true", help="tiny model and latent on CPU (tests the code path)")
    p.add_argument("--device", default="", help="default cuda (cpu with --tiny)")
    p.add_argument("--latent", type=int, nargs=3, default=[21, 60, 104], help="latent frames, height, width")
    p.add_argument("--steps", type=int, default=3, help="steps per phase (the first is warm-up)")
    p.add_argument("--fake-updates", type=int, default=0, help="priming.fake_updates_per_generator (0: the config's)")
    p.add_argument("--teacher-steps", type=int, default=50, help="Euler steps of the CFG baseline (x2 NFE)")
    p.add_argument("--config", default=str(ROOT / "configs/wan/t2v_1_3b.yaml"))
    p.add_argument("--out", required=True, help="folder for gpu_paper_scale.json and .md")
    p.add_argument("--keep-runs", action="store_true", help="keep the run folders (checkpoints) under OUT/runs")
    args = p.parse_args(argv)
    if args.tiny:
        args.device = args.device or "cpu"
        args.latent = [3, 8, 8]
        args.teacher_steps = min(args.teacher_steps, 2)
    args.device = args.device or "cuda"
    args.steps = max(2, args.steps)
    return args


def text_shape(args) -> tuple[int, int]:
    return (16, TINY["text_dim"]) if args.tiny else (512, WAN_1_3B["text_dim"])


def write_cache(args, root: Path, items: int = 2) -> None:
    """Random latents and text in the cache format (a T2V cache: no image, no condition latent)."""
    from vpae.conditioning import Conditioning
    from vpae.data.cache import CacheWriter
    from vpae.data.source import ConditionSizes
    f, h, w = args.latent
    L, D = text_shape(args)
    g = torch.Generator().manual_seed(0)
    writer = CacheWriter(root, ConditionSizes(latent_channels=16, mask_channels=0, text_dim=D, text_len=L,
                                              image_dim=None))
    text = torch.randn(items, L, D, generator=g)
    cond = Conditioning(text=text, negative_text=torch.zeros(items, L, D))
    writer.add(torch.randn(items, 16, f, h, w, generator=g), cond, torch.full((items,), L))
    writer.flush()


def make_cfg(args, cache: Path, backbone: str):
    from vpae.config import load_config
    wan = TINY if args.tiny else WAN_1_3B
    ov = ["model.teacher=''", f"model.text_len={text_shape(args)[0]}",
          "model.dtype=float32", "data.kind=cache", f"data.cache_dir={cache}", f"train.device={args.device}",
          "train.log_every=1", f"train.checkpoint_every={args.steps}", "train.keep_checkpoints=1",
          "priming.batch_size=1", "equilibrium.batch_size=1", f"priming.steps={args.steps}",
          f"equilibrium.steps={args.steps}", f"equilibrium.backbone={backbone}",
          f"sampling.teacher_steps={args.teacher_steps}"]
    if args.fake_updates:
        ov.append(f"priming.fake_updates_per_generator={args.fake_updates}")
    cfg = load_config(args.config, ov)
    cfg.model.wan_config = dict(wan)  # set on the object: YAML reads an override's 1e-06 as a string
    return cfg


def bf16_compute(args):
    kind = "cuda" if args.device.startswith("cuda") else "cpu"
    return torch.autocast(kind, dtype=torch.bfloat16)


class Meter:
    def __init__(self, args):
        self.cuda = args.device.startswith("cuda")

    def __enter__(self):
        gc.collect()
        if self.cuda:
            torch.cuda.empty_cache()
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        if self.cuda:
            torch.cuda.synchronize()
        self.seconds = time.perf_counter() - self.t0
        self.peak = torch.cuda.max_memory_allocated() - self.base if self.cuda else 0
        return False


def step_times(log: Path) -> list[float]:
    return [json.loads(line)["time/step_s"] for line in log.read_text().splitlines() if line.strip()]


def run_phase(args, cfg, run_dir: Path, phase: str) -> tuple[dict, dict]:
    from vpae.recipes import run_distill
    with Meter(args) as m, bf16_compute(args):
        out = run_distill(cfg, run_dir, phase=phase, progress=False)
    times = step_times(run_dir / phase / "log.jsonl")
    params = sum(p.numel() for p in out["networks"].generator.parameters())
    res = {"phase": phase, "backbone": cfg.equilibrium.backbone, "steps": len(times), "step_s": times,
           "median_step_s": statistics.median(times[1:]), "call_s": m.seconds, "peak_bytes": m.peak,
           "peak_gib": m.peak / 2 ** 30, "generator_params": params}
    return res, out


def sync(args):
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()


def latency(args, out: dict, repeats: int = 3) -> dict:
    from vpae.sampling import initial_noise, one_step_sample, teacher_sample
    generator, teacher = out["generator"], out["teacher"]
    x, cond = out["data"].batch_fn(1, 0)(0)
    noise = initial_noise(x.shape, 0, args.device)
    with torch.no_grad(), bf16_compute(args):
        one_step_sample(generator, noise, cond)  # warm-up
        one = []
        for _ in range(repeats):
            sync(args)
            t = time.perf_counter()
            r1 = one_step_sample(generator, noise, cond)
            sync(args)
            one.append(time.perf_counter() - t)
        sync(args)
        t = time.perf_counter()
        rt = teacher_sample(teacher, noise, cond, steps=args.teacher_steps, guidance=5.0, shift=3.0)
        sync(args)
        teach = time.perf_counter() - t
    return {"one_step_nfe": r1.nfe, "one_step_s": one, "one_step_median_s": statistics.median(one),
            "teacher_nfe": rt.nfe, "teacher_steps": args.teacher_steps, "teacher_s": teach,
            "speedup": teach / statistics.median(one)}


def main(argv=None):
    args = parse(argv)
    if args.device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise SystemExit("no CUDA device: run with --tiny (CPU) or on a GPU machine")
        torch.backends.cuda.matmul.allow_tf32 = True
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    work = out_dir / "runs" if args.keep_runs else Path(tempfile.mkdtemp(prefix="gpu_paper_scale_"))
    t_all = time.perf_counter()
    results: dict = {}
    try:
        write_cache(args, work / "cache")
        run_a, run_b = work / "run_unified", work / "run_trained"
        cfg = make_cfg(args, work / "cache", "unified")
        results["phase1"], out = run_phase(args, cfg, run_a, "priming")
        del out
        results["phase2_unified"], out = run_phase(args, cfg, run_a, "equilibrium")
        results["latency"] = latency(args, out)
        del out
        run_b.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileExistsError):
            (run_b / "priming").symlink_to((run_a / "priming").resolve(), target_is_directory=True)
        results["phase2_trained"], out = run_phase(args, make_cfg(args, work / "cache", "trained"), run_b,
                                                   "equilibrium")
        del out
    finally:
        if not args.keep_runs:
            shutil.rmtree(work, ignore_errors=True)
    wall = time.perf_counter() - t_all
    info = machine_info(argparse.Namespace(device="cuda" if args.device.startswith("cuda") else "cpu"))
    if args.device.startswith("cuda"):
        info["gpu_total_gib"] = torch.cuda.get_device_properties(0).total_memory / 2 ** 30
    f, h, w = args.latent
    tokens = f * (h // 2) * (w // 2)
    u, tr = results["phase2_unified"], results["phase2_trained"]
    results["trained_over_unified"] = {"step_time": tr["median_step_s"] / u["median_step_s"],
                                       "peak_memory": tr["peak_bytes"] / u["peak_bytes"] if u["peak_bytes"] else 0.0}
    rows = [[k, r["backbone"] if k != "phase1" else "", f"{r['median_step_s']:.3f}",
             " ".join(f"{t:.3f}" for t in r["step_s"]), f"{r['peak_gib']:.2f}", f"{r['call_s']:.1f}"]
            for k, r in results.items() if k.startswith("phase")]
    lat = results["latency"]
    name = "Wan2.1-T2V-1.3B-shaped" if not args.tiny else "TINY (code-path test, not a measurement)"
    report = "\n".join([
        f"# {name}: run_distill phase step time, peak memory, 1-NFE vs {lat['teacher_nfe']}-NFE\n",
        f"`{command_line()}`\n",
        f"Device {args.device} ({info.get('gpu', 'CPU')}), torch {info['torch']}. Generator "
        f"{results['phase1']['generator_params']:,} params; fp32 weights and Adam, bf16 autocast compute; gradient "
        f"checkpointing on; batch 1; latent 16x{f}x{h}x{w} ({tokens:,} tokens); cp 1. Whole run {wall:.0f} s.\n",
        md_table(["run", "disc. backbone", "step s (median, after warm-up)", "raw step s", "peak GiB",
                  "run_distill call s (build, steps, checkpoint, export)"], rows),
        f"\ntrained / unified: step time {results['trained_over_unified']['step_time']:.2f}x, peak memory "
        f"{results['trained_over_unified']['peak_memory']:.2f}x.\n",
        f"Latency (no VAE decode): 1 NFE {lat['one_step_median_s']:.3f} s; teacher {lat['teacher_nfe']} NFE "
        f"({lat['teacher_steps']} Euler steps, CFG 5) {lat['teacher_s']:.2f} s; speed-up {lat['speedup']:.0f}x.\n"])
    print(report)
    doc = {"command": command_line(), "args": vars(args), "machine": info, "tokens": tokens, "wall_s": wall,
           "precision": "fp32 weights/grads/Adam, torch.autocast bf16 compute (one process: no FSDP2 policy)",
           "results": results, "report_markdown": report}
    bad = [k for k, v in flatten(results).items() if not math.isfinite(v)]
    if bad:
        raise SystemExit(f"non-finite results: {bad}")
    (out_dir / "gpu_paper_scale.json").write_text(json.dumps(doc, indent=1))
    (out_dir / "gpu_paper_scale.md").write_text(report)
    print(f"wrote {out_dir / 'gpu_paper_scale.json'}")


def flatten(d, prefix="") -> dict[str, float]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            out[f"{prefix}{k}"] = float(v)
        elif isinstance(v, list):
            out.update({f"{prefix}{k}[{i}]": float(x) for i, x in enumerate(v)})
    return out


if __name__ == "__main__":
    main()
