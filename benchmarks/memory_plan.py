"""ESTIMATE: per-GPU memory of Wan2.1-I2V-14B phase I and phase II at 480p and 720p on one node of 8 x 80 GB and
on the paper's 32 x 96 GB (4 nodes, HSDP), for the layout chosen by memory_arithmetic.choose_layout and a few
alternatives (no context parallelism, accum_sync last, no checkpointing, CPU offload). Arithmetic from the
dtypes and parameter counts, with the MEASURED (CPU) activation bytes per token of one 14B block
(memory_arithmetic.ACT_PER_TOKEN); nothing here ran on a GPU.

    .venv/bin/python benchmarks/memory_plan.py [--margin 0.15] [--out outputs/benchmarks/memory_plan.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from memory_arithmetic import (  # noqa: E402
    ACT_CKPT_PER_TOKEN,
    ACT_PER_TOKEN,
    CLIPS,
    CLUSTERS,
    GIB,
    KIB,
    WAN14B,
    choose_layout,
    plan_case,
    tokens,
)
from reporting import OUT_DIR, ROOT, md_table  # noqa: E402

# the layouts of the shipped configs and docs/DISTRIBUTED.md: (gpus, gpu GB, dp_replicate)
SETUPS = {"1 node, 8 x 80 GB": (8, 80.0, 1), "4 nodes, 32 x 96 GB (H20), HSDP": (32, 96.0, 4)}


def gib(b: float) -> str:
    return f"{b / GIB:.1f}"


def split(state: dict) -> dict:
    out = {"weights": 0.0, "Adam": 0.0, "grads": 0.0}
    for k, v in state.items():
        out["Adam" if "Adam" in k else "grads" if "grads" in k else "weights"] += v
    return out


def row(label: str, c: dict) -> list:
    p = c["parts"]
    return [label, c["phase"], c["clip"], f"{c['dp_replicate']} x {c['dp_shard']} x {c['cp']}", c["grad_accum"],
            c["micro_batch"], c["accum_sync"], "on" if c["checkpointing"] else "off",
            "on" if c["cpu_offload"] else "off", *(gib(split(c["state"])[k]) for k in ("weights", "Adam", "grads")),
            gib(p["FSDP2 gathered block"]),
            gib(p["activations"]), gib(p["reserve (estimate)"]), f"**{gib(c['total_bytes'])}**",
            f"{gib(c['budget_bytes'])}", "yes" if c["fits"] else "**no**"]


HEAD = ["setup", "phase", "clip", "dp_rep x dp_shard x cp", "grad_accum", "micro", "accum_sync", "ckpt",
        "offload", "weights", "Adam", "grads", "gathered", "activations", "reserve", "total GiB/GPU", "budget", "fits"]


def build(margin: float = 0.15) -> dict:
    chosen, rows, alt = {}, [], []
    for setup, (gpus, gb, rep) in SETUPS.items():
        for clip in CLIPS:
            lay = choose_layout(clip, gpus, gb, rep, margin=margin)
            chosen[f"{setup} / {clip}"] = {k: v for k, v in lay.items() if k != "cases"} | {
                "cases": {ph: {k: v for k, v in c.items()} for ph, c in lay["cases"].items()}}
            for ph, c in lay["cases"].items():
                rows.append(row(setup, c))
            cp, acc = lay["cp"], lay["grad_accum"]
            # what the chosen layout avoids (phase II, the larger one)
            if cp > 1:
                dp = gpus // 1
                a1 = 32 // dp if 32 % dp == 0 else None
                if a1:
                    alt.append(row(setup + ": no context parallelism",
                                   plan_case("II", clip, gpus, gb, rep, 1, a1, margin=margin)))
            alt.append(row(setup + ": accum_sync last",
                           plan_case("II", clip, gpus, gb, rep, cp, acc, accum_sync="last", margin=margin)))
            alt.append(row(setup + ": no checkpointing",
                           plan_case("II", clip, gpus, gb, rep, cp, acc, ckpt=False, margin=margin)))
            alt.append(row(setup + ": + cpu_offload",
                           plan_case("II", clip, gpus, gb, rep, cp, acc, cpu_offload=True, margin=margin)))
        if rep > 1:  # the same GPUs with every role sharded over all of them (no replication)
            for clip in CLIPS:
                lay = choose_layout(clip, gpus, gb, 1, margin=margin)
                for c in lay["cases"].values():
                    alt.append(row(f"{gpus} x {gb:.0f} GB, FSDP over all (dp_replicate 1)", c))
    return {"chosen": chosen, "rows": rows, "alternatives": alt}


def report(plan: dict, margin: float) -> str:
    t = {k: tokens(v) for k, v in CLIPS.items()}
    return (
        "# ESTIMATE: Wan2.1-I2V-14B memory per GPU (arithmetic; measured inputs labelled)\n\n"
        f"Counts (meta-device model): transformer {WAN14B['transformer'] / 1e9:.2f} B params, one block "
        f"{WAN14B['block'] / 1e6:.1f} M, fake LoRA rank 64 {WAN14B['fake_lora_rank64'] / 1e6:.1f} M, semantic heads "
        f"{WAN14B['semantic_heads'] / 1e6:.1f} M. Tokens per sample: "
        + ", ".join(f"{k} {v:,}" for k, v in t.items()) + ". Storage: trained roles fp32 weights + fp32 Adam m, v "
        "(+ fp32 grads), teacher base bf16, EMA fp32 (mirrors the generator), compute bf16, reduce fp32. MEASURED "
        "(CPU, activation_cost.py): per block and token " + ", ".join(f"{k} {v / KIB:.0f} KiB" for k, v in
                                                                       ACT_PER_TOKEN.items())
        + f" without checkpointing, {ACT_CKPT_PER_TOKEN / KIB:.0f} KiB with. Everything else is arithmetic. "
        f"Budget = (1 - {margin}) x nominal GB taken as GiB. Global batch 32. GiB per GPU; dp_rep x dp_shard x cp "
        "= parallel.dp_replicate x dp_shard x cp; micro = samples per micro-batch per data-parallel rank; weights "
        "= every role's shard (generator, teacher, EMA, fake LoRA, heads); gathered = FSDP2's unsharded block(s) "
        "and gradient buffers; cpu_offload moves weights, grads and Adam to host memory (not counted).\n\n"
        "## Chosen layouts (both phases)\n\n" + md_table(HEAD, plan["rows"])
        + "\n\n## Alternatives (phase II unless stated)\n\n" + md_table(HEAD, plan["alternatives"]) + "\n")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--margin", type=float, default=0.15, help="fraction of each GPU kept free")
    p.add_argument("--out", default="")
    args = p.parse_args(argv)
    plan = build(args.margin)
    text = report(plan, args.margin)
    print(text)
    out = Path(args.out) if args.out else OUT_DIR / "memory_plan.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"estimate": True, "margin": args.margin, "clusters": CLUSTERS, **plan,
                               "report_markdown": text}, indent=1, default=str))
    print(f"wrote {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}")


if __name__ == "__main__":
    main()
