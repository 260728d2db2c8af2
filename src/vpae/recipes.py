"""Recipes: config -> data source -> roles -> phase steps -> the training loop -> exported models.
The only module that knows how the pieces fit; the CLI, the demo and the ablation call it."""

from __future__ import annotations

import json
import shutil
import time

from pathlib import Path

import torch

from vpae.backbones.wan import WanBackbone
from vpae.config import ConfigError, VPAEConfig, record_run_config, to_dict
from vpae.data.cache import CacheSource
from vpae.data.source import DataSource
from vpae.discriminator import build_head
from vpae.export import export_backbone
from vpae.models import build_teacher
from vpae.toy.source import ToyData
from vpae.training import roles as R
from vpae.training.checkpoint import CheckpointError, latest_checkpoint, load_checkpoint
from vpae.training.loop import DivergenceCheck, train
from vpae.training.steps import EquilibriumStep, PretrainStep, PrimingStep


DATA_SOURCES = {"toy": ToyData, "cache": CacheSource}
"""data.kind -> the DataSource class built from the config (vpae.data.source)."""


def build_data(cfg: VPAEConfig) -> DataSource:
    return DATA_SOURCES[cfg.data.kind](cfg, cfg.train.device)


# ----------------------------------------------------------------------------------------------
# Teacher pre-training

def _probe_fn(ema: WanBackbone, data: ToyData, n: int):  # toy only: the direction-word probe
    """step -> the EMA teacher's direction-word probe on n held-out videos (does it read the caption yet?)."""
    from vpae.toy.evaluate import direction_sensitivity
    batch = data.heldout(max(1, n))

    def probe(_step: int) -> dict[str, float]:
        r = direction_sensitivity(ema, data, batch, sigmas=(0.97, 0.9, 0.5))
        return {f"direction_ratio@{s:g}": v for s, v in r.items()}
    return probe


def divergence_check(cfg: VPAEConfig) -> DivergenceCheck:
    return DivergenceCheck(cfg.train.max_loss, cfg.train.dead_grad_steps)


def run_pretrain(cfg: VPAEConfig, run_dir: str | Path, export_dir: str | Path | None = None,
                 progress: bool = True) -> dict:
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    record_run_config(cfg, run_dir)  # refuses config changes a resume cannot honour
    data = build_data(cfg)
    model = build_teacher(cfg)
    model.requires_grad_(True)
    ema = R.make_ema(model)
    step = PretrainStep(model, ema, cfg.pretrain)
    result = train("pretrain", step, data.batch_fn(cfg.pretrain.batch_size, cfg.train.seed, num_workers=cfg.train.num_workers),
                   steps=cfg.pretrain.steps, run_dir=run_dir, seed=cfg.train.seed,
                   checkpoint_every=cfg.train.checkpoint_every, keep=cfg.train.keep_checkpoints,
                   log_every=cfg.train.log_every, progress=progress, max_seconds=cfg.pretrain.max_seconds,
                   divergence=divergence_check(cfg),
                   eval_fn=_probe_fn(ema, data, cfg.train.eval_videos) if isinstance(data, ToyData) else None, eval_every=cfg.train.eval_every)
    if export_dir is not None:
        # the raw (non-EMA) weights stay in the run folder, so exporting into the package ships the EMA only
        export_backbone(model, run_dir / "export_raw", {"role": "toy_teacher_raw", "data": to_dict(cfg.data)})
        export_backbone(ema, export_dir, {"role": "toy_teacher", "data": to_dict(cfg.data),
                                          "pretrain": to_dict(cfg.pretrain), "seconds": result["seconds"]})
        shutil.copyfile(run_dir / "log.jsonl", Path(export_dir) / "train_log.jsonl")
    return result


# ----------------------------------------------------------------------------------------------
# Distillation: phase I then phase II

