"""DMD (paper eq. 1-2) on a Gaussian "video" whose real score is known in closed form.

Data x0 ~ N(mu, diag(s^2)) in d dims, shaped as videos (B, d, 1, 1, 1). Under x_t = (1-t) x0 + t eps the
posterior mean (the ideal x0-prediction) is
    E[x0 | x_t] = mu + (1-t) s^2 / ((1-t)^2 s^2 + t^2) * (x_t - (1-t) mu),
used as the real score. The fake score is the same closed form for a Gaussian N(m, diag(r^2)) whose
(m, log r) are trained by the project's `fake_score_loss` (eq. 2) on generator samples; the generator is the
affine one-step map x0 = a + b * z, z ~ N(0, I), started with the wrong mean and scale and trained by
`dmd_loss` (eq. 1). Its distribution is N(a, diag(b^2)), so W2 to the data is exact.
"""

from __future__ import annotations

import torch

from vpae import flow
from vpae.losses import dmd_loss, fake_score_loss

D = 3
MU = torch.tensor([1.0, -2.0, 0.5])
S = torch.tensor([0.5, 1.5, 1.0])


def gaussian_x0(x_t, t, mean, std):
    t = t.reshape(-1, 1)
    var = std ** 2
    gain = (1 - t) * var / ((1 - t) ** 2 * var + t ** 2)
    return mean + gain * (x_t - (1 - t) * mean)


def w2(a, b):
    return torch.sqrt(((a - MU) ** 2).sum() + ((b.abs() - S) ** 2).sum()).item()


def as_video(x):
    return x.reshape(x.shape[0], D, 1, 1, 1)


def run_dmd(steps: int = 150, flip: bool = False, batch: int = 128, seed: int = 0):
    torch.manual_seed(seed)
    a = (MU + torch.tensor([2.0, 2.0, -2.0])).requires_grad_()   # wrong mean
    b = (S * torch.tensor([3.0, 0.3, 2.0])).requires_grad_()     # wrong scale
    # fake score starts equal to the real one (zero-init LoRA analogue) and must track the generator
    m = MU.clone().requires_grad_()
    log_r = S.log().clone().requires_grad_()
    g_opt = torch.optim.Adam([a, b], lr=0.03)
    f_opt = torch.optim.Adam([m, log_r], lr=0.05)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(g_opt, steps)
    start = w2(a, b)
    for _ in range(steps):
        for _ in range(5):  # fake updates per generator update
            with torch.no_grad():
                x0 = a + b * torch.randn(batch, D)
            t = 0.02 + 0.96 * torch.rand(batch)
            eps = torch.randn(batch, D)
            x_t = flow.add_noise(x0, eps, t)
            x0_f = gaussian_x0(x_t, t, m, log_r.exp())
            v_fake = (x_t - x0_f) / t.reshape(-1, 1)
            loss_f = fake_score_loss(as_video(v_fake), as_video(x0), as_video(eps)).mean()
            f_opt.zero_grad()
            loss_f.backward()
            f_opt.step()
        x0 = a + b * torch.randn(batch, D)
        t = 0.02 + 0.96 * torch.rand(batch)
        with torch.no_grad():
            x_t = flow.add_noise(x0, torch.randn(batch, D), t)
            x0_real = gaussian_x0(x_t, t, MU, S)
            x0_fake = gaussian_x0(x_t, t, m, log_r.exp())
        if flip:
            x0_real, x0_fake = x0_fake, x0_real
        loss = dmd_loss(as_video(x0), as_video(x0_real), as_video(x0_fake)).mean()
        g_opt.zero_grad()
        loss.backward()
        g_opt.step()
        sched.step()
    return start, w2(a, b), (m.detach(), log_r.exp().detach(), a.detach(), b.detach())


def test_dmd_closes_the_gap_and_the_flipped_sign_does_not():
    start, end, (m, r, a, b) = run_dmd()
    assert start > 3.0
    assert end < start / 5, (start, end)
    # the fake score tracked the generator's distribution
    assert torch.allclose(m, a, atol=0.3) and torch.allclose(r, b.abs(), atol=0.3), (m, a, r, b)

    start_f, end_f, _ = run_dmd(flip=True)
    assert start_f == start
    assert end_f >= start_f, (start_f, end_f)


def test_posterior_mean_is_the_ideal_denoiser():
    """The closed-form real score minimises the flow-matching loss: a sanity check of the test's oracle."""
    torch.manual_seed(1)
    n = 200_000
    x0 = MU + S * torch.randn(n, D)
    t = torch.full((n,), 0.6)
    x_t = flow.add_noise(x0, torch.randn(n, D), t)
    best = ((gaussian_x0(x_t, t, MU, S) - x0) ** 2).mean()
    worse = ((gaussian_x0(x_t, t, MU + 0.2, S * 1.2) - x0) ** 2).mean()
    assert best < worse
