"""The procedural toy world: sizes, validation, determinism, held-out split, caption/param consistency."""

from __future__ import annotations

import dataclasses
import itertools
import time

import numpy as np
import pytest
import torch

from vpae.toy.oracle import track_object
from vpae.toy.world import (
    BACKGROUNDS,
    COLOURS,
    DIRECTIONS,
    SHAPES,
    ToyWorld,
    ToyWorldConfig,
    all_captions,
    bounces,
    caption,
    parse_caption,
    render,
    sample_params,
    trajectory,
)


@pytest.fixture(scope="module")
def world():
    return ToyWorld()


def test_default_batch_shape_dtype_range(world):
    b = world.batch(5, seed=0)
    assert b.video.shape == (5, 3, 9, 32, 32) and b.video.dtype == torch.float32
    assert b.video.min() >= -1 and b.video.max() <= 1
    assert len(b) == 5 and len(b.params) == 5 and len(b.captions) == 5
    assert b.first_frame.shape == (5, 3, 32, 32)
    assert torch.equal(b.first_frame, b.video[:, :, 0])


@pytest.mark.parametrize("kwargs, match", [
    (dict(frames=8), "4n\\+1"), (dict(frames=0), "4n\\+1"), (dict(height=8), "height"),
    (dict(width=36), "width"), (dict(colours=("red", "purple")), "colours"), (dict(shapes=()), "shapes"),
    (dict(fast_travel=0.9), "bounce=True"), (dict(small_radius=0.2, large_radius=0.1), "radius"),
])
def test_config_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ToyWorldConfig(**kwargs)


def test_other_valid_sizes_render():
    cfg = ToyWorldConfig(frames=5, height=48, width=64)
    b = ToyWorld(cfg).batch(2, seed=1)
    assert b.video.shape == (2, 3, 5, 48, 64)
    ToyWorldConfig(fast_travel=0.9, bounce=True)  # allowed with bounce


def test_determinism_per_seed(world):
    a, b, c = world.batch(4, seed=3), world.batch(4, seed=3), world.batch(4, seed=4)
    assert torch.equal(a.video, b.video) and a.params == b.params and a.captions == b.captions
    assert not torch.equal(a.video, c.video)
    rng1, rng2 = np.random.default_rng(11), np.random.default_rng(11)
    assert sample_params(rng1) == sample_params(rng2)


def test_stream_is_reproducible_and_indexable(world):
    first = list(itertools.islice(world.stream(3, seed=7), 4))
    again = list(itertools.islice(world.stream(3, seed=7), 4))
    for x, y in zip(first, again):
        assert torch.equal(x.video, y.video) and x.params == y.params
    # batch k depends only on (seed, k): resuming at k gives the same batch
    resumed = next(world.stream(3, seed=7, start=2))
    assert resumed.params == first[2].params == world.stream_batch(3, 7, 2).params
    assert first[0].params != first[1].params
    assert next(world.stream(3, seed=8)).params != first[0].params


def test_heldout_fixed_and_disjoint_from_training(world):
    h1, h2 = world.heldout(64, seed=0), world.heldout(64, seed=0)
    assert h1.params == h2.params and torch.equal(h1.video, h2.video)
    train = set(world.batch(64, seed=0).params)
    for b in itertools.islice(world.stream(64, seed=0), 4):
        train |= set(b.params)
    assert len(train) == 64 * 5
    assert not (set(h1.params) & train)
    vids = {v.numpy().tobytes() for v in world.batch(64, seed=0).video}
    assert not any(v.numpy().tobytes() in vids for v in h1.video)


def test_captions_match_params(world):
    b = world.heldout(48)
    for p, cap in zip(b.params, b.captions):
        assert cap == caption(p, world.cfg)
        parsed = parse_caption(cap)
        for k, v in parsed.items():
            assert getattr(p, k) == v
    assert len(set(b.captions)) > 30  # varied content
    # every attribute value occurs in a modest sample
    many = world.batch(200, seed=1).params
    for attr, vocab in (("shape", SHAPES), ("colour", COLOURS), ("background", BACKGROUNDS),
                        ("direction", DIRECTIONS)):
        assert {getattr(p, attr) for p in many} == set(vocab)
    caps = all_captions(world.cfg)
    assert len(caps) == len(set(caps)) == 4 * 6 * 2 * 4 * 4 * 2
    assert set(b.captions) <= set(caps)


def test_rendered_object_matches_params(world):
    """The pixels show what the caption says: the named colour, moving on the param trajectory at the
    captioned speed (1 px/frame slow, 2 px/frame fast at 32x32), never leaving the frame."""
    b = world.heldout(24, seed=5)
    for v, p in zip(b.video, b.params):
        tr = track_object(v, p.rgb)
        expected = trajectory(p, 9, 32, 32)
        assert np.abs(tr["centroids"] - expected).max() < 0.35
        assert np.abs(tr["colours"][0] - np.asarray(p.rgb)).max() < 0.1
        disp = expected[-1] - expected[0]
        assert np.allclose(np.abs(disp).sum(), {"slow": 8.0, "fast": 16.0}[p.speed])
        assert np.allclose(np.sign(disp), DIRECTIONS[p.direction])
        m = 1.3 * p.radius
        assert (expected - m >= 0).all() and (expected[:, 0] + m <= 32).all() and (expected[:, 1] + m <= 32).all()


def test_background_is_static_and_low_contrast(world):
    from vpae.toy.world import object_alpha, render_numpy

    for p in world.batch(8, seed=2).params:
        bg = (render_numpy(p, world.cfg, with_object=False) + 1) / 2
        assert np.array_equal(bg, np.broadcast_to(bg[:, :1], bg.shape))  # static
        assert bg.min() >= 0.16 - 1e-6 and bg.max() <= 0.26 + 1e-6  # dark, low contrast
        v = (render(p).numpy() + 1) / 2
        outside = object_alpha(p, world.cfg)[None] == 0
        assert np.allclose(v[np.broadcast_to(outside, v.shape)], bg[np.broadcast_to(outside, v.shape)])


def test_bounce_reflects_and_says_so():
    cfg = ToyWorldConfig(bounce=True, fast_travel=1.5)
    p = dataclasses.replace(sample_params(np.random.default_rng(0), cfg), direction="left", speed="fast",
                            x0=8.0, speed_px=cfg.speed_px("fast"))
    tr = trajectory(p, cfg.frames, cfg.height, cfg.width)
    assert bounces(p, cfg.frames, cfg.height, cfg.width)
    assert "bounces back" in caption(p, cfg)
    assert tr[:, 0].min() >= 1.3 * p.radius and np.diff(tr[:, 0])[-1] > 0  # moving right after the bounce
    assert parse_caption(caption(p, cfg))["direction"] == "left"


def test_render_speed(world):
    world.batch(32, seed=0)
    t = time.perf_counter()
    world.batch(32, seed=1)
    assert time.perf_counter() - t < 1.0  # ~0.07 s measured on 2 cores
