"""Atomic checkpoints and the resumable training loop (the config package: tests/test_config.py)."""

from __future__ import annotations

import json
import os
import re
import shutil

import pytest
import torch
from conftest import make_cond, make_latent, make_wan

from vpae.errors import DivergenceError
from vpae.training.checkpoint import CheckpointError, latest_checkpoint, load_checkpoint, save_checkpoint
from vpae.training.loop import DivergenceCheck, Optimizers, PhaseStepper, read_log, train
from vpae.training.methods.base import OptimizerSpec, Phase, Update
from vpae.training.methods.pretrain import FlowMatchingPhase
from vpae.training.model import FAKE_ADAPTER, AdapterState, make_ema, make_teacher_and_fake

# ----------------------------------------------------------------------------------------------
# Checkpoints

def _net(seed=0, out=3):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(4, 5), torch.nn.Linear(5, out))


def _opt_step(net, opt):
    opt.zero_grad()
    net(torch.randn(2, 4)).sum().backward()
    opt.step()


def test_checkpoint_roundtrip_and_crash_leftovers(tmp_path):
    net = _net()
    opt = torch.optim.Adam(net.parameters(), lr=0.1)
    _opt_step(net, opt)
    save_checkpoint(tmp_path, 2, {"net": net}, {"opt": opt}, {"phase": "x"})
    _opt_step(net, opt)
    saved = {k: v.clone() for k, v in net.state_dict().items()}
    saved_opt = opt.state_dict()
    save_checkpoint(tmp_path, 4, {"net": net}, {"opt": opt}, {"phase": "x"})
    root = tmp_path / "checkpoints"
    assert (root / "latest").read_text().strip() == "step_0000004"
    # a crash mid-write leaves a tmp dir; a damaged newer checkpoint has a truncated data file
    (root / "step_0000006.tmp-123").mkdir()
    (root / "step_0000006.tmp-123" / "__0_0.distcp").write_bytes(b"\x00garbage")
    bad = root / "step_0000008"
    shutil.copytree(root / "step_0000004", bad)
    data = (bad / "__0_0.distcp").read_bytes()
    (bad / "__0_0.distcp").write_bytes(data[:len(data) // 3])
    (bad / "meta.json").write_text(json.dumps({"step": 8, "phase": "x"}))
    # resume scans for the newest published checkpoint (not the pointer); a damaged one is named, with the
    # previous complete checkpoint offered, and loading it changes nothing
    assert latest_checkpoint(tmp_path) == bad
    fresh = _net(seed=5)
    fresh_opt = torch.optim.Adam(fresh.parameters(), lr=0.1)
    before = {k: v.clone() for k, v in fresh.state_dict().items()}
    with pytest.raises(CheckpointError, match=r"step_0000008/__0_0.distcp.*previous complete checkpoint .*step_0000004"):
        load_checkpoint(bad, {"net": fresh}, {"opt": fresh_opt}, {"phase": "x"})
    assert all(torch.equal(before[k], v) for k, v in fresh.state_dict().items())
    meta = load_checkpoint(root / "step_0000004", {"net": fresh}, {"opt": fresh_opt}, {"phase": "x"})
    assert meta["step"] == 4
    assert all(torch.equal(saved[k], v) for k, v in fresh.state_dict().items())
    st = fresh_opt.state_dict()["state"]
    assert st.keys() == saved_opt["state"].keys()
    assert all(torch.equal(st[i]["exp_avg"], saved_opt["state"][i]["exp_avg"]) for i in st)
    assert all(torch.equal(st[i]["step"], saved_opt["state"][i]["step"]) for i in st)
    # a corrupt checkpoint is refused with a clear error and changes nothing
    before = {k: v.clone() for k, v in fresh.state_dict().items()}
    with pytest.raises(CheckpointError, match="cannot load checkpoint file"):
        load_checkpoint(bad, {"net": fresh}, {})
    assert all(torch.equal(before[k], v) for k, v in fresh.state_dict().items())
    # the next save (keep=1) must keep what it just wrote even with a stale newer-named directory around
    save_checkpoint(tmp_path, 5, {"net": fresh}, {"opt": fresh_opt}, {"phase": "x"}, keep=1)
    assert (root / "latest").read_text() == "step_0000005" and (root / "step_0000005" / "meta.json").is_file()
    assert not (root / "step_0000004").exists() and not (root / "step_0000002").exists()
    n = _net()
    load_checkpoint(root / "step_0000005", {"net": n}, {"opt": torch.optim.Adam(n.parameters())})
    # a phase mismatch is refused
    with pytest.raises(CheckpointError, match="phase"):
        load_checkpoint(root / "step_0000005", {"net": _net()}, {}, {"phase": "y"})
    # an existing checkpoint is never overwritten
    with pytest.raises(CheckpointError, match="refusing to overwrite"):
        save_checkpoint(tmp_path, 5, {"net": _net(seed=9)}, {}, {"phase": "x"})
    assert not [p for p in root.iterdir() if ".tmp" in p.name and p.name != "step_0000006.tmp-123"]


def test_save_leaves_no_tmp_and_prunes(tmp_path):
    net = _net()
    for s in (1, 2, 3, 4):
        save_checkpoint(tmp_path, s, {"net": net}, {}, {}, keep=2)
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["latest", "step_0000003", "step_0000004"]


def test_load_refuses_mismatched_shapes_without_modifying(tmp_path):
    a, b = _net(out=3), _net(seed=1, out=2)
    opt_b = torch.optim.Adam(b.parameters(), lr=0.1)
    _opt_step(b, opt_b)
    save_checkpoint(tmp_path, 1, {"net": a, "other": _net(seed=2)}, {}, {})
    before = {k: v.clone() for k, v in b.state_dict().items()}
    other = _net(seed=3)
    other_before = {k: v.clone() for k, v in other.state_dict().items()}
    with pytest.raises(CheckpointError, match="shape mismatch.*1.weight"):
        # "other" would load fine and comes first alphabetically: nothing may be loaded when "net" fails
        load_checkpoint(latest_checkpoint(tmp_path), {"other": other, "net": b}, {})
    assert all(torch.equal(before[k], v) for k, v in b.state_dict().items())
    assert all(torch.equal(other_before[k], v) for k, v in other.state_dict().items())
    with pytest.raises(CheckpointError, match="no weights for 'missing'"):
        load_checkpoint(latest_checkpoint(tmp_path), {"missing": _net()}, {})
    with pytest.raises(CheckpointError, match="no optimizer state"):
        load_checkpoint(latest_checkpoint(tmp_path), {"net": _net()}, {"opt": opt_b})


def test_resume_point_is_found_by_scanning_not_by_the_pointer(tmp_path):
    save_checkpoint(tmp_path, 1, {"net": _net()}, {}, {})
    save_checkpoint(tmp_path, 2, {"net": _net()}, {}, {}, keep=3)
    root = tmp_path / "checkpoints"
    (root / "latest").write_text("step_0000099")  # dangling
    assert latest_checkpoint(tmp_path) == root / "step_0000002"
    (root / "latest").unlink()  # deleted: the run still resumes at step 2 instead of overwriting from step 0
    assert latest_checkpoint(tmp_path) == root / "step_0000002"
    (root / "latest").write_text("step_0000001")  # stale
    assert latest_checkpoint(tmp_path) == root / "step_0000002"


def test_adapter_state_checkpoint(tmp_path):
    teacher = make_wan()
    make_teacher_and_fake(teacher, 4, 4, ("to_q", "to_k"))
    with torch.no_grad():
        for n, p in teacher.named_parameters():
            if "lora_B" in n:
                p.normal_()
    st = AdapterState(teacher, FAKE_ADAPTER)
    assert st.state_dict() and all("lora" in k for k in st.state_dict())
    save_checkpoint(tmp_path, 1, {"fake_lora": st}, {}, {})
    other = make_wan()
    make_teacher_and_fake(other, 4, 4, ("to_q", "to_k"))
    load_checkpoint(latest_checkpoint(tmp_path), {"fake_lora": AdapterState(other, FAKE_ADAPTER)}, {})
    a, b = teacher.state_dict(), other.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a if "lora" in k)


# ----------------------------------------------------------------------------------------------
# The training loop

def _pretrain_objects(**kw):
    from vpae.config import PretrainConfig, VPAEConfig
    model = make_wan(num_layers=1).requires_grad_(True)
    ema = make_ema(model)
    return FlowMatchingPhase(model, ema, VPAEConfig(pretrain=PretrainConfig(**{"lr": 1e-3, "warmup_steps": 2,
                                                                               "ema_decay": 0.9, **kw})))


def _batch(step):
    return make_latent(seed=100 + step), make_cond(seed=step)


def _params(phase):
    return {f"{m}.{k}": v.clone() for m, mod in phase.modules().items() for k, v in mod.state_dict().items()}


def _checkpointed_optimizers(phase, run_dir):
    """The phase's optimizers as its newest checkpoint in run_dir holds them (the loop frees its own at the end)."""
    opts = Optimizers(phase.optimizers())
    load_checkpoint(latest_checkpoint(run_dir), phase.modules(), opts.optimizers)
    return opts.optimizers


def test_resume_is_bit_exact(tmp_path):
    straight = _pretrain_objects()
    train(straight, _batch, steps=4, run_dir=tmp_path / "a", checkpoint_every=100, progress=False)
    first = _pretrain_objects()
    r1 = train(first, _batch, steps=2, run_dir=tmp_path / "b", checkpoint_every=100, progress=False)
    assert r1["step"] == 2
    torch.manual_seed(999)  # a new process would have another global RNG state
    second = _pretrain_objects()
    r2 = train(second, _batch, steps=4, run_dir=tmp_path / "b", checkpoint_every=100, progress=False)
    assert r2["resumed_from"] == 2
    # the training time adds up over calls (the export records it), each call's own time stays its own
    assert r1["train_seconds"] == r1["seconds"]
    assert 0 < r2["train_seconds"] - r2["seconds"] <= r1["seconds"]  # the first call's time up to its checkpoint
    a, b = _params(straight), _params(second)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])][:3]
    assert not all(torch.equal(a[k], v) for k, v in _params(_pretrain_objects()).items())
    sa = _checkpointed_optimizers(_pretrain_objects(), tmp_path / "a")["model"].state_dict()["state"]
    sb = _checkpointed_optimizers(_pretrain_objects(), tmp_path / "b")["model"].state_dict()["state"]
    assert sa.keys() == sb.keys() and all(torch.equal(sa[i]["exp_avg_sq"], sb[i]["exp_avg_sq"]) for i in sa)
    # the log of the resumed run continues at steps 3..4
    assert [r["step"] for r in read_log(tmp_path / "b" / "log.jsonl")][-1] == 4
    # resuming a finished run does nothing
    third = _pretrain_objects()
    r3 = train(third, _batch, steps=4, run_dir=tmp_path / "b", progress=False)
    assert r3["resumed_from"] == 4 and all(torch.equal(a[k], v) for k, v in _params(third).items())
    # a call that trains nothing (e.g. only to export) still reports the training that made the checkpoint
    assert r2["train_seconds"] - r2["seconds"] < r3["train_seconds"] - r3["seconds"] <= r2["train_seconds"]


