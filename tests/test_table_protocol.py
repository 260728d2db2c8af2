"""The comparison protocol of `vpae ablate --table` (docs/COMPARISON_METHODS.md): the few-step schedules of the
originals, the paper's NFE blocks, equal tuning chosen on a validation split, and the counted training costs."""

from __future__ import annotations

import pytest
import torch

from vpae.config import load_config
from vpae.sampling import few_step_sigmas, phase_edges
from vpae.toy.ablate import (
    PAPER_BLOCKS,
    SHOWN,
    TABLE_CLAIMS,
    TABLE_ROWS,
    TUNING_SCALES,
    CostCounter,
    judged_nfes,
    rank_score,
    trial_overrides,
)


def test_trailing_schedule_is_the_originals():
    # DMD2 / ADD: timesteps 999, 749, 499, 249 of 1000; FastVideo [1000, 750, 500, 250]: every step denoises
    assert few_step_sigmas(4) == [1.0, 0.75, 0.5, 0.25]
    assert few_step_sigmas(2) == [1.0, 0.5]
    # FastGen's Wan DMD2 schedule is the trailing one at shift 5: [0.999, 0.937, 0.833, 0.624] (to 3 digits)
    assert few_step_sigmas(4, 5.0) == pytest.approx([1.0, 0.9375, 0.8333, 0.625], abs=1e-3)
    # one step is sigma 1 whatever the schedule and shift
    for schedule in ("trailing", "linspace"):
        assert few_step_sigmas(1, 3.0, schedule) == [1.0]
    # linspace: diffusers' scheduler, whose last of 4 steps sits at 0.001 (a near-identity step)
    assert few_step_sigmas(4, 1.0, "linspace")[-1] == pytest.approx(1e-3, abs=1e-6)
    assert phase_edges(4) == [1.0, 0.75, 0.5, 0.25, 0.0]
    with pytest.raises(ValueError):
        few_step_sigmas(4, 1.0, "cosine")


def test_configs_choose_the_schedule():
    cfg = load_config("configs/toy/reproduce.yaml")
    assert cfg.sampling.few_step_schedule == "trailing"
    from vpae.config import ConfigError
    with pytest.raises(ConfigError, match="few_step_schedule"):
        load_config("configs/toy/reproduce.yaml", ["sampling.few_step_schedule=cosine"])


def test_table_one_judges_each_method_at_the_nfe_the_paper_reports_it():
    """The paper's Table 1: a 4-NFE block (DMD2, MD, LCM, PCM, DCM, ADD, V-PAE) and a 1-NFE block (DMD2, MD, LCM,
    ADD, APT, V-PAE); LADD and rCM are shown, never judged."""
    assert set(PAPER_BLOCKS[4]) == {"DMD2", "MD", "LCM", "PCM", "DCM", "ADD"}
    assert set(PAPER_BLOCKS[1]) == {"DMD2", "MD", "LCM", "ADD", "APT"}
    claims = TABLE_CLAIMS[1]
    assert {(c[2], c[4]) for c in claims} == {(r, n) for n, b in PAPER_BLOCKS.items() for r in b.values()}
    assert all(c[1] == "V-PAE" for c in claims)
    assert not any(c[2] in SHOWN for c in claims)
    # DMD2's 1-NFE row is a model trained for one step
    assert "comparison.nfe=1" in TABLE_ROWS[1]["DMD2 (1-step)"] and PAPER_BLOCKS[1]["DMD2"] == "DMD2 (1-step)"
    assert judged_nfes(1, "PCM") == (4,) and judged_nfes(1, "APT") == (1,) and judged_nfes(1, "DMD2 (1-step)") == (1,)
    assert judged_nfes(1, "LCM") == (1, 4) and judged_nfes(1, "LADD") == (1, 4)
    for row in TABLE_ROWS[1]:
        assert row == "Teacher (Euler)" or judged_nfes(1, row), row


