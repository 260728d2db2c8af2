"""APT (Lin et al. 2025a, Diffusion Adversarial Post-Training for One-Step Video Generation): one-step generation
from pure noise trained only adversarially (non-saturating loss) against a discriminator whose backbone is
initialised from the diffusion model and trained (nets.others["disc_backbone"]) with heads (the project's heads;
APT's are cross-attention with learnable tokens at several depths, our `ca` head), regularised by the
approximated R1 on real videos (sigma 0.1 for video, lambda 100 on the unnormalised form; losses/approx_r1.py).
Discriminator inputs are noised to t ~ U(apt.disc_band). Generator and discriminator share one lr (apt.disc_lr_scale
x comparison.lr; APT: 5e-6 both).

Two phases with `apt.init: cd` (the default): APT starts from a discrete-time consistency-distilled model, so
the generator is first distilled by LCM's consistency phase ("apt_cd", apt.init_fraction of comparison.steps,
nets.ema its target), then trained adversarially ("apt", the rest). `init: teacher` starts from the teacher
(the "apt" phase alone). APT samples with the generator's EMA (apt.ema_decay with a warm-up, ema_decay_at; 0: the
raw generator).

The EMA is nets.ema, restarted from the generator when the adversarial phase starts: the consistency target is
done with by then, so one copy serves both (as V-PAE's phase II restarts its EMA from phase I's generator), and
the EMA averages only adversarial steps, which APT's starts at its distilled initialisation.
"""

from __future__ import annotations

import dataclasses
from typing import Iterator

import torch
from torch import nn

from vpae import randomness
from vpae.backbones.base import resolve_layers
from vpae.conditioning import Conditioning
from vpae.discriminator import FeatureDiscriminator
from vpae.losses import AdversarialLoss, ApproximatedR1, discriminator_accuracy
from vpae.registry import register_method
from vpae.training.collapse import collapse_logs
from vpae.training.methods.base import (
    AfterUpdate,
    Method,
    OptimizerSpec,
    Phase,
    Update,
    adam_on,
    one_step_x0,
    requires_grad,
)
from vpae.training.methods.lcm import ConsistencyPhase
from vpae.training.model import Networks, copy_into, generator_checkpoint_view, trainable_parameters, update_ema

Tensor = torch.Tensor


def unread_parameters(backbone, layers) -> set[int]:
    """ids of the backbone's parameters that its features at `layers` never read (the blocks past the deepest
    one, the output norm and projection): APT's discriminator stops at its deepest head, and a parameter that
    never gets a gradient has no optimizer state for a checkpoint to hold."""
    m = backbone.model
    deepest = resolve_layers(layers, backbone.num_layers)[-1]
    unread = [*m.blocks[deepest + 1:], getattr(m, "norm_out", None), getattr(m, "proj_out", None)]
    out = {id(p) for mod in unread if mod is not None for p in mod.parameters()}
    if isinstance(getattr(m, "scale_shift_table", None), nn.Parameter):
        out.add(id(m.scale_shift_table))
    return out


def init_steps(cfg) -> int:
    """The consistency-distillation phase's share of comparison.steps (0 with init teacher)."""
    if cfg.apt.init != "cd":
        return 0
    return int(round(cfg.apt.init_fraction * cfg.comparison.steps))


def ema_decay_at(decay: float, step: int) -> float:
    """The EMA's decay at phase step `step` with the usual warm-up, min(decay, (1 + step) / (10 + step)): a short
    run's EMA follows its training instead of staying near its start (0.995 over 70 steps would keep 70 % of the
    start); from step ~1,800 on it is `decay`."""
    return min(decay, (1.0 + step) / (10.0 + step))


