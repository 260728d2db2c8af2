"""The shipped 8-GPU Wan2.1-I2V-14B configs: they load, keep fp32 master weights for the trained roles, cut the
global batch evenly into data-parallel ranks x micro-batches, and fit 80 GB per GPU in the memory plan
(benchmarks/memory_arithmetic.py, an estimate), so an edit that breaks the plan fails here."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from vpae.config import load_config

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

from memory_arithmetic import plan_case, ulysses_ok  # noqa: E402

WORLD, GPU_GB = 8, 80.0


@pytest.mark.parametrize("clip", ["480p", "720p"])
def test_8gpu_config_loads_and_fits_the_memory_plan(clip):
    cfg = load_config(REPO / f"configs/wan/i2v_14b_{clip}_8gpu.yaml")
    p, t = cfg.parallel, cfg.train
    assert cfg.model.dtype == "float32" and cfg.model.frozen_dtype == "bfloat16"
    assert p.param_dtype == "bfloat16" and p.accum_sync == "every" and cfg.model.gradient_checkpointing
    assert t.device == "cuda"
    shard = WORLD // p.dp_replicate
    dp_shard = shard // p.cp if p.dp_shard == -1 else p.dp_shard
    assert p.dp_replicate * dp_shard * p.cp == WORLD
    assert p.cp_kind == "ring" or ulysses_ok(p.cp)
    for phase, batch in (("I", cfg.priming.batch_size), ("II", cfg.equilibrium.batch_size)):
        assert batch == 32  # the paper's global batch
        assert batch % ((WORLD // p.cp) * t.grad_accum) == 0
        case = plan_case(phase, clip, WORLD, GPU_GB, p.dp_replicate, p.cp, t.grad_accum, batch,
                         accum_sync=p.accum_sync, ckpt=cfg.model.gradient_checkpointing, cpu_offload=p.cpu_offload,
                         train_dtype=cfg.model.dtype, frozen_dtype=cfg.model.frozen_dtype)
        assert case["fits"], f"{clip} phase {phase}: {case['total_bytes'] / 2 ** 30:.1f} GiB per GPU"


def test_the_plan_rejects_what_does_not_fit():
    # accum_sync last holds the generator's 61 GiB of unsharded fp32 grads on every GPU
    assert not plan_case("II", "480p", WORLD, GPU_GB, 1, 4, 16, accum_sync="last")["fits"]
    assert not plan_case("II", "720p", WORLD, GPU_GB, 1, 1, 4)["fits"]  # no context parallelism at 720p
    assert not plan_case("I", "480p", WORLD, GPU_GB, 1, 4, 16, ckpt=False)["fits"]
