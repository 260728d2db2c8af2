"""Scale-out: per-rank bytes of parameters, gradients and optimizer states, and step time, of phase I
(PrimingPhase) and phase II (EquilibriumPhase, unified backbone) at 1 process (no sharding) and 2 ranks (torchrun,
gloo, every network sharded by the project's parallel.shard_networks), measured in ONE run of this script.

    .venv/bin/python benchmarks/bench_distributed.py [--dim 512 --layers 8 --batch 2 --size 16 --repeats 3]

The script is a driver: it starts both configurations at once, a plain process (World(), nothing sharded) and a
`python -m torch.distributed.run --standalone --nproc_per_node 2` group, one torch thread per rank, and steps them
in turn (interleaved rounds, the order alternating each round) through command files, so that the two never run
at the same time and see the same machine load. Each worker builds its networks with
recipes.build_networks(cfg, data, build_method(cfg), world) (parallel.shard_networks under torchrun; the EMA is
then made before sharding by the method), steps PrimingPhase, then EquilibriumPhase (on the same Networks), each
through a loop.PhaseStepper (phase.start(), then the phase's optimizers), inside randomness.batch_stream like the
training loop; phase I's optimizers are released before phase II's are built, as recipes.run_distill does (the
loop frees a phase's optimizers at its end). --batch is the GLOBAL batch: the 2 ranks each take half of its rows
(rank r holds rows r*b..r*b+b-1).

Bytes are counted, per rank, after the timed steps of each phase: every parameter of every network (a FSDP2
DTensor counts its local shard, p.to_local()), every .grad that exists (likewise), and every optimizer state tensor
of the phase's optimizers (the PhaseStepper's, named "<phase>/<optimizer>"; likewise), by network and by
optimizer. The peak RSS of each rank during the timed steps is also
reported (VmHWM after a clear_refs reset; RSS includes allocator caches and the process's code, so it is an upper
bound and not halved by sharding). Writes outputs/benchmarks/distributed.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

WORLDS = (1, 2)
PHASES = ("priming", "equilibrium")


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("model and data (default: the 'weight-dominated' size of bench_phase1/2)")
    g.add_argument("--layers", type=int, default=8)
    g.add_argument("--dim", type=int, default=512)
    g.add_argument("--head-dim", type=int, default=32)
    g.add_argument("--ffn", type=int, default=0, help="FFN width (0: 4 x dim)")
    g.add_argument("--patch", type=int, default=4)
    g.add_argument("--batch", type=int, default=2, help="GLOBAL batch (split over the ranks)")
    g.add_argument("--frames", type=int, default=9)
    g.add_argument("--size", type=int, default=16)
    g.add_argument("--lora-rank", type=int, default=64)
    g.add_argument("--generator-mode", default="full", choices=("full", "lora"))
    g.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"), help="model.dtype")
    g.add_argument("--param-dtype", default="", help="parallel.param_dtype (default: the config default)")
    g.add_argument("--fake-updates", type=int, default=1, help="priming.fake_updates_per_generator (paper: 5)")
    r = p.add_argument_group("run")
    r.add_argument("--repeats", type=int, default=3, help="timed steps per phase and world size (interleaved)")
    r.add_argument("--warmup", type=int, default=1)
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--timeout", type=float, default=1200.0, help="seconds to wait for one worker answer")
    r.add_argument("--out", default="", help="JSON path (default outputs/benchmarks/distributed.json)")
    r.add_argument("--worker", default="", help=argparse.SUPPRESS)  # control folder (worker mode)
    return p.parse_args(argv)


# ----------------------------------------------------------------------------------------------
# Worker: one configuration (1 process, or every rank of the torchrun group)

def _local(t):
    """The tensor this rank holds: the local shard of a DTensor, else the tensor."""
    return t.to_local() if hasattr(t, "to_local") else t


def _nbytes(t) -> int:
    t = _local(t)
    return t.numel() * t.element_size()


def count_bytes(nets, optimizers: dict) -> dict:
    """Per-rank bytes of parameters, gradients and optimizer states, by network / optimizer. nets: a
    training.model.Networks; optimizers: name -> torch optimizer (the optimizers that exist now)."""
    import torch
    mods = {"teacher (+fake LoRA)": nets.teacher, "generator": nets.generator, "ema": nets.ema,
            "heads": nets.heads, **nets.others}
    params, grads, numel = {}, {}, {}
    seen = set()
    for name, m in mods.items():
        if m is None:
            continue
        pb = gb = n = 0
        for p in m.parameters():
            if id(p) in seen:
                continue
            seen.add(id(p))
            pb += _nbytes(p)
            n += p.numel()  # global count (a DTensor's numel is the full tensor's)
            if p.grad is not None:
                gb += _nbytes(p.grad)
        params[name], grads[name], numel[name] = pb, gb, n
    opt = {}
    for k, o in optimizers.items():
        opt[k] = sum(_nbytes(t) for st in o.state.values() for t in st.values() if torch.is_tensor(t))
    total = sum(params.values()) + sum(grads.values()) + sum(opt.values())
    return {"params": params, "grads": grads, "optimizer": opt, "global_numel": numel,
            "totals": {"params": sum(params.values()), "grads": sum(grads.values()),
                       "optimizer": sum(opt.values()), "all": total}}


def worker_main(args) -> None:
    import torch
    torch.set_num_threads(1)
    from model_setup import data_stub, make_batch, make_cfg
    from procmem import proc_status_kb, reset_hwm
    from vpae import randomness
    from vpae.recipes import build_method, build_networks
    from vpae.training import parallel
    from vpae.training.loop import PhaseStepper, step_seed
    from vpae.training.methods.vpae import EquilibriumPhase, PrimingPhase

    world = parallel.init_world("cpu", "gloo")
    ctl = Path(args.worker)
    tag = f"w{world.size}"
    if args.batch % world.size:
        raise SystemExit(f"--batch {args.batch} is not divisible by {world.size} ranks")
    cfg = make_cfg(argparse.Namespace(**{**vars(args), "device": "cpu"}),
                     priming={"fake_updates_per_generator": args.fake_updates},
                     equilibrium={"backbone": "unified", "head": "semantic"})
    if args.param_dtype:
        cfg.parallel.param_dtype = args.param_dtype
    t0 = time.perf_counter()
    nets = build_networks(cfg, data_stub(), build_method(cfg), world)
    build_s = time.perf_counter() - t0
    # the global batch (equal on every rank: a pure function of the seed), then this rank's rows
    x_all, cond_all = make_batch(argparse.Namespace(**{**vars(args), "device": "cpu"}))
    b = args.batch // world.size
    rows = slice(world.rank * b, world.rank * b + b)
    x = x_all[rows].contiguous()
    cond = cond_all.__class__(**{k: (v[rows].contiguous() if torch.is_tensor(v) else v)
                                 for k, v in vars(cond_all).items()})

    # which dtype the blocks compute in (FSDP2's MixedPrecisionPolicy casts the gathered weights)
    seen_dtype = {}
    lin = nets.generator.model.blocks[0].attn1.to_q
    lin = getattr(lin, "base_layer", lin)

    def probe(m, i, o):
        seen_dtype.setdefault("weight", str(m.weight.dtype))
        seen_dtype.setdefault("input", str(i[0].dtype))
    lin.register_forward_hook(probe)

    steppers = {"priming": PhaseStepper(PrimingPhase(nets, cfg))}

    def optimizers() -> dict:
        """The optimizers that exist now (those of the phase being stepped), as "<phase>/<optimizer>"."""
        return {f"{ph}/{k}": o for ph, s in steppers.items() for k, o in s.optimizers.optimizers.items()}

    result = {"rank": world.rank, "world_size": world.size, "build_s": build_s, "local_batch": b,
              "params_dtype": str(next(nets.generator.parameters()).dtype), "times": {p: [] for p in PHASES},
              "bytes": {}, "peak_rss": {}, "rss_before": {}}
    counter = {p: 0 for p in PHASES}

    def run_step(phase):
        i = counter[phase]
        counter[phase] += 1
        seed = step_seed(args.seed, phase, i)
        torch.manual_seed(seed)
        world.barrier()
        t = time.perf_counter()
        with randomness.batch_stream(seed, world.rank):
            steppers[phase].step(i, x, cond)
        world.barrier()
        return time.perf_counter() - t

    def answer(n, payload):
        if world.main:
            tmp = ctl / f"{tag}.ans{n}.tmp"
            tmp.write_text(json.dumps(payload))
            os.replace(tmp, ctl / f"{tag}.ans{n}")

    answer(0, {"ready": True, "build_s": build_s})
    n = 1
    while True:
        cmd_file = ctl / f"{tag}.cmd{n}"
        while not cmd_file.exists():
            time.sleep(0.05)
        cmd = json.loads(cmd_file.read_text())
        if cmd["op"] == "step":
            phase = cmd["phase"]
            if phase == "equilibrium" and phase not in steppers:
                result["bytes"]["priming"] = count_bytes(nets, optimizers())  # what phase I holds at its end
                result["peak_rss"]["priming"] = proc_status_kb("VmHWM") * 1024
                # as run_distill does: the loop releases phase I's optimizers at its end, then phase II starts
                # (EMA <- the primed generator) and builds its own
                steppers.pop("priming").optimizers.release()
                steppers["equilibrium"] = PhaseStepper(EquilibriumPhase(nets, cfg))
            if cmd.get("arm"):  # first timed step of this phase: reset the RSS high-water mark
                result["rss_before"][phase] = proc_status_kb("VmRSS") * 1024
                reset_hwm()
            dt = run_step(phase)
            if cmd.get("timed"):
                result["times"][phase].append(dt)
            answer(n, {"dt": dt})
        elif cmd["op"] == "finish":
            result["bytes"]["equilibrium"] = count_bytes(nets, optimizers())
            result["peak_rss"]["equilibrium"] = proc_status_kb("VmHWM") * 1024
            # phase I's optimizers were released before phase II started, as in recipes.run_distill
            result["seen_compute_dtype"] = seen_dtype
            results = [None] * world.size
            if world.distributed:
                import torch.distributed as dist
                dist.all_gather_object(results, result)
            else:
                results = [result]
            answer(n, {"results": results})
            break
        n += 1
    parallel.close_world(world)


# ----------------------------------------------------------------------------------------------
# Driver

class Worker:
    def __init__(self, size: int, ctl: Path, argv: list[str], log_dir: Path):
        self.size, self.ctl, self.n = size, ctl, 0
        script = str(Path(__file__).resolve())
        launcher = ([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={size}"]
                    if size > 1 else [sys.executable])
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
        self.log = open(log_dir / f"w{size}.log", "w")
        self.proc = subprocess.Popen(launcher + [script, *argv, "--worker", str(ctl)], env=env, cwd=HERE.parent,
                                     stdout=self.log, stderr=subprocess.STDOUT)

    def wait(self, n: int, timeout: float) -> dict:
        f = self.ctl / f"w{self.size}.ans{n}"
        t0 = time.time()
        while not f.exists():
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.size}-rank worker exited ({self.proc.returncode}); see {self.log.name}")
            if time.time() - t0 > timeout:
                raise TimeoutError(f"{self.size}-rank worker gave no answer {n} in {timeout} s")
            time.sleep(0.05)
        return json.loads(f.read_text())

    def send(self, cmd: dict, timeout: float) -> dict:
        self.n += 1
        tmp = self.ctl / f"w{self.size}.cmd{self.n}.tmp"
        tmp.write_text(json.dumps(cmd))
        os.replace(tmp, self.ctl / f"w{self.size}.cmd{self.n}")
        return self.wait(self.n, timeout)


def mib(b: float) -> float:
    return b / 2 ** 20


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    args = parse(argv)
    if args.worker:
        return worker_main(args)

    from model_setup import LATENT_C
    from reporting import OUT_DIR, ROOT, command_line, machine_info, machine_line, md_table
    info = machine_info(argparse.Namespace(device="cpu"))
    info["torch_threads"] = 1
    out_path = Path(args.out) if args.out else OUT_DIR / "distributed.json"
    out_path.parent.mkdir(parents=True, exist_ok=True)
    ctl = Path(tempfile.mkdtemp(prefix="vpae_bench_dist_"))
    t_start = time.perf_counter()
    workers = {w: Worker(w, ctl, argv, out_path.parent) for w in WORLDS}
    try:
        build = {w: workers[w].wait(0, args.timeout)["build_s"] for w in WORLDS}
        load = {"start": list(os.getloadavg())}
        order_log = []
        for phase in PHASES:
            for r in range(args.warmup + args.repeats):
                order = WORLDS if r % 2 == 0 else WORLDS[::-1]
                for w in order:
                    order_log.append((phase, r, w))
                    workers[w].send({"op": "step", "phase": phase, "timed": r >= args.warmup,
                                     "arm": r == args.warmup}, args.timeout)
        load["end"] = list(os.getloadavg())
        res = {w: workers[w].send({"op": "finish"}, args.timeout)["results"] for w in WORLDS}
        for w in WORLDS:
            workers[w].proc.wait(timeout=120)
    finally:
        for w in workers.values():
            if w.proc.poll() is None:
                w.proc.kill()
            w.log.close()
    wall = time.perf_counter() - t_start

    # ---- numbers
    med = {w: {p: statistics.median(res[w][0]["times"][p]) for p in PHASES} for w in WORLDS}
    rows_bytes, rows_time, per_param = [], [], {}
    summary = {}
    for phase in PHASES:
        one = res[1][0]["bytes"][phase]
        two = [r["bytes"][phase] for r in res[2]]
        summary[phase] = {}
        for kind in ("params", "grads", "optimizer", "all"):
            a = one["totals"][kind]
            bs = [t["totals"][kind] for t in two]
            summary[phase][kind] = {"1_rank": a, "2_ranks_per_rank": bs, "ratio_rank0": bs[0] / a if a else None}
            rows_bytes.append([phase, kind, mib(a), " / ".join(f"{mib(x):.1f}" for x in bs),
                               f"{bs[0] / a:.3f}" if a else "-"])
        # per role / optimizer
        for section in ("params", "grads", "optimizer"):
            for k, a in one[section].items():
                bs = [t[section].get(k, 0) for t in two]
                summary[phase].setdefault("by_role", {})[f"{section}:{k}"] = {"1_rank": a, "2_ranks_per_rank": bs}
            for k in two[0][section]:
                if k not in one[section]:
                    summary[phase].setdefault("by_role", {})[f"{section}:{k}"] = {
                        "1_rank": 0, "2_ranks_per_rank": [t[section][k] for t in two]}
        rows_time.append([phase, med[1][phase], med[2][phase], med[1][phase] / med[2][phase],
                          " ".join(f"{x:.2f}" for x in res[1][0]["times"][phase]),
                          " ".join(f"{x:.2f}" for x in res[2][0]["times"][phase])])
    # bytes per parameter of each role (1 rank, unsharded): what the 14B plan scales
    one_eq = res[1][0]["bytes"]["equilibrium"]
    n_gen = one_eq["global_numel"]["generator"]
    per_param = {
        "generator_weight": one_eq["params"]["generator"] / n_gen,
        "generator_grad": one_eq["grads"]["generator"] / n_gen,
        "generator_adam_phase2": one_eq["optimizer"]["equilibrium/generator"] / n_gen,
        "generator_adam_phase1_still_held": one_eq["optimizer"].get("priming/generator", 0) / n_gen,
        "ema_weight": one_eq["params"]["ema"] / one_eq["global_numel"]["ema"],
    }

    # ---- report
    a0 = res[1][0]
    out = [f"# Scale-out: FSDP2 per-rank bytes and step time, 1 process vs 2 ranks\n\n`{command_line()}`\n",
           machine_line(info, argparse.Namespace(device="cpu")).rstrip() +
           f" Load avg at the end: {load['end'][0]:.2f}. Whole run {wall:.0f} s.\n",
           f"Model: Wan I2V, {args.layers} layers, dim {args.dim} ({args.dim // args.head_dim} heads x {args.head_dim}), "
           f"{n_gen:,} params per backbone, model.dtype {args.dtype}, generator {args.generator_mode}, fake LoRA rank "
           f"{args.lora_rank}; global batch {args.batch} (per rank: 1 process {res[1][0]['local_batch']}, 2 ranks "
           f"{res[2][0]['local_batch']}), latent {LATENT_C}x{args.frames}x{args.size}x{args.size}, patch "
           f"1x{args.patch}x{args.patch}; phase I K = {args.fake_updates}; phase II unified backbone, semantic head. "
           f"2 ranks: torchrun + gloo, parallel.shard_networks (param_dtype {args.param_dtype or 'config default'}); "
           f"blocks computed in {res[2][0].get('seen_compute_dtype', {})} (2 ranks) vs "
           f"{a0.get('seen_compute_dtype', {})} (1 process).\n",
           "## Per-rank bytes (counted after the timed steps; FSDP2 DTensors: local shard)\n",
           md_table(["phase", "what", "1 process MiB", "2 ranks MiB per rank (rank 0 / rank 1)", "rank 0 / 1 process"],
                      rows_bytes),
           "\nBy role (MiB, 1 process -> 2 ranks rank 0):\n"]
    for phase in PHASES:
        items = ", ".join(f"{k} {mib(v['1_rank']):.1f} -> {mib(v['2_ranks_per_rank'][0]):.1f}"
                          for k, v in summary[phase]["by_role"].items() if v["1_rank"] or v["2_ranks_per_rank"][0])
        out.append(f"* {phase}: {items}")
    out.append("\nPeak RSS per rank during the timed steps (MiB; upper bound, includes ~0.5-1 GiB of code and "
               "allocator caches, not sharded): " + "; ".join(
                   f"{p}: 1 process {mib(res[1][0]['peak_rss'][p]):.0f}, 2 ranks "
                   + "/".join(f"{mib(r['peak_rss'][p]):.0f}" for r in res[2]) for p in PHASES) + "\n")
    out.append(f"## Step time (median of {args.repeats} interleaved steps after {args.warmup} warm-up; same global batch)\n")
    out.append(md_table(["phase", "1 process s", "2 ranks s", "speed-up (1 / 2)", "1 process raw s", "2 ranks raw s"],
                          rows_time))
    out.append("\nBytes per parameter at 1 process (phase II, " + args.dtype + "): " +
               ", ".join(f"{k} {v:.2f}" for k, v in per_param.items()) + "\n")
    text = "\n".join(out)
    print(text)
    payload = {"command": command_line(), "args": vars(args), "machine": info, "loadavg": load, "wall_s": wall,
               "build_s": build, "order": order_log, "median_seconds": med, "summary": summary,
               "bytes_per_param_1_process": per_param, "workers": {str(w): res[w] for w in WORLDS},
               "report_markdown": text}
    out_path.write_text(json.dumps(payload, indent=1))
    print(f"wrote {out_path.relative_to(ROOT) if out_path.is_relative_to(ROOT) else out_path}")
    import shutil
    shutil.rmtree(ctl, ignore_errors=True)


if __name__ == "__main__":
    main()