class _NaNAt(Phase):
    """A phase that poisons its model after step `bad_step`'s update and reports a NaN loss."""

    def __init__(self, inner, bad_step):
        self.inner, self.bad_step = inner, bad_step
        self.name, self.steps, self.batch_size = inner.name, inner.steps, inner.batch_size

    def optimizers(self):
        return self.inner.optimizers()

    def modules(self):
        return self.inner.modules()

    def step(self, step, x, c):
        yield from self.inner.step(step, x, c)
        if step == self.bad_step:
            with torch.no_grad():
                next(self.inner.model.parameters()).fill_(float("nan"))
            yield {"loss/flow": float("nan")}


def test_nan_guard_keeps_last_good_checkpoint(tmp_path):
    ref = _pretrain_objects()
    train(ref, _batch, steps=2, run_dir=tmp_path / "ref", progress=False)
    obj = _NaNAt(_pretrain_objects(), bad_step=2)
    # (1-based: the third step, whose index is 2)
    with pytest.raises(DivergenceError, match="step 3: non-finite.*loss/flow.*last checkpoint before it is .*step_0000002"):
        train(obj, _batch, steps=4, run_dir=tmp_path / "run", checkpoint_every=2, progress=False)
    ckpt = latest_checkpoint(tmp_path / "run")
    assert ckpt.name == "step_0000002"
    fresh = _pretrain_objects()
    load_checkpoint(ckpt, fresh.modules(), Optimizers(fresh.optimizers()).optimizers)
    a, b = _params(ref), _params(fresh)
    assert all(torch.isfinite(v).all() for v in b.values())
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_divergence_check_catches_explosion_and_collapse_and_says_when_nothing_was_saved(tmp_path):
    check = DivergenceCheck(max_loss=1e4, dead_steps=3)
    assert check({"loss/dmd": 3.0, "grad_norm/generator": 0.5}) is None
    assert "loss exploded: loss/fake = 3.66e+09" in check({"loss/fake": 3.66e9})
    for _ in range(2):
        assert check({"grad_norm/generator": 0.0}) is None
    assert "gradient collapsed: grad_norm/generator" in check({"grad_norm/generator": 0.0})
    assert DivergenceCheck(max_loss=0, dead_steps=0)({"loss/x": 1e30, "grad_norm/g": 0.0}) is None  # both off
    obj = _NaNAt(_pretrain_objects(), bad_step=0)
    with pytest.raises(DivergenceError, match="step 1: non-finite.*no checkpoint of this phase was written yet"):
        train(obj, _batch, steps=4, run_dir=tmp_path / "run", checkpoint_every=1, progress=False)
    assert latest_checkpoint(tmp_path / "run") is None


