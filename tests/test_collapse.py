"""Collapse detectors: each failure mode of I2V distillation is flagged, healthy toy videos are not."""
import torch

from vpae.toy.world import ToyWorld, ToyWorldConfig
from vpae.training.collapse import collapse_flags, collapse_stats

WORLD = ToyWorld(ToyWorldConfig(frames=5, height=16, width=16, bounce=True, pixel_grid=True, caption_speed=False))


def _flags(gen, data):
    return collapse_flags(collapse_stats(gen, data))


def test_healthy_batch_raises_no_alarm_and_ratios_are_one_on_the_data_itself():
    data, other = WORLD.batch(16, seed=0).video, WORLD.batch(16, seed=1).video
    s = collapse_stats(data.double(), data.double())
    assert all(abs(s[f"collapse/{k}"] - 1) < 1e-6 for k in ("motion_ratio", "first_frame_drift", "contrast_ratio")), s
    assert s["collapse/flash_level"] < 0.01  # a moving object barely changes a frame's mean
    assert _flags(other, data) == []


def test_each_collapse_mode_is_flagged():
    data = WORLD.batch(16, seed=0).video
    gen = WORLD.batch(16, seed=1).video
    static = gen[:, :, :1].expand_as(gen).clone()
    assert set(_flags(static, data)) >= {"static", "first_frame_copy"}
    flashing = gen + torch.tensor([0.0, 0.8, -0.8, 0.8, -0.8]).view(1, 1, -1, 1, 1)
    assert "flashing" in _flags(flashing, data)
    # the object fades into the background over the clip: the last frame is a flat background
    vanish = gen.clone()
    vanish[:, :, -1] = vanish[:, :, -1].mean(dim=(2, 3), keepdim=True)
    assert "vanishing_object" in _flags(vanish, data)
    assert "flashing" not in _flags(static, data) and "vanishing_object" not in _flags(static, data)
