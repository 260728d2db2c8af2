"""The networks of a distillation run, held by one object (`Networks`), and the operations on them.

teacher    the frozen real score. With its peft adapter "fake" switched on it IS the fake score: one copy
           of the teacher's weights serves both (the memory reason the paper uses LoRA).
generator  starts as a copy of the teacher; trained in both phases (full weights or a LoRA adapter).
ema        the generator's EMA; in phase II it is the discriminator backbone ("unified").
heads      the discriminator heads, trained by the discriminator loss only.
others     a method's own networks by name (DCM's detail expert and its EMA, APT's trained discriminator
           backbone, the Table 3 ablation's trained discriminator backbone), built by the method.

Which networks train is each method's choice (its optimizer specs, vpae.training.methods); optimizers belong to
the training loop (vpae.training.loop), never to this object.
"""

from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass, field

import torch
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict
from torch import nn

from vpae.backbones.base import Backbone
from vpae.backbones.wan import WanBackbone
from vpae.sampling import predict_x0

FAKE_ADAPTER = "fake"
GENERATOR_ADAPTER = "generator"


def freeze(module: nn.Module) -> nn.Module:
    module.requires_grad_(False)
    return module


def trainable_parameters(module: nn.Module) -> list[nn.Parameter]:
    return [p for p in module.parameters() if p.requires_grad]


def count_parameters(module: nn.Module, trainable_only: bool = True) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def add_lora(backbone: WanBackbone, name: str, rank: int, alpha: int, targets) -> None:
    """Attach a peft LoRA adapter with B = 0 (peft's default init): the output is unchanged at step 0."""
    cfg = LoraConfig(r=rank, lora_alpha=alpha, target_modules=list(targets), init_lora_weights=True)
    backbone.model.add_adapter(cfg, adapter_name=name)


def _adapters_off(model) -> bool | None:
    """Whether the model's LoRA layers are switched off (enable/disable_adapters switch them all together, so
    the first one tells); None without adapters."""
    from peft.tuners.tuners_utils import BaseTunerLayer
    layer = next((m for m in model.modules() if isinstance(m, BaseTunerLayer)), None)
    return None if layer is None else bool(layer.disable_adapters)


@contextlib.contextmanager
def real_score(teacher: WanBackbone):
    """The teacher with its adapters switched off: the frozen real score. On exit they are put back as they
    were, so the context nests (a phase may hold it across a backward pass while a loss enters it again)."""
    if not getattr(teacher.model, "_hf_peft_config_loaded", False):
        yield teacher
        return
    model = teacher.model
    were_off = _adapters_off(model)
    _keeping_trainable(model, model.disable_adapters)
    try:
        yield teacher
    finally:
        if not were_off:
            _keeping_trainable(model, model.enable_adapters)


@contextlib.contextmanager
def fake_score(teacher: WanBackbone):
    """The teacher with the "fake" LoRA adapter on: the fake score. On exit the adapters are put back as
    they were (active adapter, and switched off if they were off); which weights are trainable is left alone."""
    model = teacher.model
    state = _adapters_off(model)
    were_off = bool(state)
    active = model.active_adapters() if state is not None else []
    _keeping_trainable(model, model.set_adapter, FAKE_ADAPTER)
    _keeping_trainable(model, model.enable_adapters)
    try:
        yield teacher
    finally:
        if active:
            _keeping_trainable(model, model.set_adapter, active if len(active) > 1 else active[0])
        if were_off:
            _keeping_trainable(model, model.disable_adapters)


def _keeping_trainable(model, switch, *args) -> None:
    """Call a peft adapter switch (set_adapter, enable_adapters, disable_adapters) keeping every parameter's
    requires_grad as it was: peft also marks adapters trainable or frozen there, which would undo a caller's
    freeze (and make a checkpointed block's recomputation in backward differ from its forward)."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    switch(*args)
    for p, flag in flags:
        p.requires_grad_(flag)


def switches(modules) -> tuple[list, list]:
    """What a phase's contexts switch, for every network in `modules`: each weight's requires_grad, and each
    peft LoRA layer's on/off flag, active adapter and scales. Gradient accumulation runs several micro-batches'
    steps side by side, each inside its own contexts, and puts each one's switches back before resuming it."""
    from peft.tuners.tuners_utils import BaseTunerLayer
    grads = [(p, p.requires_grad) for m in modules for p in m.parameters()]
    layers = [(layer, layer._disable_adapters, copy.copy(layer._active_adapter), dict(getattr(layer, "scaling", {})))
              for m in modules for layer in m.modules() if isinstance(layer, BaseTunerLayer)]
    return grads, layers


def set_switches(state: tuple[list, list]) -> None:
    grads, layers = state
    for p, flag in grads:
        p.requires_grad_(flag)
    for layer, off, active, scaling in layers:
        layer._disable_adapters, layer._active_adapter = off, copy.copy(active)
        if scaling:
            layer.scaling.update(scaling)


class AdapterState(nn.Module):
    """Checkpoint view of one peft adapter: state_dict() holds only its LoRA tensors."""

    def __init__(self, backbone: WanBackbone, adapter: str):
        super().__init__()
        self._backbone = [backbone]  # a list, so the backbone is not registered as a submodule
        self.adapter = adapter

    def state_dict(self, *args, **kwargs):
        return get_peft_model_state_dict(self._backbone[0].model, adapter_name=self.adapter)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        result = set_peft_model_state_dict(self._backbone[0].model, state_dict, adapter_name=self.adapter)
        if strict and getattr(result, "unexpected_keys", None):
            raise RuntimeError(f"unexpected adapter keys: {result.unexpected_keys[:5]}")
        return result


