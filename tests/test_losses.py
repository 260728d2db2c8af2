"""Paper eq. 1-5 as pure tensor functions, checked against hand formulas on small tensors; and the loss objects
that draw their own noise levels and noise (the levels from the band they are given, the draws from the training
step's streams), checked with closed-form stand-ins for the networks."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from vpae import randomness
from vpae.losses import (
    conditional_sds_loss,
    discriminator_loss,
    dmd_gradient,
    dmd_loss,
    fake_score_loss,
    generator_adversarial_loss,
    spatiotemporal_perturbation,
    st_r1_penalty,
)
from vpae.randomness import batch_stream


def _t(*vals):
    return torch.tensor(vals, dtype=torch.float64)


def test_dmd_gradient_by_hand():
    # two samples of 3 "pixels" each, shape (B, C, F, H, W) = (2, 3, 1, 1, 1)
    x0_gen = _t(1.0, 2.0, 3.0, -1.0, 0.0, 1.0).reshape(2, 3, 1, 1, 1)
    x0_real = _t(0.0, 2.0, 5.0, 1.0, 1.0, 1.0).reshape(2, 3, 1, 1, 1)
    x0_fake = _t(2.0, 0.0, 1.0, 0.0, 3.0, -1.0).reshape(2, 3, 1, 1, 1)
    # per-sample weights mean|gen - real|: (1 + 0 + 2)/3 = 1 and (2 + 1 + 0)/3 = 1
    # sample 0: (fake - real) / 1 = (2, -2, -4); sample 1: (-1, 2, -2) / 1
    expected = _t(2.0, -2.0, -4.0, -1.0, 2.0, -2.0).reshape(2, 3, 1, 1, 1)
    assert torch.equal(dmd_gradient(x0_gen, x0_real, x0_fake), expected)
    # a different per-sample weight: scale the generator offset of sample 1 by 3 -> weight 3
    x0_gen2 = x0_gen.clone()
    x0_gen2[1] = x0_real[1] + 3 * (x0_gen[1] - x0_real[1])
    g = dmd_gradient(x0_gen2, x0_real, x0_fake)
    assert torch.allclose(g[1], expected[1] / 3, rtol=0, atol=1e-15)
    assert torch.equal(g[0], expected[0])
    # no graph, finite even when gen == real
    assert not dmd_gradient(x0_gen.requires_grad_(), x0_real, x0_fake).requires_grad
    assert torch.isfinite(dmd_gradient(x0_real, x0_real, x0_fake)).all()


def test_dmd_gradient_points_from_real_to_fake():
    """Eq. 1 with the score of FIELD_NOTES 1: -(s_real - s_fake) = -(1-t)/t^2 (x0_real - x0_fake): the KL
    gradient wrt the sample is a positive multiple of (x0_fake - x0_real)."""
    torch.manual_seed(0)
    t = 0.3
    x_t = torch.randn(2, 4, 1, 1, 1, dtype=torch.float64)
    x0_real, x0_fake = torch.randn_like(x_t), torch.randn_like(x_t)
    v_real, v_fake = (x_t - x0_real) / t, (x_t - x0_fake) / t
    s_real, s_fake = -(x_t + (1 - t) * v_real) / t, -(x_t + (1 - t) * v_fake) / t
    kl_grad = -(s_real - s_fake)
    g = dmd_gradient(x_t, x0_real, x0_fake)
    ratio = kl_grad / g
    assert (ratio > 0).all()
    assert torch.allclose(ratio, ratio.flatten(1)[:, :1].reshape(-1, 1, 1, 1, 1), rtol=1e-10)


def test_dmd_loss_gradient_is_dmd_gradient_over_numel():
    torch.manual_seed(0)
    shape = (3, 2, 2, 3, 2)
    x0_gen = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    x0_real, x0_fake = torch.randn(shape, dtype=torch.float64), torch.randn(shape, dtype=torch.float64)
    loss = dmd_loss(x0_gen, x0_real, x0_fake)
    assert loss.shape == (3,)
    # value: 0.5 * mean(grad^2) per sample
    grad = dmd_gradient(x0_gen, x0_real, x0_fake)
    assert torch.allclose(loss, 0.5 * grad.pow(2).flatten(1).mean(1), rtol=1e-12)
    (dx,) = torch.autograd.grad(loss.sum(), x0_gen)
    numel = x0_gen[0].numel()
    assert torch.allclose(dx, grad / numel, rtol=1e-12, atol=0)
    # no gradient flows to the scores
    real = x0_real.clone().requires_grad_()
    fake = x0_fake.clone().requires_grad_()
    loss2 = dmd_loss(x0_gen, real, fake).sum()
    assert loss2.grad_fn is not None
    assert torch.autograd.grad(loss2, [real, fake], allow_unused=True) == (None, None)


def test_fake_score_loss_by_hand():
    torch.manual_seed(1)
    shape = (2, 3, 1, 2, 2)
    v = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    x0 = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    eps = torch.randn(shape, dtype=torch.float64)
    loss = fake_score_loss(v, x0, eps)
    expected = torch.stack([((eps[i] - x0[i] - v[i]) ** 2).sum() / 12 for i in range(2)])
    assert torch.allclose(loss, expected, rtol=1e-12)
    gv, gx = torch.autograd.grad(loss.sum(), [v, x0], allow_unused=True)
    assert gx is None  # eq. 2 trains on detached generator samples
    assert torch.allclose(gv, -2 * (eps - x0 - v) / 12, rtol=1e-12)
    # exact target: the flow-matching velocity eps - x0 gives zero loss
    assert torch.equal(fake_score_loss(eps - x0.detach(), x0, eps), torch.zeros(2, dtype=torch.float64))


def test_conditional_sds_by_hand():
    x0 = _t(1.0, 2.0, 3.0, 4.0).reshape(1, 4, 1, 1, 1).requires_grad_()
    teacher = _t(0.0, 0.0, 5.0, 4.0).reshape(1, 4, 1, 1, 1).requires_grad_()
    loss = conditional_sds_loss(x0, teacher)
    assert torch.equal(loss, _t((1 + 4 + 4 + 0) / 4))
    gx, gt = torch.autograd.grad(loss.sum(), [x0, teacher], allow_unused=True)
    assert gt is None
    assert torch.equal(gx.flatten(), _t(0.5, 1.0, -1.0, 0.0))


def test_hinge_losses_by_hand():
    real, fake = _t(2.0, 0.5, -1.0), _t(-2.0, 0.25, 3.0)
    assert torch.equal(generator_adversarial_loss(fake, "hinge"), _t(2.0, -0.25, -3.0))
    # relu(1 - real) + relu(1 + fake)
    assert torch.equal(discriminator_loss(real, fake, "hinge"), _t(0.0 + 0.0, 0.5 + 1.25, 2.0 + 4.0))


def test_non_saturating_losses_by_hand():
    real, fake = _t(2.0, 0.5, -1.0), _t(-2.0, 0.25, 3.0)
    sp = lambda x: torch.log1p(torch.exp(x))  # noqa: E731
    assert torch.allclose(generator_adversarial_loss(fake, "non_saturating"), sp(-fake), rtol=1e-12)
    assert torch.allclose(discriminator_loss(real, fake, "non_saturating"), sp(-real) + sp(fake), rtol=1e-12)
    assert torch.allclose(generator_adversarial_loss(fake, "non_saturating"), F.softplus(-fake))


def test_unknown_loss_kind():
    with pytest.raises(ValueError, match="wasserstein"):
        generator_adversarial_loss(_t(1.0), "wasserstein")
    with pytest.raises(ValueError, match="wasserstein"):
        discriminator_loss(_t(1.0), _t(1.0), "wasserstein")


def test_st_r1_linear_discriminator():
    """For D(x) = w . x the penalty is exactly (w . delta)^2 / ||delta||^2."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 4, 2, 2, generator=g, dtype=torch.float64)
    w = torch.randn(3, 4, 2, 2, generator=g, dtype=torch.float64)
    D = lambda v: (v * w).flatten(1).sum(1)  # noqa: E731
    with batch_stream(0):
        delta = spatiotemporal_perturbation(x, 0.01, 0.1)
    pen = st_r1_penalty(D(x + delta), D(x), delta)
    expected = torch.stack([(w * delta[i]).sum() ** 2 / delta[i].pow(2).sum() for i in range(2)])
    assert pen.shape == (2,)
    assert torch.allclose(pen, expected, rtol=1e-9)
    # hand-built delta: w = e_0 and delta = (3, 4, 0, ...) -> (3)^2 / 25
    w2 = torch.zeros(1, 2, 1, 1, 1, dtype=torch.float64)
    w2[0, 0] = 1.0
    d2 = _t(3.0, 4.0).reshape(1, 2, 1, 1, 1)
    x2 = torch.zeros_like(d2)
    D2 = lambda v: (v * w2).flatten(1).sum(1)  # noqa: E731
    assert torch.equal(st_r1_penalty(D2(x2 + d2), D2(x2), d2), _t(9.0 / 25.0))


