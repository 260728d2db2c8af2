"""ADD and APT as their originals: ADD's training sigmas and its R1 weight on the exact R1 (the approximated R1
normalised by sigma^2), APT's consistency-distilled start, its discriminator lr and its sampled EMA."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from conftest import make_cond, make_latent, make_wan

from vpae.config import ComparisonConfig, ConsistencyConfig, EquilibriumConfig, PrimingConfig, VPAEConfig
from vpae.discriminator import build_head
from vpae.losses import ApproximatedR1
from vpae.recipes import build_method
from vpae.training.loop import PhaseStepper
from vpae.training.model import Networks, copy_generator, make_teacher_and_fake

TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "add_k_proj", "add_v_proj")


def _cfg(method: str, **kw) -> VPAEConfig:
    cfg = VPAEConfig(method=method, equilibrium=EquilibriumConfig(layers=(0.5, 1.0)),
                     priming=PrimingConfig(lr=1e-3, lora_rank=4, lora_alpha=4))
    cfg.comparison = ComparisonConfig(lr=1e-3, disc_lr=1e-3, nfe=2, guidance=2.0, grad_clip=0.0, layers=(0.5, 1.0))
    cfg.consistency = ConsistencyConfig(num_timesteps=8, skip=2, semantic_phases=1)
    for k, v in kw.items():
        sec, key = k.split("__")
        setattr(cfg, sec, dataclasses.replace(getattr(cfg, sec), **{key: v}))
    return cfg


def _networks(cfg: VPAEConfig) -> Networks:
    """What recipes.build_networks makes, on a tiny Wan (tests/test_methods.py)."""
    method = build_method(cfg)
    teacher = make_wan()
    gen = copy_generator(teacher, "full")
    make_teacher_and_fake(teacher, 4, 4, TARGETS)
    torch.manual_seed(1)
    heads = build_head("ca", feature_dim=gen.feature_dim, num_layers=2, text_dim=32, image_dim=24, hidden_dim=16,
                       num_queries=2, num_heads=2)
    nets = Networks(gen, teacher, heads)
    method.add_roles(nets, before_sharding=False)
    return nets


def _state(module) -> dict:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _groups(nets: Networks) -> dict[str, dict]:
    t = _state(nets.teacher)
    return {"generator": _state(nets.generator), "teacher": {k: v for k, v in t.items() if "lora_" not in k},
            "fake_lora": {k: v for k, v in t.items() if "lora_" in k}, "heads": _state(nets.heads),
            "ema": _state(nets.ema), "disc_backbone": _state(nets.others["disc_backbone"])}


def _changed(before: dict, after: dict) -> set[str]:
    return {g for g in before if any(not torch.equal(before[g][k], after[g][k]) for k in before[g])}


@pytest.mark.parametrize("sigma", [0.01, 0.1])
def test_add_r1_normalized_estimates_the_exact_r1_of_a_linear_discriminator_float64(sigma):
    """D(x) = w.x: |D(x + sigma n) - D(x)|^2 / sigma^2 = (w.n)^2 = |w|^2 chi^2_1, mean |w|^2 and standard deviation
    sqrt(2) |w|^2, so the mean of B draws is within 5 standard errors sqrt(2 / B) |w|^2."""
    g = torch.Generator().manual_seed(0)
    b = 20000
    w = torch.randn(3, 2, 4, 4, generator=g, dtype=torch.float64)
    x = torch.randn(b, *w.shape, generator=g, dtype=torch.float64)

    def discriminate(x_in):
        return (x_in * w).flatten(1).sum(1)
    torch.manual_seed(1)
    est = ApproximatedR1(sigma, normalized=True)(discriminate, x, discriminate(x))
    exact = w.square().sum()
    assert abs(est.mean() - exact) < 5 * math.sqrt(2 / b) * exact
    assert est.std() / exact == pytest.approx(math.sqrt(2), rel=0.05)  # the chi^2_1 spread the docstring states
    # the unnormalised form (APT's lambda) is the same draw times sigma^2
    torch.manual_seed(1)
    raw = ApproximatedR1(sigma)(discriminate, x, discriminate(x))
    torch.testing.assert_close(raw / sigma ** 2, est, rtol=1e-12, atol=0)


def test_apt_starts_with_consistency_distillation_on_a_share_of_the_budget():
    cfg = _cfg("apt", comparison__steps=10)
    method = build_method(cfg)
    phases = method.phases(_networks(cfg))
    assert [p.name for p in phases] == method.phase_names() == ["apt_cd", "apt"]
    assert [p.steps for p in phases] == [3, 7] and sum(p.steps for p in phases) == cfg.comparison.steps
    # the consistency phase takes comparison's optimizer settings and batch
    spec = phases[0].optimizers()["generator"]
    assert (spec.lr, tuple(spec.betas), phases[0].batch_size) == (cfg.comparison.lr, tuple(cfg.comparison.betas),
                                                                 cfg.comparison.batch_size)
    teacher_start = _cfg("apt", comparison__steps=10, apt__init="teacher")
    method = build_method(teacher_start)
    (phase,) = method.phases(_networks(teacher_start))
    assert phase.name == "apt" and method.phase_names() == ["apt"] and phase.steps == 10


def test_one_apt_step_trains_generator_and_discriminator_and_the_ema_follows_exactly():
    decay = 0.9
    cfg = _cfg("apt", apt__ema_decay=decay, apt__disc_lr_scale=2.0)
    nets = _networks(cfg)
    method = build_method(cfg)
    phase = method.phases(nets)[-1]
    assert method.sampler_model(nets, [phase]) is nets.ema
    assert method.exports(nets, [phase])["generator_ema"][0] is nets.ema
    stepper = PhaseStepper(phase)  # start(): the EMA restarts from the generator
    disc = phase.optimizers()["discriminator"]
    assert disc.lr == 2.0 * cfg.comparison.lr and tuple(disc.betas) == tuple(cfg.comparison.disc_betas)
    assert "ema" in phase.modules()
    before = _groups(nets)
    assert all(torch.equal(before["ema"][k], before["generator"][k]) for k in before["ema"])
    from vpae.training.methods.apt import ema_decay_at
    assert ema_decay_at(decay, 0) == 0.1 and ema_decay_at(decay, 100) == decay  # warm-up: (1 + t) / (10 + t)
    torch.manual_seed(0)
    stats = stepper.step(100, make_latent(), make_cond())  # past the warm-up: the decay itself
    assert all(math.isfinite(v) for v in stats.values()), stats
    after = _groups(nets)
    assert _changed(before, after) == {"generator", "heads", "disc_backbone", "ema"}
    # every parameter the discriminator's optimizer holds got a gradient (else a checkpoint lacks its state and
    # the run cannot resume); the backbone's output layers, which its features never read, are not held
    held = stepper.optimizers.optimizers["discriminator"]
    assert all(p in held.state for g in held.param_groups for p in g["params"])
    bb = nets.others["disc_backbone"].model
    assert not any(p is q for g in held.param_groups for p in g["params"] for q in bb.proj_out.parameters())
    for e, p in zip(nets.ema.parameters(), nets.generator.parameters(), strict=True):
        name = next(k for k, v in nets.ema.named_parameters() if v is e)
        want = before["ema"][name].mul(decay).add(p.detach() * (1.0 - decay))
        assert torch.equal(e, want), name


def test_apt_without_ema_samples_the_generator():
    cfg = _cfg("apt", apt__ema_decay=0.0, apt__init="teacher")
    nets = _networks(cfg)
    method = build_method(cfg)
    phases = method.phases(nets)
    assert nets.ema is None and method.sampler_model(nets, phases) is nets.generator
    assert method.exports(nets, phases) == {} and "ema" not in phases[0].modules()


def test_add_at_one_step_trains_on_pure_noise_inputs():
    cfg = _cfg("add", comparison__nfe=1)
    nets = _networks(cfg)
    (phase,) = build_method(cfg).phases(nets)
    assert phase.sigmas == [1.0]
    assert build_method(_cfg("add", comparison__nfe=4)).phases(nets)[0].sigmas == [1.0, 0.75, 0.5, 0.25]
    seen = []
    velocity = nets.generator.velocity

    def recording(x, sigma, cond):
        seen.append(sigma.detach().clone())
        return velocity(x, sigma, cond)
    nets.generator.velocity = recording
    stats = PhaseStepper(phase).step(0, make_latent(), make_cond())
    assert seen and all(torch.equal(s, torch.ones_like(s)) for s in seen)
    assert math.isfinite(stats["loss/r1"]) and stats["loss/r1"] >= 0
