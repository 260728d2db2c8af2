"""The toy world as a data source (`data.kind: toy`, settings in the section data.toy): rendered videos through
the identity codec, captions through MiniLM (or a precomputed caption bank), first frames through the
parameter-free patch encoder. Batches of (latents, Conditioning) that are pure functions of (seed, step)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from vpae.codecs import IdentityCodec, make_conditioning
from vpae.conditioning import Conditioning
from vpae.config import ConfigError, DataConfig, VPAEConfig
from vpae.data.source import BatchFn, ConditionSizes, rank_share
from vpae.registry import register_data_source
from vpae.toy.encoders import PatchImageEncoder, TextEncoder
from vpae.toy.world import ToyBatch, ToyDataConfig, ToyWorld, ToyWorldConfig, all_captions, world_config


class CaptionBank:
    """Precomputed text embeddings of every toy caption (and the empty negative prompt), with the
    TextEncoder's interface. Lets machines without the MiniLM package (a GPU box) train on the toy world."""

    def __init__(self, path: str | Path):
        from safetensors import safe_open
        from safetensors.torch import load_file
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"caption bank not found: {path}")
        t = load_file(str(path))
        with safe_open(str(path), "pt") as f:
            captions = json.loads(f.metadata()["captions"])
        self.index = {c: i for i, c in enumerate(captions)}
        self.emb, self.mask = t["emb"].float(), t["mask"].bool()
        self.dim = self.emb.shape[-1]
        self.max_tokens = self.emb.shape[1]

    def encode(self, captions):
        try:
            idx = torch.tensor([self.index[c] for c in captions], dtype=torch.long)
        except KeyError as e:
            raise KeyError(f"caption not in the bank: {e}") from e
        return self.emb[idx], self.mask[idx]

    def negative(self, batch_size: int | None = None):
        e = self.encode([""])[0]
        return e if batch_size is None else e.expand(batch_size, -1, -1)


def build_caption_bank(path: str | Path, max_tokens: int = 24, world_cfg: ToyWorldConfig | None = None,
                       captions: list[str] | None = None) -> Path:
    """Encode every toy caption (or the given ones) plus "" into a safetensors bank."""
    from safetensors.torch import save_file
    captions = [""] + sorted(set(captions) if captions is not None else all_captions(world_cfg or ToyWorldConfig()))
    enc = Fp16TextEncoder(TextEncoder(max_tokens=max_tokens))
    embs, masks = [], []
    for i in range(0, len(captions), 128):
        e, m = enc.encode(captions[i:i + 128])
        embs.append(e), masks.append(m)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({"emb": torch.cat(embs).half(), "mask": torch.cat(masks).to(torch.uint8)}, str(path),
              metadata={"captions": json.dumps(captions)})
    return path


class Fp16TextEncoder:
    """TextEncoder outputs rounded to float16 precision, so live encoding equals the CaptionBank exactly."""

    def __init__(self, enc: TextEncoder):
        self.enc, self.dim, self.max_tokens = enc, enc.dim, enc.max_tokens

    def encode(self, captions):
        e, m = self.enc.encode(list(captions))
        return e.half().float(), m

    def negative(self, batch_size: int | None = None):
        return self.enc.negative(batch_size).half().float()


def _text_encoder(caption_bank: str, text_tokens: int, world: ToyWorldConfig):
    """The caption bank when it holds every caption of this world; a missing or stale bank (another world's
    captions) is (re)built first, which needs the MiniLM package. No bank: MiniLM live."""
    if not caption_bank:
        return Fp16TextEncoder(TextEncoder(max_tokens=text_tokens))
    bank_path = Path(caption_bank)
    if bank_path.is_file():
        bank = CaptionBank(bank_path)
        if bank.max_tokens == text_tokens and set(all_captions(world)) <= set(bank.index):
            return bank
    tmp = bank_path.with_name(bank_path.name + f".tmp-{os.getpid()}")
    build_caption_bank(tmp, text_tokens, world)
    os.replace(tmp, bank_path)
    return CaptionBank(bank_path)


