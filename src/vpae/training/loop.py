"""The one training loop: data, the phase's updates, optimizers (zero_grad, backward, clipping, stepping),
logging, divergence guard, checkpoint, resume.

EDM2-style determinism: the global RNG is reseeded from (seed, phase, step) before every step, every sample's
noise comes from its own stream seeded from (seed, phase, step, global sample index) (vpae.randomness), and
the data batch is a pure function of (seed, step), so a resumed run continues exactly as an uninterrupted one,
and N processes (torchrun) compute the single-process step on the same global batch.

Under torchrun every rank runs this loop: checkpoints and evaluations are collective, logged statistics are
averaged over ranks (so every rank takes the same divergence decision), and only rank 0 logs and draws the
progress bar.
"""

from __future__ import annotations

import contextlib
import math
import time
import zlib
from pathlib import Path
from typing import Callable

import torch
from tqdm.auto import tqdm

from vpae import randomness
from vpae.conditioning import Conditioning
from vpae.errors import DivergenceError, VpaeError
from vpae.training import parallel
from vpae.training.checkpoint import clean_stale_tmp, latest_checkpoint, load_checkpoint, save_checkpoint
from vpae.training.collapse import finish_collapse
from vpae.training.methods.base import AfterUpdate, OptimizerSpec, Phase, Update
from vpae.training.model import set_switches, switches
from vpae.training.parallel import World
from vpae.training.tracking import Tracker, patch_size, peak_memory, require, throughput
from vpae.training.tracking import read_log as read_log  # re-exported: readers of log.jsonl import it from here


def step_seed(seed: int, phase: str, step: int) -> int:
    return zlib.crc32(f"{seed}/{phase}/{step}".encode())


class DivergenceCheck:
    """Stops a run that has diverged before its state reaches a checkpoint: a non-finite statistic, a loss
    above `max_loss` (exploded), or a gradient norm exactly 0 for `dead_steps` steps in a row (collapsed: e.g.
    a saturated generator whose DMD gradient vanishes). Measured with phase I at lr 1.0: the fake loss is 4e9
    and the generator's gradient exactly 0 from step 2 on, where a healthy toy run has losses below 10."""

    def __init__(self, max_loss: float = 1e4, dead_steps: int = 5):
        self.max_loss, self.dead_steps = max_loss, dead_steps
        self.dead: dict[str, int] = {}

    def __call__(self, stats: dict[str, float]) -> str | None:
        bad = [k for k, v in stats.items() if not math.isfinite(v)]
        if bad:
            return f"non-finite {bad}"
        big = {k: v for k, v in stats.items() if k.startswith("loss/") and self.max_loss > 0 and abs(v) > self.max_loss}
        if big:
            values = ", ".join(f"{k} = {v:.3g}" for k, v in big.items())
            return f"loss exploded: {values} (> train.max_loss = {self.max_loss:g})"
        for k, v in stats.items():
            if k.startswith("grad_norm/"):
                self.dead[k] = self.dead.get(k, 0) + 1 if v == 0.0 else 0
                if self.dead_steps > 0 and self.dead[k] >= self.dead_steps:
                    return f"gradient collapsed: {k} has been exactly 0 for {self.dead[k]} steps"
        return None


def _hyperparameters(opt: torch.optim.Optimizer) -> list[dict]:
    return [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups]


def clip_and_norm(params, max_norm: float) -> float:
    """Clip the gradients of params to max_norm (0: no clipping) and return their norm before clipping."""
    params = [p for p in params if p.grad is not None]
    if not params:
        return 0.0
    norm = torch.nn.utils.clip_grad_norm_(params, max_norm if max_norm > 0 else float("inf"))
    # sharded (FSDP2) parameters give a DTensor norm: clipping used the global norm; read it whole
    return float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)


