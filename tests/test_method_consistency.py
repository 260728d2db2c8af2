"""LCM / PCM / DCM as their released code: phase edges on the few-step sigmas, PCM's online target and
adversarial consistency loss, DCM's GAN real side (the carried consistency target) and temporal stride."""

from __future__ import annotations

import copy

import torch
from conftest import make_cond, make_latent
from test_methods import _cfg, _changed, _networks, _state, _stepper  # the shared tiny-Wan helpers

from vpae import randomness
from vpae.losses import PhasedConsistencyLoss, temporal_coherence_loss
from vpae.losses.consistency import AdversarialConsistencyLoss, renoise
from vpae.recipes import build_method
from vpae.sampling import phase_edges
from vpae.training.model import Networks, real_score


def _groups(nets: Networks) -> dict[str, dict]:
    t = _state(nets.teacher)
    return {"generator": _state(nets.generator), "teacher": {k: v for k, v in t.items() if "lora_" not in k},
            "fake_lora": {k: v for k, v in t.items() if "lora_" in k}, "heads": _state(nets.heads),
            "ema": _state(nets.ema)}


def test_phase_edges_at_nfe_4_are_the_trailing_sigmas_and_lie_on_the_ode_grid():
    edges = phase_edges(4)
    assert edges == [1.0, 0.75, 0.5, 0.25, 0.0]
    loss = PhasedConsistencyLoss(edges, 48)
    assert loss.edges() == edges
    assert all(bool((loss.grid == e).any()) for e in edges)
    assert bool((loss.grid[1:] > loss.grid[:-1]).all())
    # the methods build their phases on those edges
    for method in ("pcm", "dcm"):
        cfg = _cfg(method, comparison__nfe=4, consistency__num_timesteps=48)
        (phase,) = build_method(cfg).phases(_networks(cfg))
        assert phase.loss.edges() == edges
    cfg = _cfg("lcm")
    (phase,) = build_method(cfg).phases(_networks(cfg))
    assert phase.loss.edges() == [1.0, 0.0]


def test_pcm_online_target_is_the_generator_under_no_grad_float64():
    """target_decay 0: no EMA copy, and the consistency loss equals the one with a frozen copy of the current
    generator as the target (same draws), exactly."""
    cfg = _cfg("pcm", pcm__target_decay=0.0, pcm__adv_weight=0.0)
    nets = _networks(cfg, torch.float64)
    (phase,) = build_method(cfg).phases(nets)
    phase.start()
    assert nets.ema is None and phase.target() is nets.generator and "target" not in phase.modules()
    x, c = make_latent().double(), make_cond().to(torch.float64)
    torch.manual_seed(0)
    update = next(phase.step(0, x, c))
    frozen = copy.deepcopy(nets.generator).requires_grad_(False)
    torch.manual_seed(0)
    with real_score(nets.teacher):
        want = phase.loss(nets.generator, frozen, nets.teacher, x, c)["loss"].mean()
    assert update.loss.dtype == torch.float64 and torch.equal(update.loss.detach(), want.detach())
    # > 0: an EMA target with that decay
    cfg = _cfg("pcm", pcm__target_decay=0.5, pcm__adv_weight=0.0)
    nets = _networks(cfg)
    (phase,) = build_method(cfg).phases(nets)
    phase.start()
    assert phase.target() is nets.ema and phase.decay == 0.5


def test_pcm_adversarial_step_changes_the_generator_and_the_heads_only():
    cfg = _cfg("pcm")
    assert cfg.pcm.adv_weight == 0.1 and cfg.pcm.target_decay == 0.0
    nets = _networks(cfg)
    stepper = _stepper(cfg, nets)
    assert set(stepper.optimizers.optimizers) == {"generator", "heads"}
    x, c = make_latent(), make_cond()
    before = _groups(nets)
    torch.manual_seed(0)
    stats = stepper.step(0, x, c)
    assert {"loss/consistency", "loss/g_adv", "loss/d", "d/accuracy", "grad_norm/heads"} <= set(stats), stats
    assert all(torch.isfinite(torch.tensor(v)) for v in stats.values())
    assert _changed(before, _groups(nets)) == {"generator", "heads"}
    # adv_weight 0: plain phased consistency, the heads untouched
    cfg = _cfg("pcm", pcm__adv_weight=0.0)
    nets = _networks(cfg)
    stepper = _stepper(cfg, nets)
    assert set(stepper.optimizers.optimizers) == {"generator"}
    before = _groups(nets)
    stats = stepper.step(0, x, c)
    assert "loss/g_adv" not in stats and _changed(before, _groups(nets)) == {"generator"}


