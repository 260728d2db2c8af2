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

import contextlib
import datetime
import os
import warnings
from dataclasses import dataclass
from typing import Any

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
    """Which process this is, and the device mesh it sits in. World() is the single process.

    Mesh (torchrun): (dp_replicate, dp_shard, ring, ulysses), the context-parallel dimensions innermost, so the
    `cp` consecutive ranks of a node share one sample. Ranks of one cp group draw the same batch rows and the
    same noise (dp_rank); FSDP2 shards weights over dp_shard x cp and replicates them over dp_replicate (HSDP)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    device: str = "cpu"
    local_size: int = 1
    cp_size: int = 1
    mesh: Any = None
    fsdp_mesh: Any = None
    cp_mesh: Any = None
    cp_kind: str = "ulysses"
    config_record: Any = None  # a resume's config record (vpae.config.RunConfigRecord), written after a save

    @property
    def main(self) -> bool:
        """Rank 0: the one process that logs, draws progress bars, writes reports and exports."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @property
    def dp_rank(self) -> int:
        """Which share of the global batch this rank's cp group holds."""
        return self.rank // self.cp_size

    @property
    def dp_size(self) -> int:
        return self.size // self.cp_size

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def mean(self, stats: dict[str, float]) -> dict[str, float]:
        """Average logged floats over ranks (every rank gets the same dict, so every rank takes the same
        decisions from it, e.g. the divergence check). The ranks of a cp group log equal values, so this is the
        mean over the data-parallel shares."""
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


def mesh_shape(size: int, parallel_cfg) -> tuple[int, int, int, int]:
    """(dp_replicate, dp_shard, ring, ulysses) for `size` ranks, or a VpaeError naming what does not divide."""
    rep, cp, shard = parallel_cfg.dp_replicate, parallel_cfg.cp, parallel_cfg.dp_shard
    if size % (rep * cp):
        raise VpaeError(f"{size} ranks cannot hold parallel.dp_replicate={rep} x parallel.cp={cp}; choose degrees "
                        f"whose product divides the number of processes")
    if shard == -1:
        shard = size // (rep * cp)
    if rep * shard * cp != size:
        raise VpaeError(f"parallel.dp_replicate={rep} x parallel.dp_shard={shard} x parallel.cp={cp} = "
                        f"{rep * shard * cp}, but torchrun started {size} processes; make the product equal (or set "
                        f"parallel.dp_shard=-1)")
    ring, uly = (cp, 1) if parallel_cfg.cp_kind == "ring" else (1, cp)
    return rep, shard, ring, uly


def init_world(device: str = "cpu", backend: str = "auto", timeout_s: int = 1800, parallel_cfg=None) -> World:
    """The World of this process: torchrun's environment (WORLD_SIZE, RANK, LOCAL_RANK) initialises the
    process group (nccl on CUDA, gloo on CPU, unless `backend` says) and, given a ParallelConfig, the device mesh
    (its init_timeout_s replaces timeout_s); otherwise the single process."""
    if not launched_by_torchrun():
        return World(device=device)
    rank, size, local = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0))
    local_size = int(os.environ.get("LOCAL_WORLD_SIZE", size))
    shape = mesh_shape(size, parallel_cfg) if parallel_cfg is not None else None
    on_cuda = device.startswith("cuda")
    if on_cuda:
        if not torch.cuda.is_available():
            raise VpaeError("train.device is cuda but this machine has no CUDA device; use --set train.device=cpu")
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    if backend == "auto":
        backend = "nccl" if on_cuda else "gloo"
    if parallel_cfg is not None:
        timeout_s = parallel_cfg.init_timeout_s
    if not dist.is_initialized():
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
    if shape is None:
        return World(rank, size, local, device, local_size)
    from torch.distributed.device_mesh import init_device_mesh
    names = ("dp_replicate", "dp_shard", "ring", "ulysses")
    mesh = init_device_mesh("cuda" if on_cuda else "cpu", shape, mesh_dim_names=names)
    shard_cp = mesh["dp_shard", "ring", "ulysses"]._flatten("dp_shard_cp")
    fsdp_mesh = mesh["dp_replicate", "dp_shard_cp"] if shape[0] > 1 else shard_cp
    return World(rank, size, local, device, local_size, cp_size=parallel_cfg.cp, mesh=mesh, fsdp_mesh=fsdp_mesh,
                 cp_mesh=mesh["ring", "ulysses"] if parallel_cfg.cp > 1 else None, cp_kind=parallel_cfg.cp_kind)


def set_timeout(world: World, seconds: int) -> None:
    """The collective timeout from now on (training: a rank that stops answering ends the run after this long)."""
    if world.distributed and dist.is_initialized():
        from torch.distributed.distributed_c10d import _set_pg_timeout
        _set_pg_timeout(datetime.timedelta(seconds=seconds))


