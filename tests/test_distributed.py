"""Multi-process training on CPU with gloo under torchrun (2 ranks), against the single-process run:
- a 2-rank run of both phases computes the single-process steps on the same global batch (float tolerance);
- (kills, resumes across meshes and precision: test_paper_scale.py; the 1-process kill: test_reproducibility.py);
- the DCP checkpoints consolidate in one process into the exported generator.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from vpae.config import load_config
from vpae.recipes import export_checkpoint, run_distill, run_pretrain
from vpae.training.checkpoint import checkpoint_tensors

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "configs/toy/demo.yaml"
STEPS = 2
TINY = [f"priming.steps={STEPS}", f"equilibrium.steps={STEPS}", "priming.batch_size=2", "equilibrium.batch_size=2",
        "train.eval_every=0", "train.checkpoint_every=1", "train.keep_checkpoints=5", "train.log_every=1"]
ROLES = {"priming": ("generator", "fake_lora"), "equilibrium": ("generator", "ema", "heads")}


def _torchrun(out: Path, overrides: list[str], nproc: int = 2, kind: str = "distill", config: Path = DEMO,
              kill_at_publish: str = "", kill_mid_step: str = "", diverge_at: str = "",
              fork: bool = True) -> subprocess.CompletedProcess:
    """`torchrun --nproc_per_node N -m vpae.cli KIND ...` (the documented command; fork=True: the same through
    torch's elastic launcher with workers forked after the imports, tests/fork_launch.py, which saves each rank's
    ~10 s of imports on this 2-core machine), or with kill_* / diverge_at the same run through
    tests/dist_worker.py (which SIGKILLs itself at that point, or makes one rank diverge)."""
    if nproc == 1:
        launcher = [sys.executable]
    elif fork:
        launcher = [sys.executable, str(ROOT / "tests/fork_launch.py"), str(nproc)]
    else:
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    sets = [a for s in overrides for a in ("--set", s)]
    if kill_at_publish or kill_mid_step or diverge_at:
        cmd = launcher + [str(ROOT / "tests/dist_worker.py"), kind, str(out), "--config", str(config), *sets,
                          "--kill-at-publish", kill_at_publish, "--kill-mid-step", kill_mid_step,
                          "--diverge-at", diverge_at]
    else:
        cmd = launcher + ["-m", "vpae.cli", kind, "--config", str(config), "--out", str(out), *sets]
    # one thread per rank: the 2 ranks use the 2 cores, and bitwise comparisons need a fixed thread count
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)


def _ok(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, proc.stderr[-3000:]


def _final(run: Path, phase: str, role: str, step: int = STEPS) -> dict[str, torch.Tensor]:
    return checkpoint_tensors(run / phase / "checkpoints" / f"step_{step:07d}", f"model.{role}.")


def _log(run: Path, phase: str) -> list[dict]:
    return [json.loads(line) for line in (run / phase / "log.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def two_rank_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("dist") / "two"
    _ok(_torchrun(run, TINY, fork=False))  # the documented command itself
    return run


@pytest.fixture(scope="module")
def one_process_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("dist") / "one"
    run_distill(load_config(DEMO, TINY), run, progress=False)
    return run


def _assert_same_steps(one: Path, other: Path, cfg, steps: int = STEPS, first_step: int = 1,
                       phases=tuple(ROLES)) -> None:
    """`other` computed the steps of the 1-process run `one` (same global batch): weights, gradient norms, losses
    (of steps first_step..steps of `phases`)."""
    p, e = cfg.priming, cfg.equilibrium
    # Adam moves each element by at most about lr per step whatever the gradient's scale, so an element whose
    # gradient is ~0 may take the other sign when the ranks' gradients are summed in another order: the
    # weights may differ by up to 2 lr per step there, and agree to float rounding elsewhere.
    lrs = {("priming", "generator"): p.lr, ("priming", "fake_lora"): p.fake_lr, ("equilibrium", "generator"): e.lr,
           ("equilibrium", "ema"): e.lr, ("equilibrium", "heads"): e.head_lr}
    for phase in phases:
        for role in ROLES[phase]:
            a, b = _final(one, phase, role, steps), _final(other, phase, role, steps)
            assert a.keys() == b.keys() and a
            diff = torch.cat([(a[k] - b[k]).abs().flatten() for k in a])
            assert diff.max() <= 2 * lrs[phase, role] * (steps - first_step + 1) + 1e-6, (phase, role, diff.max())
            assert (diff > 1e-5).float().mean() < 0.05, (phase, role)
        # Adam hides the gradient's scale; the logged gradient norms show it: a sum over ranks instead of the
        # mean would double them, a rank left out (or a context-parallel part not summed) would change them
        la = [r for r in _log(one, phase) if r["step"] >= first_step]
        lb = [r for r in _log(other, phase) if r["step"] >= first_step]
        assert len(la) == len(lb) and la
        for ra, rb in zip(la, lb):
            for k in ra:
                if k.startswith("grad_norm/"):
                    assert rb[k] == pytest.approx(ra[k], rel=1e-3, abs=1e-6), (phase, ra["step"], k)
                if k.startswith("collapse/"):  # ratios of batch means averaged over ranks, not means of ratios
                    assert rb[k] == pytest.approx(ra[k], rel=1e-4, abs=1e-6), (phase, ra["step"], k)
        for k in la[0]:
            if k.startswith("loss/"):  # the first step starts from equal weights: equal losses (averaged over ranks)
                assert lb[0][k] == pytest.approx(la[0][k], rel=1e-4, abs=1e-7), (phase, k)


def test_two_ranks_take_the_single_process_steps_on_the_same_global_batch(two_rank_run, one_process_run):
    _assert_same_steps(one_process_run, two_rank_run, load_config(DEMO, TINY))


def test_the_exported_generator_is_the_consolidated_checkpoint(two_rank_run, tmp_path):
    exported = load_file(str(two_rank_run / "generator" / "diffusion_pytorch_model.safetensors"))
    final = _final(two_rank_run, "equilibrium", "generator")
    assert {f"model.{k}" for k in exported} == set(final)
    assert all(torch.equal(final[f"model.{k}"], v) for k, v in exported.items())
    meta = json.loads((two_rank_run / f"equilibrium/checkpoints/step_{STEPS:07d}/meta.json").read_text())
    assert meta["world_size"] == 2 and meta["data_position"] == STEPS
    assert (two_rank_run / f"equilibrium/checkpoints/step_{STEPS:07d}/__1_0.distcp").is_file()  # rank 1 wrote its shard
    # `vpae consolidate`: the same folder from the sharded checkpoint, in one process
    again = load_file(str(export_checkpoint(two_rank_run, out=tmp_path / "gen") / "diffusion_pytorch_model.safetensors"))
    assert again.keys() == exported.keys() and all(torch.equal(again[k], v) for k, v in exported.items())


def test_teacher_pretraining_on_two_ranks_equals_one_process(tmp_path):
    overrides = ["pretrain.steps=2", "pretrain.batch_size=4", "pretrain.warmup_steps=1", "train.eval_every=0",
                 "train.log_every=1", "train.checkpoint_every=1"]
    config = ROOT / "configs/toy/teacher.yaml"
    _ok(_torchrun(tmp_path / "two", overrides, kind="pretrain", config=config))
    run_pretrain(load_config(config, overrides), tmp_path / "one", progress=False)
    lr = load_config(config, overrides).pretrain.lr
    for role in ("model", "ema"):
        a = checkpoint_tensors(tmp_path / "one/checkpoints/step_0000002", f"model.{role}.")
        b = checkpoint_tensors(tmp_path / "two/checkpoints/step_0000002", f"model.{role}.")
        diff = torch.cat([(a[k] - b[k]).abs().flatten() for k in a])
        assert diff.max() <= 2 * lr * 2 + 1e-6 and (diff > 1e-5).float().mean() < 0.05, role
    la, lb = _log(tmp_path, "one"), _log(tmp_path, "two")
    assert lb[0]["loss/flow"] == pytest.approx(la[0]["loss/flow"], rel=1e-4)
    assert lb[0]["grad_norm/model"] == pytest.approx(la[0]["grad_norm/model"], rel=1e-3)


def test_draws_depend_on_the_global_sample_index_not_on_the_split():
    from vpae.randomness import batch_stream, rand, randn_like
    with batch_stream(7):
        noise, levels, again = randn_like(torch.zeros(4, 3)), rand(4), randn_like(torch.zeros(4, 3))
    with batch_stream(7, rank=1):  # rank 1 of 2 holds samples 2 and 3
        noise1, levels1 = randn_like(torch.zeros(2, 3)), rand(2)
    assert torch.equal(noise[2:], noise1) and torch.equal(levels[2:], levels1)
    assert not torch.equal(noise, again)  # the next draw of a step is another one
    with batch_stream(8):
        assert not torch.equal(randn_like(torch.zeros(4, 3)), noise)  # another step
    torch.manual_seed(0)  # outside a step: torch's global generator
    outside = randn_like(torch.zeros(4, 3))
    torch.manual_seed(0)
    assert torch.equal(outside, torch.randn(4, 3))
