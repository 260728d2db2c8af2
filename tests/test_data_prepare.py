"""`vpae data prepare`: manifest -> clips -> encoders -> latent cache; bad videos are skipped and reported,
a killed run resumes after its last complete shard and ends with the same cache, training reads the result."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from vpae.config import load_config
from vpae.data.prepare import EncoderStack, PrepareError, clip_tensor, plan_shards, prepare, read_manifest
from vpae.eval.video import read_video, write_video
from vpae.recipes import build_data

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def world():
    data = build_data(load_config("configs/toy/demo.yaml", ["train.device=cpu"]))
    stack = EncoderStack(data.codec, data.text_encoder, data.image_encoder, data.sizes)
    return data, stack


@pytest.fixture()
def manifest(tmp_path, world):
    data, _ = world
    b = data.world.batch(5, seed=3)
    rows = []
    for i in range(5):
        write_video(tmp_path / f"v{i}.gif", b.video[i], fps=8)
        rows.append({"video": f"v{i}.gif", "caption": b.captions[i]})
    (tmp_path / "broken.gif").write_bytes(b"GIF89a not really")
    write_video(tmp_path / "short.gif", b.video[0][:, :3].contiguous(), fps=8)
    rows[2:2] = [{"video": "broken.gif", "caption": b.captions[0]}, {"video": "short.gif", "caption": b.captions[0]}]
    with (tmp_path / "m.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["video", "caption"])
        w.writeheader(), w.writerows(rows)
    return tmp_path / "m.csv", b


def test_prepare_encodes_usable_videos_and_reports_the_rest(manifest, world, tmp_path):
    data, stack = world
    path, b = manifest
    r = prepare(path, tmp_path / "cache", stack, 5, 16, 16, shard_size=2, batch_size=2, progress=False)
    assert r["items"] == 5 and [s["row"] for s in r["skipped"]] == [2, 3]
    assert "cannot decode" in r["skipped"][0]["reason"] and "too short: 3 frames" in r["skipped"][1]["reason"]
    assert "too short" in (tmp_path / "cache" / "report.md").read_text()
    src = build_data(load_config("configs/toy/demo.yaml", ["train.device=cpu", "data.kind=cache",
                                         f"data.cache_dir={tmp_path / 'cache'}"]))
    x, c = src.items(list(range(5)))
    # identity codec: the latents are the clips as decoded from the GIFs (palette quantisation only)
    want = torch.stack([clip_tensor(read_video(tmp_path / f"v{i}.gif")[0], 5, 16, 16) for i in range(5)])
    assert torch.equal(x, want) and (x - b.video).abs().max() < 0.05
    live_text, live_mask = data.text_encoder.encode(b.captions)
    assert torch.equal(c.text_mask, live_mask) and torch.equal(c.text, live_text * live_mask[..., None])


def test_a_killed_prepare_resumes_to_the_same_cache(manifest, world, tmp_path):
    _, stack = world
    path, _ = manifest
    whole = prepare(path, tmp_path / "a", stack, 5, 16, 16, shard_size=2, batch_size=1, progress=False)
    calls = []

    def dies_at_row_six(p, **kw):
        calls.append(p)
        if len(calls) == 6:
            raise KeyboardInterrupt  # the kill
        return read_video(p, **kw)
    with pytest.raises(KeyboardInterrupt):
        prepare(path, tmp_path / "b", stack, 5, 16, 16, shard_size=2, batch_size=1, progress=False,
                read_video=dies_at_row_six)
    assert not list((tmp_path / "b").glob("*.tmp-*"))
    again = prepare(path, tmp_path / "b", stack, 5, 16, 16, shard_size=2, batch_size=1, progress=False)
    assert again["items"] == whole["items"] == 5
    from safetensors.torch import load_file
    for f in sorted((tmp_path / "a").glob("shard_*.safetensors")):
        a, b = load_file(str(f)), load_file(str(tmp_path / "b" / f.name))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_bad_manifests_are_clear_errors(tmp_path):
    with pytest.raises(PrepareError, match="manifest not found"):
        read_manifest(tmp_path / "none.csv")
    (tmp_path / "m.jsonl").write_text('{"video": "a.mp4"}\n')
    with pytest.raises(PrepareError, match="row 1 needs 'video' and 'caption'"):
        read_manifest(tmp_path / "m.jsonl")


def test_data_prepare_command(manifest, tmp_path):
    from typer.testing import CliRunner

    from vpae.cli import app
    path, _ = manifest
    r = CliRunner().invoke(app, ["data", "prepare", str(path), "--out", str(tmp_path / "c"), "--config",
                                 "configs/toy/demo.yaml", "--shard-size", "2"])
    assert r.exit_code == 0, r.output
    assert "5 clips from 7 rows (2 skipped" in r.output
    r = CliRunner().invoke(app, ["data", "prepare", str(tmp_path / "none.csv"), "--out", str(tmp_path / "d"),
                                 "--config", "configs/toy/demo.yaml"])
    assert r.exit_code == 2 and "error: manifest not found" in r.output
    # a data source without a condition stack of its own (the latent cache) needs a pipeline folder's encoders
    r = CliRunner().invoke(app, ["data", "prepare", str(path), "--out", str(tmp_path / "e"), "--config",
                                 "configs/toy/demo.yaml", "--set", "data.kind=cache", "--set", "data.cache_dir=x"])
    assert r.exit_code == 2 and "error: pass --base, a local Wan pipeline folder" in r.output


def _torchrun_prepare(manifest, out, nproc: int = 2, shard_size: int = 2, batch_size: int = 2):
    """The documented command: torchrun ... -m vpae.cli data prepare (gloo on CPU, one thread per rank)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", "-m",
           "vpae.cli", "data", "prepare", str(manifest), "--out", str(out), "--config", "configs/toy/demo.yaml",
           "--shard-size", str(shard_size), "--batch-size", str(batch_size)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _cache(root):
    from safetensors.torch import load_file
    shards = {f.name: load_file(str(f)) for f in sorted(root.glob("shard_*.safetensors"))}
    return shards, json.loads((root / "index.json").read_text()), json.loads((root / "report.json").read_text())


