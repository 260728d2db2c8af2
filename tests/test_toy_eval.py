"""Toy-world evaluation helpers: the direction-word sensitivity probe of a teacher."""

import pytest
import torch

from vpae.config import load_config
from vpae.toy.data import ToyData
from vpae.toy.evaluate import OPPOSITE_DIRECTION, direction_sensitivity, opposite_direction_captions, sampler_from_spec
from vpae.toy.world import parse_caption


@pytest.fixture(scope="module")
def data():
    cfg = load_config("configs/toy/demo.yaml", ["data.toy.caption_bank=.cache/toy_captions.safetensors"])
    return ToyData(cfg)


class TextBlind(torch.nn.Module):
    """A 'model' whose velocity ignores the conditioning entirely."""

    def velocity(self, x_t, sigma, cond):
        return 0.5 * x_t


class DirectionReader(torch.nn.Module):
    """Predicts the exact flow target when the caption embedding is the one it memorised, a wrong one otherwise."""

    def __init__(self, x, eps, text):
        super().__init__()
        self.x, self.eps, self.text = x, eps, text

    def velocity(self, x_t, sigma, cond):
        right = (cond.text == self.text).flatten(1).all(1).view(-1, 1, 1, 1, 1)
        return torch.where(right, self.eps - self.x, self.eps + self.x)


def test_opposite_captions_change_only_the_direction(data):
    batch = data.heldout(8)
    for c, o, p in zip(batch.captions, opposite_direction_captions(batch), batch.params):
        a, b = parse_caption(c), parse_caption(o)
        if p.sign_stated:
            assert b.pop("direction") == OPPOSITE_DIRECTION[a.pop("direction")] and a == b
        else:  # an axis-only caption gets the other axis
            assert {a.pop("axis"), b.pop("axis")} == {"horizontal", "vertical"} and a == b
        assert len(c.split()) == len(o.split())


def test_direction_sensitivity_is_one_for_a_text_blind_model_and_large_for_a_reader(data):
    batch = data.heldout(4)
    blind = direction_sensitivity(TextBlind(), data, batch, sigmas=(0.9, 0.5))
    assert blind == {0.9: 1.0, 0.5: 1.0}  # exactly: same prediction, same loss
    x, cond = data.encode(batch)
    from vpae.sampling import initial_noise
    reader = DirectionReader(x, initial_noise(x.shape, 0), cond.text)
    # The true caption gives loss 0 up to rounding, the opposite one a loss of order |2x|^2: a huge ratio.
    assert direction_sensitivity(reader, data, batch, sigmas=(0.9,))[0.9] > 1e3


def _direction_from_start_position(params, cfg) -> float:
    """Accuracy of guessing the direction as the one with the most room from the start position."""
    hits = 0
    for p in params:
        room = {"left": p.x0, "right": cfg.width - p.x0, "up": p.y0, "down": cfg.height - p.y0}
        hits += max(room, key=room.get) == p.direction
    return hits / len(params)


def test_bounce_world_removes_the_start_position_leak():
    # the shipped world (demo config) against a world of straight paths that fit: 9 x 32 x 32
    fair = ToyData(load_config("configs/toy/demo.yaml")).world
    leaky = ToyData(load_config("configs/toy/demo.yaml", ["data.toy.bounce=false", "data.frames=9", "data.height=32",
                                                          "data.width=32", "data.toy.pixel_grid=false",
                                                          "data.toy.small_radius=0.09375",
                                                          "data.toy.large_radius=0.15625"])).world
    assert fair.cfg.bounce and not leaky.cfg.bounce
    a = _direction_from_start_position(leaky.heldout(400).params, leaky.cfg)
    b = _direction_from_start_position(fair.heldout(400).params, fair.cfg)
    assert a > 0.5 and b < 0.35  # chance is 0.25


