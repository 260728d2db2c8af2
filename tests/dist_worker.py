"""A training run for tests/test_distributed.py, launched as torchrun launches `vpae`:

    python -m torch.distributed.run --standalone --nproc_per_node N tests/dist_worker.py distill OUT --set k=v ...

--kill-at-publish NAME: the process SIGKILLs itself when it is about to publish checkpoint NAME (e.g.
priming/step_0000002), after every shard of it was written: a kill in the middle of a save.
--kill-mid-step PHASE:STEP --rank R: rank R SIGKILLs itself in step STEP (1-based) of PHASE, after its backward,
before the optimizer step: the other ranks are then inside the same step's collectives.
--diverge-at PHASE:STEP --rank R: rank R alone finds a non-finite DMD gradient in that step; the run goes
through the CLI (`vpae distill`), so it ends as a user sees it (an `error:` line, exit code 2).
"""

import argparse
import os
import signal
import sys
from pathlib import Path

import torch

ap = argparse.ArgumentParser()
ap.add_argument("kind", choices=["distill", "pretrain"])
ap.add_argument("out", type=Path)
ap.add_argument("--config", default="configs/toy/demo.yaml")
ap.add_argument("--set", dest="overrides", action="append", default=[])
ap.add_argument("--kill-at-publish", default="")
ap.add_argument("--kill-mid-step", default="")
ap.add_argument("--diverge-at", default="")
ap.add_argument("--rank", type=int, default=1)
args = ap.parse_args()
rank = int(os.environ.get("RANK", "0"))
torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))

if args.kill_at_publish:
    real_replace = os.replace

    def replace(src, dst):
        if Path(dst).as_posix().endswith(args.kill_at_publish) and ".tmp-" in Path(src).name:
            os.kill(os.getpid(), signal.SIGKILL)
        return real_replace(src, dst)
    os.replace = replace

if args.kill_mid_step and rank == args.rank:
    from vpae.training import loop
    kill_phase, kill_step = args.kill_mid_step.split(":")
    real_finish, real_take = loop.Optimizers.finish, loop.take_step
    where = {}

    def take_step(phase, optimizers, step, *a, **k):
        where["at"] = (phase.name, step + 1)
        return real_take(phase, optimizers, step, *a, **k)

    def finish(self, name):
        if where.get("at") == (kill_phase, int(kill_step)):
            os.kill(os.getpid(), signal.SIGKILL)
        return real_finish(self, name)
    loop.take_step, loop.Optimizers.finish = take_step, finish

if args.diverge_at:
    from vpae.losses import dmd
    from vpae.training import loop
    phase_name, bad_step = args.diverge_at.split(":")
    real_gradient, real_take = dmd.dmd_gradient, loop.take_step
    where = {}

    def take_step(phase, optimizers, step, *a, **k):
        where["at"] = (phase.name, step + 1)
        return real_take(phase, optimizers, step, *a, **k)

    def dmd_gradient(x0_gen, x0_real, x0_fake):
        if rank == args.rank and where.get("at") == (phase_name, int(bad_step)):
            x0_fake = x0_fake + float("nan")
        return real_gradient(x0_gen, x0_real, x0_fake)
    loop.take_step, dmd.dmd_gradient = take_step, dmd_gradient
    from vpae.cli import app
    cli_args = ["distill", "--config", args.config, "--out", str(args.out)]
    for s in args.overrides:
        cli_args += ["--set", s]
    app(cli_args)  # exits

from vpae.config import load_config  # noqa: E402
from vpae.recipes import run_distill, run_pretrain  # noqa: E402
from vpae.training.parallel import close_world  # noqa: E402

cfg = load_config(args.config, args.overrides)
r = (run_distill if args.kind == "distill" else run_pretrain)(cfg, args.out, progress=False)
close_world(r["world"])
sys.exit(0)
