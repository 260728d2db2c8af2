"""One optimisation step per phase. Each step object uses its phase's roles and optimizers (training.roles.Roles), calls the pure losses of
`vpae.losses`, and returns a dict of floats (every loss term and gradient norm) for the logger.

Data: every step receives `x_data` (B, C, F, H, W) clean latents and their Conditioning.
"""

from __future__ import annotations

import contextlib
import dataclasses

import torch
from torch import nn

from vpae import flow
from vpae.backbones.base import Backbone
from vpae.conditioning import Conditioning
from vpae.config import EquilibriumConfig, PretrainConfig, PrimingConfig
from vpae.discriminator import SelfDiscriminator, blur_frames
from vpae.losses import (conditional_sds_loss, discriminator_accuracy, discriminator_loss, dmd_loss, fake_score_loss,
                         generator_adversarial_loss, mode_seeking_loss, spatiotemporal_perturbation, st_r1_penalty)
from vpae.sampling import predict_x0
from vpae import randomness
from vpae.training import roles as R
from vpae.training.collapse import with_collapse

Tensor = torch.Tensor


def sample_band(n: int, band, device) -> Tensor:
    lo, hi = band
    return lo + (hi - lo) * randomness.rand(n, device)


@contextlib.contextmanager
def requires_grad(params, flag: bool):
    """Temporarily set requires_grad on params (restored afterwards)."""
    saved = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(flag)
    try:
        yield
    finally:
        for p, f in zip(params, saved):
            p.requires_grad_(f)


def dmd_scores(teacher: Backbone, x0_gen: Tensor, cond: Conditioning, band, guidance: float,
               real_score=R.real_score) -> tuple[Tensor, Tensor]:
    """Eq. 1's two scores: the real score's (with CFG `guidance`; `real_score` puts the teacher in its real-score
    state) and the fake score's x0 predictions on the generated x0, detached and re-noised at t ~ U(band)."""
    t = sample_band(x0_gen.shape[0], band, x0_gen.device)
    x_t = flow.add_noise(x0_gen.detach(), randomness.randn_like(x0_gen), t)
    with torch.no_grad():
        with real_score(teacher):
            x0_real = predict_x0(teacher, x_t, t, cond, guidance)[0]
        with R.fake_score(teacher):
            x0_fake = predict_x0(teacher, x_t, t, cond)[0]
    return x0_real, x0_fake


def clip_and_norm(params, max_norm: float) -> float:
    params = [p for p in params if p.grad is not None]
    if not params:
        return 0.0
    norm = torch.nn.utils.clip_grad_norm_(params, max_norm if max_norm > 0 else float("inf"))
    # sharded (FSDP2) parameters give a DTensor norm: clipping used the global norm; read it whole
    return float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)


# ----------------------------------------------------------------------------------------------
# Teacher pre-training (toy world): plain flow matching with text dropout for CFG, plus EMA.

class PretrainStep:
    def __init__(self, model: Backbone, ema: nn.Module, cfg: PretrainConfig):
        self.model, self.ema, self.cfg = model, ema, cfg
        self.opt = torch.optim.AdamW(R.trainable_parameters(model), lr=cfg.lr, betas=tuple(cfg.betas),
                                     weight_decay=cfg.weight_decay)
        self.optimizers = {"opt": self.opt}
        self.modules = {"model": model, "ema": ema}

    def sample_sigma(self, n: int, device) -> Tensor:
        if self.cfg.sigma_sampling == "logit_normal":
            s = torch.sigmoid(randomness.randn((n,), device=device))
        else:
            s = randomness.rand(n, device)
        return flow.shift_sigma(s, self.cfg.sigma_shift)

    def step(self, step: int, x_data: Tensor, cond: Conditioning) -> dict[str, float]:
        b = x_data.shape[0]
        # Drop the caption (-> negative prompt) for a fraction of samples so CFG has an unconditional model.
        drop = randomness.rand(b, x_data.device) < self.cfg.text_dropout
        if drop.any():
            neg = cond.negative()
            keep = (~drop).reshape(-1, 1, 1).to(cond.text.dtype)
            mask = None if cond.text_mask is None else torch.where(drop[:, None], torch.ones_like(cond.text_mask), cond.text_mask)
            cond = dataclasses.replace(cond, text=cond.text * keep + neg.text * (1 - keep), text_mask=mask)
        sigma = self.sample_sigma(b, x_data.device)
        eps = randomness.randn_like(x_data)
        x_t = flow.add_noise(x_data, eps, sigma)
        v = self.model.velocity(x_t, sigma, cond)
        loss = (v - flow.velocity_target(x_data, eps)).pow(2).flatten(1).mean(1).mean()
        # Update weights.
        warm = min(1.0, (step + 1) / max(1, self.cfg.warmup_steps))
        if self.cfg.lr_decay_steps > 0:
            warm *= min(1.0, (self.cfg.steps - step) / self.cfg.lr_decay_steps)
        for g in self.opt.param_groups:
            g["lr"] = self.cfg.lr * warm
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        gnorm = clip_and_norm(self.model.parameters(), self.cfg.grad_clip)
        self.opt.step()
        # Update EMA, with the usual warm-up so early random weights do not linger in short runs.
        R.update_ema(self.ema, self.model, min(self.cfg.ema_decay, (1 + step) / (10 + step)))
        return {"loss/flow": loss.item(), "grad_norm/model": gnorm}


