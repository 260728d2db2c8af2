"""Paper eq. 1-5 as pure tensor functions, checked against hand formulas on small tensors."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from vpae import randomness
from vpae.randomness import batch_stream

from vpae.losses import (conditional_sds_loss, discriminator_loss, dmd_gradient, dmd_loss, fake_score_loss,
                         generator_adversarial_loss, spatiotemporal_perturbation, st_r1_penalty)


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
    assert not loss2.grad_fn is None
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
    import pytest
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
