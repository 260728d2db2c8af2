"""The paper's comparison methods (Table 1) and Table 2's alternative first phase, as step objects over the same
Roles, loss objects and training loop as V-PAE. `vpae distill` with `method: dmd2 | lcm | pcm | dcm | add | apt |
md` runs one of them (recipes.run_distill -> run_method); `priming.kind: lcm` makes LCM V-PAE's phase I.

Every method trains `baseline.steps` generator updates of `baseline.batch_size` videos (equal budgets), starting
from the teacher copy that V-PAE starts from, and samples with the project's samplers (sampling.py): the x0 +
re-noise sampler (`few_step_sample`) for the methods trained to predict x0, the deterministic Euler walk over the
phase edges (`euler_sample`) for PCM and DCM. What each trains (its roles, and the optimizer keys in
Roles.optimizers):

  method  trains                                      reads (frozen)                  paper
  dmd2    generator; fake LoRA + GAN head ("dmd2/fake")  teacher (real score)            Yin et al. 2024a
  md      generator; fake LoRA ("md/fake")            teacher + weak fake LoRA (W2S)   Shao et al. 2025
  lcm     generator (EMA target = roles.ema)          teacher ODE (CFG)                Luo et al. 2023
  pcm     generator (EMA target = roles.ema)          teacher ODE (CFG)                Wang et al. 2024
  dcm     generator = semantic expert, detail_expert  teacher ODE + teacher features   Lv et al. 2025
          (EMAs ema / detail_ema), heads
  add     generator; heads ("add/discriminator")      teacher (distillation target,    Sauer et al. 2024b
                                                      frozen feature network)
  apt     generator; heads + disc_backbone            -                                Lin et al. 2025a
          (a trained copy initialised from the teacher)

Where a paper is silent the choice is a config value (config.py: baseline, dmd2, consistency, add, apt, md) and
is written down in docs/METHODS.md. All random draws go through vpae.randomness, and no draw count
depends on the data, so a step does not depend on how the batch is split over processes.
"""

from __future__ import annotations

import contextlib
import copy
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from vpae import flow
from vpae.conditioning import Conditioning
from vpae.discriminator import SelfDiscriminator
from vpae.losses import (PhasedConsistencyLoss, add_distillation_loss, approximated_r1_penalty, discriminator_accuracy,
                         discriminator_loss,
                         dmd_loss, fake_score_loss, feature_matching_loss, gaussian_perturbation,
                         generator_adversarial_loss, ground_truth_loss, temporal_coherence_loss)
from vpae.sampling import few_step_sigmas, predict_x0
from vpae import randomness
from vpae.training import roles as R
from vpae.training.collapse import with_collapse
from vpae.training.steps import PrimingStep, clip_and_norm, dmd_scores, requires_grad, sample_band

Tensor = torch.Tensor

SAMPLER = {"vpae": "few_step", "dmd2": "few_step", "md": "few_step", "lcm": "few_step", "add": "few_step",
           "apt": "few_step", "pcm": "euler", "dcm": "euler"}
"""The sampler each method is built for (toy.evaluate.Method.sampler): few_step = x0 prediction + fresh noise
(DMD2's, LCM's and ADD's multi-step samplers), euler = deterministic steps over the phase edges (PCM, DCM)."""

PAPERS = {
    "vpae": "V-PAE (this paper)",
    "dmd2": "Yin et al. 2024a, Improved Distribution Matching Distillation for Fast Image Synthesis (DMD2)",
    "md": "Shao et al. 2025, MagicDistillation: Weak-to-Strong Video Distillation for Large-Scale Few-Step Synthesis",
    "lcm": "Luo et al. 2023, Latent Consistency Models",
    "pcm": "Wang et al. 2024, Phased Consistency Model",
    "dcm": "Lv et al. 2025, DCM: Dual-Expert Consistency Model for Efficient and High-Quality Video Generation",
    "add": "Sauer et al. 2024b, Adversarial Diffusion Distillation",
    "apt": "Lin et al. 2025a, Diffusion Adversarial Post-Training for One-Step Video Generation (APT)",
}


