"""The real data source: a latent cache. Training reads only this (no video decoding, no encoders in the
loop). Layout of a cache folder:

    index.json                {"version": 1, "sizes": ConditionSizes fields, "shards": [{"file", "count"}, ...],
                               "clip": {"frames", "height", "width"} (the pixel size vpae data prepare used)}
    shard_00000.safetensors   latents (n, C, F, H, W); text (n, L_max, D) zero-padded past each item's
                              text_len (n,); negative_text (1, L_neg, D) [optional]; image (n, N, D_img)
                              [I2V]; cond_latent (n, C, F, H, W) and cond_mask (n, M, F, H, W) [I2V];
                              a text-to-video cache has none of the three, read back as None

`CacheWriter` appends shards atomically (a shard is written to a temporary name and renamed, then the index is
replaced), so a killed writer leaves a readable cache of the shards it finished. Text is stored with its real
tokens only (zero-padded within a shard) and padded to the backbone's `text_len` when loaded, as Wan pads
UMT5 states to 512 tokens.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from vpae.conditioning import Conditioning
from vpae.data.source import BatchFn, ConditionSizes, rank_share
from vpae.errors import VpaeError
from vpae.registry import register_data_source

CACHE_VERSION = 1


class CacheError(VpaeError, ValueError):
    pass


def _write_json(path: Path, obj) -> None:
    tmp = path.with_name(path.name + f".tmp-{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=1))
    os.replace(tmp, path)


class CacheWriter:
    """Writes (latents, Conditioning, text_len) items into a cache folder, `shard_size` items per shard;
    reopening an existing cache appends after its last complete shard (resume)."""

    def __init__(self, root: str | Path, sizes: ConditionSizes, shard_size: int = 256):
        self.root, self.sizes, self.shard_size = Path(root), sizes, shard_size
        self.root.mkdir(parents=True, exist_ok=True)
        index = self.root / "index.json"
        self.index = json.loads(index.read_text()) if index.is_file() else \
            {"version": CACHE_VERSION, "sizes": asdict(sizes), "shards": []}
        if self.index["sizes"] != asdict(sizes):
            raise CacheError(f"{self.root} holds a cache of other sizes {self.index['sizes']}, not {asdict(sizes)}")
        self.pending: list[dict[str, torch.Tensor]] = []
        self.negative: torch.Tensor | None = None
        self.rows_done = 0  # set by a producer (vpae data prepare): source rows covered, stored per shard

    @property
    def items(self) -> int:
        return sum(s["count"] for s in self.index["shards"]) + len(self.pending)

    def add(self, latents: torch.Tensor, cond: Conditioning, text_len: torch.Tensor) -> None:
        """A batch of items: latents (B, C, F, H, W), their Conditioning, and the real text length of each."""
        if cond.negative_text is not None and self.negative is None:
            self.negative = cond.negative_text[:1].detach().cpu().contiguous()
        for i in range(latents.shape[0]):
            item = {"latents": latents[i], "text": cond.text[i, :int(text_len[i])], "text_len": text_len[i:i + 1]}
            for name in ("image", "cond_latent", "cond_mask"):
                t = getattr(cond, name)
                if t is not None:
                    item[name] = t[i]
            self.pending.append({k: v.detach().cpu() for k, v in item.items()})
            if len(self.pending) == self.shard_size:
                self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        n, longest = len(self.pending), max(int(p["text_len"]) for p in self.pending)
        text = torch.zeros(n, max(1, longest), self.sizes.text_dim)
        for i, p in enumerate(self.pending):
            text[i, :p["text"].shape[0]] = p["text"]
        tensors = {"text": text, "text_len": torch.cat([p["text_len"] for p in self.pending]).long()}
        for name in self.pending[0]:
            if name not in ("text", "text_len"):
                tensors[name] = torch.stack([p[name] for p in self.pending]).contiguous()
        if self.negative is not None:
            tensors["negative_text"] = self.negative
        name = f"shard_{len(self.index['shards']):05d}.safetensors"
        tmp = self.root / (name + f".tmp-{os.getpid()}")
        save_file(tensors, str(tmp))
        os.replace(tmp, self.root / name)
        self.index["shards"].append({"file": name, "count": n, "rows": self.rows_done})
        _write_json(self.root / "index.json", self.index)
        self.pending = []


@register_data_source("cache")
class CacheSource:
    """DataSource over a latent cache (data.kind "cache", data.cache_dir). Global batch k of stream seed s is
    items perm_e[(k B mod N) ...] of the epoch permutation perm_e = permutation(N) seeded by (s, e): a pure
    function of (seed, step), every item once per epoch."""

    @staticmethod
    def check_data(data) -> None:
        if not data.cache_dir:
            from vpae.config import ConfigError
            raise ConfigError("data.kind cache needs data.cache_dir (a folder written by vpae data prepare)")

    @staticmethod
    def clip_size(cfg) -> dict | None:
        """{"frames", "height", "width"} the cache was prepared at (vpae data prepare records it), or None."""
        index = Path(cfg.data.cache_dir) / "index.json"
        return json.loads(index.read_text()).get("clip") if index.is_file() else None

    def __init__(self, cfg, device: str = "cpu"):
        self.root = Path(cfg.data.cache_dir)
        index = self.root / "index.json"
        if not index.is_file():
            raise CacheError(f"no latent cache at {self.root} (no index.json); write one with vpae data prepare")
        self.index = json.loads(index.read_text())
        if self.index.get("version") != CACHE_VERSION:
            raise CacheError(f"{index}: cache version {self.index.get('version')}, this vpae reads {CACHE_VERSION}")
        stored = ConditionSizes(**self.index["sizes"])
        text_len = cfg.model.text_len or stored.text_len
        self.sizes = ConditionSizes(stored.latent_channels, stored.mask_channels, stored.text_dim, text_len,
                                    stored.image_dim)
        self.counts = [s["count"] for s in self.index["shards"]]
        self.starts = np.cumsum([0] + self.counts)
        if not self.counts:
            raise CacheError(f"the latent cache at {self.root} has no shards")
        self.n = int(self.starts[-1])
        self.device = torch.device(device)
        self._open: dict[int, object] = {}

    def _shard(self, j: int):
        if j not in self._open:
            self._open[j] = safe_open(str(self.root / self.index["shards"][j]["file"]), "pt")
        return self._open[j]

    def items(self, ids) -> tuple[torch.Tensor, Conditioning]:
        rows: dict[str, list[torch.Tensor]] = {}
        lens = []
        for i in ids:
            j = int(np.searchsorted(self.starts, i, side="right") - 1)
            f, r = self._shard(j), int(i - self.starts[j])
            for name in f.keys():
                if name != "negative_text":
                    rows.setdefault(name, []).append(f.get_slice(name)[r:r + 1])
            lens.append(int(rows["text_len"][-1]))
        L = self.sizes.text_len
        if max(lens) > L:
            raise CacheError(f"cached text of {max(lens)} tokens does not fit the backbone's text_len {L}")
        text = torch.zeros(len(lens), L, self.sizes.text_dim)
        mask = torch.zeros(len(lens), L, dtype=torch.bool)
        for i, (t, n) in enumerate(zip(rows["text"], lens)):
            text[i, :n], mask[i, :n] = t[0, :n].float(), True
        neg = None
        if "negative_text" in self._shard(0).keys():
            neg_raw = self._shard(0).get_tensor("negative_text").float()
            neg = torch.zeros(1, L, self.sizes.text_dim)
            neg[:, :neg_raw.shape[1]] = neg_raw[:, :L]
            neg = neg.expand(len(lens), -1, -1)
        cat = {k: torch.cat(v).float() for k, v in rows.items() if k not in ("text", "text_len")}
        cond = Conditioning(text=text, text_mask=mask, negative_text=neg, image=cat.get("image"),
                            cond_latent=cat.get("cond_latent"), cond_mask=cat.get("cond_mask"))
        return cat["latents"].to(self.device), cond.map(lambda t: t.to(self.device))

    def batch_ids(self, batch_size: int, stream_seed: int, step: int) -> list[int]:
        out = []
        for pos in range(step * batch_size, (step + 1) * batch_size):
            epoch, i = divmod(pos, self.n)
            perm = np.random.default_rng(np.random.SeedSequence([stream_seed, epoch])).permutation(self.n)
            out.append(int(perm[i]))
        return out

    def batch_fn(self, batch_size: int, stream_seed: int, rank: int = 0, world_size: int = 1,
                 num_workers: int = 0) -> BatchFn:
        share = rank_share(batch_size, rank, world_size)
        return lambda step: self.items([self.batch_ids(batch_size, stream_seed, step)[i] for i in share])
