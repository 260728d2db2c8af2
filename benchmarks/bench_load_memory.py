"""Host memory of building the networks under torchrun: per-rank peak RSS at 1, 2 and 4 ranks, measured in ONE run.

    .venv/bin/python benchmarks/bench_load_memory.py [--dim 512 --layers 8 --ranks 1 2 4]

Each configuration is a fresh process group (`python -m torch.distributed.run --nproc_per_node N`, gloo, CPU; 1 is
a plain process) whose ranks build phase II's networks (teacher + fake LoRA, generator, EMA, heads) with
recipes.build_networks, as `vpae distill` does: under torchrun rank 0 builds them whole in CPU memory, the other
ranks only their shapes on the meta device, then every network is sharded (FSDP2) and filled from rank 0 by
broadcast. Reported per rank: the peak RSS since process start (VmHWM) minus the RSS after the imports, and the
bytes of the parameters it holds afterwards (its shards). RSS includes allocator caches, so it is an upper bound
of the live bytes. Writes outputs/benchmarks/load_memory.json and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--ranks", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--out", type=Path, default=ROOT / "outputs/benchmarks/load_memory.json")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def child(args) -> None:
    import torch

    from model_setup import data_stub, make_cfg
    from procmem import proc_status_kb
    torch.set_num_threads(1)
    from vpae.recipes import build_method, build_networks
    from vpae.training import parallel
    base_kb = proc_status_kb("VmRSS")
    ns = argparse.Namespace(layers=args.layers, dim=args.dim, head_dim=32, ffn=0, patch=4, batch=4, frames=9, size=16,
                            lora_rank=64, generator_mode="full", dtype="float32", device="cpu", seed=0)
    cfg = make_cfg(ns)
    world = parallel.init_world("cpu", parallel_cfg=cfg.parallel)
    method = build_method(cfg)
    nets = build_networks(cfg, data_stub(), method, world)
    nets.make_ema()  # one process: phase II's EMA (under torchrun the method made it before sharding)
    local = sum((p.to_local() if hasattr(p, "to_local") else p).numel() * p.element_size()
                for m in nets.all() for p in m.parameters())
    full = sum(p.numel() for p in nets.generator.parameters())
    record = {"rank": world.rank, "ranks": world.size, "peak_rss_mib": (proc_status_kb("VmHWM") - base_kb) / 1024,
              "param_mib_held": local / 2**20, "generator_params_m": full / 1e6}
    parallel.close_world(world)
    print("RESULT " + json.dumps(record), flush=True)


def main(argv=None) -> None:
    args = parse(argv)
    if args.child:
        return child(args)
    rows = []
    child_args = [str(Path(__file__).resolve()), "--child", "--layers", str(args.layers), "--dim", str(args.dim)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    for n in args.ranks:
        launcher = [sys.executable] if n == 1 else [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                                    f"--nproc_per_node={n}"]
        proc = subprocess.run(launcher + child_args, env=env, cwd=ROOT, capture_output=True, text=True, timeout=1800)
        if proc.returncode:
            raise SystemExit(proc.stderr[-3000:])
        found = [json.loads(line.split("RESULT ", 1)[1]) for line in proc.stdout.splitlines() if "RESULT " in line]
        rows += sorted(found, key=lambda r: r["rank"])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"layers": args.layers, "dim": args.dim, "rows": rows}, indent=1))
    print(f"generator: {rows[0]['generator_params_m']:.1f} M parameters; networks: teacher + fake LoRA, generator, "
          f"EMA, heads (float32)\n")
    print("| ranks | rank | peak RSS while building (MiB) | parameter bytes held after sharding (MiB) |")
    print("|---|---|---|---|")
    for r in rows:
        print(f"| {r['ranks']} | {r['rank']} | {r['peak_rss_mib']:.0f} | {r['param_mib_held']:.0f} |")


if __name__ == "__main__":
    main()
