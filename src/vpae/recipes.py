"""Recipes: config -> data source -> networks -> method phases -> the training loop -> exported models.
The one wiring path for every method (registered in vpae.training.methods) and for teacher pre-training; the
CLI, the demo and the ablation call it."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import time
from pathlib import Path

import torch

from vpae import registry
from vpae.backbones.base import resolve_layers
from vpae.backbones.wan import WanBackbone
from vpae.conditioning import Conditioning
from vpae.config import ConfigError, VPAEConfig, check_run_config, load_config, to_dict
from vpae.config.schema import resolve_device
from vpae.data.source import DataSource
from vpae.discriminator import build_head
from vpae.export import export_backbone
from vpae.models import build_teacher
from vpae.training import parallel
from vpae.training.checkpoint import CheckpointError, checkpoint_tensors, latest_checkpoint, load_checkpoint
from vpae.training.loop import DivergenceCheck, train
from vpae.training.methods.base import Method
from vpae.training.methods.pretrain import FlowMatchingPhase
from vpae.training.model import Networks, copy_generator, generator_checkpoint_view, make_ema, make_teacher_and_fake


def build_data(cfg: VPAEConfig) -> DataSource:
    """The data source named by data.kind (vpae.registry), built from the config."""
    return registry.data_source(cfg.data.kind)(cfg, resolve_device(cfg.train.device))


def exported_data(cfg: VPAEConfig) -> dict:
    """The data section a model's vpae.json records: the config's, with the clip size the training data really
    had where the data source knows it (a latent cache records the size vpae data prepare used), so `vpae
    generate` and the exported pipeline default to the trained size."""
    data = to_dict(cfg.data)
    clip_size = getattr(registry.data_source(cfg.data.kind), "clip_size", None)
    return {**data, **((clip_size(cfg) or {}) if clip_size else {})}


def build_method(cfg: VPAEConfig) -> Method:
    return registry.method(cfg.method)(cfg)


def usable_device(device: str) -> str:
    """train.device resolved (auto: CUDA when present, else the CPU, said in one line on stderr); cuda asked for on
    a machine without CUDA is a ConfigError."""
    import sys
    resolved = resolve_device(device)
    if resolved.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"train.device={device} but this machine has no CUDA device (torch {torch.__version__}); "
                          f"set --set train.device=cpu or auto, or install a CUDA build of torch")
    if device == "auto" and resolved == "cpu" and int(os.environ.get("RANK", "0")) == 0:
        print("note: train.device=auto and no CUDA device: training on the CPU", file=sys.stderr)
    return resolved


def start_run(cfg: VPAEConfig, run_dir: Path) -> parallel.World:
    """This process's World (torchrun: the process group is initialised here) and the run directory with its
    recorded config; rank 0 writes, and a refused config stops every rank. A resume records its config only
    once it has saved a checkpoint, so a resume that fails leaves the run folder as it was."""
    cfg.train.device = usable_device(cfg.train.device)
    world = parallel.init_world(cfg.train.device, cfg.parallel.backend, parallel_cfg=cfg.parallel)
    error = None
    if world.main:
        try:
            record = check_run_config(cfg, run_dir)  # refuses config changes a resume cannot honour
            if record.resuming:
                world = dataclasses.replace(world, config_record=record)  # train writes it after its first save
            else:
                record.write()
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
        ema = make_ema(model)
        if world.distributed:
            for m in (model, ema):
                parallel.shard_backbone(m, cfg.parallel, world)
        return model, ema
    model, ema = parallel.in_turns(world, build)
    phase = FlowMatchingPhase(model, ema, cfg)
    probe = getattr(data, "pretrain_probe", None)  # a data source may offer a probe of what the teacher learnt
    result = train(phase, data.batch_fn(phase.batch_size, cfg.train.seed + phase.stream, world.dp_rank, world.dp_size,
                                        num_workers=cfg.train.num_workers),
                   run_dir=run_dir, seed=cfg.train.seed, checkpoint_every=cfg.train.checkpoint_every,
                   keep=cfg.train.keep_checkpoints, log_every=cfg.train.log_every, progress=progress,
                   max_seconds=cfg.pretrain.max_seconds, divergence=divergence_check(cfg),
                   eval_fn=probe(ema, cfg.train.eval_videos) if probe else None,
                   eval_every=cfg.train.eval_every, world=world, micro_batches=cfg.train.grad_accum,
                   accum_sync=cfg.parallel.accum_sync, logger=cfg.train.logger)
    result["world"] = world
    if world.distributed:
        # rank 0 gathers unsharded copies in CPU memory for the export (the GPUs keep only their shards)
        model, ema = (consolidated(cfg, m, lambda: build_teacher(cfg, "cpu"), world) for m in (model, ema))
        if not world.main:
            return result
    if export_dir is not None:
        # the raw (non-EMA) weights stay in the run folder, so exporting into the package ships the EMA only
        export_backbone(model, run_dir / "export_raw", {"role": "toy_teacher_raw", "data": exported_data(cfg)})
        export_backbone(ema, export_dir, {"role": "toy_teacher", "data": exported_data(cfg),
                                          "pretrain": to_dict(cfg.pretrain), "seconds": result["train_seconds"]})
        shutil.copyfile(run_dir / "log.jsonl", Path(export_dir) / "train_log.jsonl")
    return result


# ----------------------------------------------------------------------------------------------
# Distillation: any method's phases

GIB = 2**30
_BYTES = {"float32": 4, "bfloat16": 2}


def _available_bytes(device: str) -> tuple[int, str]:
    """Free memory of `device` (CUDA: the driver's free bytes; CPU: MemAvailable) and its name."""
    if device.startswith("cuda"):
        free, _ = torch.cuda.mem_get_info(torch.device(device))
        return free, f"{torch.cuda.get_device_name(torch.device(device))} ({device})"
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024, "host memory"
    except OSError:
        pass
    return 0, "host memory"


def memory_estimate(cfg: VPAEConfig, method: Method, world: parallel.World) -> dict[str, float]:
    """A lower bound of the bytes a run needs before its first activation (weights, gradients, Adam states),
    from the teacher's parameter count read on the meta device: {"host": rank 0's CPU memory while the networks
    are built (teacher, generator, EMA, whole), "device": one rank's share of the trained state}."""
    n = sum(p.numel() for p in build_teacher(cfg, "meta", empty=True).parameters())
    trained, frozen = _BYTES[cfg.model.dtype], _BYTES[cfg.model.frozen_dtype or cfg.model.dtype]
    if not world.distributed:
        frozen = trained  # one process stores every role in model.dtype
    full = cfg.priming.generator_mode == "full"
    copies_trained, copies_frozen = method.extra_copies()  # critics, experts, EMAs and targets of the method
    generator = n * (trained * 4 if full else frozen)  # weights + gradients + Adam m, v
    extra = n * trained * (4 * copies_trained + copies_frozen)
    total = generator + n * frozen + extra
    host = n * (frozen + (trained if full else frozen) + trained * (copies_trained + copies_frozen))
    shards = world.fsdp_mesh.shape[-1] if world.fsdp_mesh is not None else world.size  # dp_shard x cp
    return {"host": host if world.distributed else total, "device": total / shards, "params": n}


def check_memory(cfg: VPAEConfig, method: Method, world: parallel.World) -> None:
    """Refuse a run, before anything is loaded, whose weights and optimizer states alone exceed the free memory
    of this machine (one process: the training device; torchrun: rank 0's host, which builds the networks whole,
    and each GPU's share). Activations come on top: passing this check does not promise the run fits."""
    est = memory_estimate(cfg, method, world)
    checks = [("device", cfg.train.device)] if not world.distributed else [("host", "cpu")]
    if world.distributed and cfg.train.device.startswith("cuda"):
        checks.append(("device", cfg.train.device))
    for what, device in checks:
        if what == "host" and not world.main:
            continue
        free, name = _available_bytes(device)
        if free and est[what] > free:
            raise ConfigError(
                f"this run needs at least {est[what] / GIB:.1f} GiB of {name} for its networks' weights and optimizer "
                f"states ({est['params'] / 1e9:.2f} B parameters per network, model.dtype={cfg.model.dtype}), and "
                f"{free / GIB:.1f} GiB are free; use GPUs (torchrun: docs/DISTRIBUTED.md and the 8-GPU configs), a "
                f"LoRA generator (priming.generator_mode=lora) or a smaller model")


def build_networks(cfg: VPAEConfig, data: DataSource, method: Method, world: parallel.World | None = None) -> Networks:
    """The teacher (+ its zero-initialised fake adapter), the generator, the heads when the method reads them and
    the method's own networks; under torchrun every network sharded (training.parallel.shard_networks): rank 0
    builds them whole in CPU memory, the other ranks only their shapes on the meta device, and rank 0's weights
    reach every rank's shards by broadcast."""
    world = world or parallel.World()
    empty = world.distributed and not world.main
    device = "meta" if empty else parallel.build_device(world, cfg.train.device)
    teacher = build_teacher(cfg, device, empty=empty)
    p = cfg.priming
    generator = _generator_of(teacher, cfg)
    make_teacher_and_fake(teacher, p.lora_rank, p.lora_alpha, p.lora_targets)
    heads = None
    if method.needs_heads:
        h = method.head_settings()
        torch.manual_seed(cfg.train.seed + 1)  # the heads' initialisation does not depend on the teacher's
        with torch.device("meta") if empty else contextlib.nullcontext():
            heads = build_head(h["kind"], feature_dim=generator.feature_dim,
                               num_layers=len(resolve_layers(h["layers"], generator.num_layers)),
                               text_dim=data.sizes.text_dim, image_dim=data.sizes.image_dim, hidden_dim=h["hidden_dim"],
                               num_queries=h["num_queries"], num_heads=h["num_heads"])
        if not empty:
            heads = heads.to(device)
    nets = Networks(generator, teacher, heads)
    method.add_roles(nets, before_sharding=world.distributed)
    return parallel.shard_networks(nets, cfg, world)


def fresh_generator(cfg: VPAEConfig, device: str | None = None) -> WanBackbone:
    """An unsharded generator of this config's shape (the teacher's weights, and its LoRA adapter in LoRA mode)."""
    return _generator_of(build_teacher(cfg, device), cfg)


def _generator_of(teacher: WanBackbone, cfg: VPAEConfig) -> WanBackbone:
    """The generator as a copy of `teacher` (full, or frozen + a LoRA adapter). LoRA A matrices start random:
    seeded, so two runs of one config (and a resumed one) build the same roles."""
    p = cfg.priming
    torch.manual_seed(cfg.train.seed)
    return copy_generator(teacher, p.generator_mode, p.lora_rank, p.lora_alpha, p.lora_targets)


def export_checkpoint(run_dir: str | Path, checkpoint: str | Path | None = None, out: str | Path | None = None) -> Path:
    """Consolidate the generator of a distill run's checkpoint (DCP, written by any number of processes) into a
    diffusers transformer folder (and its LoRA adapter in LoRA mode), in one process. Default checkpoint: the
    newest of the method's last phase that has one."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise CheckpointError(f"{run_dir} is not a run directory of vpae distill (no config.yaml)")
    cfg = load_config(run_dir / "config.yaml")
    if checkpoint is None:
        phases = reversed(build_method(cfg).phase_names())
        checkpoint = next((c for c in (latest_checkpoint(run_dir / ph) for ph in phases) if c is not None), None)
        if checkpoint is None:
            raise CheckpointError(f"{run_dir} has no checkpoint yet")
    generator = fresh_generator(cfg, "cpu")
    generator_checkpoint_view(generator).load_state_dict(checkpoint_tensors(checkpoint, "model.generator."))
    out = Path(out) if out is not None else run_dir / "generator"
    lora = out.with_name(out.name + "_lora") if cfg.priming.generator_mode == "lora" else None
    meta = json.loads((Path(checkpoint) / "meta.json").read_text())
    return export_backbone(generator, out, {"role": "generator", "phase": meta.get("phase"), "step": meta.get("step"),
                                            "checkpoint": str(checkpoint), "data": exported_data(cfg)}, lora_dir=lora)


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


def with_discriminator_probe(eval_fn, phase, data: DataSource, stream_seed: int, world: parallel.World,
                             batches: int = 4):
    """eval_fn plus the phase's held-out discriminator probe (EquilibriumPhase.discriminator_probe) on `batches`
    training-size batches of a stream of their own, the same at every evaluation (rank shares averaged)."""
    fn = data.batch_fn(phase.batch_size, stream_seed, world.dp_rank, world.dp_size)
    held = [fn(k) for k in range(batches)]
    x = torch.cat([b[0] for b in held])
    cond = Conditioning.cat([b[1] for b in held])

    def evaluate(step: int) -> dict[str, float]:
        out = eval_fn(step) if eval_fn else {}
        return {**out, **world.mean(phase.discriminator_probe(x, cond, seed=stream_seed))}
    return evaluate


def run_distill(cfg: VPAEConfig, run_dir: str | Path, phase: str = "all", progress: bool = True,
                eval_fn_factory=None) -> dict:
    """Train cfg.method in run_dir: its phases in order ('all') or one of them by name (V-PAE: 'priming' or
    'equilibrium'), each resuming from its latest checkpoint, across phase boundaries (a later phase run alone
    starts from the previous phase's generator checkpoint). Then exports the raw (not EMA) generator as a
    diffusers folder run_dir/generator (a LoRA generator merged, its adapter alone in run_dir/generator_lora),
    plus the method's own exports (DCM: detail_expert). eval_fn_factory(model to sample) -> (step -> metrics)
    adds curves. Returns every phase's loop result by name, "generator" (the model to sample: DCM's expert pair),
    "sampler" (its sampler kind), "networks", "teacher", "ema", "data", "world", "timings" and "seconds"."""
    method = build_method(cfg)
    names = method.phase_names()
    if phase != "all" and phase not in names:
        raise ConfigError(f"method {cfg.method} has the phase(s) {', '.join(names)}; --phase must be one of them "
                          f"or all (got {phase!r})")
    run_dir = Path(run_dir)
    world = start_run(cfg, run_dir)
    if world.distributed and not method.distributed:
        raise ConfigError(f"method {cfg.method} runs in one process only (its Method.distributed is False)")
    check_memory(cfg, method, world)
    data = build_data(cfg)
    nets = build_networks(cfg, data, method, world)
    phases = method.phases(nets)
    out: dict = {"timings": {}}
    t0 = time.perf_counter()
    tc = cfg.train
    common = dict(seed=tc.seed, checkpoint_every=tc.checkpoint_every, keep=tc.keep_checkpoints,
                  log_every=tc.log_every, progress=progress, eval_every=tc.eval_every, world=world,
                  divergence=divergence_check(cfg), micro_batches=tc.grad_accum, accum_sync=cfg.parallel.accum_sync,
                  logger=tc.logger)
    sampler_model = method.sampler_model(nets, phases)
    for i, ph in enumerate(phases):
        pdir = run_dir / ph.name
        if phase in ("all", ph.name):
            if i > 0 and phase == "all" and not phase_done(run_dir / phases[i - 1].name, phases[i - 1].steps):
                raise CheckpointError(f"{phases[i - 1].name} did not finish in {run_dir / phases[i - 1].name}; "
                                      f"rerun the same command to resume it")
            ph.start()  # the phase's copies (EMA, targets) from the generator as the previous phase left it
            evf = eval_fn_factory(sampler_model) if eval_fn_factory else None
            if hasattr(ph, "discriminator_probe") and tc.eval_every > 0:
                evf = with_discriminator_probe(evf, ph, data, tc.seed + 100 + ph.stream, world)
            r = train(ph, data.batch_fn(ph.batch_size, tc.seed + ph.stream, world.dp_rank, world.dp_size), run_dir=pdir,
                      eval_fn=evf, **common)
            out["timings"][ph.name] = r["seconds"]
            out[ph.name] = r
        elif i + 1 < len(phases) and phases[i + 1].name == phase and ph.steps > 0:
            # a later phase run alone starts from this phase's generator in this run directory
            ckpt = latest_checkpoint(pdir)
            if ckpt is None:
                raise CheckpointError(f"{phase} needs {ph.name}'s checkpoint in {pdir}; run --phase {ph.name} first "
                                      f"or set {ph.name}.steps=0 to start {phase} from the teacher")
            load_checkpoint(ckpt, {"generator": ph.modules()["generator"]}, {})
    out.update({"generator": sampler_model, "sampler": method.sampler, "networks": nets, "teacher": nets.teacher,
                "ema": nets.ema, "data": data, "world": world})
    generator, extras = nets.generator, method.exports(nets, phases)
    if world.distributed:  # rank 0 exports unsharded copies (collective); the run's networks stay sharded
        def whole(backbone):
            return consolidated(cfg, backbone, lambda: fresh_generator(cfg, "cpu"), world)
        generator = whole(nets.generator)
        extras = {folder: (whole(backbone), extra) for folder, (backbone, extra) in extras.items()}
        world.barrier()
        if not world.main:
            return out
    meta = {"role": "generator", "method": cfg.method, "phase": phase, "data": exported_data(cfg)}
    lora = run_dir / "generator_lora" if cfg.priming.generator_mode == "lora" else None
    export_backbone(generator, run_dir / "generator", meta, lora_dir=lora)
    for folder, (backbone, extra) in extras.items():
        export_backbone(backbone, run_dir / folder, {**meta, **extra})
    out["seconds"] = time.perf_counter() - t0
    return out
