"""V-PAE: phase I, stability priming (paper 3.1, eq. 1-2), then phase II, unified adversarial equilibrium
(paper 3.2-3.4, eq. 3-7). `priming.kind: lcm` replaces phase I by latent consistency distillation (Table 2).

Networks: the generator (full or LoRA), the teacher with its fake LoRA (real and fake score), from phase II on
the generator's EMA (the discriminator backbone, "unified"), the heads, and for the Table 3 ablation
`equilibrium.backbone: trained` a trained full copy ("trained_backbone").
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import nn

from vpae import flow, randomness
from vpae.conditioning import Conditioning
from vpae.discriminator import FeatureDiscriminator, blur_frames
from vpae.losses import (
    AdversarialLoss,
    ConditionalSDSLoss,
    DistributionMatchingLoss,
    FakeScoreLoss,
    SpatiotemporalR1,
    band_bins,
    discriminator_accuracy,
    mode_seeking_loss,
    pair_counts_by_bin,
)
from vpae.registry import register_method
from vpae.sampling import predict_x0
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
from vpae.training.model import (
    Networks,
    copy_into,
    fake_score,
    generator_checkpoint_view,
    real_score,
    trainable_parameters,
    update_ema,
)

Tensor = torch.Tensor


class PrimingPhase(Phase):
    """Phase I (V-PAE-I): the generator predicts x0 from x_s built from data at s ~ U(generator_band), the
    low-SNR band (Fig. 2a); the fake score tracks its samples (eq. 2) `fake_updates_per_generator` times per
    generator update, then the generator follows the real-minus-fake score difference (eq. 1)."""

    name, stream = "priming", 1

    def __init__(self, nets: Networks, cfg):
        super().__init__(nets, cfg)
        p = self.priming = cfg.priming
        self.steps, self.batch_size = p.steps, p.batch_size
        self.dmd = DistributionMatchingLoss(p.renoise_band, p.real_guidance)
        self.fake_score_matching = FakeScoreLoss(p.renoise_band)

    def optimizers(self) -> dict[str, OptimizerSpec]:
        p = self.priming
        return {"generator": adam_on(self.nets.generator, p),
                "fake": OptimizerSpec(self.nets.fake_params, p.fake_lr, p.fake_betas, p.grad_clip)}

    def modules(self) -> dict[str, nn.Module]:
        return {"generator": generator_checkpoint_view(self.nets.generator),
                "fake_lora": self.nets.fake_lora_state()}

    def generate(self, x_data: Tensor, cond: Conditioning) -> Tensor:
        """x0_hat = f(x_s, s): one evaluation from the low-SNR band, x_s built from data (Fig. 2a)."""
        s = randomness.uniform(x_data.shape[0], self.priming.generator_band, x_data.device)
        x_s = flow.add_noise(x_data, randomness.randn_like(x_data), s)
        return predict_x0(self.nets.generator, x_s, s, cond)[0]

    def fake_loss(self, x_data: Tensor, cond: Conditioning) -> tuple[Tensor, dict]:
        with torch.no_grad():
            x0_gen = self.generate(x_data, cond)
        loss = self.fake_score_matching(x0_gen, cond, self.nets).mean()
        return loss, {"loss/fake": loss.item()}

    def generator_loss(self, x_data: Tensor, cond: Conditioning) -> tuple[Tensor, dict]:
        x0_gen = self.generate(x_data, cond)
        loss, gap = self.dmd(x0_gen, cond, self.nets)
        loss = loss.mean()
        return loss, {"loss/dmd": loss.item(), "dmd/real_fake_gap": gap.item(), **collapse_logs(x0_gen, x_data)}

    def step(self, step: int, x_data: Tensor, cond: Conditioning) -> Iterator[Update]:
        for _ in range(self.priming.fake_updates_per_generator):
            with fake_score(self.nets.teacher):
                yield Update("fake", *self.fake_loss(x_data, cond))
        yield Update("generator", *self.generator_loss(x_data, cond))


class EquilibriumPhase(Phase):
    """Phase II: x0 = f(eps, T) from pure noise. The generator minimises eq. 6, adv_weight x the adversarial
    loss through the discriminator backbone's input + sds_lambda x C-SDS (eq. 5) (+ the optional mode-seeking
    term); then the EMA follows (the unified backbone co-evolves); then the heads minimise eq. 7, the
    discriminator loss + r1_weight x ST-R1 (eq. 4), `disc_updates_per_generator` times."""

    name, stream = "equilibrium", 2

    def __init__(self, nets: Networks, cfg):
        super().__init__(nets, cfg)
        e = self.equilibrium = cfg.equilibrium
        self.steps, self.batch_size = e.steps, e.batch_size
        self.disc = FeatureDiscriminator(nets.heads, e.layers)
        self.adversarial = AdversarialLoss(e.loss, e.disc_band, e.disc_band_power)
        self.r1 = SpatiotemporalR1(e.sigma_s, e.sigma_t)
        self.sds = ConditionalSDSLoss(e.sds_band, e.sds_guidance)

    def start(self) -> None:
        """Phase II starts from the primed generator: the EMA (and a trained discriminator backbone) start as
        copies of it (made now, or made before sharding and overwritten now)."""
        nets = self.nets
        if nets.ema is None:
            nets.make_ema()
        else:
            copy_into(nets.ema, nets.generator)
        if self.equilibrium.backbone == "trained":
            if "trained_backbone" in nets.others:
                copy_into(nets.others["trained_backbone"], nets.generator)
            else:
                nets.make_copy("trained_backbone")

    @property
    def disc_backbone(self):
        return {"unified": self.nets.ema, "frozen": self.nets.teacher,
                "trained": self.nets.others.get("trained_backbone")}[self.equilibrium.backbone]

    def disc_params(self) -> list[nn.Parameter]:
        extra = self.nets.others.get("trained_backbone")
        return self.nets.head_params() + (trainable_parameters(extra) if extra is not None else [])

    def optimizers(self) -> dict[str, OptimizerSpec]:
        e = self.equilibrium
        return {"generator": adam_on(self.nets.generator, e),
                "heads": OptimizerSpec(self.disc_params(), e.head_lr, e.head_betas, e.grad_clip)}

    def modules(self) -> dict[str, nn.Module]:
        # a LoRA generator's checkpoint holds its adapter alone, as in phase I (its base is the teacher's)
        out = {"generator": generator_checkpoint_view(self.nets.generator), "ema": self.nets.ema, "heads": self.nets.heads}
        if self.equilibrium.backbone == "trained":
            out["disc_backbone"] = self.nets.others["trained_backbone"]
        return out

    def discriminate(self, x_t: Tensor, t: Tensor, cond: Conditioning, backbone_grad: bool) -> Tensor:
        if self.equilibrium.backbone == "frozen":
            with real_score(self.nets.teacher):
                return self.disc(self.disc_backbone, x_t, t, cond, backbone_grad)
        return self.disc(self.disc_backbone, x_t, t, cond, backbone_grad)

    def disc_view(self, x0: Tensor, cond: Conditioning) -> Tensor:
        """What the discriminator is shown of a generated x0: optionally blurred, and with the condition's first
        latent frame in place of the generated one (disc_condition_frame; real videos already start with it)."""
        if self.equilibrium.disc_condition_frame and cond.is_i2v:
            x0 = torch.cat([cond.cond_latent[:, :, :1].to(x0.dtype), x0[:, :, 1:]], dim=2)
        return blur_frames(x0, self.equilibrium.disc_blur)

    def mode_seeking(self, x0_gen: Tensor, z: Tensor, cond: Conditioning) -> Tensor:
        """The optional diversity term: a second sample, from fresh noise, for every condition of the batch,
        pushed away from the first (MSGAN eq. 3). Every sample gets its pair (not a part of the batch), so the
        term is the same however the batch is split over ranks and micro-batches."""
        z2 = randomness.randn_like(z)
        x0_2 = one_step_x0(self.nets.generator, z2, cond)
        blur = self.equilibrium.diversity_blur
        return mode_seeking_loss(blur_frames(x0_gen, blur), blur_frames(x0_2, blur), z, z2).mean()

    def generator_loss(self, x0_gen: Tensor, z: Tensor, cond: Conditioning) -> tuple[Tensor, dict]:
        """Eq. 6 (+ the optional mode-seeking term); with adv_balance, the adversarial gradient rescaled to
        adv_balance x the C-SDS gradient's norm (balanced_terms)."""
        e, terms = self.equilibrium, {}
        logs = {}
        with requires_grad(self.disc_params(), False):  # no wasted gradients for heads / a trained backbone
            def adversarial(x0):
                return self.adversarial.generator(
                    lambda x_t, t: self.discriminate(x_t, t, cond, backbone_grad=True), self.disc_view(x0, cond)).mean()

            def sds(x0):
                return self.sds(x0, cond, self.nets).mean()
            if e.adv_balance > 0 and e.adv_weight > 0 and e.sds_lambda > 0:
                loss, terms, logs = balanced_terms(x0_gen, adversarial, sds, e.adv_balance, e.sds_lambda)
            else:
                if e.adv_weight > 0:
                    terms["g_adv"] = adversarial(x0_gen)
                if e.sds_lambda > 0:
                    terms["c_sds"] = sds(x0_gen)
                loss = e.adv_weight * terms.get("g_adv", 0.0) + e.sds_lambda * terms.get("c_sds", 0.0)
                logs["loss/g_total"] = float(loss.detach()) if torch.is_tensor(loss) else float(loss)
            if e.diversity_weight > 0:
                terms["mode_seeking"] = self.mode_seeking(x0_gen, z, cond)
                loss = loss + e.diversity_weight * terms["mode_seeking"]
                logs["loss/g_total"] += e.diversity_weight * terms["mode_seeking"].item()
        return loss, {**logs, **{f"loss/{k}": float(v) for k, v in terms.items()}}

    def discriminator_loss(self, x_data: Tensor, x0_fake: Tensor, cond: Conditioning) -> tuple[Tensor, dict]:
        """Eq. 7: the discriminator loss on re-noised real and generated videos, + r1_weight x ST-R1 (eq. 4)."""
        e = self.equilibrium
        grad_bb = e.backbone == "trained"

        def discriminate(x_t, t):
            return self.discriminate(x_t, t, cond, grad_bb)
        d = self.adversarial.discriminator(discriminate, blur_frames(x_data, e.disc_blur), self.disc_view(x0_fake, cond))
        disc = d["loss"].mean()
        (_, t_real, logits_real), (_, t_fake, logits_fake) = d["real"], d["fake"]
        logs = {"loss/d": disc.item(), "d/logits_real": logits_real.detach().mean().item(),
                "d/logits_fake": logits_fake.detach().mean().item(),
                "d/logit_gap": (logits_real.detach().mean() - logits_fake.detach().mean()).item(),
                "d/accuracy": discriminator_accuracy(logits_real, logits_fake).item(),
                **pair_counts_by_bin(logits_real, t_real, logits_fake, t_fake, e.disc_band)}
        loss = disc
        if e.r1_weight > 0:
            r1 = 0.0
            sides = {"fake": [d["fake"]], "real": [d["real"]], "both": [d["fake"], d["real"]]}[e.r1_on]
            for x, t, logits in sides:
                r1 = r1 + self.r1(discriminate, x, t, logits).mean()
            loss = disc + e.r1_weight * r1
            logs["loss/st_r1"] = r1.item()
        logs["loss/d_total"] = loss.item()
        return loss, logs

    def discriminator_probe(self, x_real: Tensor, cond: Conditioning, seed: int) -> dict[str, float]:
        """The heads as they are, scored on held-out pairs: the i-th real video and a generated one for the same
        condition, re-noised with the same noise at the middle t of each bin of disc_band. Per bin k:
        probe_acc_bin{k} = P(D(real_i) > D(generated_i)) (ties half) and probe_gap_bin{k} = mean D(real) -
        D(generated); probe_acc = their mean over bins. Uses its own generator of random numbers (seed), so
        training draws the same numbers with or without it."""
        e = self.equilibrium
        g = torch.Generator().manual_seed(seed)
        z = torch.randn(x_real.shape, generator=g).to(x_real)
        eps = torch.randn(x_real.shape, generator=g).to(x_real)
        out: dict[str, float] = {}
        with torch.no_grad():
            fake = self.disc_view(one_step_x0(self.nets.generator, z, cond), cond)
            real = blur_frames(x_real, e.disc_blur)
            for k, (a, b) in enumerate(band_bins(e.disc_band)):
                t = torch.full((x_real.shape[0],), (a + b) / 2, device=x_real.device)
                lr = self.discriminate(flow.add_noise(real, eps, t), t, cond, False).float()
                lf = self.discriminate(flow.add_noise(fake, eps, t), t, cond, False).float()
                out[f"probe_acc_bin{k}"] = float((lr > lf).float().mean() + 0.5 * (lr == lf).float().mean())
                out[f"probe_gap_bin{k}"] = float((lr - lf).mean())
        out["probe_acc"] = sum(v for k, v in out.items() if k.startswith("probe_acc_bin")) / len(band_bins(e.disc_band))
        return out

    def generator_update_state(self) -> contextlib.ExitStack:
        """Held from the generator loss's forward through its backward: the discriminator's weights frozen, and
        the frozen-teacher backbone's adapters off."""
        stack = contextlib.ExitStack()
        stack.enter_context(requires_grad(self.disc_params(), False))
        if self.equilibrium.backbone == "frozen":
            stack.enter_context(real_score(self.nets.teacher))
        return stack

    def step(self, step: int, x_data: Tensor, cond: Conditioning) -> Iterator[Update | dict]:
        z = randomness.randn_like(x_data)
        x0_gen = one_step_x0(self.nets.generator, z, cond)
        with self.generator_update_state():
            yield Update("generator", *self.generator_loss(x0_gen, z, cond))
        # Update EMA (the unified discriminator backbone co-evolves with the generator).
        yield AfterUpdate(lambda: update_ema(self.nets.ema, self.nets.generator, self.equilibrium.ema_decay))
        for _ in range(self.equilibrium.disc_updates_per_generator):
            yield Update("heads", *self.discriminator_loss(x_data, x0_gen.detach(), cond))
        yield collapse_logs(x0_gen, x_data)