def test_adversarial_samples_carry_the_target_with_the_fakes_noise_float64():
    """DCM (shared noise): real = ((1 - s) target + (s - s_e) eps) / (1 - s_e) with the fake's eps, s drawn on
    the grid inside the phase; PCM draws the real side's noise separately."""
    loss = PhasedConsistencyLoss([1.0, 0.5, 0.0], num_timesteps=8)
    g = torch.Generator().manual_seed(3)
    pred, tgt = torch.randn(4, 3, 2, 2, 2, generator=g, dtype=torch.float64), torch.randn(4, 3, 2, 2, 2, generator=g,
                                                                                          dtype=torch.float64)
    e = torch.tensor([0, 4, 0, 4])
    out = {"pred": pred, "target": tgt, "edge": loss.grid[e].float(), "edge_index": e}
    torch.manual_seed(0)
    pair = AdversarialConsistencyLoss(None, shared_noise=True).samples(loss, out)
    torch.manual_seed(0)
    sigma = loss.adversarial_sigma(e, pred.device)
    eps = randomness.randn_like(pred)
    assert torch.equal(pair["sigma"], sigma)
    s, se = sigma.double().reshape(-1, 1, 1, 1, 1), out["edge"].double().reshape(-1, 1, 1, 1, 1)
    assert torch.equal(pair["real"], ((1 - s) * tgt + (s - se) * eps) / (1 - se))
    assert torch.equal(pair["fake"], ((1 - s) * pred + (s - se) * eps) / (1 - se))
    assert pair["real"] is pair["target"]
    # sigma is a grid point in [s_e, upper edge) of each sample's phase; at sigma = s_e both sides stay put
    for i in range(4):
        lo, hi = loss.grid[e[i]], loss.grid[e[i] + loss.per_phase]
        assert lo <= sigma[i] < hi and bool((loss.grid.float() == sigma[i]).any())
    same = renoise(pred, eps, out["edge"], out["edge"])
    assert torch.equal(same, pred)
    # PCM: separate noise for the real side; DCM's gan_real data: the data noised to sigma
    torch.manual_seed(0)
    pcm = AdversarialConsistencyLoss(None, shared_noise=False).samples(loss, out)
    assert torch.equal(pcm["fake"], pair["fake"]) and not torch.equal(pcm["real"], pair["real"])


def test_dcm_gan_real_is_the_carried_target_and_data_is_an_option():
    for gan_real in ("target", "data"):
        cfg = _cfg("dcm", consistency__gan_real=gan_real)
        nets = _networks(cfg)
        (phase,) = build_method(cfg).phases(nets)
        x, c = make_latent(), make_cond()
        torch.manual_seed(0)
        loss, logs, out = phase.expert_loss(1, x, c)
        pair = out["adv"]
        assert (pair["real"] is pair["target"]) == (gan_real == "target")
        # the fake's noise, recovered from the fake, carries the target to the real side
        s = pair["sigma"].reshape(-1, 1, 1, 1, 1).double()
        se = out["edge"].reshape(-1, 1, 1, 1, 1).double()
        eps = (pair["fake"].double() * (1 - se) - (1 - s) * out["pred"].double()) / (s - se).clamp_min(1e-12)
        want = ((1 - s) * out["target"].double() + (s - se) * eps) / (1 - se)
        torch.testing.assert_close(pair["target"].double(), want, rtol=0, atol=1e-5)
        assert {"loss/g_adv", "loss/feature_matching"} <= set(logs) and torch.isfinite(loss)


def test_temporal_coherence_stride_clips_to_the_clip():
    g = torch.Generator().manual_seed(0)
    p, t = torch.randn(2, 3, 5, 2, 2, generator=g), torch.randn(2, 3, 5, 2, 2, generator=g)
    want = ((p[:, :, 3:] - p[:, :, :-3]) - (t[:, :, 3:] - t[:, :, :-3])).pow(2).flatten(1).mean(1)
    assert torch.equal(temporal_coherence_loss(p, t, 3), want)
    # two latent frames (the toy): stride 3 becomes 1
    p2, t2 = p[:, :, :2], t[:, :, :2]
    assert torch.equal(temporal_coherence_loss(p2, t2, 3), temporal_coherence_loss(p2, t2, 1))
    assert torch.equal(temporal_coherence_loss(p[:, :, :1], t[:, :, :1], 3), torch.zeros(2))
