"""Experiment tracking (train.logger): TensorBoard and W&B (offline) get the same values as log.jsonl, every
logged record carries lr, throughput, step time and peak memory, a missing package is refused before anything
trains, and a killed + resumed run records each step once."""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import pytest
import torch

from vpae.config import load_config
from vpae.errors import VpaeError
from vpae.recipes import run_distill
from vpae.training import tracking
from vpae.training.loop import progress_fields, read_log

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "configs/toy/demo.yaml"


def _cfg(steps: int = 2, logger: str = "jsonl", checkpoint_every: int = 1):
    return load_config(DEMO, [f"priming.steps={steps}", "equilibrium.steps=2", "priming.batch_size=2",
                              "equilibrium.batch_size=2", "train.eval_every=0", "train.keep_checkpoints=5",
                              f"train.checkpoint_every={checkpoint_every}", "train.log_every=1",
                              f"train.logger={logger}"])


def _priming(run: Path, **kw) -> list[dict]:
    torch.manual_seed(0)
    run_distill(_cfg(**kw), run, phase="priming", progress=False)
    return read_log(run / "priming" / "log.jsonl")


def _losses(record: dict) -> dict[str, float]:
    return {k: v for k, v in record.items() if k.startswith("loss/")}


def test_log_records_lr_throughput_memory(tmp_path):
    log = _priming(tmp_path / "run")
    assert [r["step"] for r in log] == [1, 2]
    cfg = _cfg()
    for r in log:
        assert {"loss/dmd", "loss/fake", "grad_norm/generator", "grad_norm/fake", "time/step_s"} <= set(r)
        assert r["lr/generator"] == cfg.priming.lr and r["lr/fake"] == cfg.priming.fake_lr
        assert r["throughput/samples_per_s"] > 0
        # the peak of the device trained on (train.device auto: CUDA when present)
        memory = [k for k in r if k.startswith("memory/")]
        assert memory in (["memory/cuda_peak_gib"], ["memory/rss_peak_gib"]) and r[memory[0]] > 0
        # the demo's latent is 5 x 8 x 8 with the toy Wan's (1, 2, 2) patch: 80 tokens a sample
        assert r["throughput/tokens_per_s"] == pytest.approx(80 * r["throughput/samples_per_s"])


def test_resume_records_each_step_once(tmp_path):
    run = tmp_path / "run"
    first = _priming(run, steps=3, checkpoint_every=2)
    assert [r["step"] for r in first] == [1, 2, 3]
    # a run killed after logging step 3, with its last checkpoint at step 2
    shutil.rmtree(run / "priming" / "checkpoints" / "step_0000003")
    again = _priming(run, steps=3, checkpoint_every=2)
    assert [r["step"] for r in again] == [1, 2, 3]
    # the rerun of step 3 is the same step (deterministic resume), now recorded once
    assert _losses(again[2]) == pytest.approx(_losses(first[2]), rel=1e-5)
    assert not list((run / "priming").glob("*.tmp"))


def test_tensorboard_has_the_jsonl_values_and_purges_after_resume(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    run = tmp_path / "run"
    _priming(run, steps=3, logger="tensorboard", checkpoint_every=2)
    shutil.rmtree(run / "priming" / "checkpoints" / "step_0000003")
    log = _priming(run, steps=3, logger="tensorboard", checkpoint_every=2)
    events = EventAccumulator(str(run / "priming" / "tb"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"loss/dmd", "loss/fake", "lr/generator", "throughput/samples_per_s"} <= tags
    assert {k for k in log[-1] if k.startswith("memory/")} <= tags
    for tag in ("loss/dmd", "loss/fake", "grad_norm/generator", "lr/fake", "throughput/tokens_per_s"):
        scalars = events.Scalars(tag)
        assert [s.step for s in scalars] == [1, 2, 3], tag  # the killed run's step 3 purged on resume
        assert [s.value for s in scalars] == pytest.approx([r[tag] for r in log], rel=1e-6), tag  # float32


def _wandb_records(path: Path) -> list:
    """The protobuf Records of a .wandb file. wandb ships no Python reader for it (its Go core reads it): the
    file is a 7-byte header, then LevelDB-log framing (32 KiB blocks; each chunk: crc32 4, length 2, type 1 =
    full / 2 first / 3 middle / 4 last) around wandb's own Record messages."""
    from wandb.proto import wandb_internal_pb2
    data, block, pos, chunk, records = path.read_bytes(), 32768, 7, b"", []
    while pos + 7 <= len(data):
        left = block - pos % block
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7]) if left >= 7 else (0, 0, 0)
        if kind == 0:  # block trailer padding
            pos += left
            continue
        chunk += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            records.append(wandb_internal_pb2.Record.FromString(chunk))
            chunk = b""
    return records


