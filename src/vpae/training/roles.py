"""Model roles, named explicitly (ARCHITECTURE: "roles are explicit"), held with every optimizer by one
`Roles` object that `make_roles` builds.

teacher    the frozen real score. With its peft adapter "fake" switched on it IS the fake score: one copy
           of the teacher's weights serves both (the memory reason the paper uses LoRA).
generator  starts as a copy of the teacher; trained in both phases (full weights or a LoRA adapter).
ema        the generator's EMA; in phase II it is the discriminator backbone ("unified").
heads      the discriminator heads (phase II), trained by the discriminator loss only.
trained_backbone  only for the Table 3 ablation equilibrium.backbone = "trained": a full copy of the
           generator that the discriminator trains (the memory cost the unified design avoids).
"""

from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass, field
from typing import Any

import torch
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict
from torch import nn

from vpae.backbones.wan import WanBackbone

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


@contextlib.contextmanager
def real_score(teacher: WanBackbone):
    """The teacher with its adapters switched off: the frozen real score."""
    if not getattr(teacher.model, "_hf_peft_config_loaded", False):
        yield teacher
        return
    teacher.model.disable_adapters()
    try:
        yield teacher
    finally:
        teacher.model.enable_adapters()


@contextlib.contextmanager
def fake_score(teacher: WanBackbone):
    """The teacher with the "fake" LoRA adapter on: the fake score. On exit the adapters are put back as
    they were (active adapter, and switched off if they were off)."""
    from peft.tuners.tuners_utils import BaseTunerLayer
    model = teacher.model
    # enable/disable_adapters switch every LoRA layer together, so the first one tells the state
    layer = next((m for m in model.modules() if isinstance(m, BaseTunerLayer)), None)
    were_off = layer is not None and layer.disable_adapters
    active = model.active_adapters() if layer is not None else []
    model.set_adapter(FAKE_ADAPTER)
    model.enable_adapters()
    try:
        yield teacher
    finally:
        if active:
            model.set_adapter(active if len(active) > 1 else active[0])
        if were_off:
            model.disable_adapters()


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
    return AdapterState(generator, GENERATOR_ADAPTER) if getattr(generator.model, "_hf_peft_config_loaded", False) else generator


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
class Roles:
    """The five roles and their optimizers. Optimizer keys: "priming/generator", "priming/fake" (phase I),
    "equilibrium/generator", "equilibrium/discriminator" (phase II: the heads, plus a trained backbone).
    The EMA generator (and a trained discriminator backbone) exist only from phase II on (start_equilibrium):
    phase I does not need them, and at 14B each is another full copy of the generator."""

    generator: WanBackbone
    teacher: WanBackbone
    heads: nn.Module
    equilibrium: Any
    trained_backbone_wanted: bool = False
    ema: WanBackbone | None = None
    trained_backbone: WanBackbone | None = None
    optimizers: dict[str, torch.optim.Optimizer] = field(default_factory=dict)
    priming: Any = None
    equilibrium_started: bool = False
    # Roles of the comparison methods (training/methods.py builds them and their optimizers, "<method>/<role>"):
    detail_expert: WanBackbone | None = None    # DCM: the detail expert (low-noise phases); generator = semantic
    detail_ema: WanBackbone | None = None       # DCM: the detail expert's EMA consistency target
    disc_backbone: WanBackbone | None = None    # APT: a trained discriminator backbone initialised from the teacher

    @property
    def fake_params(self) -> list[nn.Parameter]:
        return trainable_parameters(self.teacher)  # only the "fake" LoRA is trainable on the teacher

    @property
    def discriminator_params(self) -> list[nn.Parameter]:
        extra = trainable_parameters(self.trained_backbone) if self.trained_backbone is not None else []
        return list(self.heads.parameters()) + extra

    def make_phase_two_copies(self) -> "Roles":
        """The EMA generator (and, for the "trained" ablation, a full discriminator backbone) as copies of the
        generator. One process makes them at phase II's start; a sharded run makes them before wrapping
        (training.parallel.shard_roles: a sharded module is not deep-copied), and phase II's start then
        copies the primed generator into them. Idempotent."""
        if self.ema is None:
            self.ema = make_ema(self.generator)
            if self.trained_backbone_wanted:
                self.trained_backbone = copy.deepcopy(self.generator).requires_grad_(True)
        return self

    def build_optimizers(self, phases=("priming", "equilibrium")) -> "Roles":
        """The optimizers of `phases` over the roles' current parameters (after sharding, the sharded ones).
        Phase II's exist once phase II has started."""
        p, e = self.priming, self.equilibrium
        if "priming" in phases:
            self.optimizers["priming/generator"] = torch.optim.Adam(
                trainable_parameters(self.generator), lr=p.lr, betas=tuple(p.betas))
            self.optimizers["priming/fake"] = torch.optim.Adam(self.fake_params, lr=p.fake_lr, betas=tuple(p.fake_betas))
        if "equilibrium" in phases and self.equilibrium_started:
            self.optimizers["equilibrium/generator"] = torch.optim.Adam(
                trainable_parameters(self.generator), lr=e.lr, betas=tuple(e.betas))
            self.optimizers["equilibrium/discriminator"] = torch.optim.Adam(
                self.discriminator_params, lr=e.head_lr, betas=tuple(e.head_betas))
        return self

    def start_equilibrium(self) -> "Roles":
        """Phase II starts from the primed generator: the EMA (and a trained discriminator backbone) start as
        copies of it, and phase II's optimizers are built. A resumed phase II then loads its checkpoint over
        them. Idempotent."""
        if self.equilibrium_started:
            return self
        if self.ema is None:
            self.make_phase_two_copies()
        else:  # made before sharding: overwrite them with the primed generator, shard by shard
            with torch.no_grad():
                for copy_ in (self.ema, self.trained_backbone):
                    if copy_ is not None:
                        for c, g in zip(copy_.parameters(), self.generator.parameters(), strict=True):
                            c.copy_(g)
        self.equilibrium_started = True
        # Phase I is over: free its optimizer moments and the fake LoRA's last gradients (measured: 27 % of the
        # phase II bytes of a weight-dominated model; ~8 GiB per GPU at 14B over 8 GPUs).
        for key in [k for k in self.optimizers if k.startswith("priming/")]:
            opt = self.optimizers.pop(key)
            opt.zero_grad(set_to_none=True)
            opt.state.clear()
        return self.build_optimizers(("equilibrium",))


def make_roles(generator: WanBackbone, teacher: WanBackbone, heads: nn.Module, priming, equilibrium,
               trained_backbone: bool = False) -> Roles:
    """Every role and optimizer in one place. `teacher` already carries its zero-initialised fake adapter
    (make_teacher_and_fake). priming / equilibrium: the phases' configs (lrs, betas); phase II's roles and
    optimizers are made by Roles.start_equilibrium, from the generator as phase I left it."""
    roles = Roles(generator, teacher, heads, equilibrium, trained_backbone, priming=priming)
    return roles.build_optimizers()
