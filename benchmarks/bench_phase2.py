"""Phase II (unified adversarial equilibrium) cost per discriminator backbone: unified (the generator's
EMA) vs trained (its own full copy) vs frozen (the teacher), and trainable parameters per network.

    .venv/bin/python benchmarks/bench_phase2.py [--layers N --dim D --batch B --frames F --size S
                                                 --device cpu|cuda --repeats R --head semantic]

Step times: the three phase II variants are built in this process (recipes.build_networks +
methods.vpae.EquilibriumPhase, stepped with its optimizers by loop.PhaseStepper) and stepped in turn
(interleaved, rotating order); medians and ratios.
Peak memory: each variant in a fresh subprocess (see benchmarks/procmem.py and subprocs.py for the method).
Writes outputs/benchmarks/phase2.json.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from accounting import GIB, count_params, mib  # noqa: E402
from memory_arithmetic import scale_report  # noqa: E402
from model_setup import IMAGE_DIM, LATENT_C, TEXT_DIM, Variant, add_model_args, data_stub, make_batch, make_cfg, start  # noqa: E402
from reporting import ROOT, command_line, machine_info, machine_line, md_table, peak_description, write_json  # noqa: E402
from subprocs import child_main, run_children  # noqa: E402
from timing import interleaved_timing, median  # noqa: E402

BACKBONES = ("unified", "trained", "frozen")
HEADS = ("conv", "ca", "semantic")


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(p)
    p.add_argument("--head", default="semantic", choices=HEADS, help="discriminator head of the timed steps")
    p.add_argument("--backbones", nargs="+", default=list(BACKBONES), choices=BACKBONES)
    return p.parse_args(argv)


def build_step(args, backbone: str):
    """The networks and phase II started as run_distill starts it (the EMA, and for 'trained' its own full copy,
    made from the generator) with its optimizers: (nets, phase, stepper)."""
    from vpae.recipes import build_method, build_networks
    from vpae.training.loop import PhaseStepper
    from vpae.training.methods.vpae import EquilibriumPhase
    torch.manual_seed(args.seed)
    cfg = make_cfg(args, equilibrium={"backbone": backbone, "head": args.head})
    nets = build_networks(cfg, data_stub(), build_method(cfg))
    phase = EquilibriumPhase(nets, cfg)
    return nets, phase, PhaseStepper(phase)


def build_variant(args, backbone: str) -> Variant:
    nets, phase, stepper = build_step(args, backbone)
    x, cond = make_batch(args)
    modules = {"teacher": nets.teacher, **phase.modules()}
    return Variant(backbone, lambda i: stepper.step(i, x, cond), modules, stepper.optimizers.optimizers)


def builders(args) -> dict:
    return {b: (lambda b=b: build_variant(args, b)) for b in args.backbones}


def role_counts(args) -> tuple[list[list], dict]:
    """Trainable (and total) parameters of every network, on the model of this run."""
    from vpae.backbones.base import resolve_layers
    from vpae.config import EquilibriumConfig
    from vpae.discriminator import build_head
    nets, phase, _stepper = build_step(args, "trained")
    e = EquilibriumConfig()
    n_layers = len(resolve_layers(e.layers, nets.generator.num_layers))
    rows, d = [], {}

    def add(name, module):
        tr, tot = count_params(module, True), count_params(module, False)
        d[name] = {"trainable": tr, "total": tot}
        rows.append([name, tr, tot])

    add(f"generator ({args.generator_mode})", nets.generator)
    add("EMA (unified disc backbone)", nets.ema)
    for h in HEADS:
        add(f"heads: {h}", build_head(h, feature_dim=nets.generator.feature_dim, num_layers=n_layers,
                                      text_dim=TEXT_DIM, image_dim=IMAGE_DIM, hidden_dim=e.head_dim,
                                      num_queries=e.head_queries, num_heads=e.head_attn_heads))
    add("teacher: fake LoRA (trainable) / teacher + LoRA (total)", nets.teacher)
    add("trained disc backbone (own copy)", phase.disc_backbone)
    # Does the generator update allocate gradients for the 'trained' backbone's weights? (They are
    # requires_grad, and the generator's adversarial loss backpropagates through them.) Eq. 6's adversarial
    # term alone, outside the phase's generator_loss (which switches the discriminator's gradients off).
    x, cond = make_batch(args)
    from vpae.sampling import predict_x0
    z = torch.randn_like(x)
    x0 = predict_x0(nets.generator, z, torch.ones(x.shape[0], device=x.device), cond)[0]
    adv = phase.adversarial.generator(lambda x_t, t: phase.discriminate(x_t, t, cond, backbone_grad=True),
                                      phase.disc_view(x0, cond))
    adv.mean().backward()
    got = sum(p.grad is not None for p in phase.disc_backbone.parameters())
    d["trained_backbone_params_with_grad_after_generator_backward"] = got
    return rows, d


def main(argv=None):
    argv, args, B = start(argv, parse, builders)
    if args.child:
        return child_main(args, B)

    info = machine_info(args)
    names = list(args.backbones)
    count_rows, counts = role_counts(args)
    variants = {n: B[n]() for n in names}
    times = interleaved_timing([variants[n] for n in names], args.repeats, args.warmup, args.device)
    med = {n: median(t) for n, t in times.items()}
    del variants
    mem = {} if args.no_memory else run_children(__file__, argv, names, args.threads)

    base = "unified" if "unified" in names else names[0]
    out = [f"# Phase II benchmark\n\n`{command_line()}`\n",
           machine_line(info, args),
           f"Model: Wan I2V, {args.layers} layers, dim {args.dim}; batch {args.batch}, latent {LATENT_C}x{args.frames}"
           f"x{args.size}x{args.size}, patch 1x{args.patch}x{args.patch}; head {args.head}; EquilibriumConfig defaults "
           f"otherwise (ST-R1 on, C-SDS on, 1 disc update per generator update).\n",
           f"## Step time and peak memory per discriminator backbone (EquilibriumPhase)\n\n"
           f"Median of {args.repeats} interleaved steps; peak = {peak_description(args)}.\n"]
    rows = []
    for n in names:
        m = mem.get(n)
        rows.append([n, med[n], med[n] / med[base], mib(m["peak_bytes"]) if m else "-",
                     m["peak_bytes"] / mem[base]["peak_bytes"] if m else "-",
                     mib(m["tensors"]["total"]) if m else "-",
                     m["tensors"]["total"] / mem[base]["tensors"]["total"] if m else "-",
                     m["tensors"]["optimised_params"] if m else "-"])
    out.append(md_table(["backbone", "step s (median)", f"x {base}", "peak MiB", f"x {base}",
                           "weights+grads+opt MiB (counted)", f"x {base}", "optimised params"], rows))
    out.append("\n## Parameters per role (this model)\n")
    out.append(md_table(["role", "trainable", "total"], count_rows))
    g = counts["trained_backbone_params_with_grad_after_generator_backward"]
    out.append(f"\n'trained' backbone: {g} of its parameter tensors hold a gradient after the generator's "
               "backward (the generator loss backpropagates into the requires_grad copy; those grads are "
               "discarded by the head optimizer's zero_grad but cost time and memory).\n")
    scale_text, scale = scale_report(["phase II, backbone unified (EMA)", "phase II, backbone frozen (teacher)",
                                        "phase II, backbone trained (own copy)"])
    out.append("## Scale notes: Wan2.1-I2V-14B (analytic)\n\n" + scale_text + "\n")
    ds = scale["designs"]
    u, t = ds["phase II, backbone unified (EMA)"]["total_bytes"], ds["phase II, backbone trained (own copy)"]["total_bytes"]
    out.append(f"'trained' adds {(t - u) / GIB:,.0f} GiB of weights, gradients and Adam states at 14B "
               f"({t / u:.2f}x unified) before any activation; its backward also keeps the copy's activations.\n")
    text = "\n".join(out)
    print(text)

    payload = {"command": command_line(), "args": vars(args), "machine": info, "role_params": counts,
               "step_seconds": times, "median_seconds": med,
               "ratios": {"time_vs_" + base: {n: med[n] / med[base] for n in names}},
               "memory": mem, "scale_14b": scale, "report_markdown": text}
    if mem:
        payload["ratios"]["peak_vs_" + base] = {n: mem[n]["peak_bytes"] / mem[base]["peak_bytes"] for n in names}
        payload["ratios"]["counted_bytes_vs_" + base] = {n: mem[n]["tensors"]["total"] / mem[base]["tensors"]["total"]
                                                        for n in names}
    path = write_json(args, "phase2.json", payload)
    print(f"wrote {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")


if __name__ == "__main__":
    main()
