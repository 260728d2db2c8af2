"""Phase I (stability priming) cost versus plain flow-matching fine-tuning, and the shared-weight LoRA
fake score versus a full fake-score copy.

    .venv/bin/python benchmarks/bench_phase1.py [--layers N --dim D --batch B --frames F --size S
                                                 --device cpu|cuda --repeats R --fake-updates 1 5]

Step times: every variant is built in this process and stepped in turn (interleaved, rotating order);
medians of --repeats timed steps after --warmup untimed ones, and ratios of the medians.
Peak memory: each variant in a fresh subprocess (see benchmarks/procmem.py and subprocs.py for the method).
Writes outputs/benchmarks/phase1.json.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from accounting import GIB, MIB, count_params, lora_param_count, mib  # noqa: E402
from memory_arithmetic import scale_report  # noqa: E402
from model_setup import LATENT_C, Variant, add_model_args, data_stub, make_batch, make_cfg, start  # noqa: E402
from reporting import ROOT, command_line, machine_info, machine_line, md_table, peak_description, write_json  # noqa: E402
from subprocs import child_main, run_children  # noqa: E402
from timing import interleaved_timing, median  # noqa: E402


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(p)
    p.add_argument("--fake-updates", type=int, nargs="+", default=[1, 5],
                   help="PrimingConfig.fake_updates_per_generator values to benchmark")
    return p.parse_args(argv)


# ----------------------------------------------------------------------------------------------
# Variants

def build_fm(args) -> Variant:
    """Plain flow-matching fine-tuning of the same model: vpae.training.methods.pretrain.FlowMatchingPhase
    (AdamW + EMA), stepped with its optimizers by vpae.training.loop.PhaseStepper."""
    from vpae.models import build_teacher
    from vpae.training import model as M
    from vpae.training.loop import PhaseStepper
    from vpae.training.methods.pretrain import FlowMatchingPhase
    torch.manual_seed(args.seed)
    cfg = make_cfg(args)
    model = build_teacher(cfg)
    model.requires_grad_(True)
    ema = M.make_ema(model)
    stepper = PhaseStepper(FlowMatchingPhase(model, ema, cfg))
    x, cond = make_batch(args)
    return Variant("fm", lambda i: stepper.step(i, x, cond), {"model": model, "ema": ema},
                   stepper.optimizers.optimizers)


def build_priming(args, k: int) -> Variant:
    """Phase I as the recipe wires it: recipes.build_networks (generator copy + teacher with the fake LoRA),
    methods.vpae.PrimingPhase, stepped with its optimizers by loop.PhaseStepper."""
    from vpae.recipes import build_method, build_networks
    from vpae.training.loop import PhaseStepper
    from vpae.training.methods.vpae import PrimingPhase
    torch.manual_seed(args.seed)
    cfg = make_cfg(args, priming={"fake_updates_per_generator": k})
    nets = build_networks(cfg, data_stub(), build_method(cfg))
    stepper = PhaseStepper(PrimingPhase(nets, cfg))
    x, cond = make_batch(args)
    return Variant(f"phase1_k{k}", lambda i: stepper.step(i, x, cond),
                   {"teacher": nets.teacher, "generator": nets.generator}, stepper.optimizers.optimizers)


def build_fake(args, design: str) -> Variant:
    """One fake-score update (eq. 2, the inner loop of PrimingPhase) on a detached sample, with either
    design: 'lora' = the teacher's weights shared, only the "fake" LoRA trains (the project's design);
    'full' = a separate full trainable copy of the teacher beside the frozen teacher (the real score)."""
    from vpae import flow, randomness
    from vpae.losses import fake_score_loss
    from vpae.models import build_teacher
    from vpae.training import model as M
    from vpae.training.loop import clip_and_norm
    torch.manual_seed(args.seed)
    cfg = make_cfg(args)
    p = cfg.priming
    teacher = build_teacher(cfg)
    if design == "lora":
        M.make_teacher_and_fake(teacher, p.lora_rank, p.lora_alpha, p.lora_targets)
        fake, modules = teacher, {"teacher+fake_lora": teacher}
    else:
        M.freeze(teacher)
        fake = M.copy_generator(teacher, "full")  # a full trainable copy
        modules = {"teacher": teacher, "fake_copy": fake}
    params = M.trainable_parameters(fake)
    opt = torch.optim.Adam(params, lr=p.fake_lr, betas=tuple(p.fake_betas))
    x, cond = make_batch(args)
    x0_gen = torch.randn_like(x)  # stands in for a detached generator sample

    def update(_i):
        t = randomness.uniform(x0_gen.shape[0], p.renoise_band, x0_gen.device)
        eps = torch.randn_like(x0_gen)
        if design == "lora":
            with M.fake_score(teacher):
                v = teacher.velocity(flow.add_noise(x0_gen, eps, t), t, cond)
        else:
            v = fake.velocity(flow.add_noise(x0_gen, eps, t), t, cond)
        loss = fake_score_loss(v, x0_gen, eps).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        clip_and_norm(params, p.grad_clip)
        opt.step()

    return Variant(f"fake_{design}", update, modules, {"fake_opt": opt})


def builders(args) -> dict:
    b = {"fm": lambda: build_fm(args), "fake_lora": lambda: build_fake(args, "lora"),
         "fake_full": lambda: build_fake(args, "full")}
    for k in args.fake_updates:
        b[f"phase1_k{k}"] = (lambda k=k: build_priming(args, k))
    return b


# ----------------------------------------------------------------------------------------------

def main(argv=None):
    argv, args, B = start(argv, parse, builders)
    if args.child:
        return child_main(args, B)

    info = machine_info(args)
    step_names = ["fm"] + [f"phase1_k{k}" for k in args.fake_updates]
    fake_names = ["fake_lora", "fake_full"]
    variants = {n: B[n]() for n in step_names + fake_names}

    # Parameter counts and the analytic byte model at this (toy) scale.
    from vpae.config import PrimingConfig
    teacher_n = count_params(variants["fake_full"].modules["teacher"], False)
    lora_n = count_params(variants["fake_lora"].modules["teacher+fake_lora"], True)
    lora_analytic = lora_param_count(variants["fake_full"].modules["teacher"].model, args.lora_rank,
                                       PrimingConfig().lora_targets)
    wbytes = torch.finfo(getattr(torch, args.dtype)).bits // 8
    # Adam keeps m and v in the parameter dtype here (torch default), grads too.
    analytic = {"lora": wbytes * teacher_n + 4 * wbytes * lora_n, "full": wbytes * teacher_n + 4 * wbytes * teacher_n}

    # Interleaved timing.
    times = interleaved_timing([variants[n] for n in step_names], args.repeats, args.warmup, args.device)
    times.update(interleaved_timing([variants[n] for n in fake_names], args.repeats, args.warmup, args.device))
    med = {n: median(t) for n, t in times.items()}
    del variants

    mem = {}
    if not args.no_memory:
        mem = run_children(__file__, argv, step_names + fake_names, args.threads)

    # ---- report
    out = [f"# Phase I benchmark\n\n`{command_line()}`\n",
           machine_line(info, args),
           f"Model: Wan I2V, {args.layers} layers, dim {args.dim}, {teacher_n:,} params; batch {args.batch}, latent "
           f"{LATENT_C}x{args.frames}x{args.size}x{args.size}, patch 1x{args.patch}x{args.patch}; fake LoRA rank "
           f"{args.lora_rank}: {lora_n:,} params ({100 * lora_n / teacher_n:.1f}% of the model).\n",
           f"## Step time and peak memory: phase I (PrimingPhase) vs plain flow matching (FlowMatchingPhase)\n\n"
           f"Median of {args.repeats} interleaved steps; peak = {peak_description(args)}.\n"]
    rows = []
    for n in step_names:
        m = mem.get(n, {})
        rows.append([n, med[n], med[n] / med["fm"], mib(m["peak_bytes"]) if m else "-",
                     (m["peak_bytes"] / mem["fm"]["peak_bytes"]) if m else "-",
                     mib(m["tensors"]["total"]) if m else "-"])
    out.append(md_table(["variant", "step s (median)", "x plain FM", "peak MiB", "x plain FM",
                           "weights+grads+Adam MiB (counted)"], rows))
    out.append("\nfm = FlowMatchingPhase (AdamW on all weights + EMA update); phase1_kK = PrimingPhase with "
               "fake_updates_per_generator=K (K fake-score updates + 1 generator update with CFG real score).\n")

    out.append("## Fake score: shared-weight LoRA vs a full trainable copy (one fake-score update)\n")
    rows = []
    for d in ("lora", "full"):
        n = f"fake_{d}"
        m = mem.get(n, {})
        rows.append([d, med[n], analytic[d] / MIB, mib(m["tensors"]["total"]) if m else "-",
                     mib(m["peak_bytes"]) if m else "-"])
    rows.append(["lora / full", med["fake_lora"] / med["fake_full"], analytic["lora"] / analytic["full"],
                 (mem["fake_lora"]["tensors"]["total"] / mem["fake_full"]["tensors"]["total"]) if mem else "-",
                 (mem["fake_lora"]["peak_bytes"] / mem["fake_full"]["peak_bytes"]) if mem else "-"])
    out.append(md_table(["design", "update s (median)", "params+grads+Adam MiB (analytic)",
                           "params+grads+Adam MiB (counted)", "peak MiB (measured)"], rows))
    out.append(f"\nBoth designs include the frozen teacher ({teacher_n:,} params, the real score). LoRA params: "
               f"peft {lora_n:,}, analytic rank x (in+out) {lora_analytic:,}.\n")

    scale_text, scale = scale_report(["phase I, fake score = teacher + shared-weight LoRA",
                                        "phase I, fake score = full trainable copy"])
    out.append("## Scale notes: Wan2.1-I2V-14B (analytic)\n\n" + scale_text + "\n")
    d = scale["designs"]
    lo, fu = (d["phase I, fake score = teacher + shared-weight LoRA"]["total_bytes"],
              d["phase I, fake score = full trainable copy"]["total_bytes"])
    out.append(f"Shared-weight LoRA fake score saves {(fu - lo) / GIB:,.0f} GiB at 14B "
               f"(phase I total {lo / fu:.2f}x of the full-copy design).\n")
    text = "\n".join(out)
    print(text)

    payload = {"command": command_line(), "args": vars(args), "machine": info,
               "params": {"teacher": teacher_n, "fake_lora": lora_n, "fake_lora_analytic": lora_analytic},
               "step_seconds": times, "median_seconds": med,
               "ratios": {"time_vs_fm": {n: med[n] / med["fm"] for n in step_names},
                          "fake_lora_vs_full_time": med["fake_lora"] / med["fake_full"],
                          "fake_lora_vs_full_bytes_analytic": analytic["lora"] / analytic["full"]},
               "analytic_fake_bytes": analytic, "memory": mem, "scale_14b": scale, "report_markdown": text}
    if mem:
        payload["ratios"]["peak_vs_fm"] = {n: mem[n]["peak_bytes"] / mem["fm"]["peak_bytes"] for n in step_names}
        payload["ratios"]["fake_lora_vs_full_peak"] = mem["fake_lora"]["peak_bytes"] / mem["fake_full"]["peak_bytes"]
        payload["ratios"]["fake_lora_vs_full_bytes_counted"] = (mem["fake_lora"]["tensors"]["total"]
                                                                / mem["fake_full"]["tensors"]["total"])
    path = write_json(args, "phase1.json", payload)
    print(f"wrote {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")


if __name__ == "__main__":
    main()
