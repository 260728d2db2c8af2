"""`vpae data synthesize`: the teacher's multi-step samples for a caption (+ image) list, in the cache format;
a row's sample is independent of batching and resume, and training reads the result."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
from PIL import Image

from vpae.config import load_config
from vpae.data.prepare import EncoderStack
from vpae.data.synthesize import synthesize
from vpae.models import build_teacher
from vpae.recipes import build_data, run_distill
from vpae.sampling import initial_noise, teacher_sample


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    cfg = load_config("configs/toy/demo.yaml")
    data = build_data(cfg)
    b = data.world.batch(3, seed=9)
    d = tmp_path_factory.mktemp("synth")
    rows = []
    for i in range(3):
        frame = ((b.first_frame[i].permute(1, 2, 0).numpy() + 1) * 127.5).round().astype(np.uint8)
        Image.fromarray(frame).save(d / f"f{i}.png")
        rows.append({"caption": b.captions[i], "image": f"f{i}.png"})
    rows.insert(1, {"caption": b.captions[0], "image": "missing.png"})
    with (d / "m.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["caption", "image"])
        w.writeheader(), w.writerows(rows)
    stack = EncoderStack(data.codec, data.text_encoder, data.image_encoder, data.sizes)
    return cfg, data, build_teacher(cfg).eval(), stack, d, b


def test_synthesized_items_are_the_teachers_samples(setup):
    cfg, data, teacher, stack, d, b = setup
    r = synthesize(d / "m.csv", d / "cache", teacher, stack, 5, 16, 16, steps=2, guidance=2.0, seed=4,
                   shard_size=2, batch_size=2, progress=False)
    assert r["items"] == 3 and [s["row"] for s in r["skipped"]] == [1] and "not found" in r["skipped"][0]["reason"]
    src = build_data(load_config("configs/toy/demo.yaml", ["data.kind=cache", f"data.cache_dir={d / 'cache'}"]))
    x, c = src.items([0, 1, 2])
    # row i's sample, computed alone: same noise, same conditioning (from the same PNG)
    from vpae.codecs import make_conditioning
    from vpae.data.synthesize import _image
    for k, row in enumerate([0, 2, 3]):
        img = _image(str(d / f"f{k}.png"), 16, 16)[None]
        cond = make_conditioning(img, [b.captions[k]], data.text_encoder, data.image_encoder, data.codec, 5)
        want = teacher_sample(teacher, initial_noise(x.shape[1:], 4 * 100003 + row)[None], cond, 2, 2.0, 3.0).x0
        # float32: one item against a batch of two through the same network (batch-size-dependent kernels)
        torch.testing.assert_close(x[k:k + 1], want, rtol=0, atol=1e-5)
        assert torch.equal(c.cond_latent[k:k + 1], cond.cond_latent)


def test_training_reads_the_synthetic_set(setup, tmp_path):
    cfg, data, teacher, stack, d, b = setup
    synthesize(d / "m.csv", tmp_path / "c", teacher, stack, 5, 16, 16, steps=2, progress=False)
    run = run_distill(load_config("configs/toy/demo.yaml", ["data.kind=cache", f"data.cache_dir={tmp_path / 'c'}",
                                                            "priming.steps=1", "equilibrium.steps=1",
                                                            "priming.batch_size=1", "equilibrium.batch_size=1",
                                                            "train.eval_every=0"]), tmp_path / "run", progress=False)
    assert run["equilibrium"]["step"] == 1


def test_synthesize_command(setup, tmp_path):
    from typer.testing import CliRunner

    from vpae.cli import app
    d = setup[4]
    r = CliRunner().invoke(app, ["data", "synthesize", str(d / "m.csv"), "--out", str(tmp_path / "c"), "--config",
                                 "configs/toy/demo.yaml", "--set", "sampling.teacher_steps=2"])
    assert r.exit_code == 0, r.output
    assert "3 synthetic clips from 4 rows (1 skipped)" in r.output
