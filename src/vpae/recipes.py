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
from vpae.training import parallel
from vpae.training import roles as R
from vpae.training.checkpoint import CheckpointError, checkpoint_tensors, latest_checkpoint, load_checkpoint
from vpae.training.loop import DivergenceCheck, train
from vpae.training.steps import EquilibriumStep, PretrainStep, PrimingStep
from vpae.training.methods import first_phase_step


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


def start_run(cfg: VPAEConfig, run_dir: Path) -> parallel.World:
    """This process's World (torchrun: the process group is initialised here) and the run directory with its
    recorded config; rank 0 writes, and a refused config stops every rank."""
    world = parallel.init_world(cfg.train.device, cfg.parallel.backend)
    error = None
    if world.main:
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
            record_run_config(cfg, run_dir)  # refuses config changes a resume cannot honour
        except ConfigError as e:
            error = str(e)
    error = world.first(error)
    if error:
        raise ConfigError(error)
    if world.distributed:
        cfg.train.device = world.device  # cuda:<local rank>
    return world


def divergence_check(cfg: VPAEConfig) -> DivergenceCheck:
    return DivergenceCheck(cfg.train.max_loss, cfg.train.dead_grad_steps)


def run_pretrain(cfg: VPAEConfig, run_dir: str | Path, export_dir: str | Path | None = None,
                 progress: bool = True) -> dict:
    run_dir = Path(run_dir)
    world = start_run(cfg, run_dir)
    data = build_data(cfg)

    def build():
        model = build_teacher(cfg, parallel.build_device(world, cfg.train.device)).requires_grad_(True)
        ema = R.make_ema(model)
        if world.distributed:
            for m in (model, ema):
                parallel.shard_backbone(m, cfg.parallel)
        return model, ema
    model, ema = parallel.in_turns(world, build)
    step = PretrainStep(model, ema, cfg.pretrain)  # its optimizer over the (sharded) parameters
    result = train("pretrain", step, data.batch_fn(cfg.pretrain.batch_size, cfg.train.seed, world.rank, world.size,
                                                   num_workers=cfg.train.num_workers),
                   steps=cfg.pretrain.steps, run_dir=run_dir, seed=cfg.train.seed,
                   checkpoint_every=cfg.train.checkpoint_every, keep=cfg.train.keep_checkpoints,
                   log_every=cfg.train.log_every, progress=progress, max_seconds=cfg.pretrain.max_seconds,
                   divergence=divergence_check(cfg),
                   eval_fn=_probe_fn(ema, data, cfg.train.eval_videos) if isinstance(data, ToyData) else None,
                   eval_every=cfg.train.eval_every, world=world)
    result["world"] = world
    if world.distributed:
        # rank 0 gathers unsharded copies in CPU memory for the export (the GPUs keep only their shards)
        model, ema = (consolidated(cfg, m, lambda: build_teacher(cfg, "cpu"), world) for m in (model, ema))
        if not world.main:
            return result
    if export_dir is not None:
        # the raw (non-EMA) weights stay in the run folder, so exporting into the package ships the EMA only
        export_backbone(model, run_dir / "export_raw", {"role": "toy_teacher_raw", "data": to_dict(cfg.data)})
        export_backbone(ema, export_dir, {"role": "toy_teacher", "data": to_dict(cfg.data),
                                          "pretrain": to_dict(cfg.pretrain), "seconds": result["train_seconds"]})
        shutil.copyfile(run_dir / "log.jsonl", Path(export_dir) / "train_log.jsonl")
    return result


# ----------------------------------------------------------------------------------------------
# Distillation: phase I then phase II

def build_roles(cfg: VPAEConfig, data: DataSource, world: parallel.World | None = None) -> R.Roles:
    """Teacher (+ its zero-initialised fake adapter), generator, EMA, discriminator heads and every optimizer;
    under torchrun every role sharded (training.parallel.shard_roles), built in CPU memory one local rank at a
    time and moved to the device shard by shard."""
    world = world or parallel.World()
    return parallel.in_turns(world, lambda: _build_roles(cfg, data, world))


def _build_roles(cfg: VPAEConfig, data: DataSource, world: parallel.World) -> R.Roles:
    device = parallel.build_device(world, cfg.train.device)
    teacher = build_teacher(cfg, device)
    p, e = cfg.priming, cfg.equilibrium
    generator = _generator_of(teacher, cfg)
    R.make_teacher_and_fake(teacher, p.lora_rank, p.lora_alpha, p.lora_targets)
    from vpae.backbones.base import resolve_layers
    torch.manual_seed(cfg.train.seed + 1)
    heads = build_head(e.head, feature_dim=generator.feature_dim, num_layers=len(resolve_layers(e.layers, generator.num_layers)),
                       text_dim=data.sizes.text_dim, image_dim=data.sizes.image_dim,
                       hidden_dim=e.head_dim, num_queries=e.head_queries, num_heads=e.head_attn_heads).to(device)
    roles = R.make_roles(generator, teacher, heads, p, e, trained_backbone=e.backbone == "trained")
    return parallel.shard_roles(roles, cfg.parallel, world)


