"""MD, MagicDistillation (Shao et al. 2025, Weak-to-Strong Video Distillation for Large-Scale Few-Step
Synthesis). DMD with a LoRA fake score whose real score is weak-to-strong: the teacher plus the fake LoRA at a
weak weight (W2S distribution matching, sec. 3.2), so the real score sits between the teacher and the fake
distribution and the KL estimate stays accurate where the few-step samples are far from the data; plus a
ground-truth term pulling generated videos toward the real ones (losses/ground_truth.py). Generator inputs:
real videos noised to the comparison sigmas; fake score: `md.fake_updates_per_generator` flow-matching updates
per generator update.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import nn

from vpae.conditioning import Conditioning
from vpae.losses import DistributionMatchingLoss, FakeScoreLoss, ground_truth_loss
from vpae.registry import register_method
from vpae.sampling import few_step_sigmas, predict_x0
from vpae.training.collapse import collapse_logs
from vpae.training.methods.base import Method, OptimizerSpec, Phase, Update, adam_on, student_inputs
from vpae.training.model import (
    FAKE_ADAPTER,
    Networks,
    fake_score,
    generator_checkpoint_view,
)

Tensor = torch.Tensor


@contextlib.contextmanager
def weak_real_score(teacher, weight: float):
    """MagicDistillation's weak-to-strong real score (sec. 3.2): the real DiT's weights moved a little toward
    the fake DiT's, theta_real = theta_teacher + weight * Delta_fake, by running the fake LoRA at `weight` times
    its scale. weight 0 is the teacher exactly, 1 the fake score exactly."""
    from peft.tuners.lora import LoraLayer
    with fake_score(teacher):
        layers = [m for m in teacher.model.modules() if isinstance(m, LoraLayer) and FAKE_ADAPTER in m.scaling]
        saved = [m.scaling[FAKE_ADAPTER] for m in layers]
        for m, s in zip(layers, saved):
            m.scaling[FAKE_ADAPTER] = s * weight
        try:
            yield teacher
        finally:
            for m, s in zip(layers, saved):
                m.scaling[FAKE_ADAPTER] = s


class WeakToStrongScores:
    """The score pair of W2S distribution matching (vpae.losses.dmd.ScorePair): weak real score, plain fake."""

    def __init__(self, nets: Networks, weight: float):
        self.nets, self.weight = nets, weight

    def real_x0(self, x_t: Tensor, t: Tensor, cond: Conditioning, guidance: float = 1.0) -> Tensor:
        with weak_real_score(self.nets.teacher, self.weight):
            return predict_x0(self.nets.teacher, x_t, t, cond, guidance)[0]

    def fake_x0(self, x_t: Tensor, t: Tensor, cond: Conditioning) -> Tensor:
        return self.nets.fake_x0(x_t, t, cond)

    def fake_velocity(self, x_t: Tensor, t: Tensor, cond: Conditioning) -> Tensor:
        return self.nets.fake_velocity(x_t, t, cond)


class MDPhase(Phase):
    name, stream = "md", 3

    def __init__(self, nets: Networks, cfg):
        super().__init__(nets, cfg)
        self.comparison, self.settings = cfg.comparison, cfg.md
        self.steps, self.batch_size = self.comparison.steps, self.comparison.batch_size
        self.sigmas = few_step_sigmas(self.comparison.nfe, self.comparison.shift, cfg.sampling.few_step_schedule)
        self.scores = WeakToStrongScores(nets, self.settings.weak_weight)
        self.dmd = DistributionMatchingLoss(self.settings.renoise_band, self.comparison.guidance)
        self.fake_score_matching = FakeScoreLoss(self.settings.renoise_band)

    def optimizers(self) -> dict[str, OptimizerSpec]:
        c = self.comparison
        return {"generator": adam_on(self.nets.generator, c),
                "fake": OptimizerSpec(self.nets.fake_params, self.settings.fake_lr, c.betas, c.grad_clip)}

    def modules(self) -> dict[str, nn.Module]:
        return {"generator": generator_checkpoint_view(self.nets.generator),
                "fake_lora": self.nets.fake_lora_state()}

    def fake_loss(self, x_data: Tensor, cond: Conditioning) -> tuple[Tensor, dict]:
        with torch.no_grad():
            x0_gen = student_inputs(self.nets.generator, x_data, cond, self.sigmas, False)[0]
        loss = self.fake_score_matching(x0_gen, cond, self.scores).mean()
        return loss, {"loss/fake": loss.item()}

    def generator_loss(self, x_data: Tensor, cond: Conditioning) -> tuple[Tensor, dict]:
        """W2S eq. 1 + gt_weight x the ground-truth term."""
        x0_gen, s = student_inputs(self.nets.generator, x_data, cond, self.sigmas, False)
        dm, gap = self.dmd(x0_gen, cond, self.scores)
        dm = dm.mean()
        gt = ground_truth_loss(x0_gen, x_data, s).mean()
        loss = dm + self.settings.gt_weight * gt
        return loss, {"loss/w2s_dmd": dm.item(), "loss/ground_truth": gt.item(), "loss/g_total": loss.item(),
                      "dmd/real_fake_gap": gap.item(), **collapse_logs(x0_gen, x_data)}

    def step(self, step: int, x_data: Tensor, cond: Conditioning) -> Iterator[Update]:
        for _ in range(self.settings.fake_updates_per_generator):
            with fake_score(self.nets.teacher):
                yield Update("fake", *self.fake_loss(x_data, cond))
        yield Update("generator", *self.generator_loss(x_data, cond))


@register_method("md")
class MD(Method):
    name, sampler, distributed = "md", "few_step", True
    paper = "Shao et al. 2025, MagicDistillation: Weak-to-Strong Video Distillation for Large-Scale Few-Step Synthesis"

    def phases(self, nets: Networks) -> list[Phase]:
        return [MDPhase(nets, self.cfg)]