def test_dmd_gradient_reports_non_finite_scores_instead_of_hiding_them():
    from vpae.losses.dmd import dmd_gradient
    x = torch.zeros(2, 3, 1, 2, 2)
    fake = torch.ones_like(x)
    fake[1, 0, 0, 0, 0] = float("inf")
    with pytest.raises(DivergenceError, match="non-finite DMD gradient.*fake score x0"):
        dmd_gradient(x, x + 0.1, fake)
    assert torch.isfinite(dmd_gradient(x, x + 0.1, torch.ones_like(x))).all()


def test_pretrain_lr_cooldown_only_touches_the_last_steps():
    stepper = PhaseStepper(_pretrain_objects(steps=10, lr=1e-3, warmup_steps=2, lr_decay_steps=4))
    lrs = []
    for k in range(10):
        stepper.step(k, *_batch(k))
        lrs.append(stepper.optimizers.optimizers["model"].param_groups[0]["lr"])
    # warm-up 0.5, 1; constant until step 6 = steps - decay; then 4/4, 3/4, 2/4, 1/4 of the base lr
    assert lrs == pytest.approx([5e-4, 1e-3, 1e-3, 1e-3, 1e-3, 1e-3, 1e-3, 7.5e-4, 5e-4, 2.5e-4])


class _LinearStep(Phase):
    """The smallest phase: one Linear layer, Adam at a given lr."""

    name, steps, batch_size = "x", 3, 2

    def __init__(self, lr: float):
        torch.manual_seed(0)
        self.net, self.lr = _net(), lr

    def optimizers(self):
        return {"opt": OptimizerSpec(list(self.net.parameters()), self.lr, (0.9, 0.999), grad_clip=0.0)}

    def modules(self):
        return {"net": self.net}

    def step(self, step, x, cond):
        loss = self.net(x).square().mean()
        yield Update("opt", loss, {"loss/x": loss.item()})


