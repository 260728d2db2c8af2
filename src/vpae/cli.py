"""`vpae` command line: pretrain, distill, generate, eval, bench, demo, ablate, export."""

from __future__ import annotations

import functools
import os
import time
from pathlib import Path
from typing import Annotated, List, Optional

import typer

from vpae.errors import VpaeError

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="V-PAE: distil a video diffusion model into a one-step generator.")
bench_app = typer.Typer(no_args_is_help=True, help="Benchmarks (latency).")

SET_HELP = "Override a config value, e.g. --set priming.steps=100 (repeatable; unknown keys are errors)."
_DEBUG = {"on": False}


def _fail(msg: str) -> None:
    typer.secho(f"error: {msg}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


def _expected_failures(fn):
    """Expected failures (VpaeError: bad config, checkpoint, input, divergence; a missing or unreadable
    file) become one `error:` line and exit code 2; anything else is a bug and keeps its traceback.
    `vpae --debug CMD` shows the traceback of expected failures too."""
    @functools.wraps(fn)
    def run(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (VpaeError, FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError) as e:
            if _DEBUG["on"]:
                raise
            msg = str(e) if isinstance(e, VpaeError) or not e.filename else f"{e.strerror or e}: {e.filename}"
            _fail(msg)
    return run


def _command(typer_app: typer.Typer, *args, **kwargs):
    """typer_app.command(...) for a function wrapped in _expected_failures."""
    return lambda fn: typer_app.command(*args, **kwargs)(_expected_failures(fn))


app.add_typer(bench_app, name="bench")
data_app = typer.Typer(no_args_is_help=True, help="Data: the latent cache training reads.")
app.add_typer(data_app, name="data")


@app.callback()
def _main(debug: bool = typer.Option(False, "--debug", help="Show tracebacks of expected failures too")):
    _DEBUG["on"] = debug


def torch_cuda() -> bool:
    import torch
    return torch.cuda.is_available()


def _load(config: Optional[Path], overrides: List[str]):
    from vpae.config import load_config
    return load_config(config, overrides)  # a ConfigError becomes an `error:` line (_expected_failures)


@_command(app)
def pretrain(config: Path = typer.Option(..., help="YAML config (e.g. configs/toy/teacher.yaml)"),
             out: Path = typer.Option(Path("runs/teacher"), help="Run directory (checkpoints, log)"),
             export: Optional[Path] = typer.Option(None, help="Write the EMA teacher here as a diffusers folder"),
             set_: List[str] = typer.Option([], "--set", help=SET_HELP)):
    """Flow-matching training of a teacher on the toy world (EMA, checkpoints, resume)."""
    import torch

    from vpae.recipes import run_pretrain
    cfg = _load(config, set_)
    t0 = time.perf_counter()
    r = run_pretrain(cfg, out, export)
    if not _finish_ranks(r):
        return
    typer.echo(f"pretrain: {r['step']} steps ({r['resumed_from']} resumed) in {time.perf_counter() - t0:.1f}s "
               f"on {cfg.train.device} ({torch.get_num_threads()} threads); last {r['last']}")
    if export:
        typer.echo(f"teacher written to {export}")


@_command(app)
def distill(config: Path = typer.Option(..., help="YAML config (e.g. configs/toy/demo.yaml)"),
            phase: str = typer.Option("all", help="all (every phase of the method, in order) or one phase by name: "
                                              "V-PAE priming | equilibrium; APT apt_cd | apt; the others their own name"),
            out: Path = typer.Option(Path("runs/distill"), help="Run directory"),
            set_: List[str] = typer.Option([], "--set", help=SET_HELP)):
    """Phase I (stability priming) and/or phase II (unified adversarial equilibrium), with resume."""
    from vpae.recipes import run_distill
    cfg = _load(config, set_)
    r = run_distill(cfg, out, phase)
    if _finish_ranks(r):
        typer.echo(f"distill ({phase}): {r['timings']} seconds; generator written to {out / 'generator'}")


def _finish_ranks(result: dict) -> bool:
    """Under torchrun: close the process group; True on the rank that reports (rank 0)."""
    from vpae.training.parallel import close_world
    world = result.get("world")
    if world is None:
        return True
    close_world(world)
    return world.main


@_command(app)
def consolidate(run: Path = typer.Option(..., help="Run directory of `vpae distill` (one process or torchrun)"),
                checkpoint: Optional[Path] = typer.Option(None, help="A checkpoint folder of that run (default: the newest "
                                                          "of phase II, else of phase I)"),
                out: Optional[Path] = typer.Option(None, help="Output transformer folder (default: RUN/generator)")):
    """Consolidate a sharded (DCP) checkpoint into the generator's diffusers folder, in one process."""
    from vpae.recipes import export_checkpoint
    typer.echo(f"wrote {export_checkpoint(run, checkpoint, out)}")


@_command(app)
def generate(model: str = typer.Option(..., help="Model folder (diffusers WanTransformer3DModel) or 'builtin:toy'"),
             out: Path = typer.Option(Path("outputs/generate"), help="Output folder (sample.mp4, sample.gif)"),
             prompt: Optional[str] = typer.Option(None, help="Text prompt (toy models: MiniLM text encoder)"),
             embeddings: Optional[Path] = typer.Option(None, help="safetensors with 'text' (L,D) [+ 'negative_text', "
                                                                  "'image'] "
                                                                  "for models without a bundled text encoder"),
             image: Optional[Path] = typer.Option(None, help="Condition image for image-to-video (default: the "
                                                  "model's example condition, if it ships one: builtin:toy does)"),
             sampler: str = typer.Option("euler", help="euler (teacher baseline, CFG) | few-step (distilled generators)"),
             steps: int = typer.Option(50, help="Euler steps, or few-step steps (1 = one-step generation)"),
             guidance: Optional[float] = typer.Option(None, help="CFG scale (standard convention); 1 disables the "
                                                      "negative branch. Default: 5 for euler, 1 for few-step"),
             shift: float = typer.Option(3.0, help="Timestep shift k"),
             schedule: str = typer.Option("trailing", help="few-step sigmas: trailing (1, 0.75, 0.5, 0.25 at 4 steps, "
                                          "then shifted) | linspace (diffusers' default: what an exported pipeline "
                                          "samples at N > 1)"),
             seed: int = typer.Option(0),
             frames: Optional[int] = typer.Option(None, help="Pixel frames (4n+1); default: the model's training size "
                                                             "(vpae.json), else 9"),
             height: Optional[int] = typer.Option(None, help="default: the training size, else 32"),
             width: Optional[int] = typer.Option(None, help="default: the training size, else 32"),
             fps: float = typer.Option(8.0),
             negative_only: bool = typer.Option(False, help="Sample with the empty prompt on purpose (toy models "
                                                             "refuse a missing or empty --prompt otherwise)"),
             device: str = typer.Option("auto", help="auto (CUDA when present) | cpu | cuda | cuda:N: the model, "
                                                      "VAE and text/image encoders all run there")):
    """Generate one video (mp4 + GIF) and print NFE and wall time. Under `torchrun --nproc_per_node N` the model
    runs with context parallelism over the N ranks (long videos: 720p), the same video as one process."""
    from vpae.config.schema import resolve_device
    from vpae.generate import GenerateError, generate_video
    from vpae.training import parallel
    device = resolve_device(device)
    if device.startswith("cuda") and not torch_cuda():
        _fail(f"--device {device} but this machine has no CUDA device; use --device cpu or auto")
    world = None
    if parallel.launched_by_torchrun():
        from vpae.config.schema import ParallelConfig
        size = int(os.environ["WORLD_SIZE"])
        world = parallel.init_world(device, parallel_cfg=ParallelConfig(cp=size))
    try:
        r = generate_video(model=model, out=out, prompt=prompt, embeddings=embeddings, image=image, sampler=sampler,
                           steps=steps, guidance=guidance, shift=shift, seed=seed, frames=frames, height=height,
                           width=width, fps=fps, negative_only=negative_only, world=world, device=device,
                           schedule=schedule)
    except GenerateError as e:
        _fail(str(e))
    finally:
        if world is not None:
            parallel.close_world(world)
    if world is not None and not world.main:
        return
    typer.echo(f"wrote {r['mp4']} and {r['gif']}: NFE {r['nfe']}, diffusion {r['diffusion_s']:.3f}s, "
               f"total {r['total_s']:.3f}s")


@_command(app, "caption-bank")
def caption_bank(out: Path = typer.Option(Path(".cache/toy_captions.safetensors")),
                 text_tokens: int = typer.Option(24),
                 bounce: bool = typer.Option(False, help="Also the 'and bounces back' captions (data.toy.bounce=true)"),
                 config: Path = typer.Option(None, help="Take the world (and text_tokens) from this config's data section")):
    """Precompute the text embeddings of every toy-world caption (for machines without MiniLM)."""
    from vpae.toy.data import build_caption_bank
    from vpae.toy.world import ToyWorldConfig, world_config
    world = ToyWorldConfig(bounce=bounce)
    if config is not None:
        cfg = _load(config, [])
        world, text_tokens = world_config(cfg.data), cfg.data.text_tokens
    typer.echo(f"wrote {build_caption_bank(out, text_tokens, world)}")


@_command(app)
def demo(config: Path = typer.Option(Path("configs/toy/demo.yaml"), help="Demo config"),
         out: Path = typer.Option(Path("outputs/demo"), help="Output folder (report.html, report.md, run/)"),
         fresh: bool = typer.Option(True, help="Start from scratch (delete the previous demo run)"),
         vbench: bool = typer.Option(True, help="Also compute the offline VBench-I2V proxy dimensions and FD"),
         set_: List[str] = typer.Option([], "--set", help=SET_HELP)):
    """The whole method on the toy world: phase I, phase II, evaluation, report (CPU, minutes)."""
    import shutil

    from vpae.toy.demo import run_demo
    cfg = _load(config, set_)
    if fresh and (out / "run").exists():
        shutil.rmtree(out / "run")
    r = run_demo(cfg, out, vbench=vbench)
    typer.echo(r["summary"])


@_command(app)
def ablate(config: Path = typer.Option(Path("configs/toy/demo.yaml"), help="Base config (the demo's)"),
           out: Path = typer.Option(None, help="Output folder (default outputs/ablate, or outputs/table<N>)"),
           table: Optional[int] = typer.Option(None, help="Run the paper's Table 1 (V-PAE against DMD2, MD, LCM, PCM, "
                                               "DCM, ADD at 4 NFE and DMD2, MD, LCM, ADD, APT at 1 NFE; LADD and rCM "
                                               "shown) or Table 2 (none / LCM / V-PAE-I as the "
                                               "first phase) instead of the ablations"),
           variant: List[str] = typer.Option([], help="Run only these variants / table rows (repeatable); default all"),
           seeds: Optional[str] = typer.Option(None, help="Comma-separated training seeds, e.g. 0,1,2 (mean and spread); "
                                               "default 0, and 0,1,2 for --table"),
           workers: int = typer.Option(1, help="Variant runs at a time (each in its own process)"),
           proxies: Optional[bool] = typer.Option(None, help="Also the offline VBench-I2V proxies and FD (slow on a CPU); "
                                                  "default on, off for --table"),
           tune: Optional[bool] = typer.Option(None, help="--table: equal tuning first (3 trials per trained row on "
                                               "the validation split, then the seeds with the chosen one); default on "
                                               "for Table 1, off for Table 2"),
           set_: List[str] = typer.Option([], "--set", help=SET_HELP)):
    """The paper's ablations (Table 1 phases, Table 2 priming, Table 3 heads/backbone/lambda) with equal
    budgets over several seeds, or with --table 1/2 the comparison with the other methods; resumable (rerun
    the same command)."""
    from vpae.toy.ablate import run_ablation, run_table
    _load(config, set_)  # validate overrides up front
    try:
        seed_list = [int(s) for s in (seeds or ("0,1,2" if table else "0")).split(",") if s.strip()]
    except ValueError:
        _fail(f"--seeds must be comma-separated integers, got {seeds!r}")
    if table is not None:
        out = out or Path(f"outputs/table{table}")
        r = run_table(table, config, out, set_, seeds=seed_list, workers=workers, proxies=bool(proxies),
                      rows=variant or None, tune=tune)
        typer.echo(f"table {table} finished in {r['total_s']:.0f}s: {out / 'report.html'}")
        return
    out = out or Path("outputs/ablate")
    r = run_ablation(config, out, set_, variant or None, seeds=seed_list, workers=workers,
                     proxies=True if proxies is None else proxies)
    typer.echo(f"ablation finished in {r['total_s']:.0f}s: {out / 'report.html'}")


@_command(app)
def export(generator: Path = typer.Option(..., help="Transformer folder of the distilled generator (RUN/generator)"),
           base: Optional[Path] = typer.Option(None, help="Local diffusers pipeline folder of the teacher "
                                               "(e.g. Wan2.1-I2V-14B-480P-Diffusers); needed for --format diffusers"),
           out: Path = typer.Option(..., help="Output folder"),
           shift: float = typer.Option(3.0, help="Scheduler shift (as vpae generate --shift; one step from sigma 1 "
                                       "does not depend on it)"),
           steps: int = typer.Option(1, help="Steps the pipeline's README recommends (its scheduler is vpae's "
                                     "few-step sampler at any num_inference_steps)"),
           format_: str = typer.Option("diffusers", "--format", help="diffusers (a pipeline folder) or native "
                                       "(Wan-native safetensors + ComfyUI/LightX2V LoRA)"),
           link: bool = typer.Option(False, help="Symlink the base components instead of copying them")):
    """A diffusers pipeline folder that runs the generator (num_inference_steps=steps, guidance_scale=1), or with
    --format native the generator in Wan's own key names and its LoRA in ComfyUI's."""
    from vpae.errors import VpaeError
    if format_ == "native":
        from vpae.export_native import export_native
        typer.echo(f"wrote {export_native(generator, out)}")
        return
    if format_ != "diffusers":
        raise VpaeError(f"--format must be diffusers or native, got {format_!r}")
    if base is None:
        raise VpaeError("--format diffusers needs --base, the teacher's local diffusers pipeline folder")
    from vpae.export import export_pipeline
    typer.echo(f"wrote {export_pipeline(generator, base, out, shift, link, steps)}")


def _encoder_stack(cfg, base: Optional[Path]):
    """The condition stack that encodes data: the Wan family's from --base, else the one of the config's data
    source (its `model_family`, e.g. the toy world's)."""
    from vpae import registry
    from vpae.data.prepare import PrepareError
    family = "wan" if base is not None else getattr(registry.data_source(cfg.data.kind), "model_family", None)
    if family is None:
        raise PrepareError("pass --base, a local Wan pipeline folder whose VAE, UMT5 and CLIP encode the videos")
    return registry.model_family(family).config_stack(cfg, base)


@_command(data_app, "prepare")
def data_prepare(manifest: Path = typer.Argument(..., help="CSV (header: video,caption[,image]) or JSONL manifest"),
                 out: Path = typer.Option(..., help="Cache folder (resumes if it exists)"),
                 config: Path = typer.Option(..., help="Config whose data section gives frames, height, width"),
                 base: Optional[Path] = typer.Option(None, help="Local Wan diffusers pipeline folder: encode with its "
                                                     "VAE, UMT5 and CLIP (default: the stack of the config's data source, "
                                                     "e.g. the toy world's)"),
                 shard_size: int = typer.Option(256, help="Clips per safetensors shard"),
                 batch_size: int = typer.Option(8, help="Clips encoded at once"),
                 device: str = typer.Option("cpu", help="Where the encoders run: cpu or cuda (under torchrun: "
                                            "cuda:LOCAL_RANK)"),
                 set_: List[str] = typer.Option([], "--set", help=SET_HELP)):
    """Videos + captions -> clips -> encoders -> the latent cache (bad videos skipped and listed in report.md).
    Under torchrun the ranks share the rows and write the cache one process writes."""
    import torch

    from vpae.data.prepare import PrepareError, prepare
    from vpae.training.parallel import close_world, in_turns, init_world
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise PrepareError(f"--device {device} but this machine has no CUDA device")
    if device != "cpu" and not device.startswith("cuda"):
        raise PrepareError(f"--device must be cpu or cuda[:N], got {device!r}")
    cfg = _load(config, set_)
    # gloo on CPU, nccl on CUDA; only a few small objects travel, so a generous timeout costs nothing while
    # ranks wait for the slowest one's last shard
    world = init_world(device, timeout_s=6 * 3600)
    try:
        # one rank of a node at a time holds a freshly loaded stack in CPU memory before moving it
        stack = in_turns(world, lambda: _encoder_stack(cfg, base).to(world.device))
        d = cfg.data
        r = prepare(manifest, out, stack, d.frames, d.height, d.width, shard_size, batch_size,
                    progress=world.main, device=world.device, world=world)
    finally:
        close_world(world)
    if world.main:
        typer.echo(f"{r['items']} clips from {r['rows']} rows ({len(r['skipped'])} skipped: {out / 'report.md'}); "
                   f"train with --set data.kind=cache --set data.cache_dir={out}")


@_command(data_app, "synthesize")
def data_synthesize(manifest: Path = typer.Argument(..., help="CSV (header: caption[,image]) or JSONL manifest"),
                    out: Path = typer.Option(..., help="Cache folder (resumes if it exists)"),
                    config: Path = typer.Option(..., help="Config: the teacher (model.teacher), frames / height / "
                                                "width, sampling"),
                    base: Optional[Path] = typer.Option(None, help="Local Wan pipeline folder for the encoders "
                                                        "(default: the stack of the config's data source, e.g. the "
                                                        "toy world's)"),
                    seed: int = typer.Option(0, help="Noise seed (row i uses seed * 100003 + i)"),
                    shard_size: int = typer.Option(256), batch_size: int = typer.Option(4),
                    set_: List[str] = typer.Option([], "--set", help=SET_HELP)):
    """The paper's synthetic set: the teacher's multi-step CFG samples (sampling.teacher_steps, .guidance) for a
    caption (+ image) list, written as a latent cache."""
    from vpae.data.synthesize import synthesize
    from vpae.models import build_teacher
    cfg = _load(config, set_)
    stack = _encoder_stack(cfg, base)
    d, s = cfg.data, cfg.sampling
    r = synthesize(manifest, out, build_teacher(cfg).eval(), stack, d.frames, d.height, d.width, s.teacher_steps,
                   s.guidance, s.shift, seed, shard_size, batch_size)
    typer.echo(f"{r['items']} synthetic clips from {r['rows']} rows ({len(r['skipped'])} skipped); "
               f"train with --set data.kind=cache --set data.cache_dir={out}")


# -- evaluation ------------------------------------------------------------------------------------

TS_WARNING = (". SECURITY: a TorchScript file runs the code stored in it when loaded; pass only files you "
              "trust (made yourself or from the model's authors)")


def eval_command(
    video_dir: Annotated[Path, typer.Argument(help="folder with one subfolder of videos per method")],
    out: Annotated[Path, typer.Option(help="output folder")] = Path("eval_out"),
    reference: Annotated[Optional[str], typer.Option(help="method name or folder used as FD reference")] = None,
    dino: Annotated[Optional[Path], typer.Option(help="DINO ViT-B/16 weights: a state dict (.pth via torch.load "
                    "weights_only, or .safetensors; safe) or a TorchScript file" + TS_WARNING)] = None,
    clip_b32: Annotated[Optional[Path], typer.Option(help="CLIP ViT-B/32 TorchScript" + TS_WARNING)] = None,
    dreamsim: Annotated[Optional[Path], typer.Option(help="DreamSim TorchScript" + TS_WARNING)] = None,
    raft: Annotated[Optional[Path], typer.Option(help="RAFT TorchScript" + TS_WARNING)] = None,
    amt: Annotated[Optional[Path], typer.Option(help="AMT-S TorchScript" + TS_WARNING)] = None,
    musiq: Annotated[Optional[Path], typer.Option(help="MUSIQ-SPAQ TorchScript" + TS_WARNING)] = None,
    aesthetic: Annotated[Optional[Path], typer.Option(help="CLIP-L/14 + LAION head TorchScript" + TS_WARNING)] = None,
    i3d: Annotated[Optional[Path], typer.Option(help="I3D TorchScript, enables FVD" + TS_WARNING)] = None,
    latency_json: Annotated[Optional[Path], typer.Option(help="bench latency JSON")] = None,
    extra_metrics_json: Annotated[Optional[Path], typer.Option(help="{method: {metric: value}} JSON")] = None,
    device: Annotated[str, typer.Option(help="torch device")] = "cpu",
) -> None:
    """Score videos on VBench-I2V dimensions (reference or offline tier) and write reports."""
    import json

    from vpae.eval import EvalConfig, run_eval
    cfg = EvalConfig(dino=_s(dino), clip_b32=_s(clip_b32), dreamsim=_s(dreamsim), raft=_s(raft), amt=_s(amt),
                     musiq=_s(musiq), aesthetic=_s(aesthetic), i3d=_s(i3d), device=device)
    extra = json.loads(extra_metrics_json.read_text()) if extra_metrics_json else None
    res = run_eval(video_dir, out, config=cfg, reference=reference, extra_metrics=extra, latency=latency_json)
    typer.echo(f"{len(res['methods'])} methods scored ({res['aggregate_kind']} aggregates); "
               f"report: {Path(out) / 'report.md'}")


def _s(p):
    return None if p is None else str(p)


def latency_command(
    teacher: Annotated[Optional[Path], typer.Option(
        help="local diffusers WanTransformer3DModel folder, never downloaded (default: tiny random)")] = None,
    student: Annotated[Optional[Path], typer.Option(
        help="local student WanTransformer3DModel folder (needs --teacher)")] = None,
    frames: Annotated[int, typer.Option(help="latent frames")] = 5,
    height: Annotated[int, typer.Option(help="latent height")] = 16,
    width: Annotated[int, typer.Option(help="latent width")] = 16,
    steps: Annotated[int, typer.Option(help="teacher baseline steps")] = 50,
    guidance: Annotated[float, typer.Option(help="teacher CFG scale")] = 5.0,
    repeats: Annotated[int, typer.Option()] = 3,
    warmup: Annotated[int, typer.Option()] = 1,
    device: Annotated[str, typer.Option(help="torch device (default: cuda when available)")] = "",
    dtype: Annotated[str, typer.Option(help="float32 | bfloat16")] = "float32",
    out: Annotated[Optional[Path], typer.Option(help="write the results JSON here")] = None,
) -> None:
    """Time teacher (50 steps + CFG = 100 NFE, 4 and 1 steps) vs student (1 and 4 steps)."""
    import json

    import torch

    from vpae.eval.latency import (
        EvalError,
        bench_latency,
        latency_markdown,
        load_wan_transformer,
        random_condition,
        tiny_setup,
    )
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if student is not None and teacher is None:
        raise EvalError("--student needs --teacher (the tiny default setup has its own student)")
    if teacher is not None:
        from vpae.backbones.wan import WanBackbone
        dt = getattr(torch, dtype)
        t = WanBackbone(load_wan_transformer(teacher, dt, "teacher")).to(device).eval()
        s = WanBackbone(load_wan_transformer(student, dt, "student")).to(device).eval() if student else None
        shape = (1, t.latent_channels, frames, height, width)
        cond = random_condition(t, shape).to(device=device, dtype=dt)
        typer.echo("note: conditioning is random (timing does not depend on content)", err=True)
    else:
        t, s, cond, shape = tiny_setup(frames, height, width, device=device)
    res = bench_latency(t, cond, shape, student=s, teacher_steps=steps, guidance=guidance, warmup=warmup,
                        repeats=repeats, device=device)
    typer.echo(latency_markdown(res))
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(res, indent=2))


_command(app, "eval")(eval_command)
_command(bench_app, "latency")(latency_command)


if __name__ == "__main__":
    app()
