"""Rectified-flow identities (FIELD_NOTES 1), checked exactly or to float64 round-off."""

from __future__ import annotations

import pytest
import torch

from vpae import flow

torch_dtype = torch.float64


def _xe(seed=0, shape=(3, 4, 2, 3, 5)):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(*shape, generator=g, dtype=torch_dtype)
    eps = torch.randn(*shape, generator=g, dtype=torch_dtype)
    return x0, eps


SIGMAS = [torch.tensor([0.1, 0.5, 0.93], dtype=torch_dtype), 0.37, torch.tensor(0.8, dtype=torch_dtype)]


@pytest.mark.parametrize("sigma", SIGMAS, ids=["per-sample", "float", "0-d"])
def test_forward_process_and_round_trips(sigma):
    x0, eps = _xe()
    s = flow.expand_sigma(sigma, x0)
    x_t = flow.add_noise(x0, eps, sigma)
    torch.testing.assert_close(x_t, (1 - s) * x0 + s * eps, rtol=0, atol=0)
    v = flow.velocity_target(x0, eps)
    torch.testing.assert_close(v, eps - x0, rtol=0, atol=0)
    # the true velocity recovers x0 and eps
    torch.testing.assert_close(flow.x0_from_velocity(x_t, v, sigma), x0, rtol=0, atol=1e-12)
    torch.testing.assert_close(flow.eps_from_velocity(x_t, v, sigma), eps, rtol=0, atol=1e-12)
    # x0 -> v -> x0
    torch.testing.assert_close(flow.velocity_from_x0(x_t, x0, sigma), v, rtol=0, atol=1e-11)
    # an arbitrary (wrong) velocity still round-trips through x0
    v_hat = torch.randn_like(x0)
    x0_hat = flow.x0_from_velocity(x_t, v_hat, sigma)
    torch.testing.assert_close(flow.velocity_from_x0(x_t, x0_hat, sigma), v_hat, rtol=0, atol=1e-11)
    # x_t = (1-s) x0_hat + s eps_hat for any v_hat (the two predictions are consistent)
    eps_hat = flow.eps_from_velocity(x_t, v_hat, sigma)
    torch.testing.assert_close(flow.add_noise(x0_hat, eps_hat, sigma), x_t, rtol=0, atol=1e-12)
    torch.testing.assert_close(eps_hat - x0_hat, v_hat, rtol=0, atol=1e-12)


@pytest.mark.parametrize("sigma", SIGMAS, ids=["per-sample", "float", "0-d"])
def test_score_is_gaussian_score(sigma):
    """score(x_t) for p(x_t|x0) = N((1-s) x0, s^2 I) is -(x_t - (1-s) x0) / s^2, and eq. 1 gives it."""
    x0, eps = _xe(1)
    s = flow.expand_sigma(sigma, x0)
    x_t = flow.add_noise(x0, eps, sigma)
    v_hat = torch.randn_like(x0)
    x0_hat = flow.x0_from_velocity(x_t, v_hat, sigma)
    expected = -(x_t - (1 - s) * x0_hat) / s**2
    torch.testing.assert_close(flow.score_from_velocity(x_t, v_hat, sigma), expected, rtol=1e-12, atol=1e-10)
    # with the true velocity: score = -eps / s
    torch.testing.assert_close(flow.score_from_velocity(x_t, eps - x0, sigma), -eps / s, rtol=1e-12, atol=1e-10)
    # autograd check of the Gaussian log-density gradient
    x = x_t.clone().requires_grad_(True)
    logp = -((x - (1 - s) * x0) ** 2).sum() / (2 * s**2) if s.ndim == 0 else \
        (-((x - (1 - s) * x0) ** 2) / (2 * s**2)).sum()
    (g,) = torch.autograd.grad(logp, x)
    torch.testing.assert_close(flow.score_from_velocity(x_t, eps - x0, sigma), g, rtol=1e-12, atol=1e-10)
    # score difference identity: score_real - score_fake = (1-s)/s^2 (x0_real - x0_fake)
    v2 = torch.randn_like(x0)
    diff = flow.score_from_velocity(x_t, v_hat, sigma) - flow.score_from_velocity(x_t, v2, sigma)
    x0_2 = flow.x0_from_velocity(x_t, v2, sigma)
    torch.testing.assert_close(diff, (1 - s) / s**2 * (x0_hat - x0_2), rtol=1e-10, atol=1e-9)


