"""ESTIMATED per-GPU memory of Wan2.1-I2V-14B phase I and phase II under FSDP2, built from MEASURED
pieces: the bytes per parameter of each network (bench_distributed.py -> outputs/benchmarks/distributed.json), the
bytes per video token of one 14B-shaped block (activation_cost.py -> outputs/benchmarks/activation_cost.json) and
the 14B parameter counts (meta-device model, memory_arithmetic.scale_counts). Nothing here ran on a GPU: an
estimate until benchmarks/gpu_wan_1_3b.py-style measurements at 14B exist.

    .venv/bin/python benchmarks/memory_plan.py [--gpus 8 --gpu-gib 80] [--gpus 32 --gpu-gib 96]

Model of the memory of one GPU (data parallel, every network sharded over all GPUs, batch b per GPU):
  sharded state  = sum over networks of params x bytes/param (trained: weight + grad + Adam m, v; frozen: weight)
                   / GPUs, with the networks the code holds (under torchrun the EMA exists from phase I on: the method
                   makes it before sharding). The training loop releases phase I's optimizers (their Adam states and
                   the fake LoRA's grads) when phase I ends, before phase II builds its own: the rows "II (phase I
                   optimizers freed)" are what recipes.run_distill does; the rows "II" still hold them (an upper bound)
  activations    = b x the peak over the phase's sub-steps of what the back-propagating networks keep (40 blocks x
                   measured bytes/token x tokens + per-block constants), plus the transient of a no-grad teacher forward
                   (bounded above by one block's 'input'-mode saved bytes) and of a checkpointed block's recomputation
  other          = 3 x hidden (10 KiB/token) per network with grad (patch embedding, output norm/projection; estimate)
  reserve        = 8 GiB (FSDP2 all-gather of 2 blocks in bf16 ~1.5 GiB, a block's unsharded fp32 grads ~1.5 GiB,
                   reduce-scatter buffers, CUDA context, allocator fragmentation; estimate)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from memory_arithmetic import scale_counts  # noqa: E402
from reporting import OUT_DIR, ROOT, md_table  # noqa: E402

GIB, KIB, MIB = 2 ** 30, 1024, 2 ** 20
CLIPS = {"480p (21x60x104 latent)": 21 * 30 * 52, "720p (21x90x160 latent)": 21 * 45 * 80}
LAYERS = 40
RESERVE = 8 * GIB


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--gpus", type=int, nargs="+", default=[8, 32])
    p.add_argument("--gpu-gib", type=float, nargs="+", default=[80.0, 96.0])
    p.add_argument("--distributed-json", default=str(OUT_DIR / "distributed.json"))
    p.add_argument("--activation-json", default=str(OUT_DIR / "activation_cost.json"))
    p.add_argument("--out", default="")
    return p.parse_args(argv)


def per_param(dist: dict) -> dict:
    """Measured bytes per parameter relative to the weight's element size (fp32 run: w 4, grad 4, Adam 8)."""
    b = dist["bytes_per_param_1_process"]
    w = b["generator_weight"]
    return {"grad": b["generator_grad"] / w, "adam": b["generator_adam_phase2"] / w}


def precisions(pp: dict) -> dict:
    """bytes per trained / frozen parameter for the two precision set-ups."""
    return {
        "bf16 params (model.dtype bfloat16 + parallel.param_dtype bfloat16)":
            {"trained": 2 * (1 + pp["grad"] + pp["adam"]), "frozen": 2, "phase1_adam_left": 2 * pp["adam"]},
        "fp32 master + bf16 compute (model.dtype float32 + parallel.param_dtype bfloat16)":
            {"trained": 4 * (1 + pp["grad"] + pp["adam"]), "frozen": 4, "phase1_adam_left": 4 * pp["adam"]},
    }


def state_bytes(counts: dict, prec: dict, phase: str, free_phase1: bool = False) -> dict:
    N, L, H = counts["transformer"], counts["fake_lora"], counts["heads"]["semantic"]
    tr, fr = prec["trained"], prec["frozen"]
    roles = {"generator (trained)": tr * N, "teacher (frozen)": fr * N, "EMA (frozen; made before sharding)": fr * N}
    if phase == "I":
        roles.update({"fake LoRA (trained)": tr * L, "heads (weights only)": fr * H})
    else:
        roles.update({"fake LoRA (weights)": fr * L, "heads (trained)": tr * H})
        if not free_phase1:
            roles["phase I generator Adam + fake LoRA Adam and grads (still held)"] = (prec["phase1_adam_left"] * N
                                                                                       + (tr - fr) * L)
    return roles