# ----------------------------------------------------------------------------------------------
# Phase I: stability priming (paper 3.1).

class PrimingStep:
    def __init__(self, roles: R.Roles, cfg: PrimingConfig):
        self.generator, self.teacher, self.cfg = roles.generator, roles.teacher, cfg
        self.fake_params = roles.fake_params
        self.gen_opt, self.fake_opt = roles.optimizers["priming/generator"], roles.optimizers["priming/fake"]
        self.optimizers = {"generator_opt": self.gen_opt, "fake_opt": self.fake_opt}
        self.modules = {"generator": R.generator_checkpoint_view(roles.generator),
                        "fake_lora": R.AdapterState(roles.teacher, R.FAKE_ADAPTER)}

    def generate(self, x_data: Tensor, cond: Conditioning) -> Tensor:
        """x0_hat = f(x_s, s): one evaluation from the low-SNR band, x_s built from data (Fig. 2a)."""
        s = sample_band(x_data.shape[0], self.cfg.generator_band, x_data.device)
        x_s = flow.add_noise(x_data, randomness.randn_like(x_data), s)
        return predict_x0(self.generator, x_s, s, cond)[0]

    def step(self, step: int, x_data: Tensor, cond: Conditioning) -> dict[str, float]:
        stats: dict[str, float] = {}
        b, dev = x_data.shape[0], x_data.device
        # Update the fake score (eq. 2) on detached generator samples.
        for _ in range(self.cfg.fake_updates_per_generator):
            with torch.no_grad():
                x0_gen = self.generate(x_data, cond)
            t = sample_band(b, self.cfg.renoise_band, dev)
            eps = randomness.randn_like(x0_gen)
            with R.fake_score(self.teacher):
                v_fake = self.teacher.velocity(flow.add_noise(x0_gen, eps, t), t, cond)
            loss_fake = fake_score_loss(v_fake, x0_gen, eps).mean()
            self.fake_opt.zero_grad(set_to_none=True)
            loss_fake.backward()
            stats["grad_norm/fake"] = clip_and_norm(self.fake_params, self.cfg.grad_clip)
            self.fake_opt.step()
            stats["loss/fake"] = loss_fake.item()
        # Update the generator (eq. 1) through the real-minus-fake score difference.
        x0_gen = self.generate(x_data, cond)
        x0_real, x0_fake = dmd_scores(self.teacher, x0_gen, cond, self.cfg.renoise_band, self.cfg.real_guidance)
        loss_gen = dmd_loss(x0_gen, x0_real, x0_fake).mean()
        self.gen_opt.zero_grad(set_to_none=True)
        loss_gen.backward()
        stats["grad_norm/generator"] = clip_and_norm(R.trainable_parameters(self.generator), self.cfg.grad_clip)
        self.gen_opt.step()
        stats["loss/dmd"] = loss_gen.item()
        stats["dmd/real_fake_gap"] = (x0_real - x0_fake).abs().mean().item()
        return with_collapse(stats, x0_gen, x_data)


