"""The paper's comparison methods (vpae.training.methods, one file each): each phase trains exactly its networks
through the optimizers it names, its losses are finite and decrease on a tiny run, and the exact identities of
their pieces hold."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from conftest import make_cond, make_latent, make_wan, nonzero_fake_lora_and_checkpointing

from vpae import randomness
from vpae.config import (
    ComparisonConfig,
    ConsistencyConfig,
    DMD2Config,
    EquilibriumConfig,
    MDConfig,
    PrimingConfig,
    VPAEConfig,
)
from vpae.discriminator import build_head
from vpae.losses import PhasedConsistencyLoss
from vpae.recipes import build_method
from vpae.sampling import few_step_sigmas, predict_x0
from vpae.training.loop import PhaseStepper
from vpae.training.methods.base import student_inputs
from vpae.training.methods.dcm import ExpertPair
from vpae.training.methods.lcm import ConsistencyPhase
from vpae.training.methods.md import weak_real_score
from vpae.training.model import Networks, copy_generator, fake_score, make_teacher_and_fake, real_score

TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "add_k_proj", "add_v_proj")
METHODS = ["dmd2", "md", "lcm", "pcm", "dcm", "add", "apt", "ladd", "rcm"]


def _cfg(method: str, **kw) -> VPAEConfig:
    cfg = VPAEConfig(method=method, equilibrium=EquilibriumConfig(layers=(0.5, 1.0)),
                     priming=PrimingConfig(lr=1e-3, lora_rank=4, lora_alpha=4, kind=kw.pop("kind", "vpae")))
    cfg.comparison = ComparisonConfig(lr=1e-3, disc_lr=1e-3, nfe=2, guidance=2.0, grad_clip=0.0, layers=(0.5, 1.0))
    cfg.dmd2 = DMD2Config(fake_updates_per_generator=1, fake_lr=1e-3)
    cfg.md = MDConfig(fake_updates_per_generator=1, fake_lr=1e-3)
    cfg.consistency = ConsistencyConfig(num_timesteps=8, skip=2, semantic_phases=1)
    if method == "apt":  # the adversarial phase alone (its consistency start is LCM's phase, tested as LCM)
        cfg.apt = dataclasses.replace(cfg.apt, init="teacher")
    if method == "rcm":  # DMD and the fake score from the first step (after rCM's tangent warm-up otherwise)
        cfg.rcm = dataclasses.replace(cfg.rcm, tangent_warmup_steps=0, fake_lr=1e-3)
    for k, v in kw.items():
        sec, key = k.split("__")
        setattr(cfg, sec, dataclasses.replace(getattr(cfg, sec), **{key: v}))
    return cfg


def _networks(cfg: VPAEConfig, dtype=torch.float32) -> Networks:
    """What recipes.build_networks makes, on a tiny Wan: the generator (a copy of the teacher), the teacher with
    its fake LoRA, the heads when the method reads them, and the method's own networks (Method.add_roles)."""
    method = build_method(cfg)
    teacher = make_wan()
    gen = copy_generator(teacher, "full")
    make_teacher_and_fake(teacher, 4, 4, TARGETS)
    heads = None
    if method.needs_heads:
        torch.manual_seed(1)
        heads = build_head("ca", feature_dim=gen.feature_dim, num_layers=2, text_dim=32, image_dim=24, hidden_dim=16,
                           num_queries=2, num_heads=2).to(dtype)
    nets = Networks(gen.to(dtype), teacher.to(dtype), heads)
    method.add_roles(nets, before_sharding=False)
    return nets


def _stepper(cfg: VPAEConfig, nets: Networks) -> PhaseStepper:
    """The method's (only) phase with its optimizers; phase.start() has made its copies (EMA, targets)."""
    (phase,) = build_method(cfg).phases(nets)
    assert phase.name == cfg.method
    return PhaseStepper(phase)


def _state(module) -> dict:
    return {k: v.detach().clone() for k, v in module.state_dict().items()} if module is not None else {}


