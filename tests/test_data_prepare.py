"""`vpae data prepare`: manifest -> clips -> encoders -> latent cache; bad videos are skipped and reported,
a killed run resumes after its last complete shard and ends with the same cache, training reads the result."""

from __future__ import annotations

import csv

import pytest
import torch

from vpae.config import load_config
from vpae.data.prepare import EncoderStack, PrepareError, clip_tensor, prepare, read_manifest
from vpae.eval.video import read_video, write_video
from vpae.recipes import build_data


@pytest.fixture(scope="module")
def world():
    data = build_data(load_config("configs/toy/demo.yaml"))
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
    src = build_data(load_config("configs/toy/demo.yaml", ["data.kind=cache", f"data.cache_dir={tmp_path / 'cache'}"]))
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

    def dies_at_row_six(p):
        calls.append(p)
        if len(calls) == 6:
            raise KeyboardInterrupt  # the kill
        return read_video(p)
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
