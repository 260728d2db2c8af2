"""A training run for tests/test_distributed.py, launched as torchrun launches `vpae`:

    python -m torch.distributed.run --standalone --nproc_per_node N tests/dist_worker.py distill OUT --set k=v ...

--kill-at-publish NAME: the process SIGKILLs itself when it is about to publish checkpoint NAME (e.g.
priming/step_0000002), after every shard of it was written: a kill in the middle of a save.
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
args = ap.parse_args()
torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))

if args.kill_at_publish:
    real_replace = os.replace

    def replace(src, dst):
        if Path(dst).as_posix().endswith(args.kill_at_publish) and ".tmp-" in Path(src).name:
            os.kill(os.getpid(), signal.SIGKILL)
        return real_replace(src, dst)
    os.replace = replace

from vpae.config import load_config  # noqa: E402
from vpae.recipes import run_distill, run_pretrain  # noqa: E402
from vpae.training.parallel import close_world  # noqa: E402

cfg = load_config(args.config, args.overrides)
r = (run_distill if args.kind == "distill" else run_pretrain)(cfg, args.out, progress=False)
close_world(r["world"])
sys.exit(0)