class Optimizers:
    """A phase's optimizers, built from its OptimizerSpecs over the parameters as they are now (after sharding,
    the sharded ones), and the one place where weights are updated."""

    def __init__(self, specs: dict[str, OptimizerSpec]):
        self.specs = specs
        self.optimizers = {name: spec.build() for name, spec in specs.items()}

    def zero(self, name: str, step: int) -> None:
        spec, opt = self.specs[name], self.optimizers[name]
        if spec.lr_scale is not None:
            for g in opt.param_groups:
                g["lr"] = spec.lr * spec.lr_scale(step)
        opt.zero_grad(set_to_none=True)

    def finish(self, name: str) -> float:
        """Clip and step on the gradients backward left; returns their norm before clipping. A non-finite norm
        (the same on every rank: sharded norms are global) skips the step; the loop's divergence check then
        stops the run on every rank at once."""
        spec, opt = self.specs[name], self.optimizers[name]
        parallel.scale_partial_grads(spec.params)
        norm = clip_and_norm(spec.params, spec.grad_clip)
        if math.isfinite(norm):
            opt.step()
        return norm

    def apply(self, update: Update, step: int) -> float:
        """Update weights: zero, backward, clip, step; returns the gradient norm before clipping."""
        self.zero(update.optimizer, step)
        update.loss.backward()
        return self.finish(update.optimizer)

    def release(self) -> None:
        """Free the moments and the last gradients (the next phase builds its own optimizers)."""
        for opt in self.optimizers.values():
            opt.zero_grad(set_to_none=True)
            opt.state.clear()


def _agree(world: World, error: DivergenceError | None) -> None:
    """Before a backward that is collective under torchrun: a rank whose loss raised DivergenceError tells the
    others, and every rank raises it (instead of the others waiting in the backward's all-gather)."""
    why = world.first(str(error) if error is not None else None)
    if why is not None:
        raise DivergenceError(why)


def take_step(phase: Phase, optimizers: Optimizers, step: int, x_data: torch.Tensor, cond: Conditioning,
              world: World | None = None, micro_batches: int = 1, accum_sync: str = "last") -> dict[str, float]:
    """One training step of `phase`: each Update it yields is applied before the phase continues.

    micro_batches > 1 (gradient accumulation): the batch is cut into equal micro-batches, each running the
    phase's step as its own generator, side by side: for every Update, each micro-batch's loss (divided by
    their number) is back-propagated in turn, then the optimizer steps once, and the step equals the whole-batch
    step. Each micro-batch keeps its own noise stream (seed, share dp_rank x micro_batches + m: the draws of a
    whole-batch step) and its own context switches (training.model.switches), put back before it resumes.
    FSDP2 reduces gradients after the last micro-batch only (accum_sync "last") or after each ("every")."""
    world = world or World()
    if micro_batches == 1:
        return _single_step(phase, optimizers, step, x_data, cond, world)
    b = x_data.shape[0]
    if b % micro_batches:
        raise VpaeError(f"this rank's batch of {b} cannot be cut into train.grad_accum={micro_batches} equal "
                        f"micro-batches; make the phase's batch_size a multiple of ranks x grad_accum")
    n = b // micro_batches
    networks = phase.nets.all() if getattr(phase, "nets", None) is not None else list(phase.modules().values())
    start = switches(networks)
    runs, base = [], randomness.current()
    for m in range(micro_batches):
        part = slice(m * n, (m + 1) * n)
        stream = randomness.new_stream(base.seed, base.rank * micro_batches + m, base.draws) if base else None
        runs.append([phase.step(step, x_data[part], cond[part] if cond is not None else None), stream, start])
    stats: dict[str, float] = {}
    while True:
        items = []
        for m, run in enumerate(runs):
            gen, stream, state = run
            set_switches(state)
            error = None
            with randomness.using(stream) if stream is not None else contextlib.nullcontext():
                try:
                    item = next(gen)
                except StopIteration:
                    item = None
                except DivergenceError as e:
                    item, error = None, e
            if isinstance(item, AfterUpdate) and m == 0:
                item.run()  # once per step: every micro-batch yields the same one
            if isinstance(item, Update) or error is not None:
                _agree(world, error)
                if m == 0:
                    optimizers.zero(item.optimizer, step)
                last = m == micro_batches - 1
                parallel.set_gradient_sync(networks, last or accum_sync == "every")
                (item.loss / micro_batches).backward()
            run[2] = switches(networks)
            items.append(item)
        if all(item is None for item in items):
            break
        first = items[0]
        if isinstance(first, AfterUpdate):
            continue
        if isinstance(first, Update):
            stats[f"grad_norm/{first.name or first.optimizer}"] = optimizers.finish(first.optimizer)
        logs = [item.logs if isinstance(item, Update) else item for item in items]
        for k in logs[0]:
            stats[k] = sum(float(x[k]) for x in logs) / micro_batches
    set_switches(start)
    return stats


