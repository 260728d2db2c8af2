"""Scale notes for Wan2.1-I2V-14B: parameter counts from a meta-device model (no memory used) and the
parameter + gradient + optimizer bytes of each role design, per role and per GPU."""

from __future__ import annotations

import torch

from accounting import GIB, count_params, lora_param_count
from reporting import md_table


def wan14b_config() -> dict:
    """Wan2.1-I2V-14B-480P transformer (diffusers config): 40 layers, 40 heads x 128, FFN 13824,
    umT5 text 4096, CLIP image 1280, in 36 = 16 latent + 4 mask + 16 condition, out 16."""
    return dict(patch_size=(1, 2, 2), num_attention_heads=40, attention_head_dim=128, in_channels=36,
                out_channels=16, text_dim=4096, freq_dim=256, ffn_dim=13824, num_layers=40, cross_attn_norm=True,
                qk_norm="rms_norm_across_heads", eps=1e-6, image_dim=1280, added_kv_proj_dim=5120,
                rope_max_seq_len=1024)


def scale_counts(lora_rank: int = 64, head_dim: int = 256) -> dict:
    """Parameter counts of the 14B networks: the transformer, the fake LoRA (PrimingConfig targets), the heads."""
    from diffusers import WanTransformer3DModel

    from vpae.backbones.base import resolve_layers
    from vpae.config import EquilibriumConfig, PrimingConfig
    from vpae.discriminator import build_head
    cfg = wan14b_config()
    with torch.device("meta"):
        model = WanTransformer3DModel(**cfg)
        n_layers = len(resolve_layers(EquilibriumConfig().layers, cfg["num_layers"]))
        heads = {k: count_params(build_head(k, feature_dim=5120, num_layers=n_layers, text_dim=4096, image_dim=1280,
                                            hidden_dim=head_dim, num_queries=4, num_heads=4), False)
                 for k in ("conv", "ca", "semantic")}
    return {"transformer": count_params(model, False),
            "fake_lora": lora_param_count(model, lora_rank, PrimingConfig().lora_targets),
            "lora_rank": lora_rank, "heads": heads}


# bytes per parameter: bf16 weights; a trainable one adds a bf16 gradient and fp32 Adam m and v.
FROZEN_B = 2
TRAIN_B = 2 + 2 + 8


def scale_designs(counts: dict, head: str = "semantic") -> dict[str, dict[str, int]]:
    """Parameter + gradient + optimizer bytes of each role design at 14B, per role."""
    N, L, H = counts["transformer"], counts["fake_lora"], counts["heads"][head]
    return {
        "phase I, fake score = teacher + shared-weight LoRA": {
            "teacher (frozen)": FROZEN_B * N, "fake LoRA (trained)": TRAIN_B * L, "generator (trained)": TRAIN_B * N},
        "phase I, fake score = full trainable copy": {
            "teacher (frozen)": FROZEN_B * N, "fake copy (trained)": TRAIN_B * N, "generator (trained)": TRAIN_B * N},
        "phase II, backbone unified (EMA)": {
            "teacher (frozen, + fake LoRA weights)": FROZEN_B * (N + L), "generator (trained)": TRAIN_B * N,
            "EMA = disc backbone": FROZEN_B * N, f"{head} heads (trained)": TRAIN_B * H},
        "phase II, backbone frozen (teacher)": {
            "teacher (frozen, + fake LoRA weights) = disc backbone": FROZEN_B * (N + L),
            "generator (trained)": TRAIN_B * N, "EMA (kept as the export)": FROZEN_B * N,
            f"{head} heads (trained)": TRAIN_B * H},
        "phase II, backbone trained (own copy)": {
            "teacher (frozen, + fake LoRA weights)": FROZEN_B * (N + L), "generator (trained)": TRAIN_B * N,
            "EMA (kept as the export)": FROZEN_B * N, "disc backbone copy (trained)": TRAIN_B * N,
            f"{head} heads (trained)": TRAIN_B * H},
    }


