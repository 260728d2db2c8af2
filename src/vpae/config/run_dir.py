"""The config a run folder records (RUN/config.yaml) and what a resumed run may change: the resume policy.

A run started with one config and resumed with another keeps the changes that only steer training from the
resumed step on (learning rates, step counts, logging, loss weights, ...), records them in
RUN/config_changes.jsonl and says so on stderr; changes that would not fit the checkpoints (model and data,
adapter and head shapes) or that would make another run (the seed, the method) are refused.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from vpae.config.load import nest_data_sections, to_dict
from vpae.config.schema import ConfigError, VPAEConfig

RESUME_FIXED_SECTIONS = ("model.", "data.")
"""Sections a resumed run may not change: the checkpoints hold the model's shapes and the data it saw (this
includes the data sources' own sections, data.toy.*)."""
RESUME_FREE_KEYS = {"data.heldout_size", "data.proxy_videos", "data.toy.caption_bank", "model.gradient_checkpointing"}
"""...except these (evaluation size, a cache path, a memory/speed trade with equal results)."""
RESUME_FIXED_KEYS = {"train.seed", "priming.generator_mode", "priming.lora_rank", "priming.lora_alpha",
                     "priming.lora_targets", "equilibrium.backbone", "equilibrium.head", "equilibrium.layers",
                     "equilibrium.head_dim", "equilibrium.head_queries", "equilibrium.head_attn_heads",
                     "comparison.head", "comparison.layers", "comparison.head_dim", "comparison.head_queries",
                     "comparison.head_attn_heads", "method", "priming.kind", "dmd2.fake_critic", "apt.init",
                     "apt.ema_decay"}
"""Keys that change what the checkpoints hold (adapter and head shapes, a full critic, an EMA), the phases a
method runs (APT's start) or which run this is (the seed)."""


def _flat(d: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict) and k != "wan_config":
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


HEAD_KEYS = ("head", "layers", "head_dim", "head_queries", "head_attn_heads")


def current_layout(recorded: dict) -> dict:
    """A recorded config in the current layout. Earlier layouts: a data source's settings flat in `data`
    (data.bounce, now data.toy.bounce), and the comparison methods' section named `baseline` without heads of
    its own (its methods read equilibrium's head settings, which it therefore takes)."""
    out = dict(recorded)
    if isinstance(out.get("data"), dict):
        out["data"] = nest_data_sections(out["data"])
    if isinstance(out.get("baseline"), dict) and "comparison" not in out:
        heads = {k: v for k, v in (out.get("equilibrium") or {}).items() if k in HEAD_KEYS}
        out["comparison"] = {**heads, **out.pop("baseline")}
    # Runs recorded before the comparison methods followed their originals ran these forms; a key their record
    # lacks means that form, not today's default.
    for section, key, before in EARLIER_FORMS:
        if isinstance(out.get(section), dict) and key not in out[section]:
            out[section] = {**out[section], key: before}
    if isinstance(out.get("consistency"), dict) and "pcm" not in out:
        out["pcm"] = {"target_decay": out["consistency"].get("ema_decay", 0.95), "adv_weight": 0.0}
    return out


EARLIER_FORMS = [("sampling", "few_step_schedule", "linspace"), ("dmd2", "fake_critic", "lora"),
                 ("apt", "init", "teacher"), ("apt", "ema_decay", 0.0), ("consistency", "gan_real", "data"),
                 ("consistency", "temporal_stride", 1)]
"""(section, key, the form a record without the key ran): few-step sigmas, DMD2's critic, APT's start and EMA,
DCM's GAN and temporal stride."""


def resume_changes(recorded: dict, cfg: VPAEConfig) -> tuple[dict, dict]:
    """Differences between a run's recorded config and `cfg`, split into (allowed, refused); each maps a
    dotted key to (recorded value, new value). Keys the recorded file lacks count as their defaults; earlier
    layouts are read as the current one (current_layout). Allowed changes (learning rates, step counts,
    logging, checkpoint cadence, loss weights, ...) take effect from the resumed step; refused ones would not
    fit the checkpoints or would make another run."""
    recorded = current_layout(recorded)
    new, default, old = _flat(to_dict(cfg)), _flat(to_dict(VPAEConfig())), _flat(recorded)
    allowed, refused = {}, {}
    for k, v in new.items():
        before = old.get(k, default.get(k))
        if before == v:
            continue
        fixed = k in RESUME_FIXED_KEYS or (k.startswith(RESUME_FIXED_SECTIONS) and k not in RESUME_FREE_KEYS)
        (refused if fixed else allowed)[k] = (before, v)
    return allowed, refused


class RunConfigRecord:
    """The config a run folder will record (config.yaml, and on a resume the allowed changes in
    config_changes.jsonl), checked but not yet written: a resume writes it only once a checkpoint of the new
    config exists (`vpae.training.loop.train` calls `write` after a save), so a resume that fails on a damaged
    checkpoint leaves the folder as it was."""

    def __init__(self, cfg: VPAEConfig, run_dir: Path, allowed: dict, resuming: bool):
        self.cfg, self.run_dir, self.allowed, self.resuming = cfg, run_dir, allowed, resuming
        self.written = False

    def write(self) -> None:
        if self.written:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if self.allowed:
            with (self.run_dir / "config_changes.jsonl").open("a") as f:
                f.write(json.dumps({"time": time.strftime("%Y-%m-%dT%H:%M:%S"),
                                    "changes": {k: list(v) for k, v in self.allowed.items()}}) + "\n")
        path = self.run_dir / "config.yaml"
        tmp = path.with_name(path.name + f".tmp-{os.getpid()}")
        tmp.write_text(yaml.safe_dump(to_dict(self.cfg), sort_keys=False))
        os.replace(tmp, path)
        self.written = True


def check_run_config(cfg: VPAEConfig, run_dir: str | Path) -> RunConfigRecord:
    """Check cfg against the config recorded in run_dir when the run has checkpoints (a resume): refused
    changes raise ConfigError naming the keys, allowed ones are reported on stderr. Writes nothing."""
    run_dir = Path(run_dir)
    path = run_dir / "config.yaml"
    allowed: dict = {}
    resuming = path.is_file() and any(run_dir.glob("**/checkpoints/step_*"))
    if resuming:
        try:
            recorded = yaml.safe_load(path.read_text()) or {}
        except (yaml.YAMLError, UnicodeDecodeError) as e:
            raise ConfigError(f"{path} (the config this run was started with) is not valid YAML: "
                              f"{type(e).__name__}: {str(e)[:200]}; restore it, or use a new run directory") from None
        if not isinstance(recorded, dict):
            raise ConfigError(f"{path} (the config this run was started with) is not a mapping of sections but a "
                              f"{type(recorded).__name__}; restore it, or use a new run directory")
        allowed, refused = resume_changes(recorded, cfg)
        if refused:
            keys = "; ".join(f"{k}: {a!r} -> {b!r}" for k, a, b in ((k, *v) for k, v in refused.items()))
            raise ConfigError(f"{run_dir} holds checkpoints of a run started with another configuration, and "
                              f"these keys cannot change on resume: {keys}. Use a new run directory (--out), "
                              f"or rerun with the values recorded in {path}")
        if allowed:
            print("note: resuming " + str(run_dir) + " with changed " +
                  ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in allowed.items()), file=sys.stderr)
    return RunConfigRecord(cfg, run_dir, allowed, resuming)


def record_run_config(cfg: VPAEConfig, run_dir: str | Path) -> dict:
    """check_run_config, then write the record at once; returns the allowed changes."""
    record = check_run_config(cfg, run_dir)
    record.write()
    return record.allowed