def _single_step(phase: Phase, optimizers: Optimizers, step: int, x_data: torch.Tensor, cond: Conditioning,
                 world: World) -> dict[str, float]:
    stats: dict[str, float] = {}
    updates = phase.step(step, x_data, cond)
    while True:
        try:
            update, error = next(updates), None
        except StopIteration:
            break
        except DivergenceError as e:  # raised inside a loss (e.g. a non-finite DMD gradient)
            update, error = None, e
        if isinstance(update, dict):
            stats.update(update)
            continue
        if isinstance(update, AfterUpdate):
            update.run()
            continue
        _agree(world, error)
        stats[f"grad_norm/{update.name or update.optimizer}"] = optimizers.apply(update, step)
        stats.update(update.logs)
    return stats


class PhaseStepper:
    """A phase with its optimizers, stepped by hand (tests, benchmarks): what the loop does for one step,
    without data, logging or checkpoints. start=True runs phase.start() first (its EMA and target copies)."""

    def __init__(self, phase: Phase, start: bool = True):
        if start:
            phase.start()
        self.phase = phase
        self.optimizers = Optimizers(phase.optimizers())

    def step(self, step: int, x_data: torch.Tensor, cond: Conditioning) -> dict[str, float]:
        return finish_collapse(take_step(self.phase, self.optimizers, step, x_data, cond))


def progress_fields(stats: dict[str, float], most: int = 4) -> dict[str, str]:
    """The progress bar's postfix: the first `most` of the step's losses by name (loss/dmd -> dmd; grad norms
    are left out, their names would clash with the losses'), then samples/s."""
    losses = [(k[len("loss/"):], v) for k, v in stats.items() if k.startswith("loss/")]
    fields = {k: f"{v:.3g}" for k, v in losses[:most]}
    if "throughput/samples_per_s" in stats:
        fields["samples/s"] = f"{stats['throughput/samples_per_s']:.3g}"
    return fields


