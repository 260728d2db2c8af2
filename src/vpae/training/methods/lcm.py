"""LCM (Luo et al. 2023, Latent Consistency Models): consistency distillation of the teacher's CFG-augmented
probability-flow ODE with a skipping-step solver and an EMA target (losses/consistency.py, one phase). The
same phase with M phases, the online target and the adversarial consistency loss is PCM (pcm.py), and with
phase I's optimizer and budget it is V-PAE's alternative first phase (`priming.kind: lcm`, Table 2)."""

from __future__ import annotations

from typing import Iterator

import torch
from torch import nn

from vpae.conditioning import Conditioning
from vpae.discriminator import FeatureDiscriminator
from vpae.losses import PhasedConsistencyLoss
from vpae.losses.consistency import AdversarialConsistencyLoss
from vpae.registry import register_method
from vpae.sampling import phase_edges
from vpae.training.methods.base import AfterUpdate, Method, OptimizerSpec, Phase, Update, adam_on, requires_grad
from vpae.training.model import Networks, copy_into, generator_checkpoint_view, real_score, update_ema

Tensor = torch.Tensor


class ConsistencyPhase(Phase):
    """The generator learns the teacher's ODE over `phases` phases (edges: sampling.phase_edges(phases,
    comparison.shift, sampling.few_step_schedule)) against its target. `section` (comparison, or priming for
    V-PAE's first phase) gives the budget (steps, batch_size) and the optimizer (lr, betas, grad_clip).
    target_decay: the target's EMA decay (None: consistency.ema_decay, LCM's 0.95); 0 = the generator itself
    under no_grad (PCM's online target), so no copy is made or updated. adv_weight > 0 adds PCM's adversarial
    consistency loss with the heads (nets.heads) on the frozen teacher, trained by a "heads" optimizer."""

    def __init__(self, nets: Networks, cfg, phases: int, name: str, stream: int, section,
                 target_decay: float | None = None, adv_weight: float = 0.0):
        super().__init__(nets, cfg)
        self.name, self.stream, self.section = name, stream, section
        self.steps, self.batch_size = section.steps, section.batch_size
        c = self.consistency = cfg.consistency
        self.decay = c.ema_decay if target_decay is None else target_decay
        edges = phase_edges(phases, cfg.comparison.shift, cfg.sampling.few_step_schedule)  # [1, 0] for LCM
        self.loss = PhasedConsistencyLoss(edges, c.num_timesteps, c.skip, cfg.comparison.guidance, c.distance, c.huber_c)
        self.adv_weight = adv_weight
        if adv_weight > 0:
            disc = FeatureDiscriminator(nets.heads, cfg.comparison.layers)
            self.adv = AdversarialConsistencyLoss(disc, shared_noise=False)  # PCM: separate noise per side

    def target(self) -> nn.Module:
        return self.nets.ema if self.decay > 0 else self.nets.generator

    def start(self) -> None:
        """An EMA target starts as a copy of the generator (made now, or made before sharding and overwritten
        now); V-PAE's phase II later restarts it from this phase's generator."""
        if self.decay == 0:
            return
        if self.nets.ema is None:
            self.nets.make_ema()
        else:
            copy_into(self.nets.ema, self.nets.generator)

    def optimizers(self) -> dict[str, OptimizerSpec]:
        out = {"generator": adam_on(self.nets.generator, self.section)}
        if self.adv_weight > 0:
            c = self.cfg.comparison
            out["heads"] = OptimizerSpec(self.nets.head_params(), c.disc_lr, c.disc_betas, c.grad_clip)
        return out

    def modules(self) -> dict[str, nn.Module]:
        out = {"generator": generator_checkpoint_view(self.nets.generator)}
        if self.decay > 0:
            out["target"] = self.nets.ema
        if self.adv_weight > 0:
            out["heads"] = self.nets.heads
        return out

    def step(self, step: int, x_data: Tensor, cond: Conditioning) -> Iterator[Update]:
        teacher = self.nets.teacher
        with real_score(teacher), requires_grad(self.nets.head_params(), False):
            out = self.loss(self.nets.generator, self.target(), teacher, x_data, cond)
            loss = out["loss"].mean()
            logs = {"loss/consistency": loss.item()}
            if self.adv_weight > 0:
                pair = self.adv.samples(self.loss, out)
                g_adv = self.adv.generator(teacher, pair["fake"], pair["sigma"], cond).mean()
                loss = loss + self.adv_weight * g_adv
                logs.update({"loss/g_adv": g_adv.item(), "loss/g_total": loss.item()})
            yield Update("generator", loss, logs)
        if self.decay > 0:
            yield AfterUpdate(lambda: update_ema(self.nets.ema, self.nets.generator, self.decay))
        if self.adv_weight > 0:  # PCM alternates D and G steps 1:1; here each step takes one of each
            with real_score(teacher):
                d, acc = self.adv.discriminator(teacher, pair["fake"], pair["real"], pair["sigma"], cond)
                d = d.mean()
            yield Update("heads", d, {"loss/d": d.item(), "d/accuracy": acc.item()})


@register_method("lcm")
class LCM(Method):
    name, paper, sampler = "lcm", "Luo et al. 2023, Latent Consistency Models", "few_step"
    distributed = True
    original_head = "conv"  # LCM has no discriminator; PCM's (its subclass) heads are convolutional

    def consistency_phases(self) -> int:
        return 1

    def extra_copies(self) -> tuple[int, int]:
        return 0, 1  # the EMA consistency target

    def add_roles(self, nets: Networks, before_sharding: bool) -> None:
        if before_sharding:  # a sharded module cannot be deep-copied: the EMA target exists from the start
            nets.make_ema()

    def phases(self, nets: Networks) -> list[Phase]:
        return [ConsistencyPhase(nets, self.cfg, self.consistency_phases(), self.name, 3, self.cfg.comparison)]