def test_spatiotemporal_perturbation_temporal_part_varies_across_frames_only():
    like = torch.zeros(2, 3, 5, 4, 6)
    with batch_stream(0):
        d = spatiotemporal_perturbation(like, 0.0, 0.1)
    assert d.shape == like.shape
    # constant over H, W within each (sample, channel, frame)
    assert torch.equal(d, d[..., :1, :1].expand_as(d))
    per_frame = d[..., 0, 0]  # (B, C, F)
    # differs across frames, per channel, and across channels
    assert (per_frame[..., 1:] != per_frame[..., :-1]).all()
    assert (per_frame[:, 1:] != per_frame[:, :-1]).all()
    assert 0.05 < per_frame.std().item() < 0.2
    # spatial part alone: independent per element
    with batch_stream(0):
        ds = spatiotemporal_perturbation(like, 0.01, 0.0)
    assert not torch.equal(ds, ds[..., :1, :1].expand_as(ds))
    assert 0.005 < ds.std().item() < 0.02
    # both parts: the sum of the two scaled draws
    with batch_stream(3):
        dsum = spatiotemporal_perturbation(like, 0.01, 0.1)
    with batch_stream(3):  # the same per-sample streams: the spatial draw, then the temporal one
        es, et = randomness.randn_like(like), randomness.randn((2, 3, 5, 1, 1))
    assert torch.allclose(dsum, 0.01 * es + 0.1 * et)
    # sample i's perturbation depends on its global index only: rank 1 of 2 draws the second sample's
    with batch_stream(3, rank=1):
        second = spatiotemporal_perturbation(like[:1], 0.01, 0.1)
    assert torch.equal(second, dsum[1:])