def test_shipped_teacher_reads_the_direction_word(data):
    """The shipped teacher's flow loss is clearly worse with the opposite direction word (it follows captions; a
    teacher that ignores the caption scores 1.0). Measured at export: 13.2 at sigma 0.9 on 64 videos
    (eval.json); 16 videos leave room for sampling spread."""
    from vpae.models import build_teacher
    teacher = build_teacher(load_config("configs/toy/demo.yaml"))
    ratio = direction_sensitivity(teacher, data, data.heldout(16), sigmas=(0.9,))[0.9]
    assert ratio > 4.0


def test_sampler_from_spec():
    cfg = load_config("configs/toy/demo.yaml")
    model, spec = sampler_from_spec("builtin:toy:few_step:50", cfg)  # the path may hold a colon itself
    assert not model.training and model.num_layers == 4
    assert (spec.sampler, spec.steps, spec.guidance, spec.shift) == ("few_step", 50, 1.0, cfg.sampling.shift)
    assert sampler_from_spec("builtin:toy:euler:1", cfg)[1].shift == 1.0
    for bad in ("builtin:toy", "builtin:toy:heun:4", "builtin:toy:euler:0", "builtin:toy:euler:x"):
        with pytest.raises(ValueError, match="PATH:SAMPLER:STEPS"):
            sampler_from_spec(bad, cfg)


def test_teacher_on_another_toy_world_warns_naming_the_fields():
    """The shipped teacher's own world (configs) is silent; another object size warns with both values. The check
    is the toy family's (vpae.registry), called by models.build_teacher."""
    import warnings

    from vpae import registry
    from vpae.models import build_teacher, read_model_meta
    from vpae.toy.family import BUILTIN_TEACHER, warn_if_other_toy_world
    meta = read_model_meta(BUILTIN_TEACHER)
    assert registry.family_of(meta, BUILTIN_TEACHER).name == "toy"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        build_teacher(load_config("configs/toy/demo.yaml"))
        assert warn_if_other_toy_world(load_config("configs/toy/teacher.yaml"), meta) == []
    other = load_config("configs/toy/demo.yaml", ["data.toy.small_radius=0.09375", "data.toy.speeds=[slow,fast]"])
    with pytest.warns(UserWarning, match=r"data.toy.small_radius 0.15625 \(teacher\) vs 0.09375 \(config\)"):
        assert warn_if_other_toy_world(other, meta) == ["data.toy.speeds", "data.toy.small_radius"]
    with pytest.warns(UserWarning, match=r"data.toy.small_radius"):
        build_teacher(other)


def test_the_toy_world_check_reads_the_flat_vpae_json_of_earlier_exports_too():
    """Models exported before data.toy existed record the toy settings flat in "data"."""
    from vpae.models import read_model_meta
    from vpae.toy.family import BUILTIN_TEACHER, warn_if_other_toy_world
    meta = read_model_meta(BUILTIN_TEACHER)
    flat = {**meta, "data": {**{k: v for k, v in meta["data"].items() if k != "toy"}, **meta["data"]["toy"]}}
    other = load_config("configs/toy/demo.yaml", ["data.toy.small_radius=0.09375"])
    with pytest.warns(UserWarning, match=r"data.toy.small_radius 0.15625 \(teacher\)"):
        assert warn_if_other_toy_world(other, flat) == ["data.toy.small_radius"]
    assert warn_if_other_toy_world(load_config("configs/toy/demo.yaml"), flat) == []


def test_the_toy_data_source_offers_the_pretraining_probe(data):
    """ToyData.pretrain_probe(ema, n): step -> the direction-word probe at three noise levels (vpae pretrain logs it)."""
    probe = data.pretrain_probe(TextBlind(), 2)
    out = probe(0)
    assert list(out) == ["direction_ratio@0.97", "direction_ratio@0.9", "direction_ratio@0.5"]
    assert all(v == pytest.approx(1.0) for v in out.values())  # a caption-blind model: the word does not matter