def _assert_same_cache(a, b):
    (shards_a, index_a, report_a), (shards_b, index_b, report_b) = _cache(a), _cache(b)
    assert index_a == index_b and report_a == report_b  # shard files, counts, rows covered; skips with reasons
    assert shards_a.keys() == set(s["file"] for s in index_a["shards"])
    for name, ta in shards_a.items():
        tb = shards_b[name]
        assert ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta), name


def test_two_ranks_under_torchrun_resume_a_killed_run_to_the_one_process_cache(manifest, world, tmp_path):
    _, stack = world
    path, _ = manifest
    # 7 rows, rows 2 and 3 skipped (checked by rank 0 and rank 1); shards of 2 clips, encoded one at a time
    one = prepare(path, tmp_path / "one", stack, 5, 16, 16, shard_size=2, batch_size=1, progress=False)
    assert one["items"] == 5 and [s["row"] for s in one["skipped"]] == [2, 3]
    # A killed 2-rank run: rank 0 had published shard 0 under the stored layout (a shard is the same file
    # whoever writes it), rank 1 had not finished shard 1, nobody had written the index or the report (rank 0
    # writes them at the end). The rerun keeps shard 0, rank 1 writes shard 1 and rank 0 shard 2.
    two = tmp_path / "two"
    two.mkdir()
    layout = {"start": 0, "first": 0, "shard_size": 2, "batch_size": 1,
              "shards": [{"batches": [[0], [1]], "rows": 2}, {"batches": [[4], [5]], "rows": 6},
                         {"batches": [[6]], "rows": 7}]}
    (two / "plan.json").write_text(json.dumps(layout))
    shutil.copy(tmp_path / "one" / "shard_00000.safetensors", two)
    kept = (two / "shard_00000.safetensors").stat().st_mtime_ns
    (two / "shard_00003.safetensors").write_bytes(b"left by a run of another layout")
    proc = _torchrun_prepare(path, two, shard_size=2, batch_size=1)
    assert proc.stdout.count("5 clips from 7 rows (2 skipped") == 1  # rank 0 reports, once
    assert (two / "shard_00000.safetensors").stat().st_mtime_ns == kept
    _assert_same_cache(tmp_path / "one", two)
    assert not list(two.glob(".tmp-*")) and not (two / "plan.json").exists()
    assert sorted(f.name for f in two.glob("shard_*")) == [f"shard_0000{j}.safetensors" for j in range(3)]


