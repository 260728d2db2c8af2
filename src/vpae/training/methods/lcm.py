"""LCM (Luo et al. 2023, Latent Consistency Models): consistency distillation of the teacher's CFG-augmented
probability-flow ODE with a skipping-step solver and an EMA target (losses/consistency.py, one phase). The
same phase with M phases is PCM (pcm.py), and with phase I's optimizer and budget it is V-PAE's alternative
first phase (`priming.kind: lcm`, Table 2)."""

from __future__ import annotations

from typing import Iterator

import torch
from torch import nn

from vpae import flow
from vpae.conditioning import Conditioning
from vpae.losses import PhasedConsistencyLoss
from vpae.registry import register_method
from vpae.training.methods.base import AfterUpdate, Method, OptimizerSpec, Phase, Update, adam_on
from vpae.training.model import Networks, copy_into, generator_checkpoint_view, real_score, update_ema

Tensor = torch.Tensor


class ConsistencyPhase(Phase):
    """The generator learns the teacher's ODE over `phases` phases (edges: flow.sigma_schedule(phases,
    comparison.shift)) against its EMA target (nets.ema). `section` (comparison, or priming for V-PAE's first
    phase) gives the budget (steps, batch_size) and the optimizer (lr, betas, grad_clip)."""

    def __init__(self, nets: Networks, cfg, phases: int, name: str, stream: int, section):
        super().__init__(nets, cfg)
        self.name, self.stream, self.section = name, stream, section
        self.steps, self.batch_size = section.steps, section.batch_size
        c = self.consistency = cfg.consistency
        edges = flow.sigma_schedule(phases, cfg.comparison.shift).tolist()  # [1, 0] for LCM
        self.loss = PhasedConsistencyLoss(edges, c.num_timesteps, c.skip, cfg.comparison.guidance, c.distance, c.huber_c)

    def start(self) -> None:
        """The EMA target starts as a copy of the generator (made now, or made before sharding and overwritten
        now); V-PAE's phase II later restarts it from this phase's generator."""
        if self.nets.ema is None:
            self.nets.make_ema()
        else:
            copy_into(self.nets.ema, self.nets.generator)

    def optimizers(self) -> dict[str, OptimizerSpec]:
        return {"generator": adam_on(self.nets.generator, self.section)}

    def modules(self) -> dict[str, nn.Module]:
        return {"generator": generator_checkpoint_view(self.nets.generator), "target": self.nets.ema}

    def step(self, step: int, x_data: Tensor, cond: Conditioning) -> Iterator[Update]:
        with real_score(self.nets.teacher):
            loss = self.loss(self.nets.generator, self.nets.ema, self.nets.teacher, x_data, cond)["loss"].mean()
        yield Update("generator", loss, {"loss/consistency": loss.item()})
        # Update EMA (the consistency target).
        yield AfterUpdate(lambda: update_ema(self.nets.ema, self.nets.generator, self.consistency.ema_decay))


@register_method("lcm")
class LCM(Method):
    name, paper, sampler = "lcm", "Luo et al. 2023, Latent Consistency Models", "few_step"
    distributed = True

    def consistency_phases(self) -> int:
        return 1

    def add_roles(self, nets: Networks, before_sharding: bool) -> None:
        if before_sharding:  # a sharded module cannot be deep-copied: the EMA target exists from the start
            nets.make_ema()

    def phases(self, nets: Networks) -> list[Phase]:
        return [ConsistencyPhase(nets, self.cfg, self.consistency_phases(), self.name, 3, self.cfg.comparison)]
