"""The latent cache data source: items written by CacheWriter come back exactly (text zero-padded to the
backbone's text_len), batches are pure functions of (seed, step) with rank shares that make up the global
batch, a killed writer leaves a readable cache, and `vpae distill` trains from a cache alone."""

from __future__ import annotations

import pytest
import torch

from vpae.config import ConfigError, load_config
from vpae.data.cache import CacheError, CacheWriter
from vpae.recipes import build_data, run_distill


@pytest.fixture(scope="module")
def toy_cache(tmp_path_factory):
    """12 toy training items written in shards of 5 (5, 5, 2), and the batches they came from."""
    data = build_data(load_config("configs/toy/demo.yaml", ["train.device=cpu"]))
    root = tmp_path_factory.mktemp("cache")
    w = CacheWriter(root, data.sizes, shard_size=5)
    batches = [data.batch_fn(4, 5)(k) for k in range(3)]
    for x, c in batches:
        w.add(x, c, c.text_mask.sum(1))
    w.flush()
    return root, batches


def _cache_cfg(root, *extra):
    return load_config("configs/toy/demo.yaml", ["train.device=cpu", "data.kind=cache", f"data.cache_dir={root}", *extra])


def test_items_come_back_exactly(toy_cache):
    root, batches = toy_cache
    src = build_data(_cache_cfg(root))
    assert src.n == 12 and [s["count"] for s in src.index["shards"]] == [5, 5, 2]
    x, c = src.items(list(range(12)))
    want_x = torch.cat([b[0] for b in batches])
    want_text = torch.cat([b[1].text * b[1].text_mask[..., None] for b in batches])
    assert torch.equal(x, want_x)
    assert torch.equal(c.text, want_text) and torch.equal(c.text_mask, torch.cat([b[1].text_mask for b in batches]))
    for name in ("image", "cond_latent", "cond_mask"):
        assert torch.equal(getattr(c, name), torch.cat([getattr(b[1], name) for b in batches])), name
    assert torch.equal(c.negative_text[0], batches[0][1].negative_text[0])


def test_batches_are_pure_functions_of_seed_and_step_and_cover_each_epoch(toy_cache):
    src = build_data(_cache_cfg(toy_cache[0]))
    ids = [i for k in range(3) for i in src.batch_ids(4, 7, k)]
    assert sorted(ids) == list(range(12))  # one epoch: every item once
    assert src.batch_ids(4, 7, 1) == src.batch_ids(4, 7, 1) and src.batch_ids(4, 7, 1) != src.batch_ids(4, 8, 1)
    whole = src.batch_fn(4, 7)(2)
    parts = [src.batch_fn(4, 7, rank=r, world_size=2)(2) for r in range(2)]
    assert torch.equal(torch.cat([p[0] for p in parts]), whole[0])


def test_a_killed_writer_leaves_a_readable_cache_and_resumes(tmp_path, toy_cache):
    data = build_data(load_config("configs/toy/demo.yaml", ["train.device=cpu"]))
    x, c = data.batch_fn(4, 5)(0)
    w = CacheWriter(tmp_path, data.sizes, shard_size=2)
    w.add(x[:3], c[:3], c.text_mask[:3].sum(1))  # one shard written, one item pending: "killed" here
    (tmp_path / "shard_00001.safetensors.tmp-1").write_bytes(b"half a shard")
    assert build_data(_cache_cfg(tmp_path)).n == 2
    w2 = CacheWriter(tmp_path, data.sizes, shard_size=2)  # resume appends after the complete shards
    w2.add(x[2:], c[2:], c.text_mask[2:].sum(1))
    assert build_data(_cache_cfg(tmp_path)).n == 4


def test_bad_caches_and_configs_are_clear_errors(tmp_path, toy_cache):
    with pytest.raises(ConfigError, match="needs data.cache_dir"):
        load_config("configs/toy/demo.yaml", ["data.kind=cache"])
    with pytest.raises(CacheError, match="no latent cache"):
        build_data(_cache_cfg(tmp_path))
    with pytest.raises(CacheError, match="does not fit the backbone's text_len 4"):
        src = build_data(_cache_cfg(toy_cache[0], "model.text_len=4"))
        src.items([0])


def test_distill_trains_from_the_cache_alone(toy_cache, tmp_path):
    cfg = _cache_cfg(toy_cache[0], "priming.steps=2", "equilibrium.steps=2", "priming.batch_size=2",
                     "equilibrium.batch_size=2", "train.eval_every=0")
    r = run_distill(cfg, tmp_path / "run", progress=False)
    assert r["priming"]["step"] == 2 and r["equilibrium"]["step"] == 2
    assert (tmp_path / "run" / "generator" / "config.json").is_file()
