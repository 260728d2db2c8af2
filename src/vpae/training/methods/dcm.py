"""DCM (Lv et al. 2025, DCM: Dual-Expert Consistency Model for Efficient and High-Quality Video Generation):
phased consistency distillation (PCM's phases) split between two experts at the edge after
`consistency.semantic_phases` phases (edges: sampling.phase_edges). The semantic expert (the generator; phases
above the boundary) adds the temporal coherence loss over `consistency.temporal_stride` frames
(Vchitect/DCM fastvideo/distill_dcm_wan_semantic_expert.py:355-361), the detail expert (phases below) adds a GAN
loss and feature matching on the frozen teacher's features with the project's heads, both at a sigma drawn
inside the phase: the prediction and the consistency target carried there with the same noise
(distill_dcm_wan_detail_expert.py:647-713; losses/consistency.AdversarialConsistencyLoss). The GAN's real side
is that target (`consistency.gan_real: target`, the release) or the data noised to that sigma (`data`). Each
expert has its EMA target (nets.ema, others["detail_ema"]). The experts alternate, one update each per two
steps (DCM trains them in two stages; interleaving them lets a run of any length train both; the
generator-update budget counts both).
"""

from __future__ import annotations

from typing import Iterator

import torch
from torch import nn

from vpae.conditioning import Conditioning
from vpae.discriminator import FeatureDiscriminator
from vpae.losses import PhasedConsistencyLoss, feature_matching_loss, temporal_coherence_loss
from vpae.losses.consistency import AdversarialConsistencyLoss
from vpae.registry import register_method
from vpae.sampling import phase_edges
from vpae.training.methods.base import AfterUpdate, Method, OptimizerSpec, Phase, Update, adam_on, requires_grad
from vpae.training.model import Networks, generator_checkpoint_view, real_score, update_ema

Tensor = torch.Tensor


class ExpertPair(nn.Module):
    """DCM's generator at sampling time: the semantic expert for sigma > boundary, the detail expert below
    (sec. 3.2). A Backbone for the samplers (velocity only)."""

    def __init__(self, semantic, detail, boundary: float):
        super().__init__()
        self.semantic, self.detail, self.boundary = semantic, detail, float(boundary)

    def velocity(self, x_t: Tensor, sigma: Tensor, cond: Conditioning) -> Tensor:
        sig = torch.as_tensor(sigma, device=x_t.device).reshape(-1).expand(x_t.shape[0])
        high = sig > self.boundary
        if bool(high.all()):
            return self.semantic.velocity(x_t, sigma, cond)
        if not bool(high.any()):
            return self.detail.velocity(x_t, sigma, cond)
        mask = high.reshape(-1, *([1] * (x_t.ndim - 1)))
        return torch.where(mask, self.semantic.velocity(x_t, sigma, cond), self.detail.velocity(x_t, sigma, cond))

    def forward(self, x_t, sigma, cond):
        return self.velocity(x_t, sigma, cond)


