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
