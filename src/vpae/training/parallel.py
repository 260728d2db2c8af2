"""Data-parallel training on PyTorch's own engine, applied from outside the algorithm files.

Under `torchrun --nproc_per_node N` every process holds 1/N of every role (FSDP2 `fully_shard`: each transformer
block, then the embedders, then the root; the discriminator heads as one unit), draws its share of each global
batch (data.source.rank_share) and its samples' own noise (vpae.randomness), and FSDP2 averages the
gradients. The phase steps are the same code on one process and on N: nothing in losses/ or training/methods/ knows
about sharding. One process (plain `vpae ...`) never initialises torch.distributed and shards nothing.

Networks under sharding:
- teacher: frozen weights sharded; its LoRA fake-score adapter lives inside the same blocks, so the real and
  fake scores share one sharded copy and adapter toggling (peft flags) works unchanged;
- EMA generator (and a method's other copies): created from the unsharded generator BEFORE wrapping
  (Method.add_roles) and sharded like it, so the EMA update is a shard-local lerp; phase II starts by copying
  the primed generator into them (EquilibriumPhase.start);
- optimizers are built after wrapping, over the sharded parameters (by the training loop).
"""

from __future__ import annotations

import datetime
import os
import warnings
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from vpae.errors import VpaeError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}

# FSDP2 warns on every forward whose output is a view (Wan's unflatten, the heads' reshapes); it matters only
# for in-place ops on such outputs, which nothing here does (and tests/test_distributed.py checks the gradients).
warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module .* returned a view tensor")


@dataclass(frozen=True)
class World:
    """Which process this is. World() is the single process."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    device: str = "cpu"
    local_size: int = 1

    @property
    def main(self) -> bool:
        """Rank 0: the one process that logs, draws progress bars, writes reports and exports."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def mean(self, stats: dict[str, float]) -> dict[str, float]:
        """Average logged floats over ranks (every rank gets the same dict, so every rank takes the same
        decisions from it, e.g. the divergence check)."""
        if not self.distributed or not stats:
            return stats
        keys = sorted(stats)
        t = torch.tensor([float(stats[k]) for k in keys], dtype=torch.float64, device=self.comm_device)
        dist.all_reduce(t)
        return {k: float(v) / self.size for k, v in zip(keys, t.tolist())}

    def first(self, value):
        """The first rank's non-None value (None if every rank has None)."""
        if not self.distributed:
            return value
        flag = torch.tensor([0 if value is None else 1], device=self.comm_device)
        dist.all_reduce(flag)  # one integer per step; the objects travel only when some rank has one
        if not int(flag.item()):
            return None
        values = [None] * self.size
        dist.all_gather_object(values, value)
        return next((v for v in values if v is not None), None)

    def broadcast(self, obj):
        """Rank 0's value of a small picklable object on every rank."""
        if not self.distributed:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    @property
    def comm_device(self) -> str:
        # nccl reduces CUDA tensors only (on this process's device, set by init_world); gloo CPU ones
        return f"cuda:{torch.cuda.current_device()}" if dist.is_initialized() and dist.get_backend() == "nccl" else "cpu"


def current_world() -> World:
    """The World of an initialised process group (rank and size from torch.distributed), else one process. For code
    that is called both from a run and on its own (checkpoints)."""
    if dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size())
    return World()


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_world(device: str = "cpu", backend: str = "auto", timeout_s: int = 1800) -> World:
    """The World of this process: torchrun's environment (WORLD_SIZE, RANK, LOCAL_RANK) initialises the
    process group (nccl on CUDA, gloo on CPU, unless `backend` says); otherwise the single process."""
    if not launched_by_torchrun():
        return World(device=device)
    rank, size, local = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0))
    local_size = int(os.environ.get("LOCAL_WORLD_SIZE", size))
    on_cuda = device.startswith("cuda")
    if on_cuda:
        if not torch.cuda.is_available():
            raise VpaeError("train.device is cuda but this machine has no CUDA device; use --set train.device=cpu")
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    if backend == "auto":
        backend = "nccl" if on_cuda else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
    return World(rank, size, local, device, local_size)


def build_device(world: World, device: str) -> str:
    """Where a role is built before sharding: in CPU memory under torchrun (fully_shard then moves each block's
    shard to the GPU, one block at a time, so no GPU ever holds a whole 14B model), else on `device`."""
    return "cpu" if world.distributed else device


def in_turns(world: World, build):
    """build() on the ranks of one node one after the other (a barrier between turns), so a node holds one
    rank's unsharded models in CPU memory at a time (teacher + generator + EMA before sharding: 3 x 28 GB at
    14B in bf16), not LOCAL_WORLD_SIZE of them. Returns this rank's result."""
    if not world.distributed:
        return build()
    result = None
    for turn in range(world.local_size):
        if world.local_rank == turn:
            result = build()
        world.barrier()
    return result


def close_world(world: World) -> None:
    if world.distributed and dist.is_initialized():
        dist.destroy_process_group()


def mixed_precision(parallel_cfg):
    from torch.distributed.fsdp import MixedPrecisionPolicy
    return MixedPrecisionPolicy(param_dtype=DTYPES[parallel_cfg.param_dtype],
                                reduce_dtype=DTYPES[parallel_cfg.reduce_dtype])


def shard_backbone(backbone: nn.Module, parallel_cfg) -> nn.Module:
    """fully_shard a WanBackbone: each transformer block, the two embedders (features() calls them directly,
    without the root's forward), then the root model (output norm and projection, scale-shift table)."""
    from torch.distributed.fsdp import fully_shard
    kw = dict(mp_policy=mixed_precision(parallel_cfg), reshard_after_forward=parallel_cfg.reshard_after_forward)
    model = backbone.model
    for block in model.blocks:
        fully_shard(block, **kw)
    for name in ("patch_embedding", "condition_embedder"):
        fully_shard(getattr(model, name), **kw)
    fully_shard(model, **kw)
    # Make the model the FSDP root now: FSDP2 picks the root as the first unit to run forward, and the
    # discriminator reads the EMA through features(), which calls the blocks without the root's forward.
    model._get_fsdp_state()._lazy_init()
    return backbone


def shard_module(module: nn.Module, parallel_cfg) -> nn.Module:
    """One FSDP2 unit for a small module (the discriminator heads)."""
    from torch.distributed.fsdp import fully_shard
    fully_shard(module, mp_policy=mixed_precision(parallel_cfg), reshard_after_forward=parallel_cfg.reshard_after_forward)
    module._get_fsdp_state()._lazy_init()
    return module


def shard_networks(nets, parallel_cfg, world: World):
    """Shard every network of a training.model.Networks in place (a no-op on one process): each backbone per
    block, the heads as one unit. The method's copies (EMA, ...) must exist already: a sharded module is not
    deep-copied. Optimizers are built afterwards by the training loop, over the sharded parameters."""
    if not world.distributed:
        return nets
    for backbone in nets.backbones():
        shard_backbone(backbone, parallel_cfg)
    if nets.heads is not None:
        shard_module(nets.heads, parallel_cfg)
    return nets


def full_state_dict(module: nn.Module) -> dict[str, torch.Tensor]:
    """The unsharded state dict of a (possibly sharded) module, on CPU; collective under torchrun (every rank
    must call it), the result is complete on rank 0."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    if not dist.is_initialized():
        return {k: v.detach().cpu() for k, v in module.state_dict().items()}
    return get_model_state_dict(module, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
