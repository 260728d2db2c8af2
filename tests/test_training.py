"""Phase I (priming) and phase II (equilibrium) of V-PAE on tiny Wan models (vpae.training.methods.vpae), the
training loop's ownership of the optimizer steps (vpae.training.loop), and an end-to-end tiny run."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import pytest
import torch
from conftest import LATENT_SHAPE, make_cond, make_latent, make_wan, nonzero_fake_lora_and_checkpointing
from torch import nn

from vpae import flow
from vpae.config import EquilibriumConfig, PrimingConfig, VPAEConfig
from vpae.discriminator import build_head
from vpae.losses import conditional_sds_loss, generator_adversarial_loss
from vpae.sampling import predict_x0
from vpae.training.loop import Optimizers, PhaseStepper, take_step
from vpae.training.methods.base import OptimizerSpec, Phase, Update
from vpae.training.methods.vpae import EquilibriumPhase, PrimingPhase
from vpae.training.model import (
    Networks,
    copy_generator,
    fake_score,
    make_teacher_and_fake,
    real_score,
    trainable_parameters,
    update_ema,
)

TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "add_k_proj", "add_v_proj")


def _state(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _ids(params) -> list[int]:
    return [id(p) for p in params]


def _teacher_and_generator(seed: int = 0, mode: str = "full"):
    teacher = make_wan(seed=seed)
    gen = copy_generator(teacher, mode, 4, 4, TARGETS)
    make_teacher_and_fake(teacher, 4, 4, TARGETS)
    return teacher, gen


def _heads(gen, head="ca"):
    return build_head(head, feature_dim=gen.feature_dim, num_layers=2, text_dim=32, image_dim=24, hidden_dim=16,
                      num_queries=2, num_heads=2)


def _priming(gen, teacher, cfg: PrimingConfig) -> PhaseStepper:
    """Phase I over (generator, teacher + fake LoRA, heads) with its optimizers, stepped by hand."""
    return PhaseStepper(PrimingPhase(Networks(gen, teacher, _heads(gen)), VPAEConfig(priming=cfg)))


# ----------------------------------------------------------------------------------------------
# Phase I

def test_zero_init_lora_real_equals_fake_exactly():
    teacher = make_wan()
    x, c = make_latent(), make_cond()
    s = torch.tensor([0.3, 0.8])
    with torch.no_grad():
        v_plain = teacher.velocity(x, s, c)
        gen = copy_generator(teacher)
        make_teacher_and_fake(teacher, 4, 4, TARGETS)
        with real_score(teacher):
            v_real = teacher.velocity(x, s, c)
        with fake_score(teacher):
            v_fake = teacher.velocity(x, s, c)
        v_gen = gen.velocity(x, s, c)
    # the identity that matters is exact: a zero-initialised adapter adds exactly 0, so fake == real bitwise
    assert (v_real - v_fake).abs().max().item() == 0.0
    # against the plain teacher (before peft wrapped its layers) and the generator (a deep copy: same weights,
    # other memory), the arithmetic is the same but peft's wrapper and the copy's alignment can pick another
    # SIMD reduction with 2+ threads (measured: 1 ulp); so a few float32 ulps of these O(1) outputs
    torch.testing.assert_close(v_real, v_plain, rtol=0, atol=1e-6)
    torch.testing.assert_close(v_gen, v_plain, rtol=0, atol=1e-6)
    # only the LoRA tensors train, and there are some on every target (incl. the I2V image path)
    names = [n for n, p in teacher.named_parameters() if p.requires_grad]
    assert names and all("lora_" in n for n in names)
    assert any("add_k_proj.lora_A" in n for n in names)
    # once the adapter is non-zero, fake differs and real stays the teacher exactly
    with torch.no_grad():
        for n, p in teacher.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.1)
        with fake_score(teacher):
            v_fake2 = teacher.velocity(x, s, c)
        with real_score(teacher):
            v_real2 = teacher.velocity(x, s, c)
    assert (v_fake2 - v_plain).abs().max() > 1e-4
    assert torch.equal(v_real2, v_real)  # a trained adapter switched off leaves the real score bitwise as it was


def test_fake_score_restores_the_adapter_state_it_found():
    teacher = make_wan()
    make_teacher_and_fake(teacher, 4, 4, TARGETS)
    with torch.no_grad():
        for n, p in teacher.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.1)
    x, c, s = make_latent(), make_cond(), torch.tensor([0.3, 0.8])
    with torch.no_grad():
        with real_score(teacher):
            v_real = teacher.velocity(x, s, c)
        teacher.model.disable_adapters()  # adapters off before: still off after the fake score
        with fake_score(teacher):
            v_fake = teacher.velocity(x, s, c)
        assert torch.equal(teacher.velocity(x, s, c), v_real)
        teacher.model.enable_adapters()  # on before: on after
        with fake_score(teacher):
            pass
        assert torch.equal(teacher.velocity(x, s, c), v_fake)


def test_copy_generator_refuses_after_adapter():
    teacher, _ = _teacher_and_generator()
    with pytest.raises(ValueError, match="before attaching"):
        copy_generator(teacher)

@pytest.mark.parametrize("mode", ["full", "lora"])
def test_priming_step_trains_only_fake_lora_and_generator(mode):
    teacher, gen = _teacher_and_generator(mode=mode)
    base0 = {k: v for k, v in _state(teacher).items() if "lora_" not in k}
    lora0 = {k: v for k, v in _state(teacher).items() if "lora_" in k}
    gen0 = _state(gen)
    cfg = PrimingConfig(lr=1e-3, fake_lr=1e-3, fake_updates_per_generator=2, real_guidance=3.0,
                        lora_rank=4, lora_alpha=4)
    stepper = _priming(gen, teacher, cfg)
    assert set(stepper.phase.optimizers()) == {"generator", "fake"}
    x, c = make_latent(), make_cond()
    torch.manual_seed(0)
    for i in range(3):
        stats = stepper.step(i, x, c)
        assert all(torch.isfinite(torch.tensor(v)) for v in stats.values())
        # the fake loss reached only the teacher's LoRA parameters
        for n, p in teacher.named_parameters():
            if "lora_" in n:
                assert p.grad is not None, n
            else:
                assert p.grad is None and not p.requires_grad, n
    after = _state(teacher)
    assert _same(base0, {k: v for k, v in after.items() if "lora_" not in k})
    changed = [k for k in lora0 if not torch.equal(lora0[k], after[k])]
    assert any("lora_B" in k for k in changed)
    gen1 = _state(gen)
    assert not _same(gen0, gen1)
    if mode == "lora":  # base weights of a LoRA generator stay put too
        assert all(torch.equal(gen0[k], gen1[k]) for k in gen0 if "lora_" not in k)
    assert {"loss/fake", "loss/dmd", "grad_norm/generator", "grad_norm/fake"} <= set(stats)


def test_priming_generator_gradient_is_dmd_of_real_minus_fake():
    """After a zero-init start, real == fake, so the very first generator update has zero DMD gradient."""
    teacher, gen = _teacher_and_generator()
    cfg = PrimingConfig(lr=1e-3, fake_lr=0.0, fake_updates_per_generator=1, real_guidance=1.0)
    stepper = _priming(gen, teacher, cfg)
    gen0 = _state(gen)
    torch.manual_seed(0)
    stats = stepper.step(0, make_latent(), make_cond())
    # fake_lr 0 keeps the adapter at zero, so x0_real == x0_fake exactly: zero gradient, generator unchanged
    assert stats["dmd/real_fake_gap"] == 0.0 and stats["grad_norm/generator"] == 0.0
    assert _same(gen0, _state(gen))


def test_priming_loss_methods_read_what_the_step_logs():
    """The phase's loss methods are what its step backpropagates: fake_loss (eq. 2) has a graph to the fake LoRA
    only, generator_loss (eq. 1) to the generator only, and their logs carry their values."""
    teacher, gen = _teacher_and_generator()
    phase = _priming(gen, teacher, PrimingConfig(lr=1e-3, fake_lr=1e-3, real_guidance=3.0)).phase
    x, c = make_latent(), make_cond()
    torch.manual_seed(0)
    fake, logs = phase.fake_loss(x, c)
    assert logs["loss/fake"] == fake.item()
    grads = torch.autograd.grad(fake, phase.nets.fake_params + trainable_parameters(gen), allow_unused=True)
    n = len(phase.nets.fake_params)
    assert any(g is not None and g.abs().max() > 0 for g in grads[:n]) and all(g is None for g in grads[n:])
    torch.manual_seed(0)
    loss, logs = phase.generator_loss(x, c)
    assert logs["loss/dmd"] == loss.item() and logs["dmd/real_fake_gap"] > 0  # CFG 3: the real score differs
    grads = torch.autograd.grad(loss, phase.nets.fake_params + trainable_parameters(gen), allow_unused=True)
    assert all(g is None for g in grads[:n]) and any(g is not None and g.abs().max() > 0 for g in grads[n:])


# ----------------------------------------------------------------------------------------------
# Phase II

def _eq(dtype=torch.float32, head="ca", seed=0, **kw) -> PhaseStepper:
    """Phase II with its optimizers (PhaseStepper: phase.start() made the EMA), the EMA moved away from the
    generator so a test sees which one the discriminator reads."""
    teacher, gen = _teacher_and_generator(seed)
    heads = _heads(gen, head)
    kw = {"layers": (0.5, 1.0), "lr": 1e-3, "head_lr": 1e-3, "sds_lambda": 0.0, **kw}
    cfg = VPAEConfig(equilibrium=EquilibriumConfig(**kw))
    nets = Networks(gen.to(dtype), teacher.to(dtype), heads.to(dtype))
    stepper = PhaseStepper(EquilibriumPhase(nets, cfg))
    # make the EMA differ from the generator so the test sees which one the discriminator reads
    with torch.no_grad():
        for p in nets.ema.parameters():
            p.add_(0.01 * torch.randn_like(p))
    return stepper


def _adv(phase: EquilibriumPhase, x0: torch.Tensor, cond) -> torch.Tensor:
    """Eq. 6's adversarial term of phase II's generator loss, read through generator_loss (sds_lambda = 0 and no
    mode seeking: the loss is adv_weight (1) x the adversarial term; the logs say so)."""
    e = phase.equilibrium
    assert e.sds_lambda == 0 and e.diversity_weight == 0 and e.adv_weight == 1.0
    loss, logs = phase.generator_loss(x0, torch.zeros_like(x0), cond)
    assert "loss/c_sds" not in logs and logs["loss/g_adv"] == logs["loss/g_total"] == loss.item()
    return loss


def test_equilibrium_phase_trains_generator_and_heads():
    stepper = _eq()
    phase = stepper.phase
    assert set(phase.optimizers()) == {"generator", "heads"}
    assert set(stepper.optimizers.optimizers) == {"generator", "heads"}
    assert set(phase.modules()) == {"generator", "ema", "heads"}
    # the heads' optimizer holds the heads only (the unified backbone is the EMA, never trained by a loss)
    assert _ids(phase.optimizers()["heads"].params) == _ids(phase.nets.heads.parameters())
    assert _ids(phase.optimizers()["generator"].params) == _ids(phase.nets.generator.parameters())
    trained = _eq(backbone="trained").phase
    assert set(trained.modules()) == {"generator", "ema", "heads", "disc_backbone"}
    extra = trained.nets.others["trained_backbone"]
    assert _ids(trained.optimizers()["heads"].params) == _ids([*trained.nets.heads.parameters(), *extra.parameters()])


def test_adversarial_gradient_reaches_generator_through_frozen_ema():
    stepper = _eq(torch.float64)
    phase, nets = stepper.phase, stepper.phase.nets
    c = make_cond().to(torch.float64)
    x0 = make_latent().double().requires_grad_()

    def loss_at(x):
        torch.manual_seed(123)  # the re-noising noise and level
        return _adv(phase, x, c)

    loss = loss_at(x0)
    (g,) = torch.autograd.grad(loss, x0)
    assert g.abs().max() > 0
    u = torch.randn_like(x0)
    # diffusers' Wan blocks run their norms in float32 even in a float64 model (FP32LayerNorm, .float()),
    # so a tiny step drowns in float32 rounding; h = 0.03 is well inside the smooth region (measured
    # agreement ~1e-5 relative for h in [0.01, 0.1])
    h = 3e-2
    with torch.no_grad():
        fd = (loss_at(x0 + h * u) - loss_at(x0 - h * u)) / (2 * h)
    assert torch.allclose((g * u).sum(), fd, rtol=1e-3, atol=0), ((g * u).sum(), fd)
    # the full backward leaves the EMA backbone (and the heads) without gradients
    loss_at(x0).backward()
    assert all(p.grad is None for p in nets.ema.parameters())
    assert all(not p.requires_grad for p in nets.ema.parameters())
    assert all(p.grad is None for p in nets.heads.parameters())
    # and the loss depends on the EMA weights (the unified backbone), not on the generator's
    with torch.no_grad():
        l0 = loss_at(x0)
        for p in nets.generator.parameters():
            p.add_(0.05)
        assert torch.equal(loss_at(x0), l0)
        for p in nets.ema.parameters():
            p.add_(0.05)
        assert not torch.equal(loss_at(x0), l0)


def test_discriminator_update_changes_only_heads():
    stepper = _eq()
    phase, nets = stepper.phase, stepper.phase.nets
    x, c = make_latent(), make_cond()
    gen0, ema0, teacher0, heads0 = _state(nets.generator), _state(nets.ema), _state(nets.teacher), _state(nets.heads)
    torch.manual_seed(0)
    x0 = predict_x0(nets.generator, torch.randn(LATENT_SHAPE), torch.ones(2), c)[0]
    loss, logs = phase.discriminator_loss(x, x0, c)
    assert {"loss/d", "loss/st_r1", "loss/d_total"} <= set(logs)
    assert logs["loss/d_total"] == loss.item()
    assert loss.item() == pytest.approx(logs["loss/d"] + phase.equilibrium.r1_weight * logs["loss/st_r1"], rel=1e-6)
    opt = stepper.optimizers.optimizers["heads"]
    opt.zero_grad()
    loss.backward()
    assert all(p.grad is None for p in nets.generator.parameters())
    assert all(p.grad is None for p in nets.ema.parameters())
    opt.step()
    assert _same(gen0, _state(nets.generator)) and _same(ema0, _state(nets.ema))
    assert _same(teacher0, _state(nets.teacher))
    assert not _same(heads0, _state(nets.heads))


def test_equilibrium_step_updates_generator_ema_heads():
    stepper = _eq(sds_lambda=10.0, ema_decay=0.9)
    nets = stepper.phase.nets
    x, c = make_latent(), make_cond()
    gen0, ema0, teacher0, heads0 = _state(nets.generator), _state(nets.ema), _state(nets.teacher), _state(nets.heads)
    torch.manual_seed(0)
    stats = stepper.step(0, x, c)
    assert {"loss/g_adv", "loss/c_sds", "loss/d", "loss/st_r1", "grad_norm/generator", "grad_norm/heads"} <= set(stats)
    gen1 = _state(nets.generator)
    assert not _same(gen0, gen1)
    assert not _same(heads0, _state(nets.heads))
    assert _same(teacher0, _state(nets.teacher))
    # EMA: ema = d * ema + (1 - d) * gen after the generator update
    ema1 = _state(nets.ema)
    for k in ema0:
        if ema0[k].is_floating_point():
            # float32 weights of magnitude <= ~1: torch's lerp_ rounds differently from d a + (1 - d) b (ulps)
            assert torch.allclose(ema1[k], 0.9 * ema0[k] + 0.1 * gen1[k], rtol=0, atol=1e-6), k


def test_update_ema_exact():
    a, b = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    a.register_buffer("count", torch.tensor([1.0]))
    b.register_buffer("count", torch.tensor([7.0]))
    a0 = copy.deepcopy(a)
    for decay in (0.995, 0.5):
        e0 = {k: v.clone() for k, v in a.state_dict().items()}
        update_ema(a, b, decay)
        for name, p in b.named_parameters():
            assert torch.equal(dict(a.named_parameters())[name], decay * e0[name] + (1 - decay) * p.detach()), name
        assert torch.equal(a.count, b.count)
    assert not torch.equal(a.weight, a0.weight)
    # decay 1 keeps the EMA, decay 0 copies the model
    update_ema(a, b, 1.0)
    e = a.weight.clone()
    update_ema(a, b, 1.0)
    assert torch.equal(a.weight, e)
    update_ema(a, b, 0.0)
    assert torch.equal(a.weight, b.weight)


class _Spy:
    def __init__(self, backbone):
        self.calls = 0
        self.orig = backbone.velocity

    def __call__(self, *a, **k):
        self.calls += 1
        return self.orig(*a, **k)


def _gen_grads(stepper: PhaseStepper, x, c):
    torch.manual_seed(0)
    stepper.step(0, x, c)
    return [p.grad.clone() for p in stepper.phase.nets.generator.parameters()]


def test_csds_lambda_zero_is_pure_adversarial_and_skips_teacher(monkeypatch):
    # float64: the step and the hand computation sum the same terms in a different order, so in float32 they
    # differ by rounding (seen: 2e-5 relative on another CPU); in float64 the identity holds to ~1e-12.
    x, c = make_latent().double(), make_cond().to(torch.float64)
    stepper = _eq(torch.float64, sds_lambda=0.0, grad_clip=0.0)
    ref = copy.deepcopy(stepper)
    spy = _Spy(stepper.phase.nets.teacher)
    monkeypatch.setattr(stepper.phase.nets.teacher, "velocity", spy)
    grads = _gen_grads(stepper, x, c)
    assert spy.calls == 0
    # the gradient of the adversarial loss alone, computed by hand with the same noise
    phase, nets = ref.phase, ref.phase.nets
    torch.manual_seed(0)
    z = torch.randn_like(x)
    x0 = predict_x0(nets.generator, z, torch.ones(2, dtype=torch.float64), c)[0]
    lo, hi = phase.equilibrium.disc_band
    t = lo + (hi - lo) * torch.rand(2)
    x_t = flow.add_noise(x0, torch.randn_like(x0), t)
    adv = generator_adversarial_loss(phase.disc(nets.ema, x_t, t, c, True), "hinge").mean()
    hand = torch.autograd.grad(adv, list(nets.generator.parameters()))
    assert any(h.abs().max() > 0 for h in hand)
    for a, b in zip(grads, hand, strict=True):
        assert torch.allclose(a, b, rtol=1e-9, atol=1e-14)

    # with lambda > 0 the teacher is called and the gradient changes
    step2 = copy.deepcopy(ref)
    step2.phase.equilibrium = dataclasses.replace(ref.phase.equilibrium, sds_lambda=10.0)
    spy2 = _Spy(step2.phase.nets.teacher)
    monkeypatch.setattr(step2.phase.nets.teacher, "velocity", spy2)
    grads2 = _gen_grads(step2, x, c)
    assert spy2.calls >= 1
    assert any(not torch.allclose(a, b) for a, b in zip(grads, grads2))


def test_frozen_backbone_reads_teacher_without_fake_adapter():
    phase = _eq(backbone="frozen").phase
    teacher = phase.nets.teacher
    with torch.no_grad():
        for n, p in teacher.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)
    x, c = make_latent(), make_cond()
    s = torch.full((2,), 0.95)
    with torch.no_grad():
        got = phase.discriminate(x, s, c, False)
        plain = copy.deepcopy(teacher)
        plain.model.disable_adapters()
        want = phase.disc(plain, x, s, c, False)
        with fake_score(teacher):
            with_adapter = phase.disc(teacher, x, s, c, False)
    assert torch.equal(got, want)
    assert not torch.equal(with_adapter, want)  # the adapter matters, so the equality above means it was off


def test_adv_weight_zero_is_pure_csds_and_never_reads_the_discriminator(monkeypatch):
    x, c = make_latent(), make_cond()
    stepper = _eq(sds_lambda=10.0, adv_weight=0.0, grad_clip=0.0)
    ref = copy.deepcopy(stepper)
    phase = stepper.phase
    reads = []
    orig = phase.discriminate
    monkeypatch.setattr(phase, "discriminate",
                        lambda *a, **k: reads.append(k.get("backbone_grad", a[3] if len(a) > 3 else None)) or orig(*a, **k))
    grads = _gen_grads(stepper, x, c)
    assert reads and True not in reads  # only the D update read D (no graph to the input), never the generator
    # the gradient of 10 * C-SDS alone, by hand with the same noise
    nets = ref.phase.nets
    torch.manual_seed(0)
    z = torch.randn_like(x)
    x0 = predict_x0(nets.generator, z, torch.ones(2, dtype=torch.float64), c)[0]
    lo, hi = ref.phase.equilibrium.sds_band
    t2 = lo + (hi - lo) * torch.rand(2)
    x_t2 = flow.add_noise(x0.detach(), torch.randn_like(x0), t2)
    with torch.no_grad(), real_score(nets.teacher):
        x0_t = predict_x0(nets.teacher, x_t2, t2, c)[0]
    hand = torch.autograd.grad(10.0 * conditional_sds_loss(x0, x0_t).mean(), list(nets.generator.parameters()))
    assert any(h.abs().max() > 0 for h in hand)
    for a, b in zip(grads, hand, strict=True):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-9)
    with pytest.raises(ValueError, match="not both 0"):
        _eq(sds_lambda=0.0, adv_weight=0.0)


def test_discriminator_accuracy_reads_chance_and_separation():
    """d/accuracy: the share of real videos scored > 0 and generated ones < 0 (0.5 = chance), logged so a run
    whose discriminator never leaves chance is visible (the toy demo's at disc_band [0.1, 0.9]: docs/RESULTS.md)."""
    phase = _eq(disc_band=(0.0, 0.0)).phase  # t = 0: the discriminator sees the videos themselves
    x, c = make_latent(), make_cond()
    fake = x + 1.0  # tells the stub discriminator which input is generated
    for real_logit, fake_logit, expected in ((1.0, -1.0, 1.0), (1.0, 1.0, 0.5), (-1.0, 1.0, 0.0)):
        def stub(x_t, t, cond, grad, r=real_logit, f=fake_logit):
            is_fake = (x_t.mean(dim=(1, 2, 3, 4)) > 0.5).to(x_t.dtype)
            return (f * is_fake + r * (1 - is_fake)).requires_grad_()
        phase.discriminate = stub
        _, logs = phase.discriminator_loss(x * 0.1, fake, c)
        assert logs["d/accuracy"] == expected
        assert logs["d/logits_real"] == real_logit and logs["d/logits_fake"] == fake_logit


def test_mode_seeking_loss_closed_form_and_push_apart():
    from vpae.losses import mode_seeking_loss
    g = torch.Generator().manual_seed(0)
    za = torch.randn(3, 3, 2, 4, 4, generator=g, dtype=torch.float64)
    zb = torch.randn(3, 3, 2, 4, 4, generator=g, dtype=torch.float64)
    xa = torch.randn(3, 3, 2, 4, 4, generator=g, dtype=torch.float64).requires_grad_()
    xb = torch.randn(3, 3, 2, 4, 4, generator=g, dtype=torch.float64)
    loss = mode_seeking_loss(xa, xb, za, zb, eps=0.0)
    expected = (za - zb).abs().flatten(1).mean(1) / (xa - xb).abs().flatten(1).mean(1)
    assert torch.equal(loss, expected)
    loss.sum().backward()
    # descending the loss moves each element of xa away from xb (the gradient is opposite to xa - xb)
    assert (xa.grad * (xa - xb).detach() < 0).all()
    # identical samples of one condition cost the most; samples far apart cost little
    same = mode_seeking_loss(xb, xb + 1e-3, za, zb)
    far = mode_seeking_loss(xb, xb + 1.0, za, zb)
    assert (same > 100 * far).all()


def test_equilibrium_diversity_term_is_logged_and_moves_the_generator():
    stepper = _eq(sds_lambda=0.0, diversity_weight=2.0)
    gen = stepper.phase.nets.generator
    gen0 = _state(gen)
    torch.manual_seed(0)
    stats = stepper.step(0, make_latent(), make_cond())
    assert stats["loss/mode_seeking"] > 0
    assert stats["grad_norm/generator"] > 0 and not _same(gen0, _state(gen))
    # eq. 6 plus the weighted term (float32 sum of two terms)
    assert stats["loss/g_total"] == pytest.approx(stats["loss/g_adv"] + 2.0 * stats["loss/mode_seeking"], rel=1e-6)


def test_disc_condition_frame_keeps_the_adversarial_gradient_off_the_first_frame():
    phase = _eq(torch.float64, disc_condition_frame=True).phase
    c = make_cond().to(torch.float64)
    x0 = make_latent().double().requires_grad_()
    # the discriminator sees the condition's first latent frame, then the generated frames unchanged
    view = phase.disc_view(x0, c)
    assert torch.equal(view[:, :, :1], c.cond_latent[:, :, :1]) and torch.equal(view[:, :, 1:], x0[:, :, 1:])
    torch.manual_seed(0)
    (g,) = torch.autograd.grad(_adv(phase, x0, c), x0)
    assert torch.count_nonzero(g[:, :, 0]) == 0 and g[:, :, 1:].abs().max() > 0
    # off (the paper): the first frame gets its share of the gradient too
    phase.equilibrium = dataclasses.replace(phase.equilibrium, disc_condition_frame=False)
    torch.manual_seed(0)
    (g,) = torch.autograd.grad(_adv(phase, x0, c), x0)
    assert g[:, :, 0].abs().max() > 0
    # text-to-video has no condition frame: the option leaves the video as it is
    phase.equilibrium = dataclasses.replace(phase.equilibrium, disc_condition_frame=True)
    assert torch.equal(phase.disc_view(x0, make_cond(i2v=False).to(torch.float64)), x0)


# ----------------------------------------------------------------------------------------------
# The loop owns the optimizer steps (vpae.training.loop)

class _TwoUpdates(Phase):
    """A phase whose step yields an Update to optimizer "a", then (reading a's output after its update) one to
    optimizer "b", then a dict of logs; it records what it sees after each yield."""

    name, steps, batch_size = "two", 1, 2

    def __init__(self, events: list):
        super().__init__(None, None)
        torch.manual_seed(0)
        self.a, self.b = nn.Linear(3, 1), nn.Linear(3, 1)
        self.events, self.seen = events, {}

    def optimizers(self):
        return {"a": OptimizerSpec(list(self.a.parameters()), 0.1, (0.9, 0.999), 0.0),
                "b": OptimizerSpec(list(self.b.parameters()), 0.1, (0.9, 0.999), 0.0)}

    def modules(self):
        return {"a": self.a, "b": self.b}

    def step(self, step, x, cond):
        a0, b0 = self.a.weight.detach().clone(), self.b.weight.detach().clone()
        loss_a = self.a(x).pow(2).mean()
        loss_a.register_hook(lambda g: self.events.append("backward a"))
        yield Update("a", loss_a, {"loss/a": loss_a.item()})
        self.seen["a_moved"] = not torch.equal(self.a.weight, a0)
        self.seen["b_moved_early"] = not torch.equal(self.b.weight, b0)
        self.seen["a_after"] = self.a.weight.detach().clone()
        target = self.a(x).detach()  # a's output with its updated weights
        loss_b = (self.b(x) - target).pow(2).mean()
        loss_b.register_hook(lambda g: self.events.append("backward b"))
        yield Update("b", loss_b, {"loss/b": loss_b.item()}, name="second")
        self.seen["b_moved"] = not torch.equal(self.b.weight, b0)
        self.seen["target"] = target
        yield {"extra/value": 7.0}


def _record(optimizers: Optimizers, events: list) -> None:
    """Log every zero_grad and step of each optimizer (instance attributes shadow the class methods)."""
    for name, opt in optimizers.optimizers.items():
        for method in ("zero_grad", "step"):
            orig = getattr(opt, method)
            setattr(opt, method, lambda *a, _o=orig, _n=f"{method} {name}", **k: events.append(_n) or _o(*a, **k))


def test_the_loop_applies_each_update_once_in_order():
    events: list = []
    phase = _TwoUpdates(events)
    optimizers = Optimizers(phase.optimizers())
    assert set(optimizers.optimizers) == {"a", "b"}
    _record(optimizers, events)
    x = torch.randn(4, 3, generator=torch.Generator().manual_seed(1))
    stats = take_step(phase, optimizers, 0, x, None)
    assert events == ["zero_grad a", "backward a", "step a", "zero_grad b", "backward b", "step b"]
    # code after a yield ran after that optimizer's step, and before the next one's
    assert phase.seen["a_moved"] and not phase.seen["b_moved_early"] and phase.seen["b_moved"]
    assert torch.equal(phase.seen["a_after"], phase.a.weight)  # b's update did not touch a
    torch.testing.assert_close(phase.seen["target"], phase.a(x).detach(), rtol=0, atol=0)
    # one Adam step each
    for opt in optimizers.optimizers.values():
        assert all(int(s["step"]) == 1 for s in opt.state.values()) and len(opt.state) == 2
    # the statistics: each update's logs and its gradient norm (under its name), and the yielded dict
    assert set(stats) == {"loss/a", "grad_norm/a", "loss/b", "grad_norm/second", "extra/value"}
    assert stats["extra/value"] == 7.0
    assert stats["grad_norm/second"] == pytest.approx(
        torch.cat([p.grad.flatten() for p in phase.b.parameters()]).norm().item(), rel=1e-6)
    # a PhaseStepper is the same step with its own optimizers
    events2: list = []
    stepper = PhaseStepper(_TwoUpdates(events2))
    _record(stepper.optimizers, events2)
    stats2 = stepper.step(0, x, None)
    assert events2 == events and stats2 == stats
    assert torch.equal(stepper.phase.a.weight, phase.a.weight) and torch.equal(stepper.phase.b.weight, phase.b.weight)


def test_the_loop_clips_each_optimizer_to_its_own_bound():
    events: list = []
    phase = _TwoUpdates(events)
    specs = phase.optimizers()
    specs["a"].grad_clip = 1e-3
    optimizers = Optimizers(specs)
    x = torch.randn(4, 3, generator=torch.Generator().manual_seed(1)) * 100
    stats = take_step(phase, optimizers, 0, x, None)
    # the logged norm is the one before clipping; the gradient the step used is clipped to the bound
    assert stats["grad_norm/a"] > 1e-3
    clipped = torch.cat([p.grad.flatten() for p in phase.a.parameters()]).norm().item()
    assert clipped == pytest.approx(1e-3, rel=1e-4)
    unclipped = torch.cat([p.grad.flatten() for p in phase.b.parameters()]).norm().item()
    assert unclipped == pytest.approx(stats["grad_norm/second"], rel=1e-6)


# ----------------------------------------------------------------------------------------------
# End to end: both phases of vpae.recipes.run_distill on the toy world with a tiny Wan

TINY_TOY_WAN = ("{patch_size: [1, 2, 2], num_attention_heads: 2, attention_head_dim: 12, in_channels: 7, "
                "out_channels: 3, text_dim: 384, freq_dim: 256, ffn_dim: 32, num_layers: 2, cross_attn_norm: true, "
                "qk_norm: rms_norm_across_heads, eps: 1.0e-6, image_dim: 192, added_kv_proj_dim: 24, "
                "rope_max_seq_len: 1024}")


def _toy_cfg():
    from vpae.config import load_config
    repo = Path(__file__).resolve().parents[1]
    bank = repo / ".cache" / "toy_captions.safetensors"
    ov = ["model.teacher=''", f"model.wan_config={TINY_TOY_WAN}", "model.text_len=24",
          "data.frames=5", "data.height=16", "data.width=16", "data.heldout_size=2",
          "priming.steps=2", "priming.batch_size=2", "priming.fake_updates_per_generator=1",
          "priming.lora_rank=4", "priming.lora_alpha=4", "priming.lr=1e-3", "priming.fake_lr=1e-3",
          "equilibrium.steps=2", "equilibrium.batch_size=2", "equilibrium.head_dim=16", "equilibrium.head_queries=2",
          "equilibrium.head_attn_heads=2", "equilibrium.lr=1e-3", "equilibrium.head_lr=1e-3",
          "train.checkpoint_every=1", "train.log_every=1"]
    if bank.is_file():
        ov.append(f"data.toy.caption_bank={bank}")
    return load_config(repo / "configs" / "toy" / "teacher.yaml", overrides=ov)


def test_run_distill_both_phases_and_resume_across_boundary(tmp_path):
    from vpae.recipes import run_distill
    from vpae.training.checkpoint import latest_checkpoint
    from vpae.training.loop import read_log
    cfg = _toy_cfg()
    run = tmp_path / "run"
    torch.manual_seed(0)
    out1 = run_distill(cfg, run, phase="priming", progress=False)
    assert out1["priming"]["step"] == 2 and "equilibrium" not in out1
    assert latest_checkpoint(run / "priming").name == "step_0000002"
    primed = _state(out1["generator"])
    assert out1["generator"] is out1["networks"].generator and out1["sampler"] == "few_step"
    assert (run / "generator" / "config.json").is_file()

    torch.manual_seed(1)  # a fresh process: different teacher init must not matter, weights come from disk
    out2 = run_distill(cfg, run, phase="all", progress=False)
    assert out2["priming"]["resumed_from"] == 2          # phase I not redone
    assert out2["equilibrium"]["resumed_from"] == 0 and out2["equilibrium"]["step"] == 2
    assert [r["step"] for r in read_log(run / "priming" / "log.jsonl")] == [1, 2]
    assert [r["step"] for r in read_log(run / "equilibrium" / "log.jsonl")] == [1, 2]
    assert {"loss/g_adv", "loss/d", "loss/st_r1", "loss/c_sds"} <= set(read_log(run / "equilibrium" / "log.jsonl")[-1])
    final = _state(out2["generator"])
    assert not _same(primed, final)  # phase II trained the primed generator
    # phase II started from the primed generator: its EMA starts as that copy, so after step 1
    # ema = d * primed + (1 - d) * generator_after_step_1 (both read from the step-1 checkpoint)
    from vpae.training.checkpoint import checkpoint_tensors
    ck1 = run / "equilibrium" / "checkpoints" / "step_0000001"
    ema1, gen1 = checkpoint_tensors(ck1, "model.ema."), checkpoint_tensors(ck1, "model.generator.")
    d = cfg.equilibrium.ema_decay
    assert set(ema1) == set(primed) == set(gen1)
    for k in primed:
        assert torch.allclose(ema1[k], d * primed[k] + (1 - d) * gen1[k], rtol=0, atol=1e-6), k

    out3 = run_distill(cfg, run, phase="all", progress=False)
    assert out3["priming"]["resumed_from"] == 2 and out3["equilibrium"]["resumed_from"] == 2
    assert _same(final, _state(out3["generator"]))


@pytest.mark.parametrize("backbone", ["unified", "frozen", "trained"])
def test_gradient_checkpointing_gives_the_same_phase_two_step(backbone):
    """Gradient checkpointing runs each block's forward again inside backward, in whatever state the networks are
    in then: the phase holds its states (discriminator weights frozen, the frozen teacher's adapters off) across
    the optimizer step, so a checkpointed step equals a plain one. The fake LoRA is made non-zero, so reading the
    teacher with its adapters on would change the frozen backbone's features."""
    from vpae import randomness

    def run(checkpointing: bool):
        teacher, gen = _teacher_and_generator(0)
        nonzero_fake_lora_and_checkpointing(teacher, gen, checkpointing)
        torch.manual_seed(1)
        cfg = VPAEConfig(equilibrium=EquilibriumConfig(layers=(0.5, 1.0), lr=1e-3, head_lr=1e-3, backbone=backbone,
                                                       sds_lambda=1.0, r1_weight=0.0))
        nets = Networks(gen, teacher, _heads(gen))
        stepper = PhaseStepper(EquilibriumPhase(nets, cfg))
        assert all(bb.model.gradient_checkpointing == checkpointing for bb in nets.backbones())
        with randomness.batch_stream(7):
            stats = stepper.step(0, make_latent(), make_cond())
        return stats, {k: v.detach().clone() for k, v in gen.state_dict().items()}

    plain, plain_w = run(False)
    ckpt, ckpt_w = run(True)
    assert plain["grad_norm/generator"] > 0
    # the same arithmetic run twice: equal up to the float32 rounding of a re-ordered reduction, if any
    assert ckpt["grad_norm/generator"] == pytest.approx(plain["grad_norm/generator"], rel=1e-5)
    assert all(torch.allclose(plain_w[k], ckpt_w[k], rtol=0, atol=1e-6) for k in plain_w)


def test_pair_accuracy_reads_the_order_of_the_logits_not_their_sign():
    """d/accuracy is P(D(real) > D(fake)) over every pair (ties half): logits that share a sign but rank every pair
    right read 1 (the former sign-based definition read 0.5 here)."""
    from vpae.losses import discriminator_accuracy, pair_counts_by_bin
    assert discriminator_accuracy(torch.tensor([.3, .2]), torch.tensor([.1, .05])).item() == 1.0
    assert discriminator_accuracy(torch.tensor([.3, .1]), torch.tensor([.2, .1])).item() == (1 + 0.5 + 1 + 0) / 4
    # per-bin counts over the band [0.1, 0.9] cut into quarters: [0.1, 0.3), [0.3, 0.5), [0.5, 0.7), [0.7, 0.9]
    lr, tr = torch.tensor([1.0, 0.0, 2.0]), torch.tensor([0.15, 0.2, 0.9])
    lf, tf = torch.tensor([0.5, 3.0, 1.0]), torch.tensor([0.25, 0.6, 0.75])
    c = pair_counts_by_bin(lr, tr, lf, tf, (0.1, 0.9))
    assert (c["d/bin0_ranked"], c["d/bin0_pairs"]) == (1.0, 2.0)    # 1.0 > 0.5 right, 0.0 > 0.5 wrong
    assert (c["d/bin1_pairs"], c["d/bin2_pairs"]) == (0.0, 0.0)     # no real sample in these bins
    assert (c["d/bin3_ranked"], c["d/bin3_pairs"]) == (1.0, 1.0)    # t = 0.9 (the band's top) is in the last bin


def test_disc_band_power_weights_the_draws_toward_low_noise():
    from vpae import randomness
    from vpae.losses import AdversarialLoss
    with randomness.batch_stream(0, 0):
        uniform = AdversarialLoss(band=(0.1, 0.9)).draw_t(4000)
    with randomness.batch_stream(0, 0):
        plain = randomness.uniform(4000, (0.1, 0.9))
    with randomness.batch_stream(0, 0):
        low = AdversarialLoss(band=(0.1, 0.9), power=3.0).draw_t(4000)
    assert torch.equal(uniform, plain)     # power 1 draws exactly what the uniform band always drew
    assert low.min() >= 0.1 and low.max() < 0.9
    # P(t < 0.1 + 0.8 * q) = q^(1/3): half the draws below 0.1 + 0.8 / 8 = 0.2 (binomial sd of the share 0.008)
    assert abs((low < 0.2).float().mean().item() - 0.5) < 0.04


def test_gradient_norm_balancing_is_the_gradient_of_the_rescaled_eq6():
    """balanced_terms' surrogate has exactly the weight gradient of s L_adv + lambda C-SDS with s = balance |g_sds| /
    |g_adv| (float64), and s g_adv has balance x the C-SDS gradient's norm."""
    from vpae.training.methods.vpae import balanced_terms
    torch.manual_seed(0)
    w = torch.randn(6, dtype=torch.float64, requires_grad=True)
    x0 = w * torch.linspace(1, 2, 6, dtype=torch.float64)  # the "generator": x0 depends on w
    target = torch.randn(6, dtype=torch.float64)

    def adversarial(x):
        return -(x.sin() * 3).sum()

    def sds(x):
        return ((x - target) ** 2).mean()
    loss, terms, logs = balanced_terms(x0, adversarial, sds, balance=0.5, sds_lambda=10.0)
    (got,) = torch.autograd.grad(loss, w)
    x = w * torch.linspace(1, 2, 6, dtype=torch.float64)
    s = logs["adv/scale"]
    (want,) = torch.autograd.grad(s * adversarial(x) + 10.0 * sds(x), w)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=0)
    assert abs(s * logs["adv/grad_norm_adv"] - 0.5 * logs["adv/grad_norm_sds"]) < 1e-12
    assert logs["loss/g_total"] == pytest.approx(s * terms["g_adv"].item() + 10.0 * terms["c_sds"].item(), rel=1e-12)


