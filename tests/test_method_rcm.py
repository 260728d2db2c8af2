"""rCM (vpae.training.methods.rcm, vpae.losses.scm): the JVP of the consistency function against finite
differences, one step trains exactly the generator and the fake LoRA (the generator alone during the tangent
warm-up), and a tiny run stays finite."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from conftest import make_cond, make_latent, make_wan

from vpae import flow
from vpae.backbones.wan import WanBackbone
from vpae.config import ComparisonConfig, EquilibriumConfig, PrimingConfig, VPAEConfig
from vpae.config.schema import RCMConfig
from vpae.losses.scm import ContinuousConsistencyLoss, consistency_derivative
from vpae.recipes import build_method
from vpae.training.loop import PhaseStepper
from vpae.training.model import Networks, copy_generator, make_teacher_and_fake

TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "add_k_proj", "add_v_proj")


def _cfg(**rcm) -> VPAEConfig:
    cfg = VPAEConfig(method="rcm", equilibrium=EquilibriumConfig(layers=(0.5, 1.0)),
                     priming=PrimingConfig(lr=1e-3, lora_rank=4, lora_alpha=4))
    cfg.comparison = ComparisonConfig(lr=1e-3, disc_lr=1e-3, nfe=2, guidance=2.0, grad_clip=0.0, layers=(0.5, 1.0))
    cfg.rcm = dataclasses.replace(RCMConfig(fake_updates_per_generator=1, fake_lr=1e-3, tangent_warmup_steps=0), **rcm)
    return cfg


def _networks(cfg: VPAEConfig) -> Networks:
    method = build_method(cfg)
    teacher = make_wan()
    gen = copy_generator(teacher, "full")
    make_teacher_and_fake(teacher, 4, 4, TARGETS)
    nets = Networks(gen, teacher, None)
    method.add_roles(nets, before_sharding=False)
    return nets


def _stepper(cfg: VPAEConfig, nets: Networks) -> PhaseStepper:
    (phase,) = build_method(cfg).phases(nets)
    assert phase.name == "rcm"
    return PhaseStepper(phase)


def _groups(nets: Networks) -> dict[str, dict]:
    t = {k: v.detach().clone() for k, v in nets.teacher.state_dict().items()}
    return {"generator": {k: v.detach().clone() for k, v in nets.generator.state_dict().items()},
            "teacher": {k: v for k, v in t.items() if "lora_" not in k},
            "fake_lora": {k: v for k, v in t.items() if "lora_" in k}}


def _changed(before: dict, after: dict) -> set[str]:
    return {g for g in before if any(not torch.equal(before[g][k], after[g][k]) for k in before[g])}


def test_consistency_jvp_matches_central_differences_float64(monkeypatch):
    """df/ds along (v, 1) by torch.func.jvp vs (f(x + h v, s + h) - f(x - h v, s - h)) / 2h, f = x - s v(x, s).

    float64 end to end: two float32 round-offs of the forward are lifted for this test only, diffusers'
    `.float()` upcasts (FP32LayerNorm, the block residuals, the timestep embedding) and WanBackbone's float32
    sigma; central differences turn a 6e-8 round-off into 6e-8 / h (measured with them: 2e-2). Error budget with
    h = 1e-6: the timestep is 1000 s and the embedding's fastest frequency is 1 rad per timestep unit, so the
    truncation term h^2 |f'''| / 6 is at most (1000 h)^2 / 6 ~ 2e-7 of the derivative (measured: 9e-8, and
    100x that at h = 1e-5: truncation-bound); rounding ~ 1e-16 |f| / h ~ 1e-10. The JVP must agree to 1e-6 of
    the tangent's largest entry."""
    orig = torch.Tensor.float
    monkeypatch.setattr(torch.Tensor, "float", lambda t, *a, **k: t if t.dtype == torch.float64 else orig(t, *a, **k))
    inputs = WanBackbone.model_inputs

    def inputs64(self, x_t, sigma, cond):
        out = inputs(self, x_t, sigma, cond)
        out["timestep"] = flow.model_timestep(torch.as_tensor(sigma, dtype=x_t.dtype).reshape(-1).expand(x_t.shape[0]))
        return out
    monkeypatch.setattr(WanBackbone, "model_inputs", inputs64)
    wan = make_wan().double()
    x, c = make_latent().double(), make_cond().to(torch.float64)
    s = torch.tensor([0.3, 0.7], dtype=torch.float64)
    tangent = torch.randn(x.shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    h = 1e-6

    def f(x_, s_):
        with torch.no_grad():
            return x_ - s_.reshape(-1, 1, 1, 1, 1) * wan.velocity(x_, s_, c)

    with torch.no_grad():
        v, f0, df = consistency_derivative(wan, x, s, c, tangent)
    assert v.dtype == df.dtype == torch.float64
    torch.testing.assert_close(f0, f(x, s), rtol=1e-12, atol=1e-12)
    fd = (f(x + h * tangent, s + h) - f(x - h * tangent, s - h)) / (2 * h)
    scale = df.abs().max()
    assert scale > 1.0  # a tangent worth checking (the time path contributes: 1000 per unit s)
    err = ((df - fd).abs().max() / scale).item()
    print(f"JVP vs central differences, relative error: {err:.2e}")
    assert err < 1e-6, err


def test_scm_loss_value_and_gradient():
    """The value is 0.5 |g^|^2 / numel with |g^| = |g| / (|g| + c); the gradient reaches the generator and is
    finite; at warm-up ratio 0 a student equal to the teacher has g = v_teacher - v = 0: no loss."""
    gen, teacher = make_wan(seed=1), make_wan(seed=0)
    x, c = make_latent(), make_cond()
    loss = ContinuousConsistencyLoss(t_mean=0.0, t_std=1.6, norm_c=0.1, warmup_steps=10)
    assert (loss.warmup_ratio(0), loss.warmup_ratio(5), loss.warmup_ratio(20)) == (0.0, 0.5, 1.0)
    torch.manual_seed(0)
    per_sample, rms = loss(gen, x, c, lambda x_t, s: teacher.velocity(x_t, s, c), step=5)
    n = x[0].numel()
    norm = rms * n ** 0.5
    assert per_sample.shape == (2,) and (norm > 0).all()
    torch.testing.assert_close(per_sample, 0.5 * (norm / (norm + 0.1)) ** 2 / n, rtol=1e-5, atol=0)
    per_sample.sum().backward()
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in gen.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in gen.parameters())
    torch.manual_seed(0)
    same, rms0 = loss(teacher, x, c, lambda x_t, s: teacher.velocity(x_t, s, c), step=0)
    # zero up to the two attention kernels' round-off (the JVP runs the math SDPA, the teacher the default one)
    assert (rms0 < 1e-5).all() and (same < 1e-6 * per_sample.detach()).all(), (rms0, same)


@pytest.mark.parametrize("warmup", [0, 5])
def test_one_step_changes_only_what_the_method_trains(warmup):
    cfg = _cfg(tangent_warmup_steps=warmup)
    nets = _networks(cfg)
    stepper = _stepper(cfg, nets)
    assert set(stepper.optimizers.optimizers) == {"generator", "fake"}
    x, c = make_latent(), make_cond()
    before = _groups(nets)
    torch.manual_seed(0)
    stats = stepper.step(0, x, c)
    assert stats and all(torch.isfinite(torch.tensor(v)) for v in stats.values()), stats
    if warmup:  # sCM alone during the tangent warm-up: the fake score does not train
        assert _changed(before, _groups(nets)) == {"generator"}
        assert "loss/dmd" not in stats and "loss/fake" not in stats and stats["scm/warmup"] == 0.0
    else:
        assert _changed(before, _groups(nets)) == {"generator", "fake_lora"}
        assert {"loss/scm", "loss/dmd", "loss/fake", "grad_norm/generator", "grad_norm/fake"} <= set(stats)
    held = {v.untyped_storage().data_ptr() for m in stepper.phase.modules().values() for v in m.state_dict().values()}
    for name, spec in stepper.phase.optimizers().items():
        assert spec.params and all(p.untyped_storage().data_ptr() in held for p in spec.params), name


def test_tiny_run_stays_finite_and_the_fake_score_learns():
    cfg = _cfg(tangent_warmup_steps=2)
    cfg.comparison = dataclasses.replace(cfg.comparison, lr=1e-4)
    stepper = _stepper(cfg, _networks(cfg))
    x, c = make_latent(), make_cond()
    fake = []
    for i in range(10):
        torch.manual_seed(0)
        stats = stepper.step(i, x, c)
        assert all(torch.isfinite(torch.tensor(v)) for v in stats.values()), (i, stats)
        if "loss/fake" in stats:
            fake.append(stats["loss/fake"])
    assert len(fake) == 8
    assert sum(fake[-3:]) / 3 < sum(fake[:3]) / 3, fake
