"""The comparison methods under torchrun (CPU, gloo, 2 ranks) against one process: for every method a 2-rank
run of 2 steps computes the single-process steps on the same global batch, with its extra networks (EMA and
consistency targets, DCM's second expert and its target, APT's discriminator backbone, DMD2's full critic)
sharded and checkpointed by both ranks; DCM's detail expert is exported whole from its shards. The methods run
one after the other in one process group (tests/dist_methods_worker.py): one torchrun start-up, not eight.
rCM is refused under torchrun (RCM.distributed is False: its JVP through sharded modules is unchecked)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from vpae.training.checkpoint import checkpoint_tensors

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "configs/toy/demo.yaml"
STEPS = 2
LR = 1e-3  # every optimizer's: large enough that a shard left unstepped on one rank shows in the weights
TINY = [f"comparison.steps={STEPS}", "comparison.batch_size=2", "comparison.nfe=2", f"comparison.lr={LR}",
        f"comparison.disc_lr={LR}", "comparison.head_dim=16", "comparison.head_queries=2",
        "comparison.head_attn_heads=2", "consistency.num_timesteps=4", "consistency.semantic_phases=1",
        "dmd2.fake_updates_per_generator=1", f"dmd2.fake_lr={LR}", "md.fake_updates_per_generator=1",
        f"md.fake_lr={LR}", "train.eval_every=0", f"train.checkpoint_every={STEPS}", "train.log_every=1",
        "apt.init=teacher"]  # APT's consistency start is LCM's phase (the lcm row)
# what each method's checkpoint holds: its generator and every network it adds or trains
ROLES = {"dmd2": {"generator", "fake_critic", "heads"}, "md": {"generator", "fake_lora"},
         "lcm": {"generator", "target"}, "pcm": {"generator", "heads"},
         "dcm": {"generator", "target", "detail_expert", "detail_target", "heads"},
         "add": {"generator", "heads"}, "apt": {"generator", "heads", "disc_backbone", "ema"},
         "ladd": {"generator", "heads"}}
METHODS = list(ROLES)


def _launch(out: Path, nproc: int) -> subprocess.Popen:
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
                if nproc > 1 else [sys.executable])
    cmd = launcher + [str(ROOT / "tests/dist_methods_worker.py"), str(out), *METHODS, "--config", str(DEMO),
                      *[a for s in TINY for a in ("--set", s)]]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """{"one": the 1-process runs, "two": the 2-rank runs}, each method in <run>/<method>; launched side by side
    (the 2 ranks wait on each other's collectives, the single process fills those gaps)."""
    base = tmp_path_factory.mktemp("methods")
    procs = {name: _launch(base / name, nproc) for name, nproc in (("two", 2), ("one", 1))}
    for name, proc in procs.items():
        _, err = proc.communicate(timeout=900)
        assert proc.returncode == 0, (name, err[-3000:])
    return {name: base / name for name in procs}


def _checkpoint(run: Path, method: str) -> Path:
    return run / method / method / "checkpoints" / f"step_{STEPS:07d}"


def _log(run: Path, method: str) -> list[dict]:
    return [json.loads(line) for line in (run / method / method / "log.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("method", METHODS)
def test_two_ranks_take_the_single_process_steps_on_the_same_global_batch(runs, method):
    one, two = _checkpoint(runs["one"], method), _checkpoint(runs["two"], method)
    meta = json.loads((two / "meta.json").read_text())
    assert meta["world_size"] == 2 and set(meta["modules"]) == ROLES[method]
    assert (two / "__1_0.distcp").is_file()  # rank 1 wrote its shards
    # Adam moves each element by at most about lr per step whatever the gradient's scale, so an element whose
    # gradient is ~0 may take the other sign when the 2 ranks' gradients are summed in another order: the
    # weights may differ by up to 2 lr per step there, and agree to float rounding elsewhere.
    for role in ROLES[method]:
        a, b = checkpoint_tensors(one, f"model.{role}."), checkpoint_tensors(two, f"model.{role}.")
        assert a.keys() == b.keys() and a, role
        diff = torch.cat([(a[k] - b[k]).abs().flatten() for k in a])
        assert diff.max() <= 2 * LR * STEPS + 1e-6, (role, diff.max())
        assert (diff > 1e-5).float().mean() < 0.05, role
    # Adam hides the gradient's scale; the logged gradient norms show it: a sum over ranks instead of the mean
    # would double them, a rank left out would change them
    log_one, log_two = _log(runs["one"], method), _log(runs["two"], method)
    assert [r["step"] for r in log_one] == [r["step"] for r in log_two] == list(range(1, STEPS + 1))
    for ra, rb in zip(log_one, log_two):
        norms = {k for k in ra if k.startswith("grad_norm/")}
        assert norms and norms == {k for k in rb if k.startswith("grad_norm/")}
        for k in norms:
            assert rb[k] == pytest.approx(ra[k], rel=1e-3, abs=1e-6), (ra["step"], k)
    for k in log_one[0]:
        if k.startswith("loss/"):  # the first step starts from equal weights: equal losses (averaged over ranks)
            assert log_two[0][k] == pytest.approx(log_one[0][k], rel=1e-4, abs=1e-7), k


def test_dcm_exports_its_detail_expert_whole_from_the_shards(runs):
    """Rank 0 writes the exports alone: the sharded detail expert reaches RUN/detail_expert whole, equal to the
    2-rank checkpoint's, and with the tensors of the one-process export."""
    final = checkpoint_tensors(_checkpoint(runs["two"], "dcm"), "model.detail_expert.")
    exported = load_file(str(runs["two"] / "dcm/detail_expert/diffusion_pytorch_model.safetensors"))
    assert {f"model.{k}" for k in exported} == set(final)
    assert all(torch.equal(final[f"model.{k}"], v) for k, v in exported.items())
    single = load_file(str(runs["one"] / "dcm/detail_expert/diffusion_pytorch_model.safetensors"))
    assert single.keys() == exported.keys()
    assert json.loads((runs["two"] / "dcm/detail_expert/vpae.json").read_text())["role"] == "detail_expert"