@register_data_source("toy")
class ToyData:
    """The toy world with its encoders and codec: batches of (latents, Conditioning)."""

    config_class = ToyDataConfig
    """The section data.toy."""
    model_family = "toy"
    """Its condition stack (vpae.toy.family): what `vpae data prepare` encodes toy videos with."""

    @staticmethod
    def check_data(data: DataConfig) -> None:
        """The world's own checks of the data section (frame size, paths that fit), as config errors."""
        try:
            world_config(data)
        except ValueError as err:
            raise ConfigError(f"data: {err}") from None

    def __init__(self, cfg: VPAEConfig, device: str = "cpu"):
        d, t = cfg.data, cfg.data.toy
        self.world = ToyWorld(world_config(d))
        self.text_encoder = _text_encoder(t.caption_bank, d.text_tokens, self.world.cfg)
        self.image_encoder = PatchImageEncoder(patch_size=t.image_patch)
        self.codec = IdentityCodec()
        self.frames = d.frames
        self.device = torch.device(device)
        self.seed = cfg.train.seed

    def conditioning(self, batch: ToyBatch) -> Conditioning:
        return make_conditioning(batch.video, batch.captions, self.text_encoder, self.image_encoder,
                                 self.codec, self.frames).to(self.device)

    def encode(self, batch: ToyBatch) -> tuple[torch.Tensor, Conditioning]:
        return self.codec.encode(batch.video).to(self.device), self.conditioning(batch)

    @property
    def sizes(self) -> ConditionSizes:
        return ConditionSizes(latent_channels=self.codec.latent_channels, mask_channels=self.codec.mask_channels,
                              text_dim=self.text_encoder.dim, text_len=self.text_encoder.max_tokens,
                              image_dim=self.image_encoder.dim)

    def batch_fn(self, batch_size: int, stream_seed: int, rank: int = 0, world_size: int = 1,
                 num_workers: int = 0) -> BatchFn:
        """step -> (latents, cond): this rank's items of world.stream_batch(batch_size, stream_seed, step)."""
        items = rank_share(batch_size, rank, world_size)
        if num_workers <= 0:
            return lambda step: self.encode(self.world.stream_batch(batch_size, stream_seed, step, items))
        return _PrefetchedBatches(self, batch_size, stream_seed, num_workers, items)

    def heldout(self, n: int) -> ToyBatch:
        return self.world.heldout(n, seed=self.seed)

    def validation(self, n: int, seed: int = 0) -> ToyBatch:
        """The validation split settings are chosen on (the same for every training seed)."""
        return self.world.validation(n, seed=seed)

    def pretrain_probe(self, ema, n: int):
        """step -> the teacher's direction-word probe on n held-out videos, {"direction_ratio@<sigma>": loss
        ratio} (does the EMA teacher read the caption's direction yet? vpae.toy.evaluate.direction_sensitivity)."""
        from vpae.toy.evaluate import direction_sensitivity
        batch = self.heldout(max(1, n))

        def probe(_step: int) -> dict[str, float]:
            r = direction_sensitivity(ema, self, batch, sigmas=(0.97, 0.9, 0.5))
            return {f"direction_ratio@{s:g}": v for s, v in r.items()}
        return probe

    def wan_config(self, **overrides) -> dict:
        """A Wan config whose input/output/text/image sizes match this data source."""
        from vpae.backbones.wan import tiny_wan_config
        kw = dict(latent_channels=self.codec.latent_channels, mask_channels=self.codec.mask_channels,
                  text_dim=self.text_encoder.dim, image_dim=self.image_encoder.dim)
        kw.update(overrides)
        return tiny_wan_config(True, **kw)


class _StreamDataset(torch.utils.data.Dataset):
    def __init__(self, world: ToyWorld, batch_size: int, seed: int, start: int, items: range):
        self.world, self.batch_size, self.seed, self.start, self.items = world, batch_size, seed, start, items

    def __len__(self):
        return 1 << 40

    def __getitem__(self, k):
        b = self.world.stream_batch(self.batch_size, self.seed, self.start + k, self.items)
        return b.video, b.captions


def _one_thread(_worker_id: int) -> None:
    torch.set_num_threads(1)


class _PrefetchedBatches:
    """Renders stream batches in DataLoader workers, in order; the same batches as the synchronous path."""

    def __init__(self, data: "ToyData", batch_size: int, seed: int, num_workers: int, items: range):
        self.data, self.batch_size, self.seed, self.num_workers, self.items = data, batch_size, seed, num_workers, items
        self.next_step, self.it = None, None

    def __call__(self, step: int):
        if step != self.next_step:
            stream = _StreamDataset(self.data.world, self.batch_size, self.seed, step, self.items)
            loader = torch.utils.data.DataLoader(stream, batch_size=None, num_workers=self.num_workers,
                                                 prefetch_factor=4, worker_init_fn=_one_thread)
            self.it = iter(loader)
        video, captions = next(self.it)
        self.next_step = step + 1
        return self.data.encode(ToyBatch(video, [], list(captions)))