def test_plan_shards_is_the_one_process_layout():
    # rows 2 and 3 skipped; a batch closes at batch_size items or at the end of a shard
    assert plan_shards([0, 1, 4, 5, 6], 7, shard_size=3, batch_size=2) == [
        {"batches": [[0, 1], [4]], "rows": 5}, {"batches": [[5, 6]], "rows": 7}]
    assert plan_shards([0, 1, 2], 5, shard_size=3, batch_size=8) == [{"batches": [[0, 1, 2]], "rows": 3}]
    assert plan_shards([], 4, shard_size=3, batch_size=2) == []


def test_data_prepare_device_errors(manifest, tmp_path):
    from typer.testing import CliRunner

    from vpae.cli import app
    path, _ = manifest
    args = ["data", "prepare", str(path), "--out", str(tmp_path / "c"), "--config", "configs/toy/demo.yaml"]
    r = CliRunner().invoke(app, args + ["--device", "tpu"])
    assert r.exit_code == 2 and "error: --device must be cpu or cuda[:N], got 'tpu'" in r.output
    if not torch.cuda.is_available():
        r = CliRunner().invoke(app, args + ["--device", "cuda"])
        assert r.exit_code == 2 and "error: --device cuda but this machine has no CUDA device" in r.output
    assert not (tmp_path / "c").exists()


def _write_manifest(path: Path, rows: list[dict]) -> Path:
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=sorted({k for r in rows for k in r}))
        w.writeheader(), w.writerows(rows)
    return path


def test_a_rows_image_is_its_condition_and_a_bad_image_skips_the_row(world, tmp_path):
    from PIL import Image

    from vpae.eval.video import read_image, to_uint8
    data, stack = world
    b = data.world.batch(2, seed=5)
    for i in range(2):
        write_video(tmp_path / f"v{i}.gif", b.video[i], fps=8)
    # a condition image of another size and aspect than the clip: resized and cropped as the clip is
    Image.fromarray(to_uint8(b.video[1])[2]).resize((24, 20)).save(tmp_path / "cond.png")
    (tmp_path / "bad.png").write_bytes(b"not a png")
    path = _write_manifest(tmp_path / "m.csv", [
        {"video": "v0.gif", "caption": b.captions[0], "image": "cond.png"},
        {"video": "v1.gif", "caption": b.captions[1], "image": ""},
        {"video": "v0.gif", "caption": b.captions[0], "image": "missing.png"},
        {"video": "v1.gif", "caption": b.captions[1], "image": "bad.png"}])
    r = prepare(path, tmp_path / "c", stack, 5, 16, 16, shard_size=4, batch_size=2, progress=False)
    assert r["items"] == 2 and [s["row"] for s in r["skipped"]] == [2, 3]
    assert "condition image not found" in r["skipped"][0]["reason"] and "missing.png" in r["skipped"][0]["reason"]
    assert "cannot read image" in r["skipped"][1]["reason"]
    src = build_data(load_config("configs/toy/demo.yaml", ["train.device=cpu", "data.kind=cache",
                                                           f"data.cache_dir={tmp_path / 'c'}"]))
    _, c = src.items([0, 1])
    image = clip_tensor(read_image(tmp_path / "cond.png")[None], 1, 16, 16)[:, 0]
    first = clip_tensor(read_video(tmp_path / "v1.gif")[0], 5, 16, 16)[:, 0]  # row 1: no image, its first frame
    cond = torch.stack([image, first])
    want_latent, want_mask = stack.codec.encode_condition(cond, 5)
    assert torch.equal(c.cond_latent, want_latent) and torch.equal(c.cond_mask, want_mask)
    assert torch.equal(c.image, stack.image_encoder(cond))
    clip0 = clip_tensor(read_video(tmp_path / "v0.gif")[0], 5, 16, 16)
    assert not torch.equal(c.cond_latent[0, :, 0], clip0[:, 0])  # not the clip's own first frame