def fresh_generator(cfg: VPAEConfig, device: str | None = None) -> WanBackbone:
    """An unsharded generator of this config's shape (the teacher's weights, and its LoRA adapter in LoRA mode)."""
    return _generator_of(build_teacher(cfg, device), cfg)


def _generator_of(teacher: WanBackbone, cfg: VPAEConfig) -> WanBackbone:
    """The generator as a copy of `teacher` (full, or frozen + a LoRA adapter). LoRA A matrices start random:
    seeded, so two runs of one config (and a resumed one) build the same roles."""
    p = cfg.priming
    torch.manual_seed(cfg.train.seed)
    return R.copy_generator(teacher, p.generator_mode, p.lora_rank, p.lora_alpha, p.lora_targets)


def export_checkpoint(run_dir: str | Path, checkpoint: str | Path | None = None, out: str | Path | None = None) -> Path:
    """Consolidate the generator of a distill run's checkpoint (DCP, written by any number of processes) into a
    diffusers transformer folder (and its LoRA adapter in LoRA mode), in one process. Default checkpoint: the
    newest of phase II (a comparison method's own phase), else of phase I."""
    from vpae.config import load_config
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise CheckpointError(f"{run_dir} is not a run directory of vpae distill (no config.yaml)")
    cfg = load_config(run_dir / "config.yaml")
    if checkpoint is None:
        phases = ("equilibrium", cfg.method, "priming") if cfg.method != "vpae" else ("equilibrium", "priming")
        checkpoint = next((c for c in (latest_checkpoint(run_dir / ph) for ph in phases) if c is not None), None)
        if checkpoint is None:
            raise CheckpointError(f"{run_dir} has no checkpoint yet")
    generator = fresh_generator(cfg, "cpu")
    R.generator_checkpoint_view(generator).load_state_dict(checkpoint_tensors(checkpoint, "model.generator."))
    out = Path(out) if out is not None else run_dir / "generator"
    lora = out.with_name(out.name + "_lora") if cfg.priming.generator_mode == "lora" else None
    meta = json.loads((Path(checkpoint) / "meta.json").read_text())
    return export_backbone(generator, out, {"role": "generator", "phase": meta.get("phase"), "step": meta.get("step"),
                                            "checkpoint": str(checkpoint), "data": to_dict(cfg.data)}, lora_dir=lora)


def consolidated(cfg: VPAEConfig, sharded: WanBackbone, build, world: parallel.World) -> WanBackbone | None:
    """Gather a sharded backbone into a new unsharded one on rank 0 (collective; other ranks get None)."""
    full = parallel.full_state_dict(sharded)
    if not world.main:
        return None
    out = build()
    out.load_state_dict(full)
    return out


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
    if cfg.method != "vpae":  # the paper's comparison methods (Table 1): vpae.training.methods
        from vpae.training.methods import run_method
        return run_method(cfg, run_dir, phase, progress, eval_fn_factory)
    run_dir = Path(run_dir)
    world = start_run(cfg, run_dir)
    data = build_data(cfg)
    roles = build_roles(cfg, data, world)
    out = {"timings": {}}
    t0 = time.perf_counter()
    tc = cfg.train
    common = dict(seed=tc.seed, checkpoint_every=tc.checkpoint_every, keep=tc.keep_checkpoints,
                  log_every=tc.log_every, progress=progress, eval_every=tc.eval_every, world=world)

    # Phase I: stability priming.
    priming = first_phase_step(roles, cfg)  # V-PAE-I, or LCM (priming.kind, Table 2)
    pdir = run_dir / "priming"
    if phase in ("priming", "all"):
        evf = eval_fn_factory(roles.generator) if eval_fn_factory else None
        r = train("priming", priming, data.batch_fn(cfg.priming.batch_size, tc.seed + 1, world.rank, world.size), steps=cfg.priming.steps,
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
        r = train("equilibrium", eq, data.batch_fn(cfg.equilibrium.batch_size, tc.seed + 2, world.rank, world.size),
                  steps=cfg.equilibrium.steps, run_dir=run_dir / "equilibrium", eval_fn=evf,
                  divergence=divergence_check(cfg), **common)
        out["timings"]["equilibrium"] = r["seconds"]
        out["equilibrium"] = r
        out["ema"] = roles.ema
    generator = roles.generator
    if world.distributed:  # rank 0 exports an unsharded copy; the run's roles stay sharded
        generator = consolidated(cfg, roles.generator, lambda: fresh_generator(cfg, "cpu"), world)
        world.barrier()
        if not world.main:
            return {**out, "generator": roles.generator, "teacher": roles.teacher, "data": data, "world": world}
    lora = run_dir / "generator_lora" if cfg.priming.generator_mode == "lora" else None
    export_backbone(generator, run_dir / "generator", {"role": "generator", "phase": phase, "data": to_dict(cfg.data)},
                    lora_dir=lora)
    out["generator"] = roles.generator
    out["teacher"] = roles.teacher
    out["world"] = world
    out["data"] = data
    out["seconds"] = time.perf_counter() - t0
    return out