OTHERS = {"dcm": {"detail_expert", "detail_ema"}, "apt": {"disc_backbone"}, "dmd2": {"fake_critic"}}


def _groups(nets: Networks) -> dict[str, dict]:
    t = _state(nets.teacher)
    return {"generator": _state(nets.generator), "teacher": {k: v for k, v in t.items() if "lora_" not in k},
            "fake_lora": {k: v for k, v in t.items() if "lora_" in k}, "heads": _state(nets.heads),
            "ema": _state(nets.ema), "detail_expert": _state(nets.others.get("detail_expert")),
            "detail_ema": _state(nets.others.get("detail_ema")), "disc_backbone": _state(nets.others.get("disc_backbone")),
            "fake_critic": _state(nets.others.get("fake_critic"))}


def _changed(before: dict, after: dict) -> set[str]:
    return {g for g in before if before[g].keys() != after[g].keys()
            or any(not torch.equal(before[g][k], after[g][k]) for k in before[g])}


TRAINS = {"dmd2": {"generator", "fake_critic", "heads"}, "md": {"generator", "fake_lora"},
          "ladd": {"generator", "heads"}, "rcm": {"generator", "fake_lora"},
          "lcm": {"generator", "ema"}, "pcm": {"generator", "heads"}, "add": {"generator", "heads"},
          "apt": {"generator", "heads", "disc_backbone", "ema"}}

# the optimizers each method's phase asks the loop for (DMD2's "fake" holds the fake LoRA and the heads, APT's
# "discriminator" the heads and the trained backbone)
OPTIMIZERS = {"dmd2": {"generator", "fake"}, "md": {"generator", "fake"}, "lcm": {"generator"},
              "pcm": {"generator", "heads"}, "dcm": {"generator", "detail_expert", "heads"}, "add": {"generator", "heads"},
              "apt": {"generator", "discriminator"}, "ladd": {"generator", "heads"}, "rcm": {"generator", "fake"}}


def _storage(t: torch.Tensor) -> int:
    return t.untyped_storage().data_ptr()


@pytest.mark.parametrize("method", METHODS)
def test_one_step_changes_only_what_the_method_trains(method):
    cfg = _cfg(method)
    nets = _networks(cfg)
    assert set(nets.others) == OTHERS.get(method, set())
    assert (nets.heads is not None) == ("heads" in TRAINS.get(method, {"heads"}))
    stepper = _stepper(cfg, nets)
    phase = stepper.phase
    x, c = make_latent(), make_cond()
    before = _groups(nets)
    torch.manual_seed(0)
    stats = stepper.step(0, x, c)
    assert stats and all(torch.isfinite(torch.tensor(v)) for v in stats.values()), stats
    after = _groups(nets)
    if method != "dcm":
        assert _changed(before, after) == TRAINS[method]
    else:  # step 0 trains the semantic expert (the generator) and its target, step 1 the detail expert + heads
        assert _changed(before, after) == {"generator", "ema"}
        assert {"grad_norm/generator"} <= set(stats) and "grad_norm/detail_expert" not in stats
        stats = stepper.step(1, x, c)
        assert {"loss/g_adv", "loss/feature_matching", "loss/d", "grad_norm/detail_expert", "grad_norm/heads"} <= set(stats)
        assert _changed(after, _groups(nets)) == {"detail_expert", "detail_ema", "heads"}
    # every method with a discriminator logs how often it tells real from generated (0.5 = chance)
    if "heads" in TRAINS.get(method, {"heads"}):
        assert 0.0 <= stats["d/accuracy"] <= 1.0, stats
    # the optimizers the phase names, built by the loop
    assert set(phase.optimizers()) == OPTIMIZERS[method] == set(stepper.optimizers.optimizers)
    # what a checkpoint holds: the generator and every trained network (teacher base weights never): every
    # parameter an optimizer steps is a tensor of the phase's modules
    modules = phase.modules()
    assert "generator" in modules
    held = {_storage(v) for m in modules.values() for v in m.state_dict().values()}
    for name, spec in phase.optimizers().items():
        assert spec.params and all(_storage(p) in held for p in spec.params), name