def make_teacher_and_fake(teacher: WanBackbone, rank: int, alpha: int, targets) -> WanBackbone:
    """Freeze the teacher and attach the zero-initialised fake-score LoRA (only LoRA params train)."""
    freeze(teacher)
    add_lora(teacher, FAKE_ADAPTER, rank, alpha, targets)
    return teacher


def copy_generator(teacher: WanBackbone, mode: str = "full", rank: int = 64, alpha: int = 64, targets=()) -> WanBackbone:
    """The generator starts as an exact copy of the teacher (before any adapter is attached to it)."""
    if getattr(teacher.model, "_hf_peft_config_loaded", False):
        raise ValueError("copy the generator before attaching the fake-score adapter to the teacher")
    gen = copy.deepcopy(teacher)
    if mode == "full":
        gen.requires_grad_(True)
    elif mode == "lora":
        freeze(gen)
        add_lora(gen, GENERATOR_ADAPTER, rank, alpha, targets)
    else:
        raise ValueError(f"unknown generator mode {mode!r}")
    return gen


def generator_checkpoint_view(generator: WanBackbone) -> nn.Module:
    """What a checkpoint holds of a generator: the whole backbone, or only its adapter when it is a LoRA
    generator (copy_generator mode "lora"), whose base weights are the teacher's."""
    if getattr(generator.model, "_hf_peft_config_loaded", False):
        return AdapterState(generator, GENERATOR_ADAPTER)
    return generator


def make_ema(generator: nn.Module) -> nn.Module:
    return freeze(copy.deepcopy(generator))


@torch.no_grad()
def update_ema(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """theta^- <- decay * theta^- + (1 - decay) * theta, over every parameter and buffer."""
    for e, p in zip(ema.parameters(), model.parameters(), strict=True):
        # two separately rounded products, exactly decay * e + (1 - decay) * p (add_(alpha=) may fuse)
        e.mul_(decay).add_(p.detach().to(e.dtype) * (1.0 - decay))
    for e, b in zip(ema.buffers(), model.buffers(), strict=True):
        e.copy_(b)


@dataclass
class Networks:
    """Every network of a run. The teacher carries the zero-initialised "fake" LoRA (make_teacher_and_fake), so
    it serves as the real score (adapters off) and as the fake score (adapter on): `real_x0`, `fake_x0` and
    `fake_velocity` are the score queries the losses make (vpae.losses.dmd.ScorePair). The EMA and the
    method's other copies are made by `copy_generator_as` when a phase needs them: in one process at that
    phase's start (phase I does not pay for an EMA it does not use), under torchrun before sharding."""

    generator: WanBackbone
    teacher: WanBackbone
    heads: nn.Module | None = None
    ema: WanBackbone | None = None
    others: dict[str, WanBackbone] = field(default_factory=dict)

    @property
    def fake_params(self) -> list[nn.Parameter]:
        return trainable_parameters(self.teacher)  # only the "fake" LoRA is trainable on the teacher

    def fake_lora_state(self) -> "AdapterState":
        """What a checkpoint holds of the fake score: the teacher's fake LoRA alone."""
        return AdapterState(self.teacher, FAKE_ADAPTER)

    def head_params(self) -> list[nn.Parameter]:
        return list(self.heads.parameters()) if self.heads is not None else []

    def make_ema(self) -> WanBackbone:
        """The generator's EMA (frozen), made once as a copy of the generator as it is now."""
        if self.ema is None:
            self.ema = make_ema(self.generator)
        return self.ema

    def make_copy(self, name: str, trains: str = "all") -> WanBackbone:
        """others[name]: a full copy of the generator as it is now, made once. trains: "all" (every weight
        trainable), "same" (what trains in the generator: its LoRA only for a LoRA generator), "none" (frozen)."""
        if name not in self.others:
            dup = copy.deepcopy(self.generator)
            self.others[name] = {"all": lambda m: m.requires_grad_(True), "same": lambda m: m, "none": freeze}[trains](dup)
        return self.others[name]

    def backbones(self) -> list[WanBackbone]:
        return [m for m in (self.generator, self.teacher, self.ema, *self.others.values()) if m is not None]

    def all(self) -> list[nn.Module]:
        """Every network: the backbones and the heads."""
        return self.backbones() + ([self.heads] if self.heads is not None else [])

    # The score queries of eq. 1, 2 and 5 (vpae.losses.dmd.ScorePair).
    def real_x0(self, x_t: torch.Tensor, t: torch.Tensor, cond, guidance: float = 1.0) -> torch.Tensor:
        with real_score(self.teacher):
            return predict_x0(self.teacher, x_t, t, cond, guidance)[0]

    def fake_x0(self, x_t: torch.Tensor, t: torch.Tensor, cond) -> torch.Tensor:
        with fake_score(self.teacher):
            return predict_x0(self.teacher, x_t, t, cond)[0]

    def fake_velocity(self, x_t: torch.Tensor, t: torch.Tensor, cond) -> torch.Tensor:
        with fake_score(self.teacher):
            return self.teacher.velocity(x_t, t, cond)


def copy_into(dst: Backbone, src: Backbone) -> None:
    """dst's parameters <- src's (same shapes; shard by shard when both are sharded alike)."""
    with torch.no_grad():
        for d, s in zip(dst.parameters(), src.parameters(), strict=True):
            d.copy_(s)
