"""The random draws of a training step (noise, noise levels, caption dropout), made independent of how the
global batch is split over processes.

Inside `batch_stream(seed, rank)` (the training loop opens one per step) the k-th draw of a step gives
global sample i the values of its own generator, seeded from (step seed, k, i). Rank r of a world of N
processes holds the rows r*b .. r*b+b-1 of the global batch (data.source.rank_share), so the N ranks together
draw exactly what one process draws for the whole batch: a distributed step is the single-process step on
the same global batch, split in N (tests/test_distributed.py), and a resumed step draws what it drew before.
Drawing each rank's own rows costs nothing extra (no rank draws the global batch's noise).

Outside a stream (a step object called directly) draws come from torch's global generator.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
from dataclasses import dataclass

import torch

Tensor = torch.Tensor


@dataclass
class _Stream:
    seed: int
    rank: int
    draws: int = 0

    def generators(self, batch: int, device) -> list[torch.Generator]:
        """One generator per local sample for the next draw: seeded from (seed, draw, global index)."""
        first = self.rank * batch
        out = []
        for i in range(first, first + batch):
            g = torch.Generator(device=device)
            g.manual_seed(_mix(self.seed, self.draws, i))
            out.append(g)
        self.draws += 1
        return out


_current: contextvars.ContextVar[_Stream | None] = contextvars.ContextVar("vpae_batch_stream", default=None)


def _mix(*values: int) -> int:
    """A 63-bit seed from integers (stable across processes and Python versions)."""
    digest = hashlib.blake2b(repr(values).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


@contextlib.contextmanager
def batch_stream(seed: int, rank: int = 0):
    """Draws inside are a pure function of (seed, draw number, global sample index); see the module doc.
    rank: which equal share of the global batch the draws are for (a data-parallel rank, or with gradient
    accumulation rank x micro-batches + micro-batch)."""
    with using(new_stream(seed, rank)):
        yield


def new_stream(seed: int, rank: int = 0, draws: int = 0) -> _Stream:
    """A stream to install with `using` (a micro-batch of gradient accumulation keeps its own across the
    optimizer steps of one training step), continuing after `draws` draws."""
    return _Stream(int(seed), int(rank), int(draws))


def current() -> _Stream | None:
    """The stream draws come from now (None: torch's global generator)."""
    return _current.get()


@contextlib.contextmanager
def using(stream: _Stream):
    token = _current.set(stream)
    try:
        yield
    finally:
        _current.reset(token)


def _per_sample(shape: tuple[int, ...], device, dtype, kind: str) -> Tensor:
    stream = _current.get()
    draw = torch.randn if kind == "normal" else torch.rand
    if stream is None:
        return draw(shape, device=device, dtype=dtype)
    gens = stream.generators(shape[0], device)
    # float32 draws, cast afterwards: a bf16 run sees the same noise as a float32 run
    out = [draw(shape[1:], generator=g, device=device, dtype=torch.float32) for g in gens]
    return torch.stack(out).to(dtype) if out else torch.empty(shape, device=device, dtype=dtype)


def randn_like(x: Tensor) -> Tensor:
    """N(0, I) noise shaped like x (B, ...), one stream per sample."""
    return _per_sample(tuple(x.shape), x.device, x.dtype, "normal")


def randn(shape, device=None, dtype=torch.float32) -> Tensor:
    """N(0, I) of `shape` whose first axis is the batch."""
    return _per_sample(tuple(shape), device, dtype, "normal")


def rand(n: int, device=None) -> Tensor:
    """U[0, 1) per sample: (n,)."""
    return _per_sample((n,), device, torch.float32, "uniform")


def uniform(n: int, band, device=None) -> Tensor:
    """U[lo, hi) per sample for band = (lo, hi): a noise level drawn from a band."""
    lo, hi = band
    return lo + (hi - lo) * rand(n, device)
