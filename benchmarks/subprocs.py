"""Each variant measured in its own fresh process: the forkserver children, the runtime warm-up before
the baseline, the measurement inside the child (peak memory, step time, tensor bytes) and `--child NAME`."""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Callable

import torch

from accounting import tensor_bytes
from model_setup import TEXT_TOKENS, Variant, make_batch, make_cfg, setup_torch, wan_config
from procmem import PeakMeter
from timing import sync

RESULT_TAG = "@@RESULT "


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


PRELOAD = ["torch", "diffusers", "peft", "peft.tuners.lora", "vpae.recipes", "vpae.training.loop",
           "vpae.training.methods.vpae", "vpae.training.methods.pretrain",
           "model_setup", "timing", "accounting", "procmem", "subprocs", "reporting", "memory_arithmetic"]


def _warm_runtime(args) -> None:
    """One tiny forward/backward/Adam step on a throwaway model, and a config and its method built, so the
    lazily loaded torch/diffusers/peft/vpae code and libraries are resident before the baseline is taken."""
    from diffusers import WanTransformer3DModel

    from vpae.backbones.wan import WanBackbone
    from vpae.recipes import build_method
    from vpae.training import model as M
    tiny = argparse.Namespace(**{**vars(args), "layers": 1, "dim": args.head_dim, "ffn": 8, "batch": 1,
                                 "frames": 1, "size": 2 * args.patch})
    bb = WanBackbone(WanTransformer3DModel(**wan_config(tiny)), TEXT_TOKENS).to(args.device)
    M.add_lora(bb, "warm", 2, 2, ("to_q",))
    bb.requires_grad_(True)
    opt = torch.optim.Adam(bb.parameters())
    x, cond = make_batch(tiny)
    bb.velocity(x, torch.rand(1, device=args.device), cond).pow(2).mean().backward()
    opt.step()
    del bb, opt
    # A config and its method: the registry imports the data source and the method's module on first use.
    build_method(make_cfg(args))


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
