"""Shared pieces of the benchmark scripts: the model/data setup, interleaved timing, peak-memory
measurement in fresh subprocesses, tensor-byte accounting, and the 14B scale notes.

Memory method (see benchmarks/README.md):
  cuda  torch.cuda.max_memory_allocated() after torch.cuda.reset_peak_memory_stats(), minus the allocated
        bytes before the variant was built: every tensor the variant owns (weights, grads, optimizer
        states, activations) at its peak.
  cpu   each variant runs in a fresh subprocess. Peak = the process's resident-set high-water mark
        (VmHWM, /proc/self/status) during the measured steps minus the RSS right after the imports (before
        any model is built). The high-water mark is reset just before the measured steps by writing "5" to
        /proc/self/clear_refs (Linux >= 4.0), so one-time build transients do not count; where that file is
        not writable the script falls back to getrusage(RUSAGE_SELF).ru_maxrss (the peak since process start).
        RSS also holds allocator-cached free pages, so CPU peaks are an upper bound of the live tensor bytes.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Callable

import torch

ROOT = Path(__file__).resolve().parents[1]
OUT_DIR = ROOT / "outputs" / "benchmarks"
RESULT_TAG = "@@RESULT "

# Toy-world data shapes (configs/toy/teacher.yaml, identity codec, MiniLM text, 8x8 patch image tokens).
LATENT_C, MASK_C = 3, 1
TEXT_DIM, TEXT_TOKENS = 384, 24
IMAGE_DIM, IMAGE_PATCH = 192, 8

MIB = 2 ** 20
GIB = 2 ** 30


# ----------------------------------------------------------------------------------------------
# Arguments and configuration

def add_model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model and data (defaults: configs/toy/teacher.yaml's Wan architecture)")
    g.add_argument("--layers", type=int, default=4, help="Wan blocks")
    g.add_argument("--dim", type=int, default=128, help="hidden width = heads x head_dim")
    g.add_argument("--head-dim", type=int, default=32)
    g.add_argument("--ffn", type=int, default=0, help="FFN width (0: 4 x dim)")
    g.add_argument("--patch", type=int, default=4, help="spatial patch size (temporal 1)")
    g.add_argument("--batch", type=int, default=2)
    g.add_argument("--frames", type=int, default=9, help="latent frames (4n+1)")
    g.add_argument("--size", type=int, default=32, help="latent height = width")
    g.add_argument("--lora-rank", type=int, default=64, help="fake-score LoRA rank (PrimingConfig default 64)")
    g.add_argument("--generator-mode", default="full", choices=("full", "lora"))
    g.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    r = p.add_argument_group("run")
    r.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=("cpu", "cuda"))
    r.add_argument("--repeats", type=int, default=3, help="timed steps per variant (interleaved)")
    r.add_argument("--warmup", type=int, default=1, help="untimed steps per variant first")
    r.add_argument("--mem-steps", type=int, default=1, help="measured steps per variant in the memory subprocess")
    r.add_argument("--threads", type=int, default=1, help="torch intra-op threads (CPU)")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--no-memory", action="store_true", help="skip the per-variant memory subprocesses")
    r.add_argument("--out", default="", help="JSON path (default outputs/benchmarks/<script>.json)")
    r.add_argument("--child", default="", help=argparse.SUPPRESS)


def setup_torch(args) -> None:
    torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda but torch.cuda.is_available() is False")


def wan_config(args) -> dict:
    if args.dim % args.head_dim:
        raise SystemExit(f"--dim {args.dim} is not a multiple of --head-dim {args.head_dim}")
    heads = args.dim // args.head_dim
    return dict(patch_size=(1, args.patch, args.patch), num_attention_heads=heads, attention_head_dim=args.head_dim,
                in_channels=LATENT_C + MASK_C + LATENT_C, out_channels=LATENT_C, text_dim=TEXT_DIM, freq_dim=256,
                ffn_dim=args.ffn or 4 * args.dim, num_layers=args.layers, cross_attn_norm=True,
                qk_norm="rms_norm_across_heads", eps=1e-6, image_dim=IMAGE_DIM, added_kv_proj_dim=args.dim,
                rope_max_seq_len=1024)


def make_cfg(args, priming: dict | None = None, equilibrium: dict | None = None):
    from vpae.config import (DataConfig, EquilibriumConfig, ModelConfig, PretrainConfig, PrimingConfig,
                             TrainConfig, VPAEConfig)
    return VPAEConfig(
        model=ModelConfig(wan_config=wan_config(args), text_len=TEXT_TOKENS, dtype=args.dtype),
        data=DataConfig(frames=args.frames, height=args.size, width=args.size, text_tokens=TEXT_TOKENS),
        pretrain=PretrainConfig(batch_size=args.batch),
        priming=PrimingConfig(batch_size=args.batch, lora_rank=args.lora_rank, lora_alpha=args.lora_rank,
                              generator_mode=args.generator_mode, **(priming or {})),
        equilibrium=EquilibriumConfig(batch_size=args.batch, **(equilibrium or {})),
        train=TrainConfig(device=args.device, seed=args.seed),
    )


def data_stub():
    """What build_roles reads off the data source: the text and image token widths (its ConditionSizes)."""
    return SimpleNamespace(sizes=SimpleNamespace(text_dim=TEXT_DIM, image_dim=IMAGE_DIM))


def make_batch(args, seed: int = 1):
    """Random clean latents and I2V Conditioning of the toy world's shapes (timing does not depend on values)."""
    from vpae.conditioning import Conditioning, first_frame_condition
    g = torch.Generator().manual_seed(seed)
    b, f, s = args.batch, args.frames, args.size
    x = torch.randn(b, LATENT_C, f, s, s, generator=g)
    text = torch.randn(b, TEXT_TOKENS, TEXT_DIM, generator=g)
    n_img = max(1, (s // IMAGE_PATCH) ** 2)
    image = torch.randn(b, n_img, IMAGE_DIM, generator=g)
    cond_latent, cond_mask = first_frame_condition(x[:, :, :1], f, MASK_C)
    cond = Conditioning(text=text, negative_text=torch.zeros_like(text), image=image,
                        cond_latent=cond_latent, cond_mask=cond_mask)
    return x.to(args.device), cond.to(args.device)


def replace_cfg(cfg, section: str, **kw):
    return dataclasses.replace(cfg, **{section: dataclasses.replace(getattr(cfg, section), **kw)})


# ----------------------------------------------------------------------------------------------
# A benchmark variant: something to step, plus what it owns (for byte accounting).

@dataclasses.dataclass
class Variant:
    name: str
    step: Callable[[int], object]       # step(i) runs one optimisation step
    modules: dict                        # role name -> nn.Module
    optimizers: dict                     # name -> torch.optim.Optimizer
    counter: int = 0

    def __call__(self):
        self.step(self.counter)
        self.counter += 1


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def interleaved_timing(variants: list[Variant], repeats: int, warmup: int, device: str) -> dict[str, list[float]]:
    """Step every variant in turn, `warmup + repeats` rounds; the variant order rotates each round so no
    variant always runs first (or right after the same neighbour). Returns seconds of the timed rounds."""
    times = {v.name: [] for v in variants}
    n = len(variants)
    for r in range(warmup + repeats):
        for j in range(n):
            v = variants[(j + r) % n]
            sync(device)
            t0 = time.perf_counter()
            v()
            sync(device)
            dt = time.perf_counter() - t0
            if r >= warmup:
                times[v.name].append(dt)
    return times


def median(xs):
    return statistics.median(xs) if xs else float("nan")


# ----------------------------------------------------------------------------------------------
# Byte accounting

def tensor_bytes(modules: dict, optimizers: dict) -> dict:
    """Bytes of parameters (unique storage), their gradients (one per optimised parameter: what backward
    allocates for it) and optimizer states, summed over the variant's roles. "Optimised" = held by one of
    the variant's optimizers (a requires_grad tensor no optimizer steps, e.g. the fake LoRA in phase II,
    gets no gradient and is counted as a weight only)."""
    optimised = {p.data_ptr() for o in optimizers.values() for g in o.param_groups for p in g["params"]}
    seen, weights, grads, n_params, n_train = set(), 0, 0, 0, 0
    for m in modules.values():
        for p in m.parameters():
            if p.data_ptr() in seen:
                continue
            seen.add(p.data_ptr())
            nb = p.numel() * p.element_size()
            weights += nb
            n_params += p.numel()
            if p.data_ptr() in optimised:
                grads += nb
                n_train += p.numel()
    opt = 0
    for o in optimizers.values():
        for st in o.state.values():
            for t in st.values():
                if torch.is_tensor(t):
                    opt += t.numel() * t.element_size()
    return {"weights": weights, "grads": grads, "optimizer": opt, "total": weights + grads + opt,
            "params": n_params, "optimised_params": n_train}


# The project's own parameter counter (trainable_only=True counts what an optimizer would update).
from vpae.training.roles import count_parameters as count_params  # noqa: E402


def lora_param_count(model, rank: int, targets) -> int:
    """Parameters peft's LoRA adds: rank x (in + out) for every Linear whose name ends with a target
    (peft's list-of-names matching). Works on a meta-device model."""
    n = 0
    for name, m in model.named_modules():
        if isinstance(m, torch.nn.Linear) and any(name == t or name.endswith("." + t) for t in targets):
            n += rank * (m.in_features + m.out_features)
    return n


# ----------------------------------------------------------------------------------------------
# Peak memory in a fresh subprocess

def proc_status_kb(key: str) -> int:
    m = re.search(rf"^{key}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M)
    return int(m.group(1)) if m else 0


def reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class PeakMeter:
    """begin() before the variant is built (after imports); arm() after warm-up; peak() after the steps."""

    def __init__(self, device: str):
        self.device = device

    def begin(self):
        if self.device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        else:
            self.base = proc_status_kb("VmRSS") * 1024

    def arm(self):
        if self.device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.method = "cuda.max_memory_allocated"
        else:
            self.method = "VmHWM (clear_refs reset)" if reset_hwm() else "ru_maxrss (since process start)"
        self.armed_at = self.current()

    def current(self) -> int:
        if self.device == "cuda":
            return torch.cuda.memory_allocated() - self.base
        return proc_status_kb("VmRSS") * 1024 - self.base

    def peak(self) -> int:
        if self.device == "cuda":
            torch.cuda.synchronize()
            return torch.cuda.max_memory_allocated() - self.base
        if self.method.startswith("VmHWM"):
            return proc_status_kb("VmHWM") * 1024 - self.base
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - self.base


def measure_in_child(args, build: Callable[[], Variant]) -> dict:
    """Run inside the child: build the variant, warm it up, then measure the peak of `mem_steps` steps."""
    meter = PeakMeter(args.device)
    meter.begin()
    v = build()
    after_build = meter.current()
    for _ in range(max(1, args.warmup)):  # the first step allocates the optimizer states
        v()
    sync(args.device)
    meter.arm()
    t0 = time.perf_counter()
    for _ in range(args.mem_steps):
        v()
    sync(args.device)
    seconds = (time.perf_counter() - t0) / args.mem_steps
    return {"variant": v.name, "peak_bytes": meter.peak(), "after_build_bytes": after_build,
            "before_steps_bytes": meter.armed_at, "method": meter.method, "step_seconds": seconds,
            "tensors": tensor_bytes(v.modules, v.optimizers)}


PRELOAD = ["torch", "diffusers", "peft", "peft.tuners.lora", "vpae.recipes", "vpae.training.steps", "common"]


def _warm_runtime(args) -> None:
    """One tiny forward/backward/Adam step on a throwaway model, so the lazily loaded torch/diffusers/peft
    code and libraries are resident before the baseline is taken."""
    from diffusers import WanTransformer3DModel
    from vpae.backbones.wan import WanBackbone
    from vpae.training import roles as R
    tiny = argparse.Namespace(**{**vars(args), "layers": 1, "dim": args.head_dim, "ffn": 8, "batch": 1,
                                 "frames": 1, "size": 2 * args.patch})
    bb = WanBackbone(WanTransformer3DModel(**wan_config(tiny)), TEXT_TOKENS).to(args.device)
    R.add_lora(bb, "warm", 2, 2, ("to_q",))
    bb.requires_grad_(True)
    opt = torch.optim.Adam(bb.parameters())
    x, cond = make_batch(tiny)
    bb.velocity(x, torch.rand(1, device=args.device), cond).pow(2).mean().backward()
    opt.step()
    del bb, opt


def _child_entry(script_path: str, argv: list[str], name: str, conn) -> None:
    import importlib.util
    try:
        spec = importlib.util.spec_from_file_location("_bench_script", script_path)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        args = mod.parse(argv)
        setup_torch(args)
        _warm_runtime(args)
        res = measure_in_child(args, mod.builders(args)[name])
        conn.send(("ok", res))
    except BaseException as e:  # report, do not hang the parent
        import traceback
        conn.send(("error", f"{type(e).__name__}: {e}\n{traceback.format_exc()}"))
    finally:
        conn.close()


def start(argv, parse, make_builders):
    """The shared start of a benchmark's main(): parse argv (default sys.argv[1:]), set torch up, build the
    variant builders. Returns (argv, args, builders); the caller dispatches to child_main when args.child."""
    argv = sys.argv[1:] if argv is None else argv
    args = parse(argv)
    setup_torch(args)
    return argv, args, make_builders(args)


def child_main(args, builders: dict) -> None:
    """--child NAME: measure one variant in this (fresh) interpreter; for manual runs."""
    _warm_runtime(args)
    res = measure_in_child(args, builders[args.child])
    print(RESULT_TAG + json.dumps(res), flush=True)


def run_children(script: str, argv: list[str], names: list[str], threads: int) -> dict[str, dict]:
    """Measure each variant in its own fresh process. The processes are forked from a multiprocessing
    forkserver that has only imported torch/diffusers/peft/vpae (no tensors built, no compute run), so each
    child starts clean without paying the ~10 s diffusers import again."""
    import multiprocessing as mp
    os.environ["OMP_NUM_THREADS"] = str(threads)
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(PRELOAD)
    out = {}
    for name in names:
        parent, child = ctx.Pipe(duplex=False)
        p = ctx.Process(target=_child_entry, args=(str(Path(script).resolve()), argv, name, child))
        p.start()
        child.close()
        try:
            status, res = parent.recv()
        except EOFError:
            status, res = "error", "child died without a result"
        p.join()
        if status != "ok":
            raise RuntimeError(f"memory subprocess {name} failed (exit {p.exitcode}): {res}")
        out[name] = res
    return out


# ----------------------------------------------------------------------------------------------
# Reporting

def machine_info(args) -> dict:
    cpu = ""
    try:
        cpu = next(l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines()
                   if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    info = {"platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
            "cpu": cpu, "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "loadavg_at_start": list(os.getloadavg()), "device": args.device}
    if args.device == "cuda":
        info["gpu"] = torch.cuda.get_device_name()
    return info


def machine_line(info: dict, args) -> str:
    """The report's 'Machine: ...' sentence (CPU, threads, load at start, device, torch)."""
    return (f"Machine: {info['cpu'] or info['platform']} ({info['cpu_count']} CPUs, torch threads "
            f"{info['torch_threads']}, load avg at start {info['loadavg_at_start'][0]:.2f}), device {args.device}"
            + (f" ({info['gpu']})" if args.device == "cuda" else "") + f", torch {info['torch']}.\n")


def peak_description(args) -> str:
    return "cuda max_memory_allocated" if args.device == "cuda" else "peak RSS delta in a fresh subprocess"


def md_table(header: list[str], rows: list[list]) -> str:
    def fmt(x):
        if isinstance(x, float):
            return f"{x:.3g}" if abs(x) < 1000 else f"{x:,.0f}"
        if isinstance(x, int):
            return f"{x:,}"
        return str(x)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(fmt(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def mib(b) -> float:
    return b / MIB


def write_json(args, default_name: str, payload: dict) -> Path:
    path = Path(args.out) if args.out else OUT_DIR / default_name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=1))
    return path


def command_line() -> str:
    return " ".join([".venv/bin/python", os.path.relpath(sys.argv[0], ROOT), *sys.argv[1:]])


# ----------------------------------------------------------------------------------------------
# Scale notes: Wan2.1-I2V-14B, analytic, from a meta-device model (no memory used)

def wan14b_config() -> dict:
    """Wan2.1-I2V-14B-480P transformer (diffusers config): 40 layers, 40 heads x 128, FFN 13824,
    umT5 text 4096, CLIP image 1280, in 36 = 16 latent + 4 mask + 16 condition, out 16."""
    return dict(patch_size=(1, 2, 2), num_attention_heads=40, attention_head_dim=128, in_channels=36,
                out_channels=16, text_dim=4096, freq_dim=256, ffn_dim=13824, num_layers=40, cross_attn_norm=True,
                qk_norm="rms_norm_across_heads", eps=1e-6, image_dim=1280, added_kv_proj_dim=5120,
                rope_max_seq_len=1024)


def scale_counts(lora_rank: int = 64, head_dim: int = 256) -> dict:
    """Parameter counts of the 14B roles: the transformer, the fake LoRA (PrimingConfig targets), the heads."""
    from diffusers import WanTransformer3DModel
    from vpae.backbones.base import resolve_layers
    from vpae.config import EquilibriumConfig, PrimingConfig
    from vpae.discriminator import build_head
    cfg = wan14b_config()
    with torch.device("meta"):
        model = WanTransformer3DModel(**cfg)
        n_layers = len(resolve_layers(EquilibriumConfig().layers, cfg["num_layers"]))
        heads = {k: count_params(build_head(k, feature_dim=5120, num_layers=n_layers, text_dim=4096, image_dim=1280,
                                            hidden_dim=head_dim, num_queries=4, num_heads=4), False)
                 for k in ("conv", "ca", "semantic")}
    return {"transformer": count_params(model, False),
            "fake_lora": lora_param_count(model, lora_rank, PrimingConfig().lora_targets),
            "lora_rank": lora_rank, "heads": heads}


# bytes per parameter: bf16 weights; a trainable one adds a bf16 gradient and fp32 Adam m and v.
FROZEN_B = 2
TRAIN_B = 2 + 2 + 8


def scale_designs(counts: dict, head: str = "semantic") -> dict[str, dict[str, int]]:
    """Parameter + gradient + optimizer bytes of each role design at 14B, per role."""
    N, L, H = counts["transformer"], counts["fake_lora"], counts["heads"][head]
    return {
        "phase I, fake score = teacher + shared-weight LoRA": {
            "teacher (frozen)": FROZEN_B * N, "fake LoRA (trained)": TRAIN_B * L, "generator (trained)": TRAIN_B * N},
        "phase I, fake score = full trainable copy": {
            "teacher (frozen)": FROZEN_B * N, "fake copy (trained)": TRAIN_B * N, "generator (trained)": TRAIN_B * N},
        "phase II, backbone unified (EMA)": {
            "teacher (frozen, + fake LoRA weights)": FROZEN_B * (N + L), "generator (trained)": TRAIN_B * N,
            "EMA = disc backbone": FROZEN_B * N, f"{head} heads (trained)": TRAIN_B * H},
        "phase II, backbone frozen (teacher)": {
            "teacher (frozen, + fake LoRA weights) = disc backbone": FROZEN_B * (N + L),
            "generator (trained)": TRAIN_B * N, "EMA (kept as the export)": FROZEN_B * N,
            f"{head} heads (trained)": TRAIN_B * H},
        "phase II, backbone trained (own copy)": {
            "teacher (frozen, + fake LoRA weights)": FROZEN_B * (N + L), "generator (trained)": TRAIN_B * N,
            "EMA (kept as the export)": FROZEN_B * N, "disc backbone copy (trained)": TRAIN_B * N,
            f"{head} heads (trained)": TRAIN_B * H},
    }


def scale_report(designs: list[str], lora_rank: int = 64, gpus: int = 8, gpu_gib: float = 80.0) -> tuple[str, dict]:
    counts = scale_counts(lora_rank)
    all_designs = scale_designs(counts)
    rows, out = [], {"counts": counts, "bytes_per_param": {"frozen_bf16": FROZEN_B, "trained_bf16_grad_fp32_adam": TRAIN_B},
                     "designs": {}}
    for d in designs:
        roles = all_designs[d]
        total = sum(roles.values())
        out["designs"][d] = {"roles": roles, "total_bytes": total}
        rows.append([d, " + ".join(f"{k} {v / GIB:,.1f}" for k, v in roles.items()), total / GIB,
                     total / gpus / GIB, f"{100 * total / gpus / GIB / gpu_gib:.0f}%"])
    text = (f"Wan2.1-I2V-14B (meta-device count): transformer {counts['transformer'] / 1e9:.2f} B params, fake LoRA "
            f"(rank {lora_rank}) {counts['fake_lora'] / 1e6:.1f} M, heads conv/ca/semantic "
            + "/".join(f"{v / 1e6:.1f}" for v in counts["heads"].values()) + " M.\n"
            f"Bytes: frozen {FROZEN_B}/param (bf16); trained {TRAIN_B}/param (bf16 weight + bf16 grad + fp32 Adam m, v); "
            f"no fp32 master copy, no activations.\n\n"
            + md_table(["design", "roles (GiB)", "total GiB", f"GiB/GPU, sharded over {gpus}",
                        f"of {gpu_gib:.0f} GiB"], rows))
    return text, out