def test_resume_applies_the_configured_learning_rate_not_the_checkpointed_one(tmp_path):
    batch = lambda k: (torch.randn(2, 4, generator=torch.Generator().manual_seed(k)), None)  # noqa: E731
    train(_LinearStep(lr=0.1), batch, steps=2, run_dir=tmp_path, progress=False)
    resumed = _LinearStep(lr=0.01)
    r = train(resumed, batch, steps=3, run_dir=tmp_path, progress=False)
    # the step-3 checkpoint was written by an optimizer running at the configured lr, not the checkpointed 0.1
    assert r["resumed_from"] == 2
    assert _checkpointed_optimizers(_LinearStep(lr=0.5), tmp_path)["opt"].param_groups[0]["lr"] == 0.01


@pytest.mark.parametrize("bad", ["truncated_data", "garbage_metadata", "garbage_rng", "bad_meta"])
def test_damaged_checkpoint_files_are_named_and_the_previous_one_offered(tmp_path, bad):
    batch = lambda k: (torch.randn(2, 4, generator=torch.Generator().manual_seed(k)), None)  # noqa: E731
    train(_LinearStep(lr=0.1), batch, steps=2, run_dir=tmp_path, checkpoint_every=1, progress=False)
    ckpt = tmp_path / "checkpoints" / "step_0000002"
    f = {"truncated_data": "__0_0.distcp", "garbage_metadata": ".metadata", "garbage_rng": "rng_rank0.pt",
         "bad_meta": "meta.json"}[bad]
    data = (ckpt / f).read_bytes()
    damaged = b"{not json" if bad == "bad_meta" else b"garbage" if bad.startswith("garbage") else data[:len(data) // 2]
    (ckpt / f).write_bytes(damaged)
    step = _LinearStep(lr=0.1)
    before = {k: v.clone() for k, v in step.net.state_dict().items()}
    with pytest.raises(CheckpointError, match=rf"step_0000002/{re.escape(f)}.*previous complete checkpoint .*step_0000001"):
        train(step, batch, steps=3, run_dir=tmp_path, progress=False)
    assert all(torch.equal(before[k], v) for k, v in step.net.state_dict().items())


def test_stale_tmp_folders_of_killed_saves_are_removed_on_the_next_start(tmp_path):
    batch = lambda k: (torch.randn(2, 4, generator=torch.Generator().manual_seed(k)), None)  # noqa: E731
    root = tmp_path / "checkpoints"
    (root / "step_0000009.tmp-999999999").mkdir(parents=True)  # no such process
    (root / f"step_0000008.tmp-{os.getpid()}").mkdir()        # ours, from an interrupted save: stale too
    train(_LinearStep(lr=0.1), batch, steps=1, run_dir=tmp_path, progress=False)
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step_0000001"]


def _big_net_and_adam():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 256), torch.nn.Linear(256, 256))  # ~0.8 MiB with Adam's moments
    opt = torch.optim.Adam(net.parameters())
    _opt_step(net, opt)
    return net, opt