def test_expand_sigma_shapes():
    x = torch.zeros(3, 2, 1, 1, 1)
    assert flow.expand_sigma(torch.tensor([0.1, 0.2, 0.3]), x).shape == (3, 1, 1, 1, 1)
    assert flow.expand_sigma(0.5, x).shape == ()
    # per-sample sigma multiplies the right sample
    out = flow.add_noise(torch.zeros(3, 2, 1, 1, 1), torch.ones(3, 2, 1, 1, 1), torch.tensor([0.1, 0.2, 0.3]))
    assert out[:, 0, 0, 0, 0].tolist() == pytest.approx([0.1, 0.2, 0.3])


def test_shift_sigma():
    s = torch.linspace(0, 1, 11, dtype=torch_dtype)
    torch.testing.assert_close(flow.shift_sigma(s, 1.0), s, rtol=0, atol=0)
    # known values: k=3 at s=0.5 -> 1.5/2 = 0.75; k=5 at 0.5 -> 2.5/3; endpoints fixed
    assert flow.shift_sigma(0.5, 3.0) == pytest.approx(0.75)
    assert flow.shift_sigma(0.5, 5.0) == pytest.approx(2.5 / 3.0)
    assert flow.shift_sigma(0.25, 3.0) == pytest.approx(0.75 / 1.5)
    sh = flow.shift_sigma(s, 3.0)
    assert sh[0] == 0 and sh[-1] == 1
    assert torch.all(sh[1:-1] > s[1:-1])  # shift > 1 pushes sigmas towards noise


def test_euler_step_exact_on_straight_path():
    x0, eps = _xe(2)
    v = eps - x0
    sig = [1.0, 0.7, 0.3, 0.05, 0.0]
    x = flow.add_noise(x0, eps, sig[0])
    for s, s_next in zip(sig[:-1], sig[1:]):
        x = flow.euler_step(x, v, s, s_next)
        torch.testing.assert_close(x, flow.add_noise(x0, eps, s_next), rtol=0, atol=1e-12)
    torch.testing.assert_close(x, x0, rtol=0, atol=1e-12)
    # single step from pure noise to 0
    torch.testing.assert_close(flow.euler_step(eps, v, 1.0, 0.0), x0, rtol=0, atol=1e-12)
    # per-sample sigmas
    s = torch.tensor([1.0, 0.5, 0.2], dtype=torch_dtype)
    x_t = flow.add_noise(x0, eps, s)
    torch.testing.assert_close(flow.euler_step(x_t, v, s, torch.zeros(3, dtype=torch_dtype)), x0, rtol=0, atol=1e-12)


def test_model_timestep():
    s = torch.tensor([0.0, 0.25, 1.0])
    assert flow.model_timestep(s).tolist() == [0.0, 250.0, 1000.0]


@pytest.mark.parametrize("n,shift", [(1, 1.0), (1, 3.0), (4, 1.0), (4, 3.0), (50, 3.0), (50, 5.0), (7, 5.0)])
def test_sigma_schedule_matches_diffusers(n, shift):
    from diffusers import FlowMatchEulerDiscreteScheduler

    sched = FlowMatchEulerDiscreteScheduler(shift=shift)
    sched.set_timesteps(n)
    ours = flow.sigma_schedule(n, shift)
    assert ours.shape == (n + 1,)
    torch.testing.assert_close(ours, sched.sigmas.float(), rtol=0, atol=0)
    assert ours[0] == 1.0 and ours[-1] == 0.0
    assert torch.all(ours[1:] < ours[:-1])
    # the diffusers timesteps are exactly our model timesteps of the same sigmas
    torch.testing.assert_close(flow.model_timestep(ours[:-1]), sched.timesteps.float(), rtol=1e-6, atol=1e-4)


def test_one_step_schedule():
    assert flow.sigma_schedule(1, 1.0).tolist() == [1.0, 0.0]
    assert flow.sigma_schedule(1, 3.0).tolist() == [1.0, 0.0]


def test_sigma_schedule_rejects_zero_steps():
    with pytest.raises(ValueError):
        flow.sigma_schedule(0)