def build_roles(cfg: VPAEConfig, data: DataSource) -> R.Roles:
    """Teacher (+ its zero-initialised fake adapter), generator, EMA, discriminator heads and every optimizer."""
    teacher = build_teacher(cfg)
    p, e = cfg.priming, cfg.equilibrium
    # LoRA A matrices start random: seed them, so two runs of one config (and a resumed one) build the same roles
    torch.manual_seed(cfg.train.seed)
    generator = R.copy_generator(teacher, p.generator_mode, p.lora_rank, p.lora_alpha, p.lora_targets)
    R.make_teacher_and_fake(teacher, p.lora_rank, p.lora_alpha, p.lora_targets)
    from vpae.backbones.base import resolve_layers
    torch.manual_seed(cfg.train.seed + 1)
    heads = build_head(e.head, feature_dim=generator.feature_dim, num_layers=len(resolve_layers(e.layers, generator.num_layers)),
                       text_dim=data.sizes.text_dim, image_dim=data.sizes.image_dim,
                       hidden_dim=e.head_dim, num_queries=e.head_queries, num_heads=e.head_attn_heads).to(cfg.train.device)
    return R.make_roles(generator, teacher, heads, p, e, trained_backbone=e.backbone == "trained")


def phase_done(run_dir: Path, steps: int) -> bool:
    ckpt = latest_checkpoint(run_dir)
    if ckpt is None:
        return steps == 0
    return json.loads((ckpt / "meta.json").read_text())["step"] >= steps


def run_distill(cfg: VPAEConfig, run_dir: str | Path, phase: str = "all", progress: bool = True,
                eval_fn_factory=None) -> dict:
    """Run phase I ('priming'), phase II ('equilibrium') or both ('all') in run_dir, resuming from the
    latest checkpoint of each, across the phase boundary. Exports the final generator (and its EMA) as
    diffusers folders in run_dir. eval_fn_factory(generator) -> (step -> metrics) adds curves."""
    if phase not in ("priming", "equilibrium", "all"):
        raise ConfigError(f"phase must be priming, equilibrium or all, got {phase!r}")
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    record_run_config(cfg, run_dir)  # refuses config changes a resume cannot honour
    data = build_data(cfg)
    roles = build_roles(cfg, data)
    out = {"timings": {}}
    t0 = time.perf_counter()
    tc = cfg.train
    common = dict(seed=tc.seed, checkpoint_every=tc.checkpoint_every, keep=tc.keep_checkpoints,
                  log_every=tc.log_every, progress=progress, eval_every=tc.eval_every)

    # Phase I: stability priming.
    priming = PrimingStep(roles, cfg.priming)
    pdir = run_dir / "priming"
    if phase in ("priming", "all"):
        evf = eval_fn_factory(roles.generator) if eval_fn_factory else None
        r = train("priming", priming, data.batch_fn(cfg.priming.batch_size, tc.seed + 1), steps=cfg.priming.steps,
                  run_dir=pdir, eval_fn=evf, divergence=divergence_check(cfg), **common)
        out["timings"]["priming"] = r["seconds"]
        out["priming"] = r
    elif cfg.priming.steps > 0:
        # phase II alone starts from the primed generator of this run directory
        ckpt = latest_checkpoint(pdir)
        if ckpt is None:
            raise CheckpointError(f"phase II needs phase I's checkpoint in {pdir}; run --phase priming first "
                                    f"or set priming.steps=0 to start phase II from the teacher")
        load_checkpoint(ckpt, {"generator": priming.modules["generator"]}, {})

    # Phase II: unified adversarial equilibrium.
    if phase in ("equilibrium", "all"):
        if not phase_done(pdir, cfg.priming.steps) and phase == "all":
            raise CheckpointError(f"phase I did not finish in {pdir}; rerun the same command to resume it")
        eq = EquilibriumStep(roles, cfg.equilibrium)  # EMA and phase II optimizers from the primed generator
        evf = eval_fn_factory(roles.generator) if eval_fn_factory else None
        r = train("equilibrium", eq, data.batch_fn(cfg.equilibrium.batch_size, tc.seed + 2),
                  steps=cfg.equilibrium.steps, run_dir=run_dir / "equilibrium", eval_fn=evf,
                  divergence=divergence_check(cfg), **common)
        out["timings"]["equilibrium"] = r["seconds"]
        out["equilibrium"] = r
        out["ema"] = roles.ema
    lora = run_dir / "generator_lora" if cfg.priming.generator_mode == "lora" else None
    export_backbone(roles.generator, run_dir / "generator", {"role": "generator", "phase": phase, "data": to_dict(cfg.data)},
                    lora_dir=lora)
    out["generator"] = roles.generator
    out["teacher"] = roles.teacher
    out["data"] = data
    out["seconds"] = time.perf_counter() - t0
    return out
