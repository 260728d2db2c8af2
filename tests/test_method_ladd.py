"""LADD (vpae.training.methods.ladd): one step trains exactly the generator and the heads, the discriminator's
noise levels follow the configured logit-normal, a one-step student starts from pure noise, a tiny run stays
finite."""

from __future__ import annotations

import dataclasses
import math

import torch
from conftest import make_cond, make_latent, make_wan

from vpae import randomness
from vpae.config import ComparisonConfig, EquilibriumConfig, PrimingConfig, VPAEConfig
from vpae.discriminator import build_head
from vpae.losses.ladd import LADDAdversarialLoss
from vpae.recipes import build_method
from vpae.training.loop import PhaseStepper
from vpae.training.methods.ladd import LADD, LADDPhase
from vpae.training.model import Networks, copy_generator, make_teacher_and_fake

TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "add_k_proj", "add_v_proj")


def _cfg(**kw) -> VPAEConfig:
    cfg = VPAEConfig(method="ladd", equilibrium=EquilibriumConfig(layers=(0.5, 1.0)),
                     priming=PrimingConfig(lr=1e-3, lora_rank=4, lora_alpha=4))
    cfg.comparison = ComparisonConfig(lr=1e-3, disc_lr=1e-3, nfe=2, guidance=2.0, grad_clip=0.0, layers=(0.5, 1.0))
    for k, v in kw.items():
        sec, key = k.split("__")
        setattr(cfg, sec, dataclasses.replace(getattr(cfg, sec), **{key: v}))
    return cfg


def _networks(cfg: VPAEConfig) -> Networks:
    """The generator (a copy of the teacher), the teacher with its fake LoRA and LADD's conv heads, tiny."""
    teacher = make_wan()
    gen = copy_generator(teacher, "full")
    make_teacher_and_fake(teacher, 4, 4, TARGETS)
    torch.manual_seed(1)
    heads = build_head(LADD.original_head, feature_dim=gen.feature_dim, num_layers=2, text_dim=32, image_dim=24,
                       hidden_dim=16, num_queries=2, num_heads=2)
    return Networks(gen, teacher, heads)


def _stepper(cfg: VPAEConfig, nets: Networks) -> PhaseStepper:
    (phase,) = build_method(cfg).phases(nets)
    assert isinstance(phase, LADDPhase) and phase.name == "ladd"
    return PhaseStepper(phase)


def _state(module) -> dict:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _groups(nets: Networks) -> dict[str, dict]:
    t = _state(nets.teacher)
    return {"generator": _state(nets.generator), "teacher": {k: v for k, v in t.items() if "lora_" not in k},
            "fake_lora": {k: v for k, v in t.items() if "lora_" in k}, "heads": _state(nets.heads)}


def _changed(before: dict, after: dict) -> set[str]:
    return {g for g in before if any(not torch.equal(before[g][k], after[g][k]) for k in before[g])}


def test_one_step_changes_exactly_the_generator_and_the_heads():
    cfg = _cfg()
    nets = _networks(cfg)
    stepper = _stepper(cfg, nets)
    before = _groups(nets)
    torch.manual_seed(0)
    stats = stepper.step(0, make_latent(), make_cond())
    assert stats and all(math.isfinite(v) for v in stats.values()), stats
    assert _changed(before, _groups(nets)) == {"generator", "heads"}
    assert {"loss/g_adv", "loss/d", "grad_norm/generator", "grad_norm/heads"} <= set(stats)
    assert "loss/distill" not in stats  # LADD: no distillation term by default
    assert 0.0 <= stats["d/accuracy"] <= 1.0
    assert set(stepper.optimizers.optimizers) == {"generator", "heads"}
    meth = build_method(cfg)
    assert (meth.name, meth.sampler, meth.needs_heads, meth.original_head) == ("ladd", "few_step", True, "conv")


def test_discriminator_noise_is_the_configured_logit_normal():
    cfg = _cfg(ladd__disc_t_mean=-0.5, ladd__disc_t_std=0.7)  # not the defaults: the config must reach the draw
    phase = LADDPhase(_networks(cfg), cfg)
    n = 20000
    torch.manual_seed(0)
    t = phase.adv.draw_t(n)
    assert t.shape == (n,) and bool(((t > 0) & (t < 1)).all())
    z = torch.logit(t.double())
    # standard errors at n = 2e4: mean 0.7 / sqrt(n) = 0.005, std 0.7 / sqrt(2n) = 0.0035; 5 of each
    assert abs(z.mean().item() + 0.5) < 5 * 0.7 / math.sqrt(n)
    assert abs(z.std().item() - 0.7) < 5 * 0.7 / math.sqrt(2 * n)
    # LADD's default leans toward high noise: median sigmoid(1) = 0.73
    torch.manual_seed(0)
    assert abs(LADDAdversarialLoss().draw_t(n).median().item() - 1 / (1 + math.exp(-1))) < 0.01


def test_step_reads_the_teacher_at_the_drawn_levels_and_one_step_student_starts_from_pure_noise():
    cfg = _cfg(comparison__nfe=1)
    nets = _networks(cfg)
    phase = LADDPhase(nets, cfg)
    assert phase.sigmas == [1.0]
    student, disc = [], []
    velocity = nets.generator.velocity
    nets.generator.velocity = lambda x_t, s, *a, **k: student.append((x_t.clone(), s.clone())) or velocity(x_t, s, *a, **k)
    disc_forward = phase.disc.forward
    phase.disc.forward = lambda bb, x, s, *a, **k: disc.append(s.clone()) or disc_forward(bb, x, s, *a, **k)
    stepper = PhaseStepper(phase)
    x, c = make_latent(), make_cond()
    with randomness.batch_stream(7):
        stepper.step(0, x, c)
    with randomness.batch_stream(7):
        stepper.step(0, x + 5.0, c)  # other data, same draws
    (x_a, s_a), (x_b, s_b) = student
    assert torch.equal(s_a, torch.ones_like(s_a)) and torch.equal(s_b, s_a)
    assert torch.equal(x_a, x_b)  # the data never reaches a one-step student's input
    # generator step (fake), heads step (real, fake): per-sample levels strictly inside (0, 1), redrawn per side
    assert len(disc) == 6
    for s in disc:
        assert s.shape == (x.shape[0],) and bool(((s > 0) & (s < 1)).all())
    assert not torch.equal(disc[1], disc[2])


def test_tiny_run_is_finite():
    cfg = _cfg(comparison__lr=1e-4)
    stepper = _stepper(cfg, _networks(cfg))
    x, c = make_latent(), make_cond()
    for i in range(4):
        torch.manual_seed(i)
        stats = stepper.step(i, x, c)
        assert all(math.isfinite(v) for v in stats.values()), (i, stats)
        assert math.isfinite(stats["loss/g_adv"]) and math.isfinite(stats["loss/d"])