def test_wandb_offline_run_has_the_jsonl_values(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.delenv("WANDB_MODE", raising=False)  # offline by default: no network, no account
    monkeypatch.setenv("WANDB_SILENT", "true")
    run = tmp_path / "run"
    log = _priming(run, logger="wandb")
    wdir = run / "priming" / "wandb"
    runs = list((wdir / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    records = _wandb_records(runs[0] / f"run-{(wdir / 'run_id').read_text().strip()}.wandb")
    history = {r.history.step.num: {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item}
               for r in records if r.WhichOneof("record_type") == "history"}
    assert sorted(history) == [r["step"] for r in log] == [1, 2]
    for r in log:
        for k, v in r.items():
            if k != "step":
                assert history[r["step"]][k] == v, k
    config = next(r.run.config for r in records if r.WhichOneof("record_type") == "run")
    assert "priming" in {i.key or "/".join(i.nested_key) for i in config.update}  # the run's recorded config went along


def test_missing_tracking_package_is_one_error_before_training(tmp_path, monkeypatch):
    real = tracking.importlib.util.find_spec
    monkeypatch.setattr(tracking.importlib.util, "find_spec", lambda name: None if name == "wandb" else real(name))
    with pytest.raises(VpaeError, match=r"pip install 'vpae\[tracking\]'") as e:
        run_distill(_cfg(logger="wandb"), tmp_path / "run", phase="priming", progress=False)
    assert "\n" not in str(e.value)
    assert not (tmp_path / "run" / "priming" / "log.jsonl").exists()
    assert not (tmp_path / "run" / "priming" / "checkpoints").exists()


def test_progress_fields_name_losses_and_throughput():
    stats = {"grad_norm/fake": 3.0, "loss/fake": 0.5, "grad_norm/generator": 2.0, "loss/dmd": 1.25,
             "throughput/samples_per_s": 12.5}
    assert progress_fields(stats) == {"fake": "0.5", "dmd": "1.25", "samples/s": "12.5"}


def test_jsonl_truncate_keeps_records_up_to_the_step(tmp_path):
    path = tmp_path / "log.jsonl"
    path.write_text("".join(json.dumps({"step": s, "loss/x": s / 10}) + "\n" for s in (1, 2, 3, 4, 3, 4)))
    tracking.JsonlLogger(path, resume_step=2)
    assert read_log(path) == [{"step": 1, "loss/x": 0.1}, {"step": 2, "loss/x": 0.2}]


def test_discriminator_curves_pool_the_bin_counts_over_windows():
    from vpae.training.tracking import discriminator_curves
    recs = [{"step": 10, "d/bin0_ranked": 3.0, "d/bin0_pairs": 4.0, "d/bin1_ranked": 0.0, "d/bin1_pairs": 0.0},
            {"step": 20, "d/bin0_ranked": 1.0, "d/bin0_pairs": 4.0, "d/bin1_ranked": 0.0, "d/bin1_pairs": 0.0,
             "eval/probe_acc_bin0": 0.75, "eval/probe_acc_bin1": 0.5},
            {"step": 30, "d/bin0_ranked": 2.0, "d/bin0_pairs": 2.0, "d/bin1_ranked": 1.5, "d/bin1_pairs": 2.0}]
    c = discriminator_curves(recs, window=2)
    assert c["pair accuracy bin 0"] == [(20.0, 0.5), (30.0, 1.0)]   # (3 + 1) / (4 + 4), then 2 / 2
    assert c["pair accuracy bin 1"] == [(30.0, 0.75)]               # the first window has no bin-1 pair
    assert c["probe bin 0"] == [(20.0, 0.75)] and c["probe bin 1"] == [(20.0, 0.5)]
