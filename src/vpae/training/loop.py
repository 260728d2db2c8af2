"""The one training loop: data, step, logging, NaN guard, checkpoint, resume.

EDM2-style determinism: the global RNG is reseeded from (seed, phase, step) before every step and the data
batch is a pure function of (seed, step), so a resumed run continues exactly as an uninterrupted one.
"""

from __future__ import annotations

import json
import math
import time
import zlib
from pathlib import Path
from typing import Callable, Protocol

import torch
from tqdm.auto import tqdm

from vpae.conditioning import Conditioning
from vpae.training.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint


class Step(Protocol):
    modules: dict
    optimizers: dict

    def step(self, step: int, x_data: torch.Tensor, cond: Conditioning) -> dict[str, float]: ...


def step_seed(seed: int, phase: str, step: int) -> int:
    return zlib.crc32(f"{seed}/{phase}/{step}".encode())


class JsonlLogger:
    def __init__(self, path: Path):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)

    def log(self, record: dict) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")


def read_log(path: str | Path) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def train(phase: str, step_obj: Step, batch_fn: Callable[[int], tuple[torch.Tensor, Conditioning]], *,
          steps: int, run_dir: str | Path, seed: int = 0, checkpoint_every: int = 100, keep: int = 2,
          log_every: int = 10, meta: dict | None = None,
          eval_fn: Callable[[int], dict[str, float]] | None = None, eval_every: int = 0,
          progress: bool = True, max_seconds: float = 0.0) -> dict:
    """Run `steps` optimisation steps of one phase in `run_dir`, resuming from its latest checkpoint.

    batch_fn(step) -> (x_data, cond) must be deterministic in step. max_seconds > 0 stops early (with a
    checkpoint) once that much wall time has passed. Returns {"step", "seconds", "last", "resumed_from"}.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    meta = {"phase": phase, **(meta or {})}
    start = 0
    ckpt = latest_checkpoint(run_dir)
    if ckpt is not None:
        loaded = load_checkpoint(ckpt, step_obj.modules, step_obj.optimizers, strict_meta={"phase": phase})
        start = int(loaded["step"])
    logger = JsonlLogger(run_dir / "log.jsonl")
    last: dict[str, float] = {}
    t0 = time.perf_counter()
    bar = tqdm(range(start, steps), desc=phase, initial=start, total=steps, disable=not progress, dynamic_ncols=True)
    for step in bar:
        torch.manual_seed(step_seed(seed, phase, step))
        t_data = time.perf_counter()
        x_data, cond = batch_fn(step)
        t_step = time.perf_counter()
        stats = step_obj.step(step, x_data, cond)
        stats["time/data_s"], stats["time/step_s"] = t_step - t_data, time.perf_counter() - t_step
        # NaN guard: stop before a non-finite update can reach a checkpoint.
        bad = [k for k, v in stats.items() if not math.isfinite(v)]
        if bad:
            raise FloatingPointError(f"{phase} step {step}: non-finite {bad}; last good checkpoint kept in {run_dir}")
        last = stats
        if eval_fn is not None and eval_every > 0 and ((step + 1) % eval_every == 0 or step + 1 == steps):
            stats = {**stats, **{f"eval/{k}": v for k, v in eval_fn(step + 1).items()}}
        if (step + 1) % log_every == 0 or step + 1 == steps or any(k.startswith("eval/") for k in stats):
            logger.log({"step": step + 1, "time": time.perf_counter() - t0, **stats})
            bar.set_postfix({k.split("/")[-1]: f"{v:.3g}" for k, v in list(stats.items())[:4]})
        out_of_time = max_seconds > 0 and time.perf_counter() - t0 > max_seconds
        if (step + 1) % checkpoint_every == 0 or step + 1 == steps or out_of_time:
            save_checkpoint(run_dir, step + 1, step_obj.modules, step_obj.optimizers, meta, keep=keep)
        if out_of_time:
            logger.log({"step": step + 1, "time": time.perf_counter() - t0, **stats})
            steps = step + 1
            break
    return {"step": steps, "seconds": time.perf_counter() - t0, "last": last, "resumed_from": start}
