"""Tiny runs of several methods in one process group, for tests/test_distributed_methods.py (one torchrun
start-up instead of one per method):

    python -m torch.distributed.run --standalone --nproc_per_node N tests/dist_methods_worker.py OUT dmd2 md ... --set k=v
    python tests/dist_methods_worker.py OUT dmd2 md ... --set k=v          # the same runs in one process

Each method trains in OUT/<method> with the config plus `method=<method>`, as `vpae distill` would.
"""

import argparse
import os
import sys
from pathlib import Path

import torch

ap = argparse.ArgumentParser()
ap.add_argument("out", type=Path)
ap.add_argument("methods", nargs="+")
ap.add_argument("--config", default="configs/toy/demo.yaml")
ap.add_argument("--set", dest="overrides", action="append", default=[])
args = ap.parse_args()
torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))

from vpae.config import load_config  # noqa: E402
from vpae.recipes import run_distill  # noqa: E402
from vpae.training.parallel import close_world  # noqa: E402

world = None
for method in args.methods:
    r = run_distill(load_config(args.config, args.overrides + [f"method={method}"]), args.out / method, progress=False)
    world = r["world"]
    world.barrier()  # rank 0 exports alone; the next method's collectives start on every rank together
close_world(world)
sys.exit(0)