def scale_report(designs: list[str], lora_rank: int = 64, gpus: int = 8, gpu_gib: float = 80.0) -> tuple[str, dict]:
    counts = scale_counts(lora_rank)
    all_designs = scale_designs(counts)
    rows, out = [], {"counts": counts, "bytes_per_param": {"frozen_bf16": FROZEN_B, "trained_bf16_grad_fp32_adam": TRAIN_B},
                     "designs": {}}
    for d in designs:
        roles = all_designs[d]
        total = sum(roles.values())
        out["designs"][d] = {"roles": roles, "total_bytes": total}
        rows.append([d, " + ".join(f"{k} {v / GIB:,.1f}" for k, v in roles.items()), total / GIB,
                     total / gpus / GIB, f"{100 * total / gpus / GIB / gpu_gib:.0f}%"])
    text = (f"Wan2.1-I2V-14B (meta-device count): transformer {counts['transformer'] / 1e9:.2f} B params, fake LoRA "
            f"(rank {lora_rank}) {counts['fake_lora'] / 1e6:.1f} M, heads conv/ca/semantic "
            + "/".join(f"{v / 1e6:.1f}" for v in counts["heads"].values()) + " M.\n"
            f"Bytes: frozen {FROZEN_B}/param (bf16); trained {TRAIN_B}/param (bf16 weight + bf16 grad + fp32 Adam m, v); "
            f"no fp32 master copy, no activations.\n\n"
            + md_table(["design", "roles (GiB)", "total GiB", f"GiB/GPU, sharded over {gpus}",
                        f"of {gpu_gib:.0f} GiB"], rows))
    return text, out


# ----------------------------------------------------------------------------------------------
# Paper-scale memory plan: Wan2.1-I2V-14B per GPU under the device mesh (dp_replicate x dp_shard x cp).
# Every number below is ARITHMETIC (an estimate) except the constants marked MEASURED.

KIB = 1024

# Counted on a meta-device WanTransformer3DModel(**wan14b_config()) (scale_counts(); 24 s to recount).
WAN14B = {"transformer": 16_394_878_784, "block": 403_838_464, "layers": 40, "hidden": 5120, "heads": 40,
          "fake_lora_rank64": 262_144_000, "semantic_heads": 14_018_561}

# MEASURED on CPU (benchmarks/activation_cost.py, docs/BENCHMARKS.md "Scale-out" (b)): bytes one 14B-shaped block
# saves for backward, bf16 compute, per video token and per block (constant), by how the block's weights train.
ACT_PER_TOKEN = {"trained": 415 * KIB, "input": 218 * KIB, "lora": 248 * KIB}
ACT_CONST = {"trained": 45.2 * 2 ** 20, "input": 15.2 * 2 ** 20, "lora": 30.4 * 2 ** 20}
ACT_CKPT_PER_TOKEN = 10 * KIB  # MEASURED: with checkpointing a block keeps its bf16 input only

# Bytes per parameter (arithmetic from the dtypes; the measured 1-process split weight 4 / grad 4 / Adam 8 in
# fp32 is bench_distributed.py's). Adam's m and v are kept in the parameter's dtype.
B = {"float32": 4, "bfloat16": 2}


