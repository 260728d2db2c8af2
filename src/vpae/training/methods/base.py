"""What every training method is made of, and the helpers several methods share.

A method (one file each in this package, registered by name) says
- which networks it needs beyond the generator and the teacher with its fake LoRA (`needs_heads`, `add_roles`),
- its phases, in order (`phases`): V-PAE has two (priming, equilibrium), every comparison method one.

A phase is the object that owns the loss methods of one stage of training. It says which networks train and
how (`optimizers`: name -> OptimizerSpec), what a checkpoint holds (`modules`), and what one step computes
(`step`, a generator that yields an `Update` per optimizer step: the loss and its logs). The training loop
(vpae.training.loop) owns the optimizers, zero_grad, backward, clipping and stepping; code after a `yield`
runs after that optimizer step (the EMA update, a second network's update that reads the first's output).
A context that shapes a loss's graph (adapters switched on or off, a network's weights frozen) is held across
the `yield`: backward then runs in the state the forward ran in, which gradient checkpointing needs (it runs
the forward again inside backward).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Callable, Iterator

import torch
from torch import nn

from vpae import flow, randomness
from vpae.conditioning import Conditioning
from vpae.sampling import predict_x0
from vpae.training.model import Networks, trainable_parameters

Tensor = torch.Tensor


@dataclass
class OptimizerSpec:
    """One optimizer of a phase: Adam (or AdamW) over `params`, gradients clipped to `grad_clip` (0: never
    clipped, the norm is still logged); `lr_scale(step)` multiplies lr (warm-up, cool-down)."""

    params: list[nn.Parameter]
    lr: float
    betas: tuple[float, float]
    grad_clip: float
    kind: str = "adam"
    weight_decay: float = 0.0
    lr_scale: Callable[[int], float] | None = None

    def build(self) -> torch.optim.Optimizer:
        if self.kind == "adamw":
            return torch.optim.AdamW(self.params, lr=self.lr, betas=tuple(self.betas), weight_decay=self.weight_decay)
        return torch.optim.Adam(self.params, lr=self.lr, betas=tuple(self.betas), weight_decay=self.weight_decay)


def adam_on(module: nn.Module, section) -> OptimizerSpec:
    """Adam on a network's trainable weights with a config section's lr, betas and grad_clip (the priming,
    equilibrium and comparison sections all carry them)."""
    return OptimizerSpec(trainable_parameters(module), section.lr, section.betas, section.grad_clip)


@dataclass
class Update:
    """One optimizer step: the loop backpropagates `loss` into the parameters of optimizer `optimizer`, clips
    them and steps; `logs` go to the step's statistics, the gradient norm as `grad_norm/<name>` (name defaults
    to the optimizer's)."""

    optimizer: str
    loss: Tensor
    logs: dict[str, float] = field(default_factory=dict)
    name: str | None = None


@dataclass
class AfterUpdate:
    """Work a step does after an optimizer step that must run once per training step, not once per micro-batch
    of gradient accumulation (an EMA or target update): the phase yields it and the loop runs it once."""

    run: Callable[[], None]


class Phase:
    """One stage of a method (see the module doc). Subclasses set `name` (run folder and checkpoint tag),
    `steps`, `batch_size`, `stream` (the data stream's seed offset) and implement the methods below."""

    name: str
    steps: int
    batch_size: int
    stream: int = 1

    def __init__(self, nets: Networks, cfg):
        self.nets, self.cfg = nets, cfg

    def start(self) -> None:
        """Before the phase trains (or loads its checkpoint): make the copies it needs (EMA, targets)."""

    def optimizers(self) -> dict[str, OptimizerSpec]:
        raise NotImplementedError

    def modules(self) -> dict[str, nn.Module]:
        """What a checkpoint of this phase holds, by name (every optimizer's parameters must be inside)."""
        raise NotImplementedError

    def step(self, step: int, x_data: Tensor, cond: Conditioning) -> Iterator[Update | dict]:
        """Yield an Update per optimizer step, in order; a yielded dict is merged into the logs; a yielded
        AfterUpdate is run once (EMA and target updates)."""
        raise NotImplementedError


