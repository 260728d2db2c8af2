"""torchrun for the tests, minus N interpreter start-ups: torch's own elastic launcher (the engine behind
`torch.distributed.run`: rendezvous, RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR in each worker's environment,
failure reporting) with a function entrypoint, whose workers are forked from this process after the heavy imports
(torch, diffusers, peft, transformers: ~10 s of CPU per process on this machine). Each worker then runs the same
code as `torchrun -m vpae.cli ...` or `torchrun tests/dist_worker.py ...`.

    python tests/fork_launch.py NPROC -m vpae.cli distill --config C --out OUT --set k=v ...
    python tests/fork_launch.py NPROC tests/dist_worker.py distill OUT --config C ...
"""

import os
import runpy
import sys
import uuid

import torch

import vpae.cli  # noqa: F401  (imported once, here: the forked workers inherit it)
import vpae.recipes  # noqa: F401


def worker(argv: list[str]) -> None:
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    if argv[0] == "-m":
        sys.argv = [argv[1], *argv[2:]]
        runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
    else:
        sys.argv = list(argv)
        runpy.run_path(argv[0], run_name="__main__")


def main() -> None:
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch
    nproc, argv = int(sys.argv[1]), sys.argv[2:]
    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=nproc, run_id=uuid.uuid4().hex,
                          rdzv_backend="c10d", rdzv_endpoint="localhost:0", max_restarts=0, monitor_interval=0.1,
                          start_method="fork")
    elastic_launch(config, worker)(argv)


if __name__ == "__main__":
    main()