def _update(opt: torch.optim.Optimizer, loss: Tensor, params, max_norm: float) -> float:
    """Update weights: zero, backward, clip, step; returns the gradient norm."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    norm = clip_and_norm(params, max_norm)
    opt.step()
    return norm


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


@contextlib.contextmanager
def weak_real_score(teacher, weight: float):
    """MagicDistillation's weak-to-strong real score (Shao et al. 2025, sec. 3.2): the real DiT's weights moved a
    little toward the fake DiT's, theta_real = theta_teacher + weight * Delta_fake, by running the fake LoRA at
    `weight` times its scale. weight 0 is the teacher exactly, 1 the fake score exactly."""
    from peft.tuners.lora import LoraLayer
    with R.fake_score(teacher):
        layers = [m for m in teacher.model.modules() if isinstance(m, LoraLayer) and R.FAKE_ADAPTER in m.scaling]
        saved = [m.scaling[R.FAKE_ADAPTER] for m in layers]
        for m, s in zip(layers, saved):
            m.scaling[R.FAKE_ADAPTER] = s * weight
        try:
            yield teacher
        finally:
            for m, s in zip(layers, saved):
                m.scaling[R.FAKE_ADAPTER] = s


class ExpertPair(nn.Module):
    """DCM's generator at sampling time: the semantic expert for sigma > boundary, the detail expert below
    (Lv et al. 2025, sec. 3.2). A Backbone for the samplers (velocity only)."""

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


# ----------------------------------------------------------------------------------------------
# Distribution matching: DMD2 and MagicDistillation

class DMD2Step:
    """DMD2 (Yin et al. 2024a). Generator: the DMD gradient (eq. 2 of DMD / our losses/dmd.py, real score with
    CFG) plus a non-saturating GAN term whose discriminator is a head on the fake score's features (DMD2 sec.
    4.3, weight 3e-3). Fake score: flow matching on generated samples (eq. 2 here) plus the head's classification
    loss (weight 1e-2); fake LoRA and head share one optimizer and take `fake_updates_per_generator` steps per
    generator step (two time-scale update rule, sec. 4.2). Multi-step: the generator trains at the baseline
    sigmas with inputs made by backward simulation (sec. 4.5)."""

    name = "dmd2"

    def __init__(self, roles: R.Roles, cfg):
        self.roles, self.cfg, self.b, self.c = roles, cfg, cfg.baseline, cfg.dmd2
        self.generator, self.teacher = roles.generator, roles.teacher
        self.sigmas = few_step_sigmas(self.b.nfe, self.b.shift)
        self.disc = SelfDiscriminator(roles.heads, cfg.equilibrium.layers)
        self.fake_params = roles.fake_params + list(roles.heads.parameters())
        self.gen_opt, self.fake_opt = roles.optimizers["dmd2/generator"], roles.optimizers["dmd2/fake"]
        self.optimizers = {"generator_opt": self.gen_opt, "fake_opt": self.fake_opt}
        self.modules = {"generator": R.generator_checkpoint_view(roles.generator),
                        "fake_lora": R.AdapterState(roles.teacher, R.FAKE_ADAPTER), "heads": roles.heads}

    def generate(self, x_data: Tensor, cond: Conditioning) -> Tensor:
        return student_inputs(self.generator, x_data, cond, self.sigmas, self.c.backward_simulation)[0]

    def fake_losses(self, x_data: Tensor, x0_gen: Tensor, cond: Conditioning) -> dict[str, Tensor]:
        b, dev = x_data.shape[0], x_data.device
        t = sample_band(b, self.c.renoise_band, dev)
        eps = randomness.randn_like(x0_gen)
        x_t = flow.add_noise(x0_gen, eps, t)
        out = {}
        with R.fake_score(self.teacher):
            out["fake"] = fake_score_loss(self.teacher.velocity(x_t, t, cond), x0_gen, eps).mean()
            t_real = sample_band(b, self.c.renoise_band, dev)
            x_real = flow.add_noise(x_data, randomness.randn_like(x_data), t_real)
            if self.c.gan_weight_fake > 0:
                logits_real = self.disc(self.teacher, x_real, t_real, cond, True)
                logits_fake = self.disc(self.teacher, x_t, t, cond, True)
                out["gan_d"] = discriminator_loss(logits_real, logits_fake, "non_saturating").mean()
                out["d_accuracy"] = discriminator_accuracy(logits_real, logits_fake)
        return out

    def generator_losses(self, x0_gen: Tensor, cond: Conditioning) -> dict[str, Tensor]:
        b, dev = x0_gen.shape[0], x0_gen.device
        x0_real, x0_fake = dmd_scores(self.teacher, x0_gen, cond, self.c.renoise_band, self.b.guidance)
        out = {"dmd": dmd_loss(x0_gen, x0_real, x0_fake).mean(), "gap": (x0_real - x0_fake).abs().mean()}
        t_d = sample_band(b, self.c.renoise_band, dev)
        x_d = flow.add_noise(x0_gen, randomness.randn_like(x0_gen), t_d)  # with a graph: the GAN gradient reaches G
        if self.c.gan_weight_generator > 0:
            with R.fake_score(self.teacher), requires_grad(self.fake_params, False):
                out["gan_g"] = generator_adversarial_loss(self.disc(self.teacher, x_d, t_d, cond, True),
                                                          "non_saturating").mean()
        return out

    def step(self, step: int, x_data: Tensor, cond: Conditioning) -> dict[str, float]:
        stats: dict[str, float] = {}
        # Update the fake score and the GAN head (two time-scale update rule).
        for _ in range(self.c.fake_updates_per_generator):
            with torch.no_grad():
                x0_gen = self.generate(x_data, cond)
            f = self.fake_losses(x_data, x0_gen, cond)
            loss_f = f["fake"] + self.c.gan_weight_fake * f.get("gan_d", 0.0)
            stats["grad_norm/fake"] = _update(self.fake_opt, loss_f, self.fake_params, self.b.grad_clip)
            stats["loss/fake"] = f["fake"].item()
            if "gan_d" in f:
                stats["loss/gan_d"] = f["gan_d"].item()
                stats["d/accuracy"] = f["d_accuracy"].item()
        # Update the generator: DMD + GAN.
        x0_gen = self.generate(x_data, cond)
        g = self.generator_losses(x0_gen, cond)
        loss_g = g["dmd"] + self.c.gan_weight_generator * g.get("gan_g", 0.0)
        stats["grad_norm/generator"] = _update(self.gen_opt, loss_g, R.trainable_parameters(self.generator),
                                               self.b.grad_clip)
        stats.update({"loss/dmd": g["dmd"].item(), "loss/g_total": loss_g.item(), "dmd/real_fake_gap": g["gap"].item()})
        if "gan_g" in g:
            stats["loss/gan_g"] = g["gan_g"].item()
        return with_collapse(stats, x0_gen, x_data)


class MDStep:
    """MagicDistillation (Shao et al. 2025). DMD with a LoRA fake score, whose real score is weak-to-strong:
    the teacher plus the fake LoRA at a weak weight (W2S distribution matching, sec. 3.2), so the real score sits
    between the teacher and the fake distribution and the KL estimate stays accurate where the few-step samples
    are far from the data; plus a ground-truth term pulling generated videos toward the real ones
    (losses/ground_truth.py). Generator inputs: real videos noised to the baseline sigmas (4-step); fake score:
    `fake_updates_per_generator` flow-matching updates per generator update."""

    name = "md"

    def __init__(self, roles: R.Roles, cfg):
        self.roles, self.cfg, self.b, self.c = roles, cfg, cfg.baseline, cfg.md
        self.generator, self.teacher = roles.generator, roles.teacher
        self.sigmas = few_step_sigmas(self.b.nfe, self.b.shift)
        self.fake_params = roles.fake_params
        self.gen_opt, self.fake_opt = roles.optimizers["md/generator"], roles.optimizers["md/fake"]
        self.optimizers = {"generator_opt": self.gen_opt, "fake_opt": self.fake_opt}
        self.modules = {"generator": R.generator_checkpoint_view(roles.generator),
                        "fake_lora": R.AdapterState(roles.teacher, R.FAKE_ADAPTER)}

    def step(self, step: int, x_data: Tensor, cond: Conditioning) -> dict[str, float]:
        stats: dict[str, float] = {}
        b, dev = x_data.shape[0], x_data.device
        for _ in range(self.c.fake_updates_per_generator):
            with torch.no_grad():
                x0_gen = student_inputs(self.generator, x_data, cond, self.sigmas, False)[0]
            t = sample_band(b, self.c.renoise_band, dev)
            eps = randomness.randn_like(x0_gen)
            with R.fake_score(self.teacher):
                loss_f = fake_score_loss(self.teacher.velocity(flow.add_noise(x0_gen, eps, t), t, cond), x0_gen, eps).mean()
            stats["grad_norm/fake"] = _update(self.fake_opt, loss_f, self.fake_params, self.b.grad_clip)
            stats["loss/fake"] = loss_f.item()
        x0_gen, s = student_inputs(self.generator, x_data, cond, self.sigmas, False)
        x0_real, x0_fake = dmd_scores(self.teacher, x0_gen, cond, self.c.renoise_band, self.b.guidance,
                                      real_score=lambda teacher: weak_real_score(teacher, self.c.weak_weight))
        dm = dmd_loss(x0_gen, x0_real, x0_fake).mean()
        gt = ground_truth_loss(x0_gen, x_data, s).mean()
        loss_g = dm + self.c.gt_weight * gt
        stats["grad_norm/generator"] = _update(self.gen_opt, loss_g, R.trainable_parameters(self.generator),
                                               self.b.grad_clip)
        stats.update({"loss/w2s_dmd": dm.item(), "loss/ground_truth": gt.item(), "loss/g_total": loss_g.item(),
                      "dmd/real_fake_gap": (x0_real - x0_fake).abs().mean().item()})
        return with_collapse(stats, x0_gen, x_data)


# ----------------------------------------------------------------------------------------------
# Consistency distillation: LCM, PCM, DCM

class ConsistencyStep:
    """LCM (phases = 1; Luo et al. 2023) and PCM (phases = baseline.nfe; Wang et al. 2024): the generator
    learns the teacher's CFG-augmented PF-ODE with a skipping-step solver and an EMA target (roles.ema), via
    losses/consistency.py. Also V-PAE's alternative phase I (priming.kind = lcm, Table 2), with phase I's
    optimizer "priming/generator"."""

    def __init__(self, roles: R.Roles, cfg, phases: int, gen_opt_key: str, name: str = "lcm",
                 grad_clip: float | None = None):
        roles.make_phase_two_copies()  # the EMA target (phase II later restarts it from this phase's generator)
        self.roles, self.cfg, self.c, self.name = roles, cfg, cfg.consistency, name
        self.generator, self.teacher, self.target = roles.generator, roles.teacher, roles.ema
        self.grad_clip = cfg.baseline.grad_clip if grad_clip is None else grad_clip
        edges = flow.sigma_schedule(phases, cfg.baseline.shift).tolist()  # [1, 0] for LCM
        self.loss = PhasedConsistencyLoss(edges, self.c.num_timesteps, self.c.skip, cfg.baseline.guidance,
                                          self.c.distance, self.c.huber_c)
        self.gen_opt = roles.optimizers[gen_opt_key]
        self.optimizers = {"generator_opt": self.gen_opt}
        self.modules = {"generator": R.generator_checkpoint_view(roles.generator), "target": roles.ema}

    def step(self, step: int, x_data: Tensor, cond: Conditioning) -> dict[str, float]:
        with R.real_score(self.teacher):
            out = self.loss(self.generator, self.target, self.teacher, x_data, cond)
        loss = out["loss"].mean()
        stats = {"grad_norm/generator": _update(self.gen_opt, loss, R.trainable_parameters(self.generator), self.grad_clip)}
        # Update EMA (the consistency target).
        R.update_ema(self.target, self.generator, self.c.ema_decay)
        stats["loss/consistency"] = loss.item()
        return stats


class DCMStep:
    """DCM (Lv et al. 2025): phased consistency distillation (PCM's phases) split between two experts at
    the edge after `consistency.semantic_phases` phases: the semantic expert (roles.generator; phases above the boundary) adds the temporal
    coherence loss, the detail expert (roles.detail_expert; phases below) adds a GAN loss and feature matching
    on the frozen teacher's features with the project's heads. Each expert has its EMA target (roles.ema,
    roles.detail_ema). The experts alternate, one update each per two steps (DCM trains them in two stages; we
    interleave them so a run of any length trains both; the generator-update budget counts both)."""

    name = "dcm"

    def __init__(self, roles: R.Roles, cfg):
        self.roles, self.cfg, self.c, self.b = roles, cfg, cfg.consistency, cfg.baseline
        self.teacher = roles.teacher
        edges = flow.sigma_schedule(self.b.nfe, self.b.shift).tolist()
        self.loss = PhasedConsistencyLoss(edges, self.c.num_timesteps, self.c.skip, self.b.guidance,
                                          self.c.distance, self.c.huber_c)
        self.split = self.c.semantic_phases  # phases 0..split-1 semantic, split..M-1 detail
        if not 0 < self.split < self.b.nfe:
            raise ValueError(f"consistency.semantic_phases must be in 1..{self.b.nfe - 1}, got {self.split}")
        self.boundary = edges[self.split]
        self.experts = [(roles.generator, roles.ema, roles.optimizers["dcm/generator"], (0, self.split - 1)),
                        (roles.detail_expert, roles.detail_ema, roles.optimizers["dcm/detail"],
                         (self.split, self.b.nfe - 1))]
        self.disc = SelfDiscriminator(roles.heads, cfg.equilibrium.layers)
        self.head_opt = roles.optimizers["dcm/discriminator"]
        self.head_params = list(roles.heads.parameters())
        self.optimizers = {"generator_opt": self.experts[0][2], "detail_opt": self.experts[1][2],
                           "head_opt": self.head_opt}
        self.modules = {"generator": R.generator_checkpoint_view(roles.generator), "target": roles.ema,
                        "detail_expert": roles.detail_expert, "detail_target": roles.detail_ema, "heads": roles.heads}

    def sampler_model(self) -> ExpertPair:
        return ExpertPair(self.roles.generator, self.roles.detail_expert, self.boundary)

    def step(self, step: int, x_data: Tensor, cond: Conditioning) -> dict[str, float]:
        which = step % 2
        student, target, opt, phases = self.experts[which]
        stats: dict[str, float] = {}
        with R.real_score(self.teacher):
            out = self.loss(student, target, self.teacher, x_data, cond, phases)
            loss = out["loss"].mean()
            stats["loss/consistency"] = loss.item()
            if which == 0:  # semantic expert: + temporal coherence
                tc = temporal_coherence_loss(out["pred"], out["target"]).mean()
                loss = loss + self.c.temporal_weight * tc
                stats["loss/temporal"] = tc.item()
            else:  # detail expert: + GAN + feature matching, on the frozen teacher's features at the phase edge
                edge = out["edge"]
                with requires_grad(self.head_params, False):
                    adv = generator_adversarial_loss(self.disc(self.teacher, out["pred"], edge, cond, True)).mean()
                    layers = self.cfg.equilibrium.layers
                    fm = feature_matching_loss(self.teacher.features(out["pred"], edge, cond, layers),
                                               [f.detach() for f in self.teacher.features(out["target"], edge, cond, layers)]).mean()
                loss = loss + self.c.adv_weight * adv + self.c.feature_matching_weight * fm
                stats.update({"loss/g_adv": adv.item(), "loss/feature_matching": fm.item()})
        stats[f"grad_norm/{'generator' if which == 0 else 'detail_expert'}"] = _update(
            opt, loss, R.trainable_parameters(student), self.b.grad_clip)
        R.update_ema(target, student, self.c.ema_decay)
        stats["loss/g_total"] = loss.item()
        if which == 1:  # discriminator update: heads only; real = data noised to the phase edge
            with R.real_score(self.teacher):
                x_real = flow.add_noise(x_data, randomness.randn_like(x_data), out["edge"])
                logits_real = self.disc(self.teacher, x_real, out["edge"], cond, False)
                logits_fake = self.disc(self.teacher, out["pred"].detach(), out["edge"], cond, False)
                d = discriminator_loss(logits_real, logits_fake).mean()
            stats["grad_norm/heads"] = _update(self.head_opt, d, self.head_params, self.b.grad_clip)
            stats["loss/d"] = d.item()
            stats["d/accuracy"] = discriminator_accuracy(logits_real, logits_fake).item()
        return stats


# ----------------------------------------------------------------------------------------------
# Adversarial distillation: ADD and APT

class ADDStep:
    """ADD (Sauer et al. 2024b). The student denoises real videos noised to the baseline sigmas (ADD's
    tau = 999, 749, 499, 249); its loss is the hinge adversarial loss of a discriminator made of a frozen
    feature network (the teacher, adapters off; ADD uses DINOv2) with trainable heads, plus lambda = 2.5 times
    the score-distillation loss toward the teacher (eq. 5, weight c(t) = alpha_t; losses/add.py). The heads
    train with the hinge loss and R1 on real data (weight 1e-5, approximated: losses/approx_r1.py)."""

    name = "add"

    def __init__(self, roles: R.Roles, cfg):
        self.roles, self.cfg, self.b, self.c = roles, cfg, cfg.baseline, cfg.add
        self.generator, self.teacher = roles.generator, roles.teacher
        self.sigmas = few_step_sigmas(self.b.nfe, self.b.shift)
        self.disc = SelfDiscriminator(roles.heads, cfg.equilibrium.layers)
        self.head_params = list(roles.heads.parameters())
        self.gen_opt, self.head_opt = roles.optimizers["add/generator"], roles.optimizers["add/discriminator"]
        self.optimizers = {"generator_opt": self.gen_opt, "head_opt": self.head_opt}
        self.modules = {"generator": R.generator_checkpoint_view(roles.generator), "heads": roles.heads}

    def discriminate(self, x0: Tensor, cond: Conditioning, backbone_grad: bool) -> Tensor:
        s = torch.full((x0.shape[0],), self.c.disc_sigma, device=x0.device)
        x = flow.add_noise(x0, randomness.randn_like(x0), s)  # s = 0: the clean video (ADD)
        with R.real_score(self.teacher):
            return self.disc(self.teacher, x, s, cond, backbone_grad)

    def step(self, step: int, x_data: Tensor, cond: Conditioning) -> dict[str, float]:
        b, dev = x_data.shape[0], x_data.device
        x0_gen, _ = student_inputs(self.generator, x_data, cond, self.sigmas, False)
        # Generator: adversarial + lambda * distillation (ADD eq. 5).
        with requires_grad(self.head_params, False):
            adv = generator_adversarial_loss(self.discriminate(x0_gen, cond, True), "hinge").mean()
        t = randomness.rand(b, dev).clamp_min(1e-3)  # a teacher timestep, uniform
        x_t = flow.add_noise(x0_gen.detach(), randomness.randn_like(x0_gen), t)
        with torch.no_grad(), R.real_score(self.teacher):
            x0_teacher = predict_x0(self.teacher, x_t, t, cond, self.b.guidance)[0]
        distill = add_distillation_loss(x0_gen, x0_teacher, t).mean()
        loss_g = adv + self.c.distill_weight * distill
        stats = {"grad_norm/generator": _update(self.gen_opt, loss_g, R.trainable_parameters(self.generator),
                                                self.b.grad_clip),
                 "loss/g_adv": adv.item(), "loss/distill": distill.item(), "loss/g_total": loss_g.item()}
        # Discriminator heads: hinge + approximated R1 on real data.
        logits_real = self.discriminate(x_data, cond, False)
        logits_fake = self.discriminate(x0_gen.detach(), cond, False)
        d = discriminator_loss(logits_real, logits_fake, "hinge").mean()
        delta = gaussian_perturbation(x_data, self.c.r1_sigma)
        r1 = approximated_r1_penalty(self.discriminate(x_data + delta, cond, False), logits_real).mean()
        loss_d = d + self.c.r1_weight * r1
        stats["grad_norm/heads"] = _update(self.head_opt, loss_d, self.head_params, self.b.grad_clip)
        stats.update({"loss/d": d.item(), "loss/r1": r1.item(), "d/logits_real": logits_real.mean().item(),
                      "d/logits_fake": logits_fake.mean().item(),
                      "d/accuracy": discriminator_accuracy(logits_real, logits_fake).item()})
        return with_collapse(stats, x0_gen, x_data)


class APTStep:
    """APT (Lin et al. 2025a): one-step generation from pure noise trained only adversarially (non-saturating
    loss) against a discriminator whose backbone is initialised from the diffusion model and trained
    (roles.disc_backbone) with heads (the project's heads; APT's are cross-attention with learnable tokens at
    several depths, our `ca` head), regularised by the approximated R1 on real videos (sigma 0.1 for video,
    lambda 100; losses/approx_r1.py). Discriminator inputs are noised to t ~ U(apt.disc_band)."""

    name = "apt"

    def __init__(self, roles: R.Roles, cfg):
        self.roles, self.cfg, self.b, self.c = roles, cfg, cfg.baseline, cfg.apt
        self.generator, self.backbone = roles.generator, roles.disc_backbone
        self.disc = SelfDiscriminator(roles.heads, cfg.equilibrium.layers)
        self.disc_params = list(roles.heads.parameters()) + R.trainable_parameters(roles.disc_backbone)
        self.gen_opt, self.disc_opt = roles.optimizers["apt/generator"], roles.optimizers["apt/discriminator"]
        self.optimizers = {"generator_opt": self.gen_opt, "disc_opt": self.disc_opt}
        self.modules = {"generator": R.generator_checkpoint_view(roles.generator), "heads": roles.heads,
                        "disc_backbone": roles.disc_backbone}

    def renoise(self, x0: Tensor) -> tuple[Tensor, Tensor]:
        t = sample_band(x0.shape[0], self.c.disc_band, x0.device)
        return flow.add_noise(x0, randomness.randn_like(x0), t), t

    def step(self, step: int, x_data: Tensor, cond: Conditioning) -> dict[str, float]:
        b = x_data.shape[0]
        z = randomness.randn_like(x_data)
        x0_gen = predict_x0(self.generator, z, torch.ones(b, device=z.device), cond)[0]
        with requires_grad(self.disc_params, False):
            x_t, t = self.renoise(x0_gen)
            adv = generator_adversarial_loss(self.disc(self.backbone, x_t, t, cond, True), "non_saturating").mean()
        stats = {"grad_norm/generator": _update(self.gen_opt, adv, R.trainable_parameters(self.generator), self.b.grad_clip),
                 "loss/g_adv": adv.item()}
        x_real, t_real = self.renoise(x_data)
        x_fake, t_fake = self.renoise(x0_gen.detach())
        logits_real = self.disc(self.backbone, x_real, t_real, cond, True)
        logits_fake = self.disc(self.backbone, x_fake, t_fake, cond, True)
        d = discriminator_loss(logits_real, logits_fake, "non_saturating").mean()
        delta = gaussian_perturbation(x_real, self.c.r1_sigma)
        r1 = approximated_r1_penalty(self.disc(self.backbone, x_real + delta, t_real, cond, True), logits_real).mean()
        loss_d = d + self.c.r1_weight * r1
        stats["grad_norm/discriminator"] = _update(self.disc_opt, loss_d, self.disc_params, self.b.grad_clip)
        stats.update({"loss/d": d.item(), "loss/r1": r1.item(), "loss/d_total": loss_d.item(),
                      "d/logits_real": logits_real.mean().item(), "d/logits_fake": logits_fake.mean().item(),
                      "d/accuracy": discriminator_accuracy(logits_real, logits_fake).item()})
        return with_collapse(stats, x0_gen, x_data)


# ----------------------------------------------------------------------------------------------
# Roles, dispatch and the recipe

def build_method_roles(roles: R.Roles, cfg) -> R.Roles:
    """The method's extra roles (Roles fields) and its optimizers in Roles.optimizers["<method>/<role>"], from the
    generator as it is now (the teacher copy). Idempotent."""
    m, b = cfg.method, cfg.baseline
    opt = roles.optimizers
    if f"{m}/generator" in opt:
        return roles

    def adam(params, lr, betas):
        return torch.optim.Adam(list(params), lr=lr, betas=tuple(betas))

    if m in ("lcm", "pcm", "dcm"):
        roles.make_phase_two_copies()  # roles.ema: the consistency target
    if m == "dcm":
        roles.detail_expert = copy.deepcopy(roles.generator)  # same trainable parameters as the generator
        roles.detail_ema = R.make_ema(roles.detail_expert)
        opt["dcm/detail"] = adam(R.trainable_parameters(roles.detail_expert), b.lr, b.betas)
    if m == "apt":  # initialised from the teacher: the generator is still the teacher's exact copy here
        roles.disc_backbone = copy.deepcopy(roles.generator).requires_grad_(True)
    opt[f"{m}/generator"] = adam(R.trainable_parameters(roles.generator), b.lr, b.betas)
    if m == "dmd2":
        opt["dmd2/fake"] = adam(roles.fake_params + list(roles.heads.parameters()), cfg.dmd2.fake_lr, b.betas)
    if m == "md":
        opt["md/fake"] = adam(roles.fake_params, cfg.md.fake_lr, b.betas)
    if m in ("add", "dcm"):
        opt[f"{m}/discriminator"] = adam(roles.heads.parameters(), b.disc_lr, b.disc_betas)
    if m == "apt":
        opt["apt/discriminator"] = adam(list(roles.heads.parameters()) + R.trainable_parameters(roles.disc_backbone),
                                        b.disc_lr, b.disc_betas)
    return roles


def build_method_step(roles: R.Roles, cfg):
    """cfg.method -> its step object over `roles` (building the method's roles and optimizers first)."""
    m = cfg.method
    if m == "vpae":
        raise ValueError("method vpae runs phase I and phase II (recipes.run_distill), not one step")
    build_method_roles(roles, cfg)
    if m in ("lcm", "pcm"):
        return ConsistencyStep(roles, cfg, 1 if m == "lcm" else cfg.baseline.nfe, f"{m}/generator", m)
    return {"dmd2": DMD2Step, "md": MDStep, "dcm": DCMStep, "add": ADDStep, "apt": APTStep}[m](roles, cfg)


def first_phase_step(roles: R.Roles, cfg):
    """V-PAE's phase I: V-PAE-I (PrimingStep) or, for Table 2, LCM with phase I's optimizer and budget."""
    if cfg.priming.kind == "lcm":
        return ConsistencyStep(roles, cfg, 1, "priming/generator", "lcm", grad_clip=cfg.priming.grad_clip)
    return PrimingStep(roles, cfg.priming)


def run_method(cfg, run_dir: str | Path, phase: str = "all", progress: bool = True, eval_fn_factory=None) -> dict:
    """`vpae distill` for method != vpae: one phase of baseline.steps in run_dir/<method>, resumable, then the
    generator exported to run_dir/generator (DCM: and run_dir/detail_expert). Returns what run_distill returns,
    with out["generator"] the model to sample (DCM: the ExpertPair) and out["sampler"] its sampler kind."""
    from vpae.config import ConfigError, to_dict
    from vpae.export import export_backbone
    from vpae import recipes
    from vpae.training.loop import train

    if phase != "all":
        raise ConfigError(f"method {cfg.method} has one phase; run it with --phase all (got {phase!r})")
    run_dir = Path(run_dir)
    world = recipes.start_run(cfg, run_dir)
    if world.distributed:  # the methods' extra roles are deep copies, made before sharding in a later change
        raise ConfigError(f"method {cfg.method} runs in one process for now (torchrun: method vpae only)")
    t0 = time.perf_counter()
    data = recipes.build_data(cfg)
    roles = recipes.build_roles(cfg, data, world)
    step = build_method_step(roles, cfg)
    model = step.sampler_model() if hasattr(step, "sampler_model") else roles.generator
    tc = cfg.train
    evf = eval_fn_factory(model) if eval_fn_factory else None
    r = train(cfg.method, step, data.batch_fn(cfg.baseline.batch_size, tc.seed + 3), steps=cfg.baseline.steps,
              run_dir=run_dir / cfg.method, seed=tc.seed, checkpoint_every=tc.checkpoint_every,
              keep=tc.keep_checkpoints, log_every=tc.log_every, progress=progress, eval_every=tc.eval_every,
              eval_fn=evf, divergence=recipes.divergence_check(cfg), world=world)
    meta = {"role": "generator", "method": cfg.method, "data": to_dict(cfg.data)}
    lora = run_dir / "generator_lora" if cfg.priming.generator_mode == "lora" else None
    export_backbone(roles.generator, run_dir / "generator", meta, lora_dir=lora)
    if roles.detail_expert is not None:
        export_backbone(roles.detail_expert, run_dir / "detail_expert",
                        {**meta, "role": "detail_expert", "boundary": step.boundary})
    return {"timings": {cfg.method: r["seconds"]}, cfg.method: r, "generator": model, "teacher": roles.teacher,
            "data": data, "seconds": time.perf_counter() - t0, "sampler": SAMPLER[cfg.method], "roles": roles}