# ----------------------------------------------------------------------------------------------
# The loss objects: they draw their own noise levels (from the band they are given) and noise, from the
# training step's per-sample streams (vpae.randomness), so identical streams give identical losses.

SHAPE = (64, 2, 1, 2, 2)  # 64 samples: enough draws to see that the levels cover their band


class _Scores:
    """A ScorePair of closed-form float64 "networks" that records what it is asked: x0 predictions that depend
    on x_t, t and (for the real score) the guidance, so a wrong argument shows in the loss."""

    def __init__(self):
        self.calls = []

    def real_x0(self, x_t, t, cond, guidance=1.0):
        self.calls.append(("real", x_t, t, guidance))
        return 0.5 * x_t + 0.1 * guidance * t.reshape(-1, 1, 1, 1, 1)

    def fake_x0(self, x_t, t, cond):
        self.calls.append(("fake", x_t, t, None))
        return 0.25 * x_t - 0.2 * t.reshape(-1, 1, 1, 1, 1)

    def fake_velocity(self, x_t, t, cond):
        self.calls.append(("fake_v", x_t, t, None))
        return x_t * (1 + t.reshape(-1, 1, 1, 1, 1))


def _x0(seed=0, grad=False):
    return torch.randn(SHAPE, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).requires_grad_(grad)


