"""Bitwise reproducibility on CPU: two runs of one config give identical weights, and a run killed with
SIGKILL (at whatever point: mid-step or mid-save) and resumed ends identical to an uninterrupted one."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from vpae.config import load_config
from vpae.recipes import run_distill
from vpae.training.checkpoint import checkpoint_tensors

ROOT = Path(__file__).resolve().parents[1]
TINY = ["priming.steps=3", "equilibrium.steps=3", "priming.batch_size=2", "equilibrium.batch_size=2",
        "train.eval_every=0", "train.checkpoint_every=1", "train.keep_checkpoints=2"]


def _weights(run: Path) -> dict[str, torch.Tensor]:
    out = {}
    for phase, files in (("priming", ("generator", "fake_lora")), ("equilibrium", ("generator", "ema", "heads"))):
        ckpt = run / phase / "checkpoints" / "step_0000003"
        for f in files:
            out.update({f"{phase}/{f}/{k}": v for k, v in checkpoint_tensors(ckpt, f"model.{f}.").items()})
    return out


def _assert_bitwise_equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    diff = [k for k in a if not torch.equal(a[k], b[k])]
    assert not diff, f"{len(diff)} tensors differ, e.g. {diff[:3]}"


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    # bitwise equality holds for a fixed thread count: the killed subprocess below uses this process's count
    run = tmp_path_factory.mktemp("repro") / "a"
    run_distill(load_config(ROOT / "configs/toy/demo.yaml", TINY), run, progress=False)
    return _weights(run)


def test_two_runs_of_one_config_are_bitwise_equal(reference_run, tmp_path):
    run_distill(load_config(ROOT / "configs/toy/demo.yaml", TINY), tmp_path / "b", progress=False)
    _assert_bitwise_equal(reference_run, _weights(tmp_path / "b"))


def test_sigkill_then_resume_is_bitwise_equal_to_an_uninterrupted_run(reference_run, tmp_path):
    run = tmp_path / "killed"
    cmd = [sys.executable, "-m", "vpae.cli", "distill", "--config", str(ROOT / "configs/toy/demo.yaml"),
           "--out", str(run)] + [a for s in TINY for a in ("--set", s)]
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads()), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    target = run / "priming" / "checkpoints" / "step_0000002"
    deadline = time.time() + 300
    while not target.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert not (run / "equilibrium" / "checkpoints" / "step_0000003").exists()
    r = run_distill(load_config(ROOT / "configs/toy/demo.yaml", TINY), run, progress=False)
    assert r["priming"]["resumed_from"] >= 2
    _assert_bitwise_equal(reference_run, _weights(run))
    assert not [p for p in run.glob("*/checkpoints/*.tmp-*")]  # a save the kill interrupted is cleaned up