# method -> the loss a tiny run on one batch with fixed noise must decrease: the consistency loss; for the
# distribution-matching methods the fake score's loss (their generator loss is a surrogate whose value is
# 0.5 |normalised gradient|^2, not an objective), for the adversarial ones the discriminator's
DECREASES = {"dmd2": "loss/fake", "md": "loss/fake", "lcm": "loss/consistency", "pcm": "loss/consistency",
             "dcm": "loss/consistency", "add": "loss/d", "apt": "loss/d", "ladd": "loss/d", "rcm": "loss/fake"}


@pytest.mark.parametrize("method", METHODS)
def test_loss_is_finite_and_decreases_on_a_tiny_run(method):
    cfg = _cfg(method, comparison__lr=1e-4)  # the generator slower than its critics (fake score: 1e-3; TTUR)
    stepper = _stepper(cfg, _networks(cfg))
    x, c = make_latent(), make_cond()
    key, values = DECREASES[method], []
    for i in range(12):
        torch.manual_seed(0)  # the same noise every step: a fixed objective
        stats = stepper.step(2 * i if method == "dcm" else i, x, c)  # DCM: the semantic expert each time
        assert all(torch.isfinite(torch.tensor(v)) for v in stats.values()), (i, stats)
        values.append(stats[key])
    assert sum(values[-3:]) / 3 < sum(values[:3]) / 3, (key, values)


def test_lcm_as_phase_one_then_equilibrium():
    # comparison.lr and grad_clip differ from priming's, so the checks below tell which optimizer settings it took
    cfg = _cfg("vpae", kind="lcm", comparison__lr=5e-4)
    nets = _networks(cfg)
    first, second = build_method(cfg).phases(nets)
    assert isinstance(first, ConsistencyPhase) and first.name == "priming" and second.name == "equilibrium"
    # phase I's optimizer and budget
    assert (first.steps, first.batch_size) == (cfg.priming.steps, cfg.priming.batch_size)
    stepper = PhaseStepper(first)
    (spec,) = first.optimizers().values()
    assert set(first.optimizers()) == {"generator"}
    assert (spec.lr, tuple(spec.betas), spec.grad_clip) == (cfg.priming.lr, tuple(cfg.priming.betas), cfg.priming.grad_clip)
    assert [id(p) for p in spec.params] == [id(p) for p in nets.generator.parameters()]
    x, c = make_latent(), make_cond()
    torch.manual_seed(0)
    stepper.step(0, x, c)
    # the LCM target trails the generator after a step ...
    assert any(not torch.equal(e, g) for e, g in zip(nets.ema.parameters(), nets.generator.parameters()))
    # ... and phase II's EMA (the discriminator backbone) restarts from the LCM-primed generator, not the LCM target
    second.start()
    for e, g in zip(nets.ema.parameters(), nets.generator.parameters(), strict=True):
        assert torch.equal(e, g)