def _in_band(t, band):
    lo, hi = band
    assert t.shape == (SHAPE[0],)
    assert t.min() >= lo and t.max() <= hi, (t.min(), t.max(), band)
    assert t.max() - t.min() > 0.5 * (hi - lo)  # drawn across the band, not one level


def _stream_determined(fn):
    """fn() -> tensors: equal in two identical streams whatever torch's global generator holds (the draws come
    from the stream), different in another step's stream."""
    torch.manual_seed(0)
    with batch_stream(11):
        a = fn()
    torch.manual_seed(1)
    with batch_stream(11):
        b = fn()
    with batch_stream(12):
        c = fn()
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert any(not torch.equal(x, y) for x, y in zip(a, c, strict=True))
    return a


def _eps_of(x_t, x0, t):
    """The noise of x_t = (1 - t) x0 + t eps."""
    t = t.reshape(-1, 1, 1, 1, 1).to(x_t.dtype)
    return (x_t - (1 - t) * x0) / t


def test_distribution_matching_loss_draws_t_from_its_band():
    from vpae.losses import DistributionMatchingLoss
    band, x0 = (0.3, 0.4), _x0()
    loss_fn = DistributionMatchingLoss(band, guidance=3.0)
    scores = _Scores()

    def run():
        scores.calls.clear()
        loss, gap = loss_fn(x0, None, scores)
        (real, x_t, t, guidance), (fake, x_t2, t2, _) = scores.calls
        assert (real, fake, guidance) == ("real", "fake", 3.0)
        assert x_t2 is x_t and t2 is t  # both scores read the one re-noised sample
        return loss, gap, t, x_t

    loss, gap, t, x_t = _stream_determined(run)
    assert loss.shape == (SHAPE[0],)
    _in_band(t, band)
    assert _eps_of(x_t, x0, t).std().item() == pytest.approx(1.0, abs=0.1)  # re-noised with N(0, I)


def test_distribution_matching_loss_is_dmd_loss_of_the_same_draws_float64():
    from vpae import flow
    from vpae.losses import DistributionMatchingLoss
    band, x0 = (0.02, 0.98), _x0(grad=True)
    with batch_stream(5):
        loss, gap = DistributionMatchingLoss(band, guidance=2.5)(x0, None, _Scores())
    # by hand, with the draws of an identical stream: t ~ U(band), then the noise
    with batch_stream(5):
        t = randomness.uniform(SHAPE[0], band)
        eps = randomness.randn_like(x0)
    x_t = flow.add_noise(x0.detach(), eps, t)
    tt = t.reshape(-1, 1, 1, 1, 1)
    x0_real, x0_fake = 0.5 * x_t + 0.1 * 2.5 * tt, 0.25 * x_t - 0.2 * tt
    want = dmd_loss(x0, x0_real, x0_fake)
    assert loss.dtype == torch.float64
    torch.testing.assert_close(loss, want, rtol=1e-14, atol=0)
    torch.testing.assert_close(gap, (x0_real - x0_fake).abs().mean(), rtol=1e-14, atol=0)
    # its gradient is eq. 1's normalised gradient (the scores carry none)
    (g,) = torch.autograd.grad(loss.sum(), x0)
    torch.testing.assert_close(g, dmd_gradient(x0, x0_real, x0_fake) / x0[0].numel(), rtol=1e-12, atol=0)


