"""Interleaved step timing: every variant stepped in turn, the order rotated each round."""

from __future__ import annotations

import statistics
import time

import torch

from model_setup import Variant


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