def train(phase: Phase, batch_fn: Callable[[int], tuple[torch.Tensor, Conditioning]], *,
          steps: int | None = None, run_dir: str | Path, seed: int = 0, checkpoint_every: int = 100, keep: int = 2,
          log_every: int = 10, meta: dict | None = None,
          eval_fn: Callable[[int], dict[str, float]] | None = None, eval_every: int = 0,
          progress: bool = True, max_seconds: float = 0.0, divergence: DivergenceCheck | None = None,
          world: World | None = None, micro_batches: int = 1, accum_sync: str = "last", logger: str = "jsonl") -> dict:
    """Run `steps` (default phase.steps) steps of one phase in `run_dir`, resuming from its latest checkpoint.
The phase's optimizers are built here and released at the end.

    batch_fn(step) -> (x_data, cond) must be deterministic in step. max_seconds > 0 stops early (with a
    checkpoint) once that much wall time has passed. A diverged step (see DivergenceCheck) raises
    DivergenceError naming the last checkpoint before it. Returns {"step", "seconds" (this call), "train_seconds"
    (every call up to this one's end: checkpoints carry the sum, so a resumed or export-only call still reports
    the whole training), "last", "resumed_from"}.
    world: this process under torchrun (batch_fn must then return this rank's share of the global batch).
    micro_batches, accum_sync: gradient accumulation (take_step).
    logger: where rank 0 logs besides run_dir/log.jsonl (vpae.training.tracking); records logged after the
    checkpoint this call resumes from are dropped first, so each step is recorded once.
    """
    world = world or World()
    require(logger)  # on every rank, before anything trains: a missing package is one error line
    steps = phase.steps if steps is None else steps
    optimizers = Optimizers(phase.optimizers())
    modules = phase.modules()
    name = phase.name
    run_dir = Path(run_dir)
    if world.main:
        run_dir.mkdir(parents=True, exist_ok=True)
        clean_stale_tmp(run_dir)
    world.barrier()
    meta = {"phase": name, **(meta or {})}
    start, before = 0, 0.0
    ckpt = latest_checkpoint(run_dir)
    if ckpt is not None:
        # The optimizers were built from the current config: its hyper-parameters (lr, betas, ...) win over
        # the checkpoint's (a changed lr is applied, not silently replaced by the old one; see resume_changes).
        hyper = {k: _hyperparameters(o) for k, o in optimizers.optimizers.items()}
        loaded = load_checkpoint(ckpt, modules, optimizers.optimizers, strict_meta={"phase": name})
        for k, o in optimizers.optimizers.items():
            for g, h in zip(o.param_groups, hyper[k]):
                g.update(h)
        start, before = int(loaded["step"]), float(loaded.get("train_seconds", 0.0))
    divergence = divergence or DivergenceCheck()
    saved = ckpt
    tracker = (Tracker(run_dir, logger, resume_step=start, name=f"{run_dir.parent.name}/{run_dir.name}")
               if world.main else None)
    # tokens/s needs the backbone's patch; a phase without a Wan-style backbone logs samples/s only
    patch = patch_size(modules.values())
    device = next((p.device for m in modules.values() for p in m.parameters()), torch.device("cpu"))
    last: dict[str, float] = {}
    t0 = time.perf_counter()
    bar = tqdm(range(start, steps), desc=name, initial=start, total=steps, disable=not (progress and world.main),
               dynamic_ncols=True)
    try:
        for step in bar:
            torch.manual_seed(step_seed(seed, name, step))
            t_data = time.perf_counter()
            with randomness.batch_stream(step_seed(seed, name, step), world.dp_rank):
                x_data, cond = batch_fn(step)
                t_step = time.perf_counter()
                try:
                    stats, why = take_step(phase, optimizers, step, x_data, cond, world, micro_batches, accum_sync), None
                except DivergenceError as e:  # every rank raises it together (take_step agrees before each backward)
                    stats, why = {}, str(e)
            if why is None:
                stats = finish_collapse(world.mean(stats))
                why = divergence(stats)
            # Divergence guard: stop before a diverged update can reach a checkpoint.
            if why:
                where = (f"the last checkpoint before it is {saved} (resume from it with a lower learning rate: "
                         f"rerun with --set {name}.lr=...)" if saved else "no checkpoint of this phase was written yet")
                raise DivergenceError(f"{name} diverged at step {step + 1}: {why}; {where}")
            t_end = time.perf_counter()
            stats["time/data_s"], stats["time/step_s"] = t_step - t_data, t_end - t_step
            stats.update({f"lr/{k}": o.param_groups[0]["lr"] for k, o in optimizers.optimizers.items()})
            stats.update(throughput(x_data, t_end - t_data, world.dp_size, patch))
            stats.update(peak_memory(device))
            last = stats
            if eval_fn is not None and eval_every > 0 and ((step + 1) % eval_every == 0 or step + 1 == steps):
                stats = {**stats, **{f"eval/{k}": v for k, v in eval_fn(step + 1).items()}}
            logged = (step + 1) % log_every == 0 or step + 1 == steps or any(k.startswith("eval/") for k in stats)
            if tracker and logged:
                tracker.log({"step": step + 1, "time": time.perf_counter() - t0, **stats})
                bar.set_postfix(progress_fields(stats))
            # every rank must stop at the same step: rank 0's clock decides
            out_of_time = max_seconds > 0 and world.broadcast(time.perf_counter() - t0 > max_seconds)
            if (step + 1) % checkpoint_every == 0 or step + 1 == steps or out_of_time:
                saved = save_checkpoint(run_dir, step + 1, modules, optimizers.optimizers,
                                        {**meta, "train_seconds": before + time.perf_counter() - t0}, keep=keep)
                if world.main and world.config_record is not None:
                    world.config_record.write()  # the resumed config now has a checkpoint of its own
            if out_of_time and tracker and not logged:
                tracker.log({"step": step + 1, "time": time.perf_counter() - t0, **stats})
            if out_of_time:
                steps = step + 1
                break
    finally:
        if tracker:  # flushed and closed on a divergence too
            tracker.close()
    seconds = time.perf_counter() - t0
    optimizers.release()
    return {"step": steps, "seconds": seconds, "train_seconds": before + seconds, "last": last, "resumed_from": start}