@pytest.fixture
def small_disk(tmp_path):
    """A 1.2 MiB tmpfs: room for one checkpoint of _big_net_and_adam, not two (needs root: mount)."""
    import subprocess
    mnt = tmp_path / "small"
    mnt.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1200k", "tmpfs", str(mnt)],
                                           capture_output=True).returncode:
        pytest.skip("cannot mount a small tmpfs here (needs root); the injected failure below still runs")
    yield mnt
    subprocess.run(["umount", str(mnt)], check=False)


def test_a_full_disk_during_a_save_is_one_clear_error_and_loses_nothing(small_disk):
    net, opt = _big_net_and_adam()
    save_checkpoint(small_disk, 1, {"net": net}, {"opt": opt}, {"phase": "x"})
    _opt_step(net, opt)
    with pytest.raises(CheckpointError, match=r"step_0000002 failed: the disk holding .* is full .*"
                                              r"the previous checkpoint .*step_0000001 is intact"):
        save_checkpoint(small_disk, 2, {"net": net}, {"opt": opt}, {"phase": "x"})
    assert [p.name for p in (small_disk / "checkpoints").iterdir() if p.is_dir()] == ["step_0000001"]  # no tmp left
    fresh, fresh_opt = _big_net_and_adam()
    load_checkpoint(latest_checkpoint(small_disk), {"net": fresh}, {"opt": fresh_opt})


def test_a_failing_write_during_a_save_names_the_cause_and_removes_the_incomplete_folder(tmp_path, monkeypatch):
    """Any other write failure (here DCP's writer raising PermissionError) is one CheckpointError with the cause,
    and the incomplete folder is gone."""
    import torch.distributed.checkpoint.filesystem as fs
    net, opt = _big_net_and_adam()

    def refuse(*a, **k):
        raise PermissionError(13, "Permission denied", "__0_0.distcp")
    monkeypatch.setattr(fs, "_write_item", refuse)
    with pytest.raises(CheckpointError, match=r"step_0000001 failed: writing it failed \(.*Permission denied.*"
                                              r"no earlier checkpoint of this phase exists"):
        save_checkpoint(tmp_path, 1, {"net": net}, {"opt": opt}, {"phase": "x"})
    assert list((tmp_path / "checkpoints").iterdir()) == []
