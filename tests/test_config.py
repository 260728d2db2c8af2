"""The config package: strict loading, per-section validation, paper defaults, the data sources' own sections
(data.toy), the comparison methods' section, save/load round trips and the resume policy of a run folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from vpae.config import ConfigError, VPAEConfig, load_config, record_run_config, resume_changes, save_config, to_dict

REPO = Path(__file__).resolve().parents[1]


def test_unknown_keys_rejected_with_name(tmp_path):
    with pytest.raises(ConfigError, match="learning_rate"):
        load_config(overrides=["priming.learning_rate=1e-5"])
    with pytest.raises(ConfigError, match="primming"):
        load_config(overrides=["primming.lr=1e-5"])
    f = tmp_path / "c.yaml"
    f.write_text("equilibrium:\n  sigma_x: 0.1\n")
    with pytest.raises(ConfigError, match="sigma_x.*equilibrium"):
        load_config(f)
    with pytest.raises(ConfigError, match=r"unknown config key\(s\) \['colour'\] in data.toy"):
        load_config(overrides=["data.toy.colour=red"])


def test_a_setting_of_a_data_source_section_given_flat_says_where_it_lives():
    with pytest.raises(ConfigError, match=r"\['bounce'\] in data.*did you mean data\.toy\.bounce\?"):
        load_config(overrides=["data.bounce=true"])


@pytest.mark.parametrize("override, where", [
    ("priming.steps=abc", "priming.steps"),
    ("priming.steps=1.5", "priming.steps"),
    ("priming.steps=true", "priming.steps"),
    ("priming.lr=fast", "priming.lr"),
    ("priming.lr=true", "priming.lr"),
    ("priming.lr=null", "priming.lr"),
    ("model.teacher=5", "model.teacher"),
    ("priming.betas=0.9", "priming.betas"),
    ("equilibrium=3", "equilibrium"),
    ("model.wan_config=[1, 2]", "model.wan_config"),
    ("data.toy.bounce=3", "data.toy.bounce"),
    ("data.toy.small_radius=big", "data.toy.small_radius"),
    ("data.toy=3", "data.toy"),
])
def test_type_errors_name_the_key(override, where):
    with pytest.raises(ConfigError, match=where.replace(".", r"\.")):
        load_config(overrides=[override])


def test_validation_errors():
    with pytest.raises(ConfigError, match="generator_band"):
        load_config(overrides=["priming.generator_band=[0.9, 1.1]"])
    with pytest.raises(ConfigError, match="equilibrium.head"):
        load_config(overrides=["equilibrium.head=mlp"])
    with pytest.raises(ConfigError, match="4n\\+1"):
        load_config(overrides=["data.frames=8"])
    with pytest.raises(ConfigError, match="disc_blur"):
        load_config(overrides=["equilibrium.disc_blur=-1"])
    with pytest.raises(ConfigError, match="diversity_weight"):
        load_config(overrides=["equilibrium.diversity_weight=-0.1"])
    with pytest.raises(ConfigError, match=r"data\.toy\.sizes"):
        load_config(overrides=["data.toy.sizes=[medium]"])
    with pytest.raises(ConfigError, match=r"data\.toy\.caption_sign"):
        load_config(overrides=["data.toy.caption_sign=1.5"])
    with pytest.raises(ConfigError, match=r"data\.kind = 'webvid'; choose one of \['cache', 'toy'\]"):
        load_config(overrides=["data.kind=webvid"])
    with pytest.raises(ConfigError, match="data.kind cache needs data.cache_dir"):
        load_config(overrides=["data.kind=cache"])
    with pytest.raises(ConfigError, match=r"comparison\.head = 'mlp'"):
        load_config(overrides=["comparison.head=mlp"])
    with pytest.raises(ConfigError, match=r"comparison\.layers"):
        load_config(overrides=["comparison.layers=[0.5, 2.0]"])
    with pytest.raises(ConfigError, match=r"consistency\.num_timesteps \(48\) must be a multiple of comparison\.nfe \(5\)"):
        load_config(overrides=["comparison.nfe=5", "method=pcm"])
    assert load_config(overrides=["comparison.nfe=1", "method=dmd2"]).comparison.nfe == 1  # a one-step DMD2 model
    with pytest.raises(ConfigError, match="method = 'gan'"):
        load_config(overrides=["method=gan"])


def test_sections_validate_themselves_when_built_in_code():
    from vpae.config import ComparisonConfig, DataConfig, EquilibriumConfig
    with pytest.raises(ConfigError, match="equilibrium.layers"):
        EquilibriumConfig(layers=(0.0,))
    with pytest.raises(ConfigError, match="comparison.nfe"):
        ComparisonConfig(nfe=0)
    from vpae.config import build
    from vpae.toy.world import ToyDataConfig
    with pytest.raises(ConfigError, match=r"data\.toy\.speeds"):
        ToyDataConfig(speeds=("medium",))
    with pytest.raises(ConfigError, match=r"data\.toy must be a ToyDataConfig"):
        DataConfig(toy={"bounce": True})
    with pytest.raises(ConfigError, match=r"\['speed'\] in data.toy"):
        build(DataConfig, {"toy": {"speed": ["fast"]}}, "data")
    assert build(DataConfig, {"toy": {"bounce": True}}, "data").toy.bounce is True


def test_the_toy_section_is_the_toy_packages_dataclass_found_through_the_registry():
    from vpae import registry
    from vpae.toy.world import ToyDataConfig
    cfg = load_config(REPO / "configs/toy/demo.yaml")
    assert registry.data_source("toy").config_class is ToyDataConfig
    assert isinstance(cfg.data.toy, ToyDataConfig)
    assert cfg.data.toy.bounce is True and cfg.data.toy.speeds == ("fast",) and cfg.data.toy.image_patch == 8
    assert VPAEConfig().data.toy == ToyDataConfig()  # defaults when the YAML has no data.toy


def test_data_sizes_narrow_the_toy_world():
    from vpae.toy.world import ToyWorld, world_config
    cfg = load_config(overrides=["data.toy.sizes=[large]"])
    world = ToyWorld(world_config(cfg.data))
    assert {p.size for p in world.heldout(32).params} == {"large"}
    assert {p.size for p in ToyWorld(world_config(load_config().data)).heldout(32).params} == {"small", "large"}


def test_data_radii_reach_the_toy_world_and_are_validated():
    from vpae.toy.world import ToyWorld, world_config
    cfg = load_config(overrides=["data.height=16", "data.width=16", "data.toy.bounce=true",
                                 "data.toy.small_radius=0.15625", "data.toy.large_radius=0.21875"])
    world = ToyWorld(world_config(cfg.data))
    assert {p.size: p.radius for p in world.heldout(32).params} == {"small": 2.5, "large": 3.5}
    with pytest.raises(ConfigError, match="small_radius"):
        load_config(overrides=["data.toy.small_radius=0.3", "data.toy.large_radius=0.2"])
    # the world's own check of the whole data section: a large fast object must fit a 16 px frame unless it bounces
    with pytest.raises(ConfigError, match=r"data: a large object moving fast needs"):
        load_config(overrides=["data.height=16", "data.width=16", "data.toy.large_radius=0.3"])


def test_yaml_exponent_without_dot_is_a_float(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("priming:\n  lr: 7e-4\n  fake_lr: 1e-5\nequilibrium:\n  sigma_t: 1E-1\n")
    cfg = load_config(f, overrides=["equilibrium.lr=3e-6", "pretrain.lr=2"])
    assert cfg.priming.lr == 7e-4 and isinstance(cfg.priming.lr, float)
    assert cfg.priming.fake_lr == 1e-5 and cfg.equilibrium.sigma_t == 0.1
    assert cfg.equilibrium.lr == 3e-6 and isinstance(cfg.equilibrium.lr, float)
    assert cfg.pretrain.lr == 2.0 and isinstance(cfg.pretrain.lr, float)


def test_paper_defaults():
    c = VPAEConfig()
    p, e = c.priming, c.equilibrium
    assert (p.lr, tuple(p.betas), p.steps, p.batch_size) == (1e-6, (0.9, 0.999), 500, 32)
    assert tuple(p.generator_band) == (0.9, 1.0)
    assert (e.lr, tuple(e.betas), e.steps, e.batch_size) == (2e-6, (0.5, 0.999), 1000, 32)
    assert (e.ema_decay, e.sds_lambda, e.sigma_s, e.sigma_t) == (0.995, 10.0, 0.01, 0.1)
    assert e.backbone == "unified" and e.head == "semantic" and e.loss == "hinge"
    assert tuple(e.disc_band) == (0.9, 1.0)


def test_the_comparison_methods_have_their_own_heads_with_the_equilibrium_defaults():
    """Sized like V-PAE's heads; the kind is each method's own (comparison.head: original)."""
    c = VPAEConfig()
    assert c.comparison.head == "original"
    keys = ("layers", "head_dim", "head_queries", "head_attn_heads")
    assert {k: getattr(c.comparison, k) for k in keys} == {k: getattr(c.equilibrium, k) for k in keys}
    # every shipped config that sizes V-PAE's heads gives the comparison methods the same ones
    for path in sorted(REPO.glob("configs/**/*.yaml")):
        raw = yaml.safe_load(path.read_text())
        if any(k in (raw.get("equilibrium") or {}) for k in keys):
            cfg = load_config(path)
            assert {k: getattr(cfg.comparison, k) for k in keys} == {k: getattr(cfg.equilibrium, k) for k in keys}, path


def test_save_and_reload_config_roundtrip(tmp_path):
    cfg = load_config(REPO / "configs/toy/teacher.yaml", overrides=["priming.lr=7e-4", "data.toy.caption_sign=0.25"])
    save_config(cfg, tmp_path / "c.yaml")
    assert load_config(tmp_path / "c.yaml") == cfg
    saved = yaml.safe_load((tmp_path / "c.yaml").read_text())
    assert saved["data"]["toy"]["caption_sign"] == 0.25 and "caption_sign" not in saved["data"]  # nested, as the YAMLs
    assert to_dict(cfg.data)["toy"]["speeds"] == ["fast"]


@pytest.mark.parametrize("path", sorted(str(p) for p in Path(__file__).resolve().parents[1].glob("configs/**/*.yaml")))
def test_every_shipped_config_loads_strictly(path):
    from vpae.config import nest_data_sections
    from vpae.models import resolve_model_path
    cfg = load_config(path)  # unknown keys or wrong types raise
    if cfg.model.teacher in ("builtin:toy", "toy"):  # the shipped teacher, trained on the world the config asks for
        meta = json.loads((resolve_model_path(cfg.model.teacher) / "vpae.json").read_text())
        trained = nest_data_sections(meta["data"])
        for key in ("frames", "height", "width", "text_tokens"):
            assert getattr(cfg.data, key) == trained[key], key
        assert to_dict(cfg.data.toy) == {**to_dict(cfg.data.toy), **trained["toy"]}  # every recorded toy setting


@pytest.mark.parametrize("override", ["priming.batch_size=0", "equilibrium.batch_size=-1", "pretrain.batch_size=0",
                                      "train.checkpoint_every=0", "train.log_every=0", "train.keep_checkpoints=0",
                                      "pretrain.lr_decay_steps=-1", "data.toy.fast_travel=0.1",
                                      "comparison.batch_size=0", "data.heldout_size=0"])
def test_sizes_and_intervals_below_one_are_config_errors(override):
    with pytest.raises(ConfigError, match=override.split("=")[0].split(".")[-1]):
        load_config("configs/toy/demo.yaml", [override])


def test_resume_refuses_incompatible_config_changes_and_records_compatible_ones(tmp_path):
    base = load_config(None, ["priming.lora_rank=4", "priming.lr=1e-6"])
    record_run_config(base, tmp_path)
    (tmp_path / "priming" / "checkpoints" / "step_0000001").mkdir(parents=True)  # the run has a checkpoint
    recorded = (tmp_path / "config.yaml").read_text()
    with pytest.raises(ConfigError, match=r"cannot change on resume: data.frames: 9 -> 5; priming.lora_rank: 4 -> 8"):
        record_run_config(load_config(None, ["priming.lora_rank=8", "data.frames=5", "priming.lr=1e-6"]), tmp_path)
    assert (tmp_path / "config.yaml").read_text() == recorded  # the rejected config is not written
    changes = record_run_config(load_config(None, ["priming.lora_rank=4", "priming.lr=2e-6", "priming.steps=900"]), tmp_path)
    assert changes == {"priming.lr": (1e-6, 2e-6), "priming.steps": (500, 900)}
    assert load_config(tmp_path / "config.yaml").priming.lr == 2e-6  # recorded truthfully
    log = [json.loads(line) for line in (tmp_path / "config_changes.jsonl").read_text().splitlines()]
    assert log[-1]["changes"] == {"priming.lr": [1e-6, 2e-6], "priming.steps": [500, 900]}
    # without checkpoints there is nothing to resume: any config may start the run
    fresh = tmp_path / "fresh"
    record_run_config(base, fresh)
    record_run_config(load_config(None, ["priming.lora_rank=8"]), fresh)
    assert load_config(fresh / "config.yaml").priming.lora_rank == 8


def test_resume_policy_of_the_data_sources_sections_and_the_comparison_heads():
    recorded = to_dict(load_config(REPO / "configs/toy/demo.yaml"))
    demo = REPO / "configs/toy/demo.yaml"
    allowed, refused = resume_changes(recorded, load_config(demo, ["data.toy.caption_bank=other.safetensors"]))
    assert allowed == {"data.toy.caption_bank": (".cache/toy_captions.safetensors", "other.safetensors")} and not refused
    allowed, refused = resume_changes(recorded, load_config(demo, ["data.toy.caption_sign=1.0", "comparison.head_dim=32",
                                                                   "comparison.lr=1e-3"]))
    assert refused == {"data.toy.caption_sign": (0.5, 1.0), "comparison.head_dim": (64, 32)}
    assert allowed == {"comparison.lr": (2e-6, 1e-3)}


def test_resume_reads_run_folders_recorded_in_the_earlier_layout():
    """A data source's settings flat in `data`, and the comparison methods' section named `baseline` (whose
    methods read equilibrium's head settings): read as the current layout, so an unchanged config resumes; the
    head kind those runs used (equilibrium's, semantic) is reported against today's default (each method's own)."""
    cfg = load_config(REPO / "configs/toy/demo.yaml")
    current = to_dict(cfg)
    old = json.loads(json.dumps(current))
    old["data"].update(old["data"].pop("toy"))
    old["baseline"] = {k: v for k, v in old.pop("comparison").items()
                       if k not in ("head", "layers", "head_dim", "head_queries", "head_attn_heads")}
    head = {"comparison.head": ("semantic", "original")}
    assert resume_changes(old, cfg) == ({}, head)
    old["data"]["caption_sign"] = 1.0
    old["baseline"]["steps"] = 10
    assert resume_changes(old, cfg) == ({"comparison.steps": (10, cfg.comparison.steps)},
                                        {"data.toy.caption_sign": (1.0, 0.5), **head})


def test_nest_data_sections_reads_both_layouts():
    from vpae.config import nest_data_sections
    flat = {"kind": "toy", "frames": 5, "image_patch": 4, "bounce": True}
    assert nest_data_sections(flat) == {"kind": "toy", "frames": 5, "toy": {"image_patch": 4, "bounce": True}}
    nested = {"kind": "toy", "frames": 5, "toy": {"image_patch": 4}}
    assert nest_data_sections(nested) == nested


@pytest.mark.parametrize("override", ["priming.lr=.nan", "equilibrium.betas=[0.0, .inf]", "train.max_loss=-.inf"])
def test_non_finite_numbers_are_refused(override):
    with pytest.raises(ConfigError, match="must be finite"):
        load_config(overrides=[override])


@pytest.mark.parametrize("content", [b"\xff\xfe\x00binary", b"- a\n- list\n"])
def test_a_damaged_recorded_config_is_one_error_on_resume(tmp_path, content):
    record_run_config(load_config(None, []), tmp_path)
    (tmp_path / "priming" / "checkpoints" / "step_0000001").mkdir(parents=True)  # a run with a checkpoint
    (tmp_path / "config.yaml").write_bytes(content)
    with pytest.raises(ConfigError, match="the config this run was started with"):
        record_run_config(load_config(None, []), tmp_path)
    assert (tmp_path / "config.yaml").read_bytes() == content  # nothing was rewritten


def test_a_missing_eval_folder_is_one_error_line(tmp_path):
    from typer.testing import CliRunner

    from vpae.cli import app
    r = CliRunner().invoke(app, ["eval", str(tmp_path / "nope")])
    assert r.exit_code == 2 and "None" not in r.output and "not found" in r.output


def test_runs_recorded_before_the_originals_forms_resume_as_what_they_ran():
    """A record without the keys that now default to the originals' forms ran the earlier forms (LoRA critic,
    linspace sigmas, ...): resuming it with today's defaults names those changes instead of silently mixing."""
    cfg = load_config(REPO / "configs/toy/demo.yaml")
    old = json.loads(json.dumps(to_dict(cfg)))
    for section, key in (("dmd2", "fake_critic"), ("sampling", "few_step_schedule"), ("apt", "init")):
        del old[section][key]
    del old["pcm"]
    allowed, refused = resume_changes(old, cfg)
    changes = {**allowed, **refused}
    assert changes["dmd2.fake_critic"] == ("lora", "full")
    assert changes["sampling.few_step_schedule"] == ("linspace", "trailing")
    assert changes["apt.init"] == ("teacher", "cd")
    assert changes["pcm.adv_weight"] == (0.0, 0.1)
    assert resume_changes(json.loads(json.dumps(to_dict(cfg))), cfg) == ({}, {})