def test_the_discriminator_probe_scores_paired_held_out_videos_per_bin_and_leaves_the_rng_alone():
    stepper = _eq(disc_band=(0.1, 0.9))
    phase = stepper.phase
    x, c = make_latent(), make_cond()

    def stub(x_t, t, cond, grad):   # ranks a video by its mean: real videos (mean +3) above generated ones
        return x_t.mean(dim=(1, 2, 3, 4))
    phase.discriminate = stub
    state = torch.get_rng_state()
    out = phase.discriminator_probe(x * 0 + 3.0, c, seed=5)
    assert torch.equal(torch.get_rng_state(), state)
    assert [k for k in out if k.startswith("probe_acc_bin")] == [f"probe_acc_bin{k}" for k in range(4)]
    assert out["probe_acc"] == 1.0 and all(out[f"probe_gap_bin{k}"] > 0 for k in range(4))
    # the gap shrinks with the noise level: (1 - t) x (mean real - mean generated), paired noise cancels
    gaps = [out[f"probe_gap_bin{k}"] for k in range(4)]
    assert gaps == sorted(gaps, reverse=True)
    assert phase.discriminator_probe(x * 0 + 3.0, c, seed=5) == out


def test_a_balanced_phase_two_step_logs_the_two_gradient_norms_and_the_bins():
    stepper = _eq(adv_balance=0.5, sds_lambda=10.0, disc_band=(0.1, 0.9))
    logs = stepper.step(0, make_latent(), make_cond())
    assert logs["adv/scale"] * logs["adv/grad_norm_adv"] == pytest.approx(0.5 * logs["adv/grad_norm_sds"], rel=1e-5)
    assert sum(logs[f"d/bin{k}_pairs"] for k in range(4)) <= 4 and 0 <= logs["d/accuracy"] <= 1