class DCMPhase(Phase):
    name, stream = "dcm", 3

    def __init__(self, nets: Networks, cfg):
        super().__init__(nets, cfg)
        self.comparison, self.consistency = cfg.comparison, cfg.consistency
        self.steps, self.batch_size = self.comparison.steps, self.comparison.batch_size
        edges = phase_edges(self.comparison.nfe, self.comparison.shift, cfg.sampling.few_step_schedule)
        k = self.consistency
        self.loss = PhasedConsistencyLoss(edges, k.num_timesteps, k.skip, self.comparison.guidance, k.distance, k.huber_c)
        self.split = self.consistency.semantic_phases  # phases 0..split-1 semantic, split..M-1 detail
        self.boundary = edges[self.split]
        self.disc = FeatureDiscriminator(nets.heads, self.comparison.layers)
        self.adv = AdversarialConsistencyLoss(self.disc, shared_noise=True)  # DCM: one adv_noise for both sides

    def experts(self) -> list[tuple[str, nn.Module, nn.Module, tuple[int, int]]]:
        """(optimizer, student, EMA target, phases) of the semantic and the detail expert."""
        n = self.nets
        return [("generator", n.generator, n.ema, (0, self.split - 1)),
                ("detail_expert", n.others["detail_expert"], n.others["detail_ema"], (self.split, self.comparison.nfe - 1))]

    def optimizers(self) -> dict[str, OptimizerSpec]:
        c, n = self.comparison, self.nets
        return {"generator": adam_on(n.generator, c), "detail_expert": adam_on(n.others["detail_expert"], c),
                "heads": OptimizerSpec(n.head_params(), c.disc_lr, c.disc_betas, c.grad_clip)}

    def modules(self) -> dict[str, nn.Module]:
        n = self.nets
        return {"generator": generator_checkpoint_view(n.generator), "target": n.ema,
                "detail_expert": n.others["detail_expert"], "detail_target": n.others["detail_ema"], "heads": n.heads}

    def expert_loss(self, which: int, x_data: Tensor, cond: Conditioning) -> tuple[Tensor, dict, dict]:
        """The consistency loss of expert `which` (+ temporal coherence for the semantic one; + relu(1 - D) and
        feature matching against the carried target on the frozen teacher's features for the detail one, whose
        returned dict also holds the adversarial samples under "adv")."""
        _, student, target, phases = self.experts()[which]
        teacher = self.nets.teacher
        with real_score(teacher):
            out = self.loss(student, target, teacher, x_data, cond, phases)
            loss = out["loss"].mean()
            logs = {"loss/consistency": loss.item()}
            if which == 0:
                tc = temporal_coherence_loss(out["pred"], out["target"], self.consistency.temporal_stride).mean()
                loss = loss + self.consistency.temporal_weight * tc
                logs["loss/temporal"] = tc.item()
            else:
                real_data = x_data if self.consistency.gan_real == "data" else None
                pair = out["adv"] = self.adv.samples(self.loss, out, real_data)
                sigma, layers = pair["sigma"], self.comparison.layers
                with requires_grad(self.nets.head_params(), False):
                    adv = self.adv.generator(teacher, pair["fake"], sigma, cond).mean()
                    with torch.no_grad():
                        target_feats = teacher.features(pair["target"], sigma, cond, layers)
                    fm = feature_matching_loss(teacher.features(pair["fake"], sigma, cond, layers), target_feats).mean()
                loss = loss + self.consistency.adv_weight * adv + self.consistency.feature_matching_weight * fm
                logs.update({"loss/g_adv": adv.item(), "loss/feature_matching": fm.item()})
        logs["loss/g_total"] = loss.item()
        return loss, logs, out

    def discriminator_loss(self, out: dict, cond: Conditioning) -> tuple[Tensor, dict]:
        """Hinge on the teacher's features at the drawn sigma: real = the carried target (or noised data), fake =
        the carried detail prediction."""
        teacher, pair = self.nets.teacher, out["adv"]
        with real_score(teacher):
            d, acc = self.adv.discriminator(teacher, pair["fake"], pair["real"], pair["sigma"], cond)
            d = d.mean()
        return d, {"loss/d": d.item(), "d/accuracy": acc.item()}

    def step(self, step: int, x_data: Tensor, cond: Conditioning) -> Iterator[Update]:
        which = step % 2
        name, student, target, _ = self.experts()[which]
        with real_score(self.nets.teacher), requires_grad(self.nets.head_params(), False):
            loss, logs, out = self.expert_loss(which, x_data, cond)
            yield Update(name, loss, logs)
        yield AfterUpdate(lambda: update_ema(target, student, self.consistency.ema_decay))
        if which == 1:  # the heads learn on the detail expert's steps
            yield Update("heads", *self.discriminator_loss(out, cond))


@register_method("dcm")
class DCM(Method):
    name, sampler, needs_heads, distributed = "dcm", "euler", True, True
    original_head = "conv"  # DCM's discriminator_wan.py DiscriminatorHead: 1x1 convs + GroupNorm
    paper = "Lv et al. 2025, DCM: Dual-Expert Consistency Model for Efficient and High-Quality Video Generation"

    def extra_copies(self) -> tuple[int, int]:
        # the detail expert trains what the generator trains (its LoRA alone for a LoRA generator); two EMA targets
        full = self.cfg.priming.generator_mode == "full"
        return int(full), 2 + int(not full)

    def add_roles(self, nets: Networks, before_sharding: bool) -> None:
        nets.make_ema()                                  # the semantic expert's consistency target
        nets.make_copy("detail_expert", trains="same")   # same trainable parameters as the generator
        nets.make_copy("detail_ema", trains="none")

    def phases(self, nets: Networks) -> list[Phase]:
        return [DCMPhase(nets, self.cfg)]

    def sampler_model(self, nets: Networks, phases: list[Phase]) -> nn.Module:
        return ExpertPair(nets.generator, nets.others["detail_expert"], phases[0].boundary)

    def exports(self, nets: Networks, phases: list[Phase]) -> dict[str, tuple[nn.Module, dict]]:
        extra = {"role": "detail_expert", "boundary": phases[0].boundary}
        return {"detail_expert": (nets.others["detail_expert"], extra)}
