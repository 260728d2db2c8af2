"""The DataSource contract on the toy source: batches are pure functions of (seed, step), and the shares of
all ranks, in rank order, are exactly the single-process batch (what multi-process training relies on)."""

from __future__ import annotations

import pytest
import torch

from vpae.config import load_config
from vpae.data.source import rank_share
from vpae.errors import VpaeError
from vpae.recipes import build_data


@pytest.fixture(scope="module")
def data():
    return build_data(load_config("configs/toy/demo.yaml"))


def test_rank_shares_make_up_the_global_batch(data):
    whole_x, whole_c = data.batch_fn(4, 7)(3)
    parts = [data.batch_fn(4, 7, rank=r, world_size=2)(3) for r in range(2)]
    assert torch.equal(torch.cat([p[0] for p in parts]), whole_x)
    assert torch.equal(torch.cat([p[1].text for p in parts]), whole_c.text)
    assert torch.equal(torch.cat([p[1].cond_latent for p in parts]), whole_c.cond_latent)
    again_x, _ = data.batch_fn(4, 7)(3)
    assert torch.equal(again_x, whole_x)  # a pure function of (seed, step)
    assert not torch.equal(data.batch_fn(4, 7)(4)[0], whole_x)


def test_sizes_describe_what_a_backbone_must_read(data):
    s = data.sizes
    x, c = data.batch_fn(2, 0)(0)
    assert (s.latent_channels, s.mask_channels) == (x.shape[1], c.cond_mask.shape[1])
    assert (s.text_len, s.text_dim, s.image_dim) == (c.text.shape[1], c.text.shape[2], c.image.shape[2])


def test_rank_share_refuses_uneven_or_impossible_splits():
    assert rank_share(8, 3, 4) == range(6, 8)
    with pytest.raises(VpaeError, match="multiple of the 3 processes"):
        rank_share(8, 0, 3)
    with pytest.raises(VpaeError, match="rank 2 is not in a world of 2"):
        rank_share(8, 2, 2)