# ----------------------------------------------------------------------------------------------
# Phase II: unified adversarial equilibrium (paper 3.2-3.4).

class EquilibriumStep:
    def __init__(self, roles: R.Roles, cfg: EquilibriumConfig):
        roles.start_equilibrium()
        self.generator, self.ema, self.teacher, self.cfg = roles.generator, roles.ema, roles.teacher, cfg
        if cfg.adv_weight < 0 or cfg.sds_lambda < 0 or cfg.adv_weight + cfg.sds_lambda == 0:
            raise ValueError(f"need adv_weight >= 0 and sds_lambda >= 0, not both 0; got {cfg.adv_weight}, {cfg.sds_lambda}")
        self.disc = SelfDiscriminator(roles.heads, cfg.layers)
        if cfg.backbone == "trained" and roles.trained_backbone is None:
            raise ValueError("backbone 'trained' needs its own full copy (make_roles(..., trained_backbone=True))")
        self.disc_backbone = {"unified": roles.ema, "frozen": roles.teacher, "trained": roles.trained_backbone}[cfg.backbone]
        self.gen_opt = roles.optimizers["equilibrium/generator"]
        self.head_opt = roles.optimizers["equilibrium/discriminator"]
        self.disc_params = roles.discriminator_params
        self.optimizers = {"generator_opt": self.gen_opt, "head_opt": self.head_opt}
        self.modules = {"generator": roles.generator, "ema": roles.ema, "heads": roles.heads}
        if cfg.backbone == "trained":
            self.modules["disc_backbone"] = roles.trained_backbone

    def discriminate(self, x_t: Tensor, t: Tensor, cond: Conditioning, backbone_grad: bool) -> Tensor:
        if self.cfg.backbone == "frozen":
            with R.real_score(self.teacher):
                return self.disc(self.disc_backbone, x_t, t, cond, backbone_grad)
        return self.disc(self.disc_backbone, x_t, t, cond, backbone_grad)

    def disc_view(self, x0: Tensor, cond: Conditioning) -> Tensor:
        """What the discriminator is shown of a generated x0: optionally blurred, and with the condition's first
        latent frame in place of the generated one (disc_condition_frame; real videos already start with it)."""
        if self.cfg.disc_condition_frame and cond.is_i2v:
            x0 = torch.cat([cond.cond_latent[:, :, :1].to(x0.dtype), x0[:, :, 1:]], dim=2)
        return blur_frames(x0, self.cfg.disc_blur)

    def renoise(self, x0: Tensor, band) -> tuple[Tensor, Tensor]:
        t = sample_band(x0.shape[0], band, x0.device)
        return flow.add_noise(x0, randomness.randn_like(x0), t), t

    def generator_losses(self, x0_gen: Tensor, cond: Conditioning) -> dict[str, Tensor]:
        """Eq. 6 terms: the adversarial loss through the discriminator backbone's input, and C-SDS."""
        out = {}
        if self.cfg.adv_weight > 0:
            x_t, t = self.renoise(self.disc_view(x0_gen, cond), self.cfg.disc_band)  # not detached: reaches G
            adv = generator_adversarial_loss(self.discriminate(x_t, t, cond, backbone_grad=True), self.cfg.loss)
            out["adv"] = adv.mean()
        if self.cfg.sds_lambda > 0:
            x_t2, t2 = self.renoise(x0_gen.detach(), self.cfg.sds_band)
            with torch.no_grad(), R.real_score(self.teacher):
                x0_teacher = predict_x0(self.teacher, x_t2, t2, cond, self.cfg.sds_guidance)[0]
            out["sds"] = conditional_sds_loss(x0_gen, x0_teacher).mean()
        return out

    def mode_seeking(self, x0_gen: Tensor, z: Tensor, cond: Conditioning) -> Tensor:
        """The optional diversity term: a second sample, from fresh noise, for the first half of the batch's
        conditions, pushed away from the first (MSGAN eq. 3)."""
        half = max(1, x0_gen.shape[0] // 2)
        z2 = randomness.randn_like(z[:half])
        x0_2 = predict_x0(self.generator, z2, torch.ones(half, device=z.device), cond[:half])[0]
        blur = self.cfg.diversity_blur
        return mode_seeking_loss(blur_frames(x0_gen[:half], blur), blur_frames(x0_2, blur), z[:half], z2).mean()

    def discriminator_losses(self, x_data: Tensor, x0_fake: Tensor, cond: Conditioning) -> dict[str, Tensor]:
        """Eq. 7 terms: the discriminator loss on re-noised real and generated videos, and ST-R1 (eq. 4)."""
        grad_bb = self.cfg.backbone == "trained"
        x_real, t_real = self.renoise(blur_frames(x_data, self.cfg.disc_blur), self.cfg.disc_band)
        x_fake, t_fake = self.renoise(self.disc_view(x0_fake.detach(), cond), self.cfg.disc_band)
        logits_real = self.discriminate(x_real, t_real, cond, grad_bb)
        logits_fake = self.discriminate(x_fake, t_fake, cond, grad_bb)
        out = {"disc": discriminator_loss(logits_real, logits_fake, self.cfg.loss).mean(),
               "logits_real": logits_real.detach().mean(), "logits_fake": logits_fake.detach().mean(),
               "accuracy": discriminator_accuracy(logits_real, logits_fake)}
        if self.cfg.r1_weight > 0:
            r1 = 0.0
            targets = {"fake": [(x_fake, t_fake, logits_fake)], "real": [(x_real, t_real, logits_real)]}
            targets["both"] = targets["fake"] + targets["real"]
            for x, t, logits in targets[self.cfg.r1_on]:
                delta = spatiotemporal_perturbation(x, self.cfg.sigma_s, self.cfg.sigma_t)
                r1 = r1 + st_r1_penalty(self.discriminate(x + delta, t, cond, grad_bb), logits, delta).mean()
            out["r1"] = r1
        return out

    def step(self, step: int, x_data: Tensor, cond: Conditioning) -> dict[str, float]:
        b = x_data.shape[0]
        # Generator update: x0 = f(eps, T) from pure noise (eq. 6).
        z = randomness.randn_like(x_data)
        x0_gen = predict_x0(self.generator, z, torch.ones(b, device=z.device), cond)[0]
        with requires_grad(self.disc_params, False):  # no wasted gradients for heads / a trained backbone
            g = self.generator_losses(x0_gen, cond)
            loss_g = self.cfg.adv_weight * g.get("adv", 0.0) + self.cfg.sds_lambda * g.get("sds", 0.0)
            if self.cfg.diversity_weight > 0:
                g["mode_seeking"] = self.mode_seeking(x0_gen, z, cond)
                loss_g = loss_g + self.cfg.diversity_weight * g["mode_seeking"]
            self.gen_opt.zero_grad(set_to_none=True)
            loss_g.backward()
        stats = {"grad_norm/generator": clip_and_norm(R.trainable_parameters(self.generator), self.cfg.grad_clip)}
        self.gen_opt.step()
        # Update EMA (the unified discriminator backbone co-evolves with the generator).
        R.update_ema(self.ema, self.generator, self.cfg.ema_decay)
        stats["loss/g_total"] = loss_g.item()
        if "adv" in g:
            stats["loss/g_adv"] = g["adv"].item()
        if "sds" in g:
            stats["loss/c_sds"] = g["sds"].item()
        if "mode_seeking" in g:
            stats["loss/mode_seeking"] = g["mode_seeking"].item()
        # Discriminator update: only the heads (and a 'trained' backbone) learn (eq. 7).
        for _ in range(self.cfg.disc_updates_per_generator):
            d = self.discriminator_losses(x_data, x0_gen.detach(), cond)
            loss_d = d["disc"] + self.cfg.r1_weight * d.get("r1", 0.0)
            self.head_opt.zero_grad(set_to_none=True)
            loss_d.backward()
            stats["grad_norm/heads"] = clip_and_norm(self.disc_params, self.cfg.grad_clip)
            self.head_opt.step()
        stats.update({"loss/d": d["disc"].item(), "loss/d_total": loss_d.item(),
                      "d/logits_real": d["logits_real"].item(), "d/logits_fake": d["logits_fake"].item(),
                      "d/accuracy": d["accuracy"].item()})
        if "r1" in d:
            stats["loss/st_r1"] = d["r1"].item()
        return with_collapse(stats, x0_gen, x_data)