def build_device(world: World, device: str) -> str:
    """Where a role is built before sharding: in CPU memory under torchrun (fully_shard then moves each block's
    shard to the GPU, one block at a time, so no GPU ever holds a whole 14B model), else on `device`."""
    return "cpu" if world.distributed else device


def in_turns(world: World, build):
    """build() on the ranks of one node one after the other (a barrier between turns), so a node holds one
    rank's unsharded models in CPU memory at a time. Returns this rank's result."""
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


def _shard_kwargs(parallel_cfg, world: World) -> dict:
    from torch.distributed.fsdp import CPUOffloadPolicy, OffloadPolicy
    if parallel_cfg.cpu_offload and not world.device.startswith("cuda"):
        raise VpaeError("parallel.cpu_offload moves the GPUs' shards to host memory, but this run is on the CPU "
                        "(train.device=cpu); set parallel.cpu_offload=false or train on GPUs")
    return dict(mesh=world.fsdp_mesh, mp_policy=mixed_precision(parallel_cfg),
                reshard_after_forward=parallel_cfg.reshard_after_forward,
                offload_policy=CPUOffloadPolicy() if parallel_cfg.cpu_offload else OffloadPolicy())


def _shard_unit(module: nn.Module, kw: dict) -> None:
    """fully_shard `module`; FSDP2 all-gathers one dtype per unit, so the leaf modules whose weights are stored in
    another dtype than most of the unit's (a trained fp32 LoRA inside a frozen bf16 block) become one unit of
    their own first."""
    from torch.distributed.fsdp import FSDPModule, fully_shard
    sizes: dict[torch.dtype, int] = {}
    for p in module.parameters():
        sizes[p.dtype] = sizes.get(p.dtype, 0) + p.numel()
    if len(sizes) > 1:
        main = max(sizes, key=sizes.get)
        groups: dict[torch.dtype, list[nn.Module]] = {}
        for name, m in module.named_modules():
            own = list(m.parameters(recurse=False))
            if not own or isinstance(m, FSDPModule) or own[0].dtype == main:
                continue
            if any(p.dtype != own[0].dtype for p in own):
                raise VpaeError(f"{type(module).__name__}.{name} holds weights of two dtypes; FSDP2 cannot shard it")
            groups.setdefault(own[0].dtype, []).append(m)
        for group in groups.values():
            fully_shard(group, **kw)
    fully_shard(module, **kw)


def cast_roles(nets, train_dtype: torch.dtype, frozen_dtype: torch.dtype) -> None:
    """Per-role storage dtypes (before sharding): weights that train (generator, fake LoRA, a trained copy,
    heads) in train_dtype, the master weights Adam updates; frozen weights (the teacher's and a LoRA
    generator's base, frozen copies) in frozen_dtype. The EMA mirrors the generator weight by weight: its update
    is a small lerp that bf16 storage would round away. This also makes diffusers' fp32-kept modules
    (_keep_in_fp32_modules) agree with their block, as FSDP2 needs."""
    def cast(module, dtype_of):
        for m in module.modules():
            for p in m.parameters(recurse=False):
                want = dtype_of(p)
                if p.dtype != want:
                    p.data = p.data.to(want)
    def rule(p):
        return train_dtype if p.requires_grad else frozen_dtype
    for backbone in (nets.generator, nets.teacher, *nets.others.values()):
        cast(backbone, rule)
    if nets.ema is not None:
        dtypes = iter([p.dtype for p in nets.generator.parameters()])
        cast(nets.ema, lambda p: next(dtypes))
    if nets.heads is not None:
        cast(nets.heads, lambda p: train_dtype)


@contextlib.contextmanager
def _one_accelerator_on_cpu(device: str):
    """diffusers picks a device as rank % torch.accelerator.device_count(), which is 0 on a CPU-only machine."""
    real = torch.accelerator.device_count
    if not device.startswith("cpu"):
        yield
        return
    torch.accelerator.device_count = lambda: max(1, real())
    try:
        yield
    finally:
        torch.accelerator.device_count = real


def enable_context_parallel(backbone: nn.Module, world: World) -> None:
    """diffusers' context parallelism on a WanBackbone over the world's cp ranks (the model's _cp_plan: RoPE and
    the first block's input split along the sequence, Ulysses all-to-all or ring attention inside, proj_out's
    output gathered). WanBackbone.features gathers the feature maps it returns itself."""
    from diffusers import ContextParallelConfig
    ring, uly = (world.cp_size, 1) if world.cp_kind == "ring" else (1, world.cp_size)
    import logging
    quiet = logging.getLogger("diffusers.models.modeling_utils")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # "enable_parallelism is an experimental feature", once per network
    try:
        with _one_accelerator_on_cpu(world.device):
            backbone.model.enable_parallelism(
                config=ContextParallelConfig(ring_degree=ring, ulysses_degree=uly, mesh=world.cp_mesh))
    finally:
        quiet.setLevel(level)