def test_every_trained_row_gets_the_same_number_of_trials():
    cfg = load_config("configs/toy/reproduce.yaml")
    trained = [r for r, ov in TABLE_ROWS[1].items() if "__teacher__" not in ov]
    for row in trained:
        trials = trial_overrides(row, cfg)
        assert len(trials) == len(TUNING_SCALES) and trials[0] == [], row
        assert len({" ".join(t) for t in trials}) == len(trials), row  # distinct settings
        for ov in trials:  # every trial is a valid config
            load_config("configs/toy/reproduce.yaml", ov)
    assert trial_overrides("V-PAE", cfg)[2] == [f"equilibrium.lr={cfg.equilibrium.lr * 2.0!r}"]
    assert trial_overrides("DMD2", cfg)[1] == ["comparison.guidance=1.0"]


def test_rank_score_is_scale_free_and_lower_is_better_for_errors():
    trials = [{"a": 0.9, "b_error": 0.3}, {"a": 0.8, "b_error": 0.1}, {"a": 0.9, "b_error": 0.2}]
    # a: trials 0 and 2 tie for first (rank 1.5 each), trial 1 third; b_error: 1 best, 2 second, 0 third
    assert rank_score(trials, ["a", "b_error"]) == [pytest.approx((1.5 + 3) / 2), pytest.approx((3 + 1) / 2),
                                                    pytest.approx((1.5 + 2) / 2)]
    scaled = [{"a": 100 * t["a"], "b_error": t["b_error"]} for t in trials]
    assert rank_score(scaled, ["a", "b_error"]) == rank_score(trials, ["a", "b_error"])


def test_validation_split_is_its_own_conditions():
    from vpae.recipes import build_data
    data = build_data(load_config("configs/toy/reproduce.yaml"))
    val, test = data.validation(16), data.heldout(16)
    assert val.captions != test.captions
    assert torch.equal(val.video, data.validation(16).video)  # fixed: every method is chosen on the same videos
    # the same for every training seed (the held-out test split follows train.seed)
    other = build_data(load_config("configs/toy/reproduce.yaml", ["train.seed=1"]))
    assert torch.equal(other.validation(4).video, val.video[:4])


def test_cost_counter_counts_updates_and_backbone_evaluations():
    from conftest import make_cond, make_latent, make_wan

    from vpae.training.loop import Optimizers
    from vpae.training.methods.base import OptimizerSpec, Update
    net, other = make_wan(), make_wan()
    x, c = make_latent(), make_cond()
    opts = Optimizers({"g": OptimizerSpec(list(net.parameters()), 1e-3, (0.9, 0.999), 0.0)})
    with CostCounter() as counter:
        for step in range(3):
            loss = net.velocity(x, torch.full((x.shape[0],), 0.5), c).square().mean()
            with torch.no_grad():
                other.velocity(x, torch.full((x.shape[0],), 0.5), c)
                other.features(x, torch.full((x.shape[0],), 0.5), c, (1.0,))
            opts.apply(Update("g", loss), step)
    cols = counter.columns(teacher=other, generator=net)
    assert cols == {"cost/updates_g": 3.0, "cost/teacher_evals": 6.0, "cost/generator_evals": 3.0,
                    "cost/other_evals": 0.0}
    # the patches are gone after the context
    net.velocity(x, torch.full((x.shape[0],), 0.5), c)
    assert counter.calls[id(net)] == 3


def test_a_diverged_or_incomplete_trial_ranks_last():
    trials = [{"a": 0.5, "b_error": 0.2}, {"a": float("nan"), "b_error": 0.1}, {"diverged": "loss exploded"}]
    scores = rank_score(trials, ["a", "b_error"])
    assert scores[0] < scores[1] < scores[2] or (scores[0] < scores[2] and scores[1] < scores[2])
    assert min(range(3), key=scores.__getitem__) == 0


def test_an_unfinished_table_run_restarts_from_scratch_but_keeps_its_shared_phase_one(tmp_path):
    from vpae.toy.ablate import _restart_unfinished
    run = tmp_path / "row"
    (run / "priming" / "checkpoints").mkdir(parents=True)
    (run / "dmd2" / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text("method: dmd2\n")
    _restart_unfinished(run, keep="priming")
    assert [p.name for p in run.iterdir()] == ["priming"]
    _restart_unfinished(tmp_path / "missing")  # nothing there: nothing to do
