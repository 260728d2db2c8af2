"""The contract between a data source and training: batches of (latents, Conditioning) that are pure
functions of (seed, step, rank), and the sizes a backbone needs to read them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol

from torch import Tensor

from vpae.conditioning import Conditioning
from vpae.errors import VpaeError

BatchFn = Callable[[int], "tuple[Tensor, Conditioning]"]


@dataclass(frozen=True)
class ConditionSizes:
    """What a backbone must accept to read a source: latent and mask channels, text token width and
    count, image token width (None: text-to-video)."""

    latent_channels: int
    mask_channels: int
    text_dim: int
    text_len: int
    image_dim: int | None


class DataSource(Protocol):
    sizes: ConditionSizes

    def batch_fn(self, batch_size: int, stream_seed: int, rank: int = 0, world_size: int = 1,
                 num_workers: int = 0) -> BatchFn:
        """step -> (latents, cond): this rank's share of global batch `step` (batch_size is the global batch;
        the shares of all ranks, in rank order, are the single-process batch)."""
        ...


def rank_share(batch_size: int, rank: int, world_size: int) -> range:
    """The items of a global batch that `rank` of `world_size` draws (contiguous, equal shares)."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise VpaeError(f"rank {rank} is not in a world of {world_size} processes")
    if batch_size % world_size:
        raise VpaeError(f"the global batch size {batch_size} must be a multiple of the {world_size} processes")
    n = batch_size // world_size
    return range(rank * n, (rank + 1) * n)