class Method:
    """A training method: its name, paper, the sampler it is built for, and its phases."""

    name: str = ""
    paper: str = ""
    sampler: str = "few_step"
    """few_step: x0 prediction + fresh noise (DMD2's, LCM's, ADD's multi-step samplers); euler: deterministic
    steps over the phase edges (PCM, DCM)."""
    needs_heads: bool = False
    original_head: str = "conv"
    """The discriminator head kind of the original method (comparison.head: original): DMD2's classification
    branch, ADD's, LADD's, PCM's and DCM's discriminator heads are convolutional; APT's cross-attention with
    learnable tokens (ca)."""
    distributed: bool = False
    """Whether the method runs under torchrun (else it is refused there): every network its phases read exists
    before sharding (add_roles with before_sharding=True; a sharded module cannot be deep-copied) and is sharded
    with the others, and nothing after sharding reads a network's whole tensors outside a collective. Every
    registered method does; a new one is refused until it is checked (tests/test_distributed_methods.py)."""

    def __init__(self, cfg):
        self.cfg = cfg

    def head_settings(self) -> dict:
        """The discriminator heads' settings (kind, layers, sizes) when needs_heads."""
        c = self.cfg.comparison
        return {"kind": self.original_head if c.head == "original" else c.head, "layers": c.layers,
                "hidden_dim": c.head_dim, "num_queries": c.head_queries,
                "num_heads": c.head_attn_heads}

    def extra_copies(self) -> tuple[int, int]:
        """Whole copies of the backbone the method adds beside the generator and the teacher: (trained, frozen).
        A trained copy holds weights, gradients and Adam states (a full fake score, a trained discriminator
        backbone, a second expert), a frozen one weights (EMA, consistency targets); the memory check counts them."""
        return 0, 0

    def add_roles(self, nets: Networks, before_sharding: bool) -> None:
        """Make the method's own networks (copies of the generator, which is still the teacher's copy)."""

    def phase_names(self) -> list[str]:
        """The phases' names, in order (their run folders): one phase named after the method by default."""
        return [self.name]

    def phases(self, nets: Networks) -> list[Phase]:
        raise NotImplementedError

    def sampler_model(self, nets: Networks, phases: list[Phase]) -> nn.Module:
        return nets.generator

    def exports(self, nets: Networks, phases: list[Phase]) -> dict[str, tuple[nn.Module, dict]]:
        """Extra diffusers folders to write next to `generator` (folder name -> (backbone, metadata))."""
        return {}


# -- helpers shared by several methods ------------------------------------------------------------------

@contextlib.contextmanager
def requires_grad(params, flag: bool):
    """Temporarily set requires_grad on params (restored afterwards): a network read by a loss but not trained
    by it records no graph for its weights."""
    saved = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(flag)
    try:
        yield
    finally:
        for p, f in zip(params, saved):
            p.requires_grad_(f)


def one_step_x0(generator, z: Tensor, cond: Conditioning) -> Tensor:
    """x0 = f(z, T): the generator's one evaluation from pure noise (with a graph)."""
    return predict_x0(generator, z, torch.ones(z.shape[0], device=z.device), cond)[0]


def student_inputs(generator, x_data: Tensor, cond: Conditioning, sigmas: list[float],
                   backward_simulation: bool) -> tuple[Tensor, Tensor]:
    """The generator's training inputs of a multi-step method and its x0 prediction (with a graph):
    each sample draws its stage k uniformly from the student sigmas. backward_simulation (DMD2 sec. 4.5):
    x at sigma_k is produced by the generator itself, running stages 0..k-1 from pure noise (no graph);
    otherwise (ADD, MD) x_s is the real video noised to sigma_k. Returns (x0_gen, s). The number of draws
    never depends on the data (every stage runs on the whole batch)."""
    b, n = x_data.shape[0], len(sigmas)
    k = torch.floor(randomness.rand(b, x_data.device) * n).long().clamp(max=n - 1)
    sig = torch.tensor(sigmas, dtype=torch.float32, device=x_data.device)
    s = sig[k]
    if not backward_simulation:
        x = flow.add_noise(x_data, randomness.randn_like(x_data), s)
    else:
        x = randomness.randn_like(x_data)  # sigma_0 = 1: pure noise
        with torch.no_grad():
            for i in range(n - 1):
                x0 = predict_x0(generator, x, sigmas[i], cond)[0]
                x_next = flow.add_noise(x0, randomness.randn_like(x0), sigmas[i + 1])
                active = (k > i).reshape(-1, *([1] * (x.ndim - 1)))
                x = torch.where(active, x_next, x)
    return predict_x0(generator, x, s, cond)[0], s