def test_consistency_target_is_the_teacher_solver_at_the_phase_edge_float64():
    """skip >= steps per phase: t' is always the phase edge, so the target is the teacher's CFG Euler jump to the
    edge exactly (the EMA target drops out: boundary condition f(x_s, s -> s) = x_s), and the loss equals the
    hand computation."""
    teacher, student = make_wan(seed=0).double(), make_wan(seed=1).double()
    target_a, target_b = make_wan(seed=2).double(), make_wan(seed=3).double()
    x0, c = make_latent().double(), make_cond().to(torch.float64)
    loss = PhasedConsistencyLoss([1.0, 0.5, 0.0], num_timesteps=8, skip=4, guidance=3.0, distance="l2")
    assert loss.edges() == [1.0, 0.5, 0.0]
    torch.manual_seed(0)
    a = loss(student, target_a, teacher, x0, c)
    torch.manual_seed(0)
    b = loss(student, target_b, teacher, x0, c)
    assert torch.equal(a["target"], b["target"]) and torch.equal(a["loss"], b["loss"])
    t, edge, x_t = a["t"].double(), a["edge"].double(), a["x_t"]
    with torch.no_grad():
        v_pos, v_neg = teacher.velocity(x_t, t, c), teacher.velocity(x_t, t, c.negative())
        v_t = v_neg + 3.0 * (v_pos - v_neg)
        want_target = x_t + (edge - t).reshape(-1, 1, 1, 1, 1) * v_t
        want_pred = x_t + (edge - t).reshape(-1, 1, 1, 1, 1) * student.velocity(x_t, t, c)
    torch.testing.assert_close(a["target"], want_target, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(a["loss"], (want_pred - want_target).pow(2).flatten(1).mean(1), rtol=1e-10, atol=1e-12)
    # LCM (one phase): the student's prediction is its x0 prediction
    lcm = PhasedConsistencyLoss([1.0, 0.0], num_timesteps=8, skip=1)
    torch.manual_seed(0)
    o = lcm(student, target_a, teacher, x0, c)
    assert torch.equal(o["edge"], torch.zeros(2))
    with torch.no_grad():
        torch.testing.assert_close(o["pred"], predict_x0(student, o["x_t"], o["t"].double(), c)[0], rtol=1e-12, atol=1e-12)


def test_phase_edges_lie_on_the_ode_grid():
    from vpae import flow
    for nfe, shift in ((4, 1.0), (4, 3.0), (2, 1.0)):
        edges = flow.sigma_schedule(nfe, shift).tolist()
        loss = PhasedConsistencyLoss(edges, 48)
        assert loss.edges() == edges and loss.grid[0] == 0 and loss.grid[-1] == 1
        assert bool((loss.grid[1:] > loss.grid[:-1]).all())


def test_weak_real_score_interpolates_between_real_and_fake_exactly():
    teacher = make_wan()
    make_teacher_and_fake(teacher, 4, 4, TARGETS)
    with torch.no_grad():
        for n, p in teacher.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.1)
    x, c, s = make_latent(), make_cond(), torch.tensor([0.3, 0.8])
    with torch.no_grad():
        with real_score(teacher):
            real = teacher.velocity(x, s, c)
        with fake_score(teacher):
            fake = teacher.velocity(x, s, c)
        with weak_real_score(teacher, 0.0):
            w0 = teacher.velocity(x, s, c)
        with weak_real_score(teacher, 1.0):
            w1 = teacher.velocity(x, s, c)
        with weak_real_score(teacher, 0.25):
            w = teacher.velocity(x, s, c)
        with fake_score(teacher):
            fake_after = teacher.velocity(x, s, c)
    assert torch.equal(w0, real) and torch.equal(w1, fake) and torch.equal(fake_after, fake)
    assert (w - real).abs().max() > 0 and (w - fake).abs().max() > 0


def test_backward_simulation_is_independent_of_how_the_batch_is_split():
    """Each rank draws only its rows: two half-batches (ranks 0 and 1) give the full batch's samples."""
    gen = make_wan()
    x = make_latent((4, 16, 2, 4, 4))
    c = make_cond(batch=4)
    sigmas = [1.0, 0.5, 0.25]
    with torch.no_grad():
        with randomness.batch_stream(7, rank=0):
            full, s_full = student_inputs(gen, x, c, sigmas, backward_simulation=True)
        halves = []
        for rank in (0, 1):
            rows = slice(2 * rank, 2 * rank + 2)
            with randomness.batch_stream(7, rank=rank):
                halves.append(student_inputs(gen, x[rows], c.map(lambda t: t[rows]), sigmas, True))
    assert torch.equal(torch.cat([h[1] for h in halves]), s_full)
    torch.testing.assert_close(torch.cat([h[0] for h in halves]), full, rtol=0, atol=1e-6)
    assert set(s_full.tolist()) <= set(sigmas)