def test_a_killed_and_rerun_prepare_reports_the_rows_skipped_before_the_kill(manifest, world, tmp_path):
    _, stack = world
    path, _ = manifest
    whole = prepare(path, tmp_path / "a", stack, 5, 16, 16, shard_size=2, batch_size=1, progress=False)
    calls = []

    def dies_at_the_last_row(p, **kw):
        calls.append(p)
        if len(calls) == 7:  # rows 0-5 read, shards of rows (0, 1) and (4, 5) published: skips 2 and 3 behind
            raise KeyboardInterrupt
        return read_video(p, **kw)
    with pytest.raises(KeyboardInterrupt):
        prepare(path, tmp_path / "b", stack, 5, 16, 16, shard_size=2, batch_size=1, progress=False,
                read_video=dies_at_the_last_row)
    assert json.loads((tmp_path / "b" / "index.json").read_text())["shards"][-1]["rows"] == 6
    with (tmp_path / "b" / "skipped.jsonl").open("a") as f:
        f.write('{"row": 6, "fi')  # a kill while a skip was written
    again = prepare(path, tmp_path / "b", stack, 5, 16, 16, shard_size=2, batch_size=1, progress=False)
    assert [s["row"] for s in again["skipped"]] == [2, 3] and again == whole
    assert json.loads((tmp_path / "b" / "report.json").read_text()) == json.loads(
        (tmp_path / "a" / "report.json").read_text())
    assert "short.gif" in (tmp_path / "b" / "report.md").read_text()


class _CountingAv:
    """av.open that counts the frames its containers decode."""

    def __init__(self, monkeypatch):
        import av
        self.decoded, real_open = 0, av.open

        class Container:
            def __init__(c, *a, **k):
                c.inner = real_open(*a, **k)

            def __getattr__(c, name):
                return getattr(c.inner, name)

            def __enter__(c):
                return c

            def __exit__(c, *exc):
                c.inner.close()

            def decode(c, *a, **k):
                for frame in c.inner.decode(*a, **k):
                    self.decoded += 1
                    yield frame
        monkeypatch.setattr(av, "open", Container)


def test_read_video_decodes_only_the_frames_it_keeps(world, tmp_path, monkeypatch):
    data, stack = world
    video = torch.rand(3, 300, 16, 16) * 2 - 1
    write_video(tmp_path / "long.mp4", video, fps=30)
    full = read_video(tmp_path / "long.mp4")[0]
    assert full.shape[0] == 300
    counter = _CountingAv(monkeypatch)
    first, fps = read_video(tmp_path / "long.mp4", max_frames=9)
    assert counter.decoded == 9 and np.array_equal(first, full[:9]) and fps == 30
    counter.decoded = 0
    path = _write_manifest(tmp_path / "m.csv", [{"video": "long.mp4", "caption": data.world.batch(1, seed=1).captions[0]}])
    r = prepare(path, tmp_path / "c", stack, 5, 16, 16, progress=False)
    assert r["items"] == 1 and counter.decoded == 5  # prepare asks for the clip's frames only
    gif = tmp_path / "long.gif"
    write_video(gif, video[:, :40], fps=8)
    assert np.array_equal(read_video(gif, max_frames=7)[0], read_video(gif)[0][:7])


def _write_with_pyav(path: Path, frames: np.ndarray, codec: str) -> None:
    import av
    with av.open(str(path), "w") as out:
        s = out.add_stream(codec, rate=8)
        s.width, s.height, s.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        for f in frames:
            for p in s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                out.mux(p)
        for p in s.encode():
            out.mux(p)