def test_fake_score_loss_draws_t_from_its_band():
    from vpae.losses import FakeScoreLoss
    band, x0 = (0.6, 0.9), _x0()
    scores = _Scores()

    def run():
        scores.calls.clear()
        loss = FakeScoreLoss(band)(x0, None, scores)
        ((kind, x_t, t, _),) = scores.calls
        assert kind == "fake_v"
        return loss, t, x_t

    loss, t, x_t = _stream_determined(run)
    _in_band(t, band)
    eps = _eps_of(x_t, x0, t)
    assert eps.std().item() == pytest.approx(1.0, abs=0.1)
    # eq. 2 on the fake score's velocity at that sample, target eps - x0
    torch.testing.assert_close(loss, fake_score_loss(x_t * (1 + t.reshape(-1, 1, 1, 1, 1)), x0, eps), rtol=1e-10, atol=1e-12)


def test_adversarial_loss_draws_t_from_its_band():
    from vpae.losses import AdversarialLoss
    band = (0.9, 1.0)
    w = torch.randn(SHAPE[1:], generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    seen = []

    def discriminate(x_t, t):
        seen.append((x_t, t))
        return (x_t * w).flatten(1).sum(1) * (1 + t)

    for kind in ("hinge", "non_saturating"):
        loss_fn = AdversarialLoss(kind, band)
        x_fake, x_real = _x0(0, grad=True), _x0(1)

        def run_generator():
            seen.clear()
            loss = loss_fn.generator(discriminate, x_fake)
            ((x_t, t),) = seen
            return loss, t, x_t

        loss, t, x_t = _stream_determined(run_generator)
        _in_band(t, band)
        assert torch.equal(loss, generator_adversarial_loss(discriminate(x_t, t), kind))
        # not detached: the generator's gradient passes through the re-noising, scaled by (1 - t)
        (g,) = torch.autograd.grad(loss.sum(), x_fake)
        assert g.abs().max() > 0

        def run_discriminator():
            seen.clear()
            out = loss_fn.discriminator(discriminate, x_real, x_fake)
            (xr, tr), (xf, tf) = seen
            assert out["real"][0] is xr and out["real"][1] is tr and out["fake"][0] is xf and out["fake"][1] is tf
            return out["loss"], tr, tf

        loss, t_real, t_fake = _stream_determined(run_discriminator)
        _in_band(t_real, band)
        _in_band(t_fake, band)
        assert not torch.equal(t_real, t_fake)  # each side draws its own levels
        assert not loss.requires_grad  # the generated video is detached (and the real one needs no gradient)


def test_conditional_sds_loss_draws_t_from_its_band():
    from vpae.losses import ConditionalSDSLoss
    band, x0 = (0.1, 0.3), _x0(grad=True)
    scores = _Scores()

    def run():
        scores.calls.clear()
        loss = ConditionalSDSLoss(band, guidance=4.0)(x0, None, scores)
        ((kind, x_t, t, guidance),) = scores.calls
        assert (kind, guidance) == ("real", 4.0)
        return loss, t, x_t

    loss, t, x_t = _stream_determined(run)
    _in_band(t, band)
    assert _eps_of(x_t, x0.detach(), t).std().item() == pytest.approx(1.0, abs=0.1)
    target = 0.5 * x_t + 0.4 * t.reshape(-1, 1, 1, 1, 1)
    torch.testing.assert_close(loss, conditional_sds_loss(x0, target), rtol=1e-14, atol=0)


def test_add_distillation_loss_draws_a_teacher_timestep():
    from vpae.losses import ADDDistillationLoss, add_distillation_loss
    x0 = _x0(grad=True)
    scores = _Scores()

    def run():
        scores.calls.clear()
        loss = ADDDistillationLoss(guidance=2.0)(x0, None, scores)
        ((kind, x_t, t, guidance),) = scores.calls
        assert (kind, guidance) == ("real", 2.0)
        return loss, t, x_t

    loss, t, x_t = _stream_determined(run)
    _in_band(t, (1e-3, 1.0))  # U(0, 1) clamped to >= 1e-3
    target = 0.5 * x_t + 0.2 * t.reshape(-1, 1, 1, 1, 1)
    torch.testing.assert_close(loss, add_distillation_loss(x0, target, t), rtol=1e-14, atol=0)


def test_spatiotemporal_r1_draws_its_perturbation_in_the_stream():
    from vpae.losses import SpatiotemporalR1
    x = _x0().reshape(16, 2, 4, 2, 2)  # 4 frames
    t = torch.linspace(0.1, 0.9, 16)
    w = torch.randn(x.shape[1:], generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    seen = []

    def discriminate(x_in, t_in):
        seen.append((x_in, t_in))
        return (x_in * w).flatten(1).sum(1)

    def run():
        seen.clear()
        loss = SpatiotemporalR1(0.01, 0.1)(discriminate, x, t, discriminate(x, t))
        (_, (x_pert, t_pert)) = seen
        assert t_pert is t  # the perturbed video is read at the clean one's noise level
        return loss, x_pert - x

    loss, delta = _stream_determined(run)
    # delta is sigma_s eps_s + sigma_t eps_t: the same draws spatiotemporal_perturbation makes in that stream
    with batch_stream(11):
        want = spatiotemporal_perturbation(x, 0.01, 0.1)
    torch.testing.assert_close(delta, want, rtol=0, atol=1e-14)
    torch.testing.assert_close(loss, st_r1_penalty(discriminate(x + want, t), discriminate(x, t), want), rtol=1e-12, atol=0)


def test_approximated_r1_draws_its_perturbation_in_the_stream():
    from vpae.losses import ApproximatedR1, approximated_r1_penalty, gaussian_perturbation
    x = _x0()
    w = torch.randn(SHAPE[1:], generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    seen = []

    def discriminate(x_in):
        seen.append(x_in)
        return (x_in * w).flatten(1).sum(1)

    def run():
        seen.clear()
        loss = ApproximatedR1(0.1)(discriminate, x, discriminate(x))
        return loss, seen[1] - x

    loss, delta = _stream_determined(run)
    assert delta.std().item() == pytest.approx(0.1, rel=0.1)  # sigma * N(0, I)
    with batch_stream(11):  # the same draw as gaussian_perturbation makes in that stream
        want = gaussian_perturbation(x, 0.1)
    torch.testing.assert_close(delta, want, rtol=0, atol=1e-14)
    torch.testing.assert_close(loss, approximated_r1_penalty(discriminate(x + want), discriminate(x)), rtol=1e-12, atol=0)


def test_flow_matching_loss_draws_its_sigmas_in_the_stream():
    from vpae import flow
    from vpae.losses import FlowMatchingLoss
    x0 = _x0()

    class Model:
        def velocity(self, x_t, sigma, cond):
            self.seen = (x_t, sigma)
            return 0.5 * x_t

    model = Model()

    def run(sampling, shift):
        def fn():
            loss = FlowMatchingLoss(sampling, shift)(model, x0, None)
            return (loss, *model.seen)
        return fn

    loss, x_t, uniform = _stream_determined(run("uniform", 1.0))
    _in_band(uniform, (0.0, 1.0))
    eps = _eps_of(x_t, x0, uniform)
    assert eps.std().item() == pytest.approx(1.0, abs=0.1)
    torch.testing.assert_close(loss, (0.5 * x_t - (eps - x0)).pow(2).flatten(1).mean(1), rtol=1e-9, atol=1e-12)
    # the shift moves the same draws toward high noise
    _, _, shifted = _stream_determined(run("uniform", 3.0))
    torch.testing.assert_close(shifted, flow.shift_sigma(uniform, 3.0), rtol=1e-6, atol=0)
    assert (shifted >= uniform).all()
    _, _, logit_normal = _stream_determined(run("logit_normal", 1.0))
    assert ((logit_normal > 0) & (logit_normal < 1)).all()
    z = torch.logit(logit_normal.double())
    assert abs(z.mean().item()) < 0.4 and 0.7 < z.std().item() < 1.3  # sigmoid of N(0, 1)