def test_expert_pair_routes_by_sigma():
    a, b = make_wan(seed=0), make_wan(seed=1)
    pair = ExpertPair(a, b, 0.5)
    x, c = make_latent(), make_cond()
    with torch.no_grad():
        hi, lo = torch.full((2,), 0.75), torch.full((2,), 0.25)
        assert torch.equal(pair.velocity(x, hi, c), a.velocity(x, hi, c))
        assert torch.equal(pair.velocity(x, lo, c), b.velocity(x, lo, c))
        mixed = torch.tensor([0.75, 0.25])
        v = pair.velocity(x, mixed, c)
        assert torch.equal(v[0], a.velocity(x, mixed, c)[0]) and torch.equal(v[1], b.velocity(x, mixed, c)[1])


def test_run_distill_runs_a_method_and_resumes(tmp_path):
    from test_training import _toy_cfg

    from vpae.recipes import run_distill
    from vpae.sampling import euler_sample, few_step_sample, few_step_sigmas, phase_edges
    base = _toy_cfg()
    for method in ("dcm", "dmd2"):
        cfg = dataclasses.replace(base, method=method, comparison=dataclasses.replace(
            base.comparison, steps=2, batch_size=2, nfe=2, lr=1e-3, disc_lr=1e-3, guidance=2.0, head_dim=16,
            head_queries=2, head_attn_heads=2),
            consistency=dataclasses.replace(base.consistency, num_timesteps=4, semantic_phases=1),
            dmd2=dataclasses.replace(base.dmd2, fake_updates_per_generator=1))
        out = run_distill(cfg, tmp_path / method, progress=False)
        assert out[method]["step"] == 2 and (tmp_path / method / "generator" / "config.json").is_file()
        again = run_distill(cfg, tmp_path / method, progress=False)
        assert again[method]["resumed_from"] == 2
        data, gen = out["data"], out["generator"]
        # DCM samples its expert pair with Euler steps over the phase edges, DMD2 its generator with fresh noise
        assert isinstance(gen, ExpertPair) == (method == "dcm")
        assert out["sampler"] == {"dcm": "euler", "dmd2": "few_step"}[method]
        x, cond = data.encode(data.heldout(2))
        z = torch.randn_like(x)
        for nfe in (1, 4):  # both samplers run on every method's generator
            r = (euler_sample(gen, z, cond, phase_edges(nfe)) if out["sampler"] == "euler"
                 else few_step_sample(gen, z, cond, few_step_sigmas(nfe)))
            assert r.nfe == nfe and torch.isfinite(r.x0).all()
    assert (tmp_path / "dcm" / "detail_expert" / "config.json").is_file()


@pytest.mark.parametrize("method", METHODS)
def test_gradient_checkpointing_gives_the_same_steps(method):
    """Each method holds the state a loss's graph was built in (adapters, frozen weights) through its backward,
    so with gradient checkpointing (the forward run again inside backward) two steps equal the plain ones. The
    fake LoRA is made non-zero so a teacher read with the wrong adapter state would give other features."""
    from vpae import randomness

    def run(checkpointing: bool) -> dict:
        cfg = _cfg(method)
        m = build_method(cfg)
        teacher = make_wan()
        gen = copy_generator(teacher, "full")
        make_teacher_and_fake(teacher, 4, 4, TARGETS)
        nonzero_fake_lora_and_checkpointing(teacher, gen, checkpointing)
        heads = None
        if m.needs_heads:
            torch.manual_seed(1)
            heads = build_head("ca", feature_dim=gen.feature_dim, num_layers=2, text_dim=32, image_dim=24,
                               hidden_dim=16, num_queries=2, num_heads=2)
        nets = Networks(gen, teacher, heads)
        m.add_roles(nets, before_sharding=False)
        (phase,) = m.phases(nets)
        stepper = PhaseStepper(phase)
        for i in range(2):
            with randomness.batch_stream(11 + i):
                stepper.step(i, make_latent(), make_cond())
        return {f"{name}.{k}": v.detach().clone() for name, mod in phase.modules().items()
                for k, v in mod.state_dict().items()}

    plain, ckpt = run(False), run(True)
    assert plain.keys() == ckpt.keys()
    # the same arithmetic run twice (float32 weights of magnitude ~1 after two Adam steps of lr 1e-3)
    bad = [k for k in plain if not torch.allclose(plain[k], ckpt[k], rtol=0, atol=1e-6)]
    assert not bad, bad[:3]


