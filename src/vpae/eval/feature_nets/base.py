"""What every feature network shares: the tier names, `ModelInfo` (name, tier, hashed files) and the
`ImageFeatures` base class (batched, memoised per-frame embeddings)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

REFERENCE, OFFLINE, UNAVAILABLE = "reference", "offline", "unavailable"


@dataclass
class ModelInfo:
    name: str
    tier: str
    description: str
    files: dict[str, str] = field(default_factory=dict)  # path -> sha256

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "tier": self.tier, "description": self.description, "files": dict(self.files)}


class ImageFeatures:
    """Per-frame embeddings. `frames(frames_uint8, purpose)` -> (N, D); `image(img_uint8, purpose)` -> (1, D).
    purpose is the VBench dimension whose preprocessing applies (or "fd")."""

    info: ModelInfo
    batch_size = 16

    def _embed(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def _frames_pre(self, frames: np.ndarray, purpose: str) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def _image_pre(self, image: np.ndarray, purpose: str) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    @torch.no_grad()
    def _run(self, x: torch.Tensor) -> torch.Tensor:
        outs = [self._embed(x[i:i + self.batch_size].contiguous().to(self.device)).float().cpu()
                for i in range(0, len(x), self.batch_size)]
        return torch.cat(outs)

    def _pre_key(self, purpose: str) -> str:
        return purpose

    def frames(self, frames: np.ndarray, purpose: str) -> torch.Tensor:
        """Embeddings of uint8 (N, H, W, 3) frames; memoised on (content hash, preprocessing)."""
        cache = self.__dict__.setdefault("_cache", {})
        key = (hashlib.sha1(np.ascontiguousarray(frames).tobytes()).hexdigest(), frames.shape, self._pre_key(purpose))
        if key not in cache:
            if len(cache) >= 64:
                cache.pop(next(iter(cache)))
            cache[key] = self._run(self._frames_pre(frames, purpose))
        return cache[key]

    def image(self, image: np.ndarray, purpose: str) -> torch.Tensor:
        return self._run(self._image_pre(image, purpose))