def tokens(latent_fhw: tuple[int, int, int], patch: tuple[int, int, int] = (1, 2, 2)) -> int:
    f, h, w = latent_fhw
    return (f // patch[0]) * (h // patch[1]) * (w // patch[2])


CLIPS = {"480p": (21, 60, 104), "720p": (21, 90, 160)}  # latents of 81 frames at 480x832 and 720x1280
CLUSTERS = {"1 node, 8 x 80 GB": (8, 80.0), "4 nodes, 32 x 96 GB (H20)": (32, 96.0)}


def ulysses_ok(cp: int, heads: int = WAN14B["heads"]) -> bool:
    """Ulysses context parallelism moves heads between ranks: the head count must divide by cp."""
    return heads % cp == 0


def sharded_state(phase: str, shard: int, train_dtype: str = "float32", frozen_dtype: str = "bfloat16",
                  accum_sync: str = "every", grad_accum: int = 1, cpu_offload: bool = False,
                  lora_params: int = WAN14B["fake_lora_rank64"], n: int = WAN14B["transformer"],
                  heads: int = WAN14B["semantic_heads"]) -> dict[str, float]:
    """Bytes per GPU of weights, gradients and Adam states, role by role, as training.parallel stores them:
    trained weights (generator, fake LoRA in phase I, heads in phase II) in train_dtype with Adam m, v in the
    same dtype; the teacher's base weights in frozen_dtype; the EMA mirrors the generator's dtypes and exists
    from phase I on (made before sharding). Everything sharded over `shard` = dp_shard x cp ranks (replicated over
    dp_replicate). Phase II: phase I's optimizers are released first (run_distill). Gradients: sharded
    (accum_sync every, or no accumulation) or, with accum_sync last and grad_accum > 1, the trained roles'
    gradients unsharded in fp32 (FSDP2 accumulates them in reduce_dtype) on every rank. cpu_offload: the sharded
    parameters, gradients and Adam states live in CPU memory (0 on the GPU)."""
    t, f = B[train_dtype], B[frozen_dtype]
    lora_trained = phase == "I"
    out = {
        "generator weights": t * n / shard,
        "generator Adam m, v": 2 * t * n / shard,
        "teacher base weights (frozen)": f * n / shard,
        "EMA (generator's dtypes)": t * n / shard,
        "fake LoRA weights": t * lora_params / shard,
        "heads weights": t * heads / shard,
    }
    trained_count = n + (lora_params if lora_trained else heads)
    if lora_trained:
        out["fake LoRA Adam m, v"] = 2 * t * lora_params / shard
    else:
        out["heads Adam m, v"] = 2 * t * heads / shard
    if accum_sync == "last" and grad_accum > 1:
        out["grads, unsharded fp32 (accum_sync last)"] = 4 * trained_count
    else:
        out["grads, sharded"] = t * trained_count / shard
    if cpu_offload:
        out = {k: (v if "unsharded" in k else 0.0) for k, v in out.items()}
    return out


def gathered_bytes(block: int = WAN14B["block"], param_dtype: str = "bfloat16", reduce_dtype: str = "float32",
                   prefetch: int = 1) -> dict[str, float]:
    """FSDP2's transient unsharded buffers per GPU: the all-gathered block being computed plus `prefetch` more in
    param_dtype; in backward one block's unsharded gradient in param_dtype and its reduce-scatter input in
    reduce_dtype."""
    p, r = B[param_dtype], B[reduce_dtype]
    return {"all-gathered blocks (current + prefetch)": (1 + prefetch) * p * block,
            "one block's unsharded grads (compute dtype)": p * block,
            "one block's reduce-scatter buffer (reduce dtype)": r * block}


def block_saved(mode: str, tok: float) -> float:
    """MEASURED per-token fit x tokens: one block's saved activations without checkpointing."""
    return ACT_PER_TOKEN[mode] * tok + ACT_CONST[mode]


def activations(phase: str, tokens_per_gpu: float, tokens_full: int, micro: int = 1, ckpt: bool = True,
                layers: int = WAN14B["layers"], hidden: int = WAN14B["hidden"], feature_layers: int = 4,
                other_per_token: float = 3 * 10 * KIB) -> dict:
    """Peak activation bytes per GPU for `micro` samples per micro-batch, each with tokens_per_gpu of its tokens
    on this GPU (tokens / cp): the largest of the phase's moments (as docs/BENCHMARKS.md "Scale-out" (c)), from the
    measured per-token costs. With checkpointing every block keeps its input (10 KiB/token) and backward
    recomputes one block at a time (its full saved set, transiently); a no-grad forward's live set is bounded by
    one 'input'-mode block. 'other' (patch embedding, output head) is 3 hidden states per token per network with
    grad (an estimate). Phase II adds the discriminator's feature maps, gathered over the cp group (full
    sequence), bf16, `feature_layers` of them per network read (EquilibriumConfig.layers), for the real and the
    generated sample."""
    tk = tokens_per_gpu

    def stored(mode):
        return layers * (ACT_CKPT_PER_TOKEN * tk if ckpt else block_saved(mode, tk))

    def recompute(mode):
        return block_saved(mode, tk) if ckpt else 0.0

    nograd = block_saved("input", tk)
    other = other_per_token * tk
    if phase == "I":
        moments = {
            "fake-score update: teacher + LoRA graph, recompute": stored("lora") + recompute("lora") + other,
            "generator update: generator graph + teacher no-grad forward": stored("trained") + nograd + other,
            "generator backward: generator graph + recompute": stored("trained") + recompute("trained") + other,
        }
    else:
        feats = 2 * feature_layers * tokens_full * hidden * 2
        both = stored("trained") + stored("input") + 2 * other + feats
        moments = {
            "generator + EMA-features graphs + C-SDS teacher no-grad forward": both + nograd,
            "EMA backward (recompute)": both + recompute("input"),
            "generator backward (recompute)": stored("trained") + other + recompute("trained") + feats,
        }
    at = max(moments, key=moments.get)
    return {"peak": micro * moments[at], "at": at, "moments": {k: micro * v for k, v in moments.items()}}


RESERVE_B = 4 * 2 ** 30  # estimate: CUDA context, NCCL buffers, allocator fragmentation


def plan_case(phase: str, clip: str, gpus: int, gpu_gb: float, dp_replicate: int, cp: int, grad_accum: int,
              global_batch: int = 32, accum_sync: str = "every", ckpt: bool = True, cpu_offload: bool = False,
              margin: float = 0.15, train_dtype: str = "float32", frozen_dtype: str = "bfloat16") -> dict:
    """Per-GPU bytes of one case, every part shown. shard = dp_shard x cp = gpus / dp_replicate; data-parallel
    ranks = gpus / cp; micro-batch = global_batch / (dp ranks x grad_accum). fits: total <= (1 - margin) x
    gpu_gb (nominal GB taken as GiB)."""
    if gpus % (dp_replicate * cp):
        raise ValueError(f"{gpus} GPUs cannot form dp_replicate {dp_replicate} x cp {cp}")
    shard = gpus // dp_replicate
    dp = gpus // cp
    if global_batch % (dp * grad_accum):
        raise ValueError(f"global batch {global_batch} is not a multiple of dp {dp} x grad_accum {grad_accum}")
    micro = global_batch // (dp * grad_accum)
    full = tokens(CLIPS[clip])
    state = sharded_state(phase, shard, train_dtype, frozen_dtype, accum_sync, grad_accum, cpu_offload)
    gath = gathered_bytes()
    act = activations(phase, full / cp, full, micro, ckpt)
    parts = {"state (params, grads, Adam)": sum(state.values()), "FSDP2 gathered block": sum(gath.values()),
             "activations": act["peak"], "reserve (estimate)": RESERVE_B}
    total = sum(parts.values())
    budget = (1 - margin) * gpu_gb * GIB
    return {"phase": phase, "clip": clip, "tokens": full, "gpus": gpus, "gpu_gb": gpu_gb,
            "dp_replicate": dp_replicate, "dp_shard": shard // cp, "cp": cp, "ulysses_ok": ulysses_ok(cp),
            "grad_accum": grad_accum, "micro_batch": micro, "accum_sync": accum_sync, "checkpointing": ckpt,
            "cpu_offload": cpu_offload, "state": state, "gathered": gath, "activations": act, "parts": parts,
            "total_bytes": total, "budget_bytes": budget, "fits": total <= budget}


def choose_layout(clip: str, gpus: int, gpu_gb: float, dp_replicate: int = 1, global_batch: int = 32,
                  margin: float = 0.15) -> dict:
    """The smallest cp (Ulysses-compatible, dividing the shard group) at which both phases fit with one sample
    per micro-batch, accum_sync every; grad_accum = global_batch / data-parallel ranks."""
    shard = gpus // dp_replicate
    for cp in (c for c in (1, 2, 4, 5, 8, 10, 20, 40) if shard % c == 0 and ulysses_ok(c)):
        dp = gpus // cp
        if global_batch % dp:
            continue
        accum = global_batch // dp
        cases = {ph: plan_case(ph, clip, gpus, gpu_gb, dp_replicate, cp, accum, global_batch, margin=margin)
                 for ph in ("I", "II")}
        if all(c["fits"] for c in cases.values()):
            return {"cp": cp, "dp_shard": shard // cp, "dp_replicate": dp_replicate, "grad_accum": accum,
                    "cases": cases}
    raise ValueError(f"nothing fits: {clip} on {gpus} x {gpu_gb} GB with dp_replicate {dp_replicate}")