# the sigmas each few-step method trains its student at (DMD2, MD, ADD, LADD, rCM's DMD samples) or the phase edges
# of the phased consistency models (PCM, DCM)
SCHEDULED = ["dmd2", "md", "add", "ladd", "rcm"]


@pytest.mark.parametrize("method", SCHEDULED + ["pcm", "dcm"])
def test_each_method_trains_on_the_originals_schedule(method):
    """At nfe 4 the student trains at 1, 0.75, 0.5, 0.25 (DMD2's and ADD's 999/749/499/249 of 1000): no step at a
    near-identity sigma; the shift and the schedule are config values."""
    cfg = _cfg(method, comparison__nfe=4, consistency__num_timesteps=8, consistency__semantic_phases=2)
    (phase,) = build_method(cfg).phases(_networks(cfg))
    if method in SCHEDULED:
        assert phase.sigmas == [1.0, 0.75, 0.5, 0.25]
    else:
        edges = phase.loss.grid[::phase.loss.per_phase].tolist()  # ascending: every phase edge is a grid point
        assert edges == pytest.approx([0.0, 0.25, 0.5, 0.75, 1.0], abs=1e-12)
    shifted = _cfg(method, comparison__nfe=4, comparison__shift=5.0, consistency__num_timesteps=8,
                   consistency__semantic_phases=2, sampling__few_step_schedule="linspace")
    (phase,) = build_method(shifted).phases(_networks(shifted))
    if method in SCHEDULED:
        assert phase.sigmas == few_step_sigmas(4, 5.0, "linspace")


@pytest.mark.parametrize("method", SCHEDULED)
def test_one_step_training_starts_every_student_input_at_pure_noise(method, monkeypatch):
    """comparison.nfe 1 is a one-step model (DMD2's one-step recipes): every generator call of a step sees sigma 1
    (rCM's consistency loss reads the generator at its own noise levels; its DMD samples are checked here)."""
    import vpae.training.methods.base as base
    cfg = _cfg(method, comparison__nfe=1)
    nets = _networks(cfg)
    stepper = _stepper(cfg, nets)
    assert stepper.phase.sigmas == [1.0]
    seen = []
    real = base.predict_x0

    def spy(backbone, x_t, sigma, cond, guidance=1.0):
        if backbone is nets.generator:
            seen.append(torch.as_tensor(sigma).reshape(-1).clone())
        return real(backbone, x_t, sigma, cond, guidance)
    monkeypatch.setattr(base, "predict_x0", spy)
    step = cfg.rcm.tangent_warmup_steps if method == "rcm" else 0  # rCM: DMD starts after the tangent warm-up
    torch.manual_seed(0)
    stats = stepper.step(step, make_latent(), make_cond())
    assert seen and all(torch.equal(s, torch.ones_like(s)) for s in seen), seen
    assert all(torch.isfinite(torch.tensor(v)) for v in stats.values())


def test_memory_estimate_counts_each_methods_extra_copies():
    """The memory check counts the whole copies a method adds: DMD2's full critic (weights, gradients, Adam m, v)
    over its LoRA critic, APT's trained discriminator backbone and its EMA, exactly."""
    from vpae.config import load_config
    from vpae.recipes import memory_estimate
    from vpae.training.parallel import World

    def est(*overrides):
        cfg = load_config("configs/toy/reproduce.yaml", list(overrides) + ["model.dtype=float32"])
        return memory_estimate(cfg, build_method(cfg), World())
    full, lora = est("method=dmd2", "dmd2.fake_critic=full"), est("method=dmd2", "dmd2.fake_critic=lora")
    n = full["params"]
    assert full["device"] - lora["device"] == 4 * 4 * n
    assert est("method=apt")["device"] - est("method=add")["device"] == 4 * n * (4 + 1)
    assert est("method=pcm")["device"] == est("method=add")["device"]  # the online network is PCM's target