class APTPhase(Phase):
    name, stream = "apt", 3

    def __init__(self, nets: Networks, cfg):
        super().__init__(nets, cfg)
        self.comparison, self.settings = cfg.comparison, cfg.apt
        self.steps = self.comparison.steps - init_steps(cfg)
        self.batch_size = self.comparison.batch_size
        self.disc = FeatureDiscriminator(nets.heads, self.comparison.layers)
        self.adversarial = AdversarialLoss("non_saturating", self.settings.disc_band)
        self.r1 = ApproximatedR1(self.settings.r1_sigma)  # APT's lambda is defined on the unnormalised penalty
        self._disc_params: list[nn.Parameter] | None = None

    @property
    def backbone(self):
        return self.nets.others["disc_backbone"]

    @property
    def ema(self):
        return self.nets.ema if self.settings.ema_decay > 0 else None

    def start(self) -> None:
        """The EMA restarts from the generator as the consistency phase (or the teacher) left it."""
        if self.ema is not None:
            copy_into(self.ema, self.nets.generator)

    def disc_params(self) -> list[nn.Parameter]:
        if self._disc_params is None:  # the networks are final (sharded) when phases are built
            unread = unread_parameters(self.backbone, self.comparison.layers)
            self._disc_params = self.nets.head_params() + [
                p for p in trainable_parameters(self.backbone) if id(p) not in unread]
        return self._disc_params

    def optimizers(self) -> dict[str, OptimizerSpec]:
        c = self.comparison
        disc_lr = self.settings.disc_lr_scale * c.lr
        return {"generator": adam_on(self.nets.generator, c),
                "discriminator": OptimizerSpec(self.disc_params(), disc_lr, c.disc_betas, c.grad_clip)}

    def modules(self) -> dict[str, nn.Module]:
        out = {"generator": generator_checkpoint_view(self.nets.generator), "heads": self.nets.heads,
               "disc_backbone": self.backbone}
        if self.ema is not None:
            out["ema"] = self.ema
        return out

    def discriminate(self, cond: Conditioning):
        return lambda x_t, t: self.disc(self.backbone, x_t, t, cond, True)

    def generator_loss(self, x0_gen: Tensor, cond: Conditioning) -> tuple[Tensor, dict]:
        with requires_grad(self.disc_params(), False):
            adv = self.adversarial.generator(self.discriminate(cond), x0_gen).mean()
        return adv, {"loss/g_adv": adv.item()}

    def discriminator_loss(self, x_data: Tensor, x0_fake: Tensor, cond: Conditioning) -> tuple[Tensor, dict]:
        """Non-saturating loss + r1_weight x the approximated R1 on the re-noised real videos."""
        out = self.adversarial.discriminator(self.discriminate(cond), x_data, x0_fake)
        d = out["loss"].mean()
        x_real, t_real, logits_real = out["real"]
        logits_fake = out["fake"][2]
        r1 = self.r1(lambda x: self.disc(self.backbone, x, t_real, cond, True), x_real, logits_real).mean()
        loss = d + self.settings.r1_weight * r1
        return loss, {"loss/d": d.item(), "loss/r1": r1.item(), "loss/d_total": loss.item(),
                      "d/logits_real": logits_real.mean().item(), "d/logits_fake": logits_fake.mean().item(),
                      "d/accuracy": discriminator_accuracy(logits_real, logits_fake).item()}

    def step(self, step: int, x_data: Tensor, cond: Conditioning) -> Iterator[Update | dict]:
        x0_gen = one_step_x0(self.nets.generator, randomness.randn_like(x_data), cond)
        with requires_grad(self.disc_params(), False):
            yield Update("generator", *self.generator_loss(x0_gen, cond))
        if self.ema is not None:
            decay = ema_decay_at(self.settings.ema_decay, step)
            yield AfterUpdate(lambda: update_ema(self.ema, self.nets.generator, decay))
        yield Update("discriminator", *self.discriminator_loss(x_data, x0_gen.detach(), cond))
        yield collapse_logs(x0_gen, x_data)


@register_method("apt")
class APT(Method):
    name, sampler, needs_heads, distributed = "apt", "few_step", True, True
    paper = "Lin et al. 2025a, Diffusion Adversarial Post-Training for One-Step Video Generation (APT)"
    original_head = "ca"  # APT's heads: cross-attention with learnable tokens

    def extra_copies(self) -> tuple[int, int]:
        return 1, int(self.cfg.apt.init == "cd" or self.cfg.apt.ema_decay > 0)  # discriminator backbone; EMA

    def add_roles(self, nets: Networks, before_sharding: bool) -> None:
        nets.make_copy("disc_backbone", trains="all")  # initialised from the teacher: the generator is its copy here
        if self.cfg.apt.init == "cd" or self.cfg.apt.ema_decay > 0:
            # every phase reads it (consistency target, then the sampled EMA), and a sharded module cannot be
            # deep-copied: made now in one process too
            nets.make_ema()

    def phase_names(self) -> list[str]:
        return (["apt_cd"] if self.cfg.apt.init == "cd" else []) + ["apt"]

    def phases(self, nets: Networks) -> list[Phase]:
        out: list[Phase] = []
        if self.cfg.apt.init == "cd":
            # LCM's phase on comparison's optimizer settings with its share of the budget; its own data stream
            section = dataclasses.replace(self.cfg.comparison, steps=init_steps(self.cfg))
            out.append(ConsistencyPhase(nets, self.cfg, phases=1, name="apt_cd", stream=4, section=section))
        return out + [APTPhase(nets, self.cfg)]

    def sampler_model(self, nets: Networks, phases: list[Phase]) -> nn.Module:
        return nets.ema if self.cfg.apt.ema_decay > 0 else nets.generator

    def exports(self, nets: Networks, phases: list[Phase]) -> dict[str, tuple[nn.Module, dict]]:
        if self.cfg.apt.ema_decay <= 0:
            return {}
        return {"generator_ema": (nets.ema, {"role": "generator_ema", "ema_decay": self.cfg.apt.ema_decay})}