def activations(fit: dict, tokens: int, phase: str, ckpt: bool) -> dict:
    """Peak activation bytes of one sample on one GPU, and what it is made of."""
    def blk(mode):  # one block's saved bytes (no checkpointing) for this many tokens
        f = fit[f"{mode}/no_ckpt"]
        return f["per_token_bytes"] * tokens + f["constant_bytes"]
    stored = ((lambda mode: LAYERS * fit[f"{mode}/ckpt"]["per_token_bytes"] * tokens) if ckpt
              else (lambda mode: LAYERS * blk(mode)))
    recompute = (lambda mode: blk(mode)) if ckpt else (lambda mode: 0.0)
    teacher_nograd = blk("input")  # upper bound of a no-grad forward's live set
    other = 3 * 10 * KIB * tokens
    if phase == "I":
        cands = {
            "fake update: teacher+LoRA graph (+ recompute)": stored("lora") + recompute("lora") + other,
            "generator update: generator graph + teacher no-grad forwards": stored("trained") + teacher_nograd + other,
            "generator backward: generator graph (+ recompute)": stored("trained") + recompute("trained") + other,
        }
    else:
        both = stored("trained") + stored("input") + 2 * other
        cands = {
            "generator graph + EMA features graph + C-SDS teacher no-grad forward": both + teacher_nograd,
            "EMA backward (+ recompute)": both + recompute("input"),
            "generator backward (+ recompute)": stored("trained") + other + recompute("trained"),
        }
    peak = max(cands, key=cands.get)
    return {"peak_bytes": cands[peak], "peak_at": peak, "candidates": cands}


def main(argv=None):
    args = parse(argv)
    dist = json.loads(Path(args.distributed_json).read_text())
    act = json.loads(Path(args.activation_json).read_text())
    fit = act["fits"]
    counts = scale_counts()
    pp = per_param(dist)
    rows, plan = [], []
    for gpus, gib in zip(args.gpus, args.gpu_gib):
        for pname, prec in precisions(pp).items():
            for phase, free in (("I", False), ("II", False), ("II", True)):
                roles = state_bytes(counts, prec, phase, free)
                st = sum(roles.values()) / gpus
                for clip, tokens in CLIPS.items():
                    for ckpt in (True, False):
                        a = activations(fit, tokens, phase, ckpt)
                        per_sample = a["peak_bytes"]
                        free_b = gib * GIB - st - RESERVE
                        batch = int(free_b // per_sample) if free_b > 0 else 0
                        total1 = st + per_sample + RESERVE
                        label = f"{phase}" + (" (phase I optimizers freed)" if free else "")
                        rec = {"gpus": gpus, "gpu_gib": gib, "precision": pname, "phase": label, "clip": clip,
                               "tokens": tokens, "checkpointing": ckpt, "state_gib_per_gpu": st / GIB,
                               "activation_gib_per_sample": per_sample / GIB, "peak_at": a["peak_at"],
                               "total_gib_batch1": total1 / GIB, "max_batch_per_gpu": batch,
                               "roles_gib_total": {k: v / GIB for k, v in roles.items()}}
                        plan.append(rec)
                        rows.append([f"{gpus} x {gib:.0f}", pname.split(" (")[0], label, clip.split(" ")[0],
                                     "on" if ckpt else "off", f"{st / GIB:.1f}", f"{per_sample / GIB:.1f}",
                                     f"{total1 / GIB:.1f}", batch if batch else "**none**"])
    text = ("# ESTIMATE: Wan2.1-I2V-14B memory per GPU under FSDP2 (from measured per-param and per-token costs)\n\n"
            f"14B counts: transformer {counts['transformer'] / 1e9:.2f} B, fake LoRA {counts['fake_lora'] / 1e6:.1f} M, "
            f"semantic heads {counts['heads']['semantic'] / 1e6:.1f} M. Measured bytes/param (relative to the weight): "
            f"grad {pp['grad']:.2f}, Adam {pp['adam']:.2f}. Activation fits: "
            + ", ".join(f"{k} {v['per_token_bytes'] / KIB:.0f} KiB/token/block" for k, v in fit.items()) + ".\n\n"
            + md_table(["GPUs", "precision", "phase", "clip", "act. ckpt", "sharded state GiB/GPU",
                          "activations GiB/sample", "total GiB at batch 1 (+8 reserve)", "max batch/GPU"], rows))
    print(text)
    out = Path(args.out) if args.out else OUT_DIR / "memory_plan.json"
    out.write_text(json.dumps({"counts": counts, "bytes_per_param_rel": pp, "precisions": precisions(pp),
                               "clips": CLIPS, "reserve_gib": RESERVE / GIB, "plan": plan, "report_markdown": text},
                              indent=1))
    print(f"wrote {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}")


if __name__ == "__main__":
    main()