def balanced_terms(x0: Tensor, adversarial, sds, balance: float, sds_lambda: float) -> tuple[Tensor, dict, dict]:
    """Eq. 6 with the adversarial weight set each step by gradient norms: g_adv = d L_adv / d x0 and g_sds =
    sds_lambda x d C-SDS / d x0 are taken on detached copies of the generated videos, and the generator's loss is
    the surrogate <x0, s g_adv + g_sds> with s = balance x |g_sds| / |g_adv|, whose gradient on the generator's
    weights is exactly that of s L_adv + sds_lambda C-SDS (one backward through the generator, as without
    balancing). Under torchrun the norms are the global batch's (all-reduced), so 2 ranks take the one process's
    step; with gradient accumulation the scale is each micro-batch's own. -> (surrogate loss, {"g_adv", "c_sds"}
    values, logs)."""
    xa, xs = x0.detach().requires_grad_(), x0.detach().requires_grad_()
    g_adv_loss, c_sds = adversarial(xa), sds(xs)
    (g_adv,) = torch.autograd.grad(g_adv_loss, xa)
    (g_sds,) = torch.autograd.grad(sds_lambda * c_sds, xs)
    g_adv_loss, c_sds = g_adv_loss.detach(), c_sds.detach()
    norms = torch.stack([g_adv.double().square().sum(), g_sds.double().square().sum()])
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        # the global batch's norms (every rank's share has the same 1/n factor, so the ratio is the one process's);
        # a cp group holds the same samples, which scales both sums alike
        torch.distributed.all_reduce(norms)
    n_adv, n_sds = norms.sqrt().to(g_adv.dtype).unbind()
    scale = balance * n_sds / n_adv.clamp_min(1e-12)
    surrogate = (x0 * (scale * g_adv + g_sds).detach()).sum()
    logs = {"loss/g_total": (scale * g_adv_loss + sds_lambda * c_sds).item(), "adv/grad_norm_adv": float(n_adv),
            "adv/grad_norm_sds": float(n_sds), "adv/scale": float(scale)}
    return surrogate, {"g_adv": g_adv_loss, "c_sds": c_sds}, logs


