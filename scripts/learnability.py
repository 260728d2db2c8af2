"""Toy-teacher learnability study: train several toy worlds / model sizes from scratch with `vpae pretrain`'s
own code (run_pretrain) side by side, each tracked by the direction-word probe in its log, then score each
EMA teacher with the oracle per sampler. Written for the lent GPU machine (all runs at once, one process
each); every run is the CPU recipe of configs/toy/teacher.yaml with a few overrides, so its step count maps
to CPU wall time through the CPU step rates measured by `--cpu-rates` (docs/TEACHER.md).

  python scripts/learnability.py grid OUT [--device cuda] [--max-seconds S] [--only A,B]
  python scripts/learnability.py cpu-rates [--steps 20]   # CPU seconds per step of every grid member
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

CONFIG = "configs/toy/teacher.yaml"
GRID: dict[str, list[str]] = {
    "A_shipped": [],                                           # 5 x 16 x 16, 1 and 2 px/frame, 4 blocks
    "B_fast3px": ["data.toy.fast_travel=0.75"],                # 1 and 3 px/frame
    "C_9frames": ["data.frames=9"],                            # 144 tokens
    "D_24px": ["data.height=24", "data.width=24"],             # 180 tokens
    "E_8blocks": ["model.wan_config.num_layers=8"],
    "F_shift1": ["pretrain.sigma_shift=1.0"],
    "G_patch2": ["model.wan_config.patch_size=[1,2,2]"],      # 320 tokens, no 4x4 patch grid
    "H_32px": ["data.height=32", "data.width=32"],             # 320 tokens
}


def _cfg(name: str, device: str, extra: list[str]):
    from vpae.config import load_config
    return load_config(CONFIG, GRID[name] + [f"train.device={device}"] + extra)


def one(name: str, out: Path, device: str, max_seconds: float) -> dict:
    from vpae.models import load_wan_backbone
    from vpae.recipes import build_data, run_pretrain
    from vpae.toy.evaluate import direction_sensitivity, ground_truth_report, oracle_eval, teacher_sweep
    from vpae.training.loop import read_log
    cfg = _cfg(name, device, [f"pretrain.max_seconds={max_seconds}", "train.num_workers=1"])
    t0 = time.time()
    r = run_pretrain(cfg, out / f"run_{name}", out / f"teacher_{name}", progress=False)
    res = {"name": name, "overrides": GRID[name], "train_seconds": time.time() - t0, "steps": r["step"],
           "log": [{k: v for k, v in row.items() if not k.startswith("time/")}
                   for row in read_log(out / f"run_{name}" / "log.jsonl")]}
    data = build_data(cfg)
    batch = data.heldout(64)
    teacher = load_wan_backbone(out / f"teacher_{name}").to(device)
    res["probe"] = direction_sensitivity(teacher, data, batch)
    res["ground_truth"] = ground_truth_report(data, batch)
    res["samplers"] = {}
    for m in teacher_sweep(cfg.sampling.teacher_steps, cfg.sampling.shift):
        rep, _ = oracle_eval(teacher, data, batch, m)
        res["samplers"][m.name] = {k: round(v, 4) if isinstance(v, float) else v for k, v in rep.items()}
    res["params"] = sum(p.numel() for p in teacher.parameters())
    return res


def grid(out: Path, device: str, max_seconds: float, only: list[str]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    procs = {}
    for name in only:
        log = open(out / f"{name}.stdout", "w")
        procs[name] = subprocess.Popen([sys.executable, __file__, "one", name, str(out), device, str(max_seconds)],
                                       stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "OMP_NUM_THREADS": "1"})
    results = {}
    for name, p in procs.items():
        rc = p.wait()
        f = out / f"{name}.json"
        results[name] = json.loads(f.read_text()) if f.is_file() else \
            {"error": rc, "tail": (out / f"{name}.stdout").read_text()[-2000:]}
        print(name, "rc", rc, json.dumps({k: results[name].get(k) for k in ("steps", "train_seconds", "probe")}), flush=True)
    (out / "results.json").write_text(json.dumps(results, indent=1))


def cpu_rates(steps: int) -> None:
    """CPU seconds per step of each grid member, measured one after another in this process (side by side)."""
    import torch

    from vpae.models import build_teacher
    from vpae.recipes import build_data
    from vpae.training.loop import PhaseStepper
    from vpae.training.methods.pretrain import FlowMatchingPhase
    from vpae.training.model import make_ema
    rates = {}
    for name in GRID:
        cfg = _cfg(name, "cpu", [])
        data = build_data(cfg)
        model = build_teacher(cfg).requires_grad_(True)
        step = PhaseStepper(FlowMatchingPhase(model, make_ema(model), cfg))
        fn = data.batch_fn(cfg.pretrain.batch_size, 0)
        step.step(0, *fn(0))
        t0 = time.perf_counter()
        for k in range(1, steps + 1):
            step.step(k, *fn(k))
        rates[name] = (time.perf_counter() - t0) / steps
        print(f"{name}: {rates[name]:.3f} s/step ({torch.get_num_threads()} threads)", flush=True)
    print(json.dumps(rates))


if __name__ == "__main__":
    cmd = sys.argv[1]
    if cmd == "one":
        name, out, device, ms = sys.argv[2], Path(sys.argv[3]), sys.argv[4], float(sys.argv[5])
        (out / f"{name}.json").write_text(json.dumps(one(name, out, device, ms), indent=1))
    elif cmd == "grid":
        args = sys.argv[2:]
        out = Path(args[0])
        opt = dict(zip(args[1::2], args[2::2]))
        only = opt.get("--only", ",".join(GRID)).split(",")
        grid(out, opt.get("--device", "cuda"), float(opt.get("--max-seconds", 300)), only)
    elif cmd == "cpu-rates":
        cpu_rates(int(dict(zip(sys.argv[2::2], sys.argv[3::2])).get("--steps", 20)))
    else:
        sys.exit(f"error: unknown command {cmd!r}; use grid, one or cpu-rates")