def test_common_containers_are_read_and_anything_else_is_skipped_with_its_reason(world, tmp_path):
    from vpae.eval.video import to_uint8
    data, stack = world
    b = data.world.batch(1, seed=7)
    frames = to_uint8(b.video[0])
    rows = []
    for ext, codec in ((".mov", "mpeg4"), (".mkv", "mpeg4"), (".webm", "libvpx"), (".avi", "mpeg4")):
        _write_with_pyav(tmp_path / f"v{ext}", frames, codec)
        got = read_video(tmp_path / f"v{ext}")[0]
        assert got.shape == frames.shape and np.abs(got.astype(float) - frames).mean() < 12, ext  # lossy codecs
        rows.append({"video": f"v{ext}", "caption": b.captions[0]})
    (tmp_path / "notes.mkv").write_text("not a video")
    rows.append({"video": "notes.mkv", "caption": b.captions[0]})
    r = prepare(_write_manifest(tmp_path / "m.csv", rows), tmp_path / "c", stack, 5, 16, 16, progress=False)
    assert r["items"] == 4 and [s["row"] for s in r["skipped"]] == [4]
    assert "PyAV (FFmpeg) cannot open" in r["skipped"][0]["reason"] and "notes.mkv" in r["skipped"][0]["reason"]


def test_a_manifest_without_a_usable_clip_is_an_error(manifest, tmp_path):
    from typer.testing import CliRunner

    from vpae.cli import app
    path = _write_manifest(tmp_path / "bad.csv", [{"video": "broken.gif", "caption": "a"},
                                                   {"video": "nowhere.mp4", "caption": "b"}])
    r = CliRunner().invoke(app, ["data", "prepare", str(path), "--out", str(tmp_path / "c"), "--config",
                                 "configs/toy/demo.yaml", "--device", "cpu"])
    assert r.exit_code == 2, r.output
    lines = [line for line in r.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "no usable clip" in lines[0] and "video file not found" in lines[0]
    assert "train with" not in r.output and not (tmp_path / "c" / "index.json").exists()
    assert "nowhere.mp4" in (tmp_path / "c" / "report.md").read_text()


def test_a_text_to_video_cache_has_no_image_condition_and_trains(world, manifest, tmp_path):
    import yaml
    from safetensors import safe_open

    from vpae.backbones.wan import tiny_wan_config
    from vpae.recipes import run_distill
    data, _ = world
    path, _ = manifest
    t2v = EncoderStack(data.codec, data.text_encoder, None, replace(data.sizes, image_dim=None))
    r = prepare(path, tmp_path / "c", t2v, 5, 16, 16, shard_size=4, progress=False)
    assert r["items"] == 5
    for shard in sorted((tmp_path / "c").glob("shard_*.safetensors")):
        with safe_open(str(shard), "pt") as f:
            assert set(f.keys()) == {"latents", "text", "text_len", "negative_text"}
    cfg = yaml.safe_load((ROOT / "configs/toy/demo.yaml").read_text())
    wan = tiny_wan_config(False, latent_channels=3, text_dim=data.sizes.text_dim, patch_size=(1, 4, 4),
                          num_layers=1, freq_dim=32)
    cfg["model"] = {"teacher": "", "text_len": data.sizes.text_len,
                    "wan_config": {**wan, "patch_size": list(wan["patch_size"])}}
    cfg["data"].update(kind="cache", cache_dir=str(tmp_path / "c"))
    cfg.setdefault("train", {}).update(device="cpu", eval_every=0)
    for phase in ("priming", "equilibrium"):
        cfg[phase].update(steps=1, batch_size=2)
    (tmp_path / "t2v.yaml").write_text(yaml.safe_dump(cfg))
    src = build_data(load_config(tmp_path / "t2v.yaml"))
    _, c = src.items([0, 1])
    assert c.image is None and c.cond_latent is None and c.cond_mask is None and not c.is_i2v
    out = run_distill(load_config(tmp_path / "t2v.yaml"), tmp_path / "run", progress=False)
    assert out["priming"]["step"] == 1 and out["equilibrium"]["step"] == 1