@register_method("vpae")
class VPAE(Method):
    name, paper, sampler = "vpae", "V-PAE (this paper)", "few_step"
    needs_heads, distributed = True, True

    def head_settings(self) -> dict:
        e = self.cfg.equilibrium
        return {"kind": e.head, "layers": e.layers, "hidden_dim": e.head_dim, "num_queries": e.head_queries,
                "num_heads": e.head_attn_heads}

    def extra_copies(self) -> tuple[int, int]:
        return int(self.cfg.equilibrium.backbone == "trained"), 1  # the EMA generator (phase II's backbone)

    def add_roles(self, nets: Networks, before_sharding: bool) -> None:
        if before_sharding:  # a sharded module cannot be deep-copied: phase II's copies exist from the start
            nets.make_ema()
            if self.cfg.equilibrium.backbone == "trained":
                nets.make_copy("trained_backbone")

    def phase_names(self) -> list[str]:
        return ["priming", "equilibrium"]

    def phases(self, nets: Networks) -> list[Phase]:
        if self.cfg.priming.kind == "lcm":  # Table 2: LCM as the first phase, with phase I's optimizer and budget
            first = ConsistencyPhase(nets, self.cfg, phases=1, name="priming", stream=1, section=self.cfg.priming)
        else:
            first = PrimingPhase(nets, self.cfg)
        return [first, EquilibriumPhase(nets, self.cfg)]