def shard_backbone(backbone: nn.Module, parallel_cfg, world: World | None = None) -> nn.Module:
    """fully_shard a WanBackbone over the world's FSDP mesh: each transformer block, the two embedders
    (features() calls them directly, without the root's forward), then the root model (output norm and
    projection, scale-shift table). With parallel.cp > 1, context parallelism first."""
    world = world or current_world()
    if getattr(parallel_cfg, "attention_backend", ""):
        backbone.model.set_attention_backend(parallel_cfg.attention_backend)
    if world.cp_size > 1:
        enable_context_parallel(backbone, world)
    kw = _shard_kwargs(parallel_cfg, world)
    model = backbone.model
    for block in model.blocks:
        _shard_unit(block, kw)
    for name in ("patch_embedding", "condition_embedder"):
        _shard_unit(getattr(model, name), kw)
    _shard_unit(model, kw)
    _make_root(model)
    _mark_partial_grads(backbone, world)
    return backbone


def _mark_partial_grads(backbone: nn.Module, world: World) -> None:
    """Every weight of a context-parallel backbone acts on this rank's part of the sequence only, so its gradient
    here is a partial sum; FSDP2 averages over the dp x cp ranks, and the sum over the cp group is cp x that
    mean (scale_partial_grads). Marked on the parameter objects, so again after anything that replaces them."""
    if world.cp_size > 1:
        for p in backbone.parameters():
            p._vpae_grad_scale = world.cp_size


def shard_module(module: nn.Module, parallel_cfg, world: World | None = None) -> nn.Module:
    """One FSDP2 unit for a small module (the discriminator heads: they read gathered features, the same on
    every rank of a cp group, so their gradients are plain means)."""
    world = world or current_world()
    _shard_unit(module, _shard_kwargs(parallel_cfg, world))
    _make_root(module)
    return module


def _make_root(module: nn.Module) -> None:
    """Make `module` the FSDP root now: FSDP2 picks the root as the first unit to run forward, and the
    discriminator reads the EMA through features(), which calls the blocks without the root's forward. A module
    still on the meta device is made root once allocated (shard_networks)."""
    if not any(p.is_meta for p in module.parameters()):
        module._get_fsdp_state()._lazy_init()


def shard_networks(nets, cfg, world: World):
    """Shard every network of a training.model.Networks in place (a no-op on one process): storage dtypes per
    role (cast_roles), each backbone per block, the heads as one unit. On rank 0 the networks were built whole
    in CPU memory; on the other ranks on the meta device (training.model: build_networks): they are allocated
    shard by shard here and filled from rank 0 (DCP's broadcast_from_rank0), so their host memory holds only
    shards. The method's copies (EMA, ...) must exist already: a sharded module is not deep-copied. Optimizers
    are built afterwards by the training loop, over the sharded parameters."""
    if not world.distributed:
        return nets
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict
    frozen = cfg.model.frozen_dtype or cfg.model.dtype
    cast_roles(nets, DTYPES[cfg.model.dtype], DTYPES[frozen])
    modules = [(bb, True) for bb in nets.backbones()] + ([(nets.heads, False)] if nets.heads is not None else [])
    for module, is_backbone in modules:
        full = module.state_dict() if world.main else {}
        buffers = dict(module.named_buffers())  # non-persistent ones (RoPE tables) are not in the state dict
        if is_backbone:
            shard_backbone(module, cfg.parallel, world)
        else:
            shard_module(module, cfg.parallel, world)
        if not world.main:
            module.to_empty(device=world.device if not cfg.parallel.cpu_offload else "cpu")
            _make_root(module.model if is_backbone else module)
        set_model_state_dict(module, full, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))
        for name, buf in module.named_buffers():
            if name in buffers:
                dist.broadcast(buf.data, src=0)
        if is_backbone:
            _mark_partial_grads(module, world)  # to_empty made new parameter objects
        del full
    set_timeout(world, cfg.parallel.timeout_s)
    return nets


def scale_partial_grads(params) -> None:
    """After backward: a context-parallel backbone's gradients from the dp x cp mean to the sum over cp."""
    for p in params:
        scale = getattr(p, "_vpae_grad_scale", 1)
        if scale != 1 and p.grad is not None:
            p.grad.mul_(scale)


def set_gradient_sync(modules, flag: bool) -> None:
    """FSDP2's gradient reduction on (True) or off (False: micro-batches of gradient accumulation) for every
    sharded unit inside `modules`."""
    from torch.distributed.fsdp import FSDPModule
    for module in modules:
        for m in module.modules():
            if isinstance(m, FSDPModule):
                m.set_requires_gradient_sync(flag, recurse=False)


def full_state_dict(module: nn.Module) -> dict[str, torch.Tensor]:
    """The unsharded state dict of a (possibly sharded) module, on CPU; collective under torchrun (every rank
    must call it), the result is complete on rank 0."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    if not dist.is_initialized():
        return {k: v.detach().cpu() for k, v in module.state_dict().items()}
    return get_model_state_dict(module, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
