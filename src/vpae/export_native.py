"""`vpae export --format native`: the generator as one safetensors in Wan's original key names (the names of
Wan-AI's own checkpoints, which ComfyUI and LightX2V load) and its LoRA adapter in the ComfyUI / LightX2V
naming (`diffusion_model.blocks.N.self_attn.q.lora_down.weight`, `.lora_up.weight`, `.alpha`).

diffusers converts these names to its own (`convert_wan_transformer_to_diffusers` for whole models,
`_convert_non_diffusers_wan_lora_to_diffusers` for LoRAs) but has no converter back, so the reverse renames
are listed here; every export runs diffusers' forward converters on what it wrote and refuses to publish
unless they give back exactly the diffusers names it started from."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

from vpae.errors import VpaeError

# diffusers -> Wan names, the reverse of diffusers' TRANSFORMER_KEYS_RENAME_DICT (single_file_utils.py) for the
# Wan2.1 T2V / I2V modules; applied to whole dot-separated segments, in order
_RENAMES = [
    ("condition_embedder.time_embedder.linear_1", "time_embedding.0"),
    ("condition_embedder.time_embedder.linear_2", "time_embedding.2"),
    ("condition_embedder.text_embedder.linear_1", "text_embedding.0"),
    ("condition_embedder.text_embedder.linear_2", "text_embedding.2"),
    ("condition_embedder.time_proj", "time_projection.1"),
    ("condition_embedder.image_embedder.norm1", "img_emb.proj.0"),
    ("condition_embedder.image_embedder.ff.net.0.proj", "img_emb.proj.1"),
    ("condition_embedder.image_embedder.ff.net.2", "img_emb.proj.3"),
    ("condition_embedder.image_embedder.norm2", "img_emb.proj.4"),
    ("attn1", "self_attn"),
    ("attn2", "cross_attn"),
    ("to_out.0", "o"),
    ("to_q", "q"),
    ("to_k", "k"),
    ("to_v", "v"),
    ("add_k_proj", "k_img"),
    ("add_v_proj", "v_img"),
    ("norm_added_k", "norm_k_img"),
    ("ffn.net.0.proj", "ffn.0"),
    ("ffn.net.2", "ffn.2"),
    ("proj_out", "head.head"),
]
_BLOCK_NORMS = {"norm2": "norm3", "norm3": "norm2"}  # diffusers swaps the names of the block's two norms

NATIVE_MODEL_FILE = "generator.safetensors"
NATIVE_LORA_FILE = "generator_lora.safetensors"


def native_name(key: str) -> str:
    """The Wan-native name of a diffusers WanTransformer3DModel parameter (or module path)."""
    name = key
    for ours, theirs in _RENAMES:
        name = re.sub(rf"(^|\.){re.escape(ours)}(?=\.|$)", rf"\g<1>{theirs}", name)
    if name == "scale_shift_table":
        return "head.modulation"
    name = re.sub(r"^(blocks\.\d+)\.scale_shift_table$", r"\1.modulation", name)
    return re.sub(r"^(blocks\.\d+)\.(norm2|norm3)(?=\.|$)", lambda m: f"{m[1]}.{_BLOCK_NORMS[m[2]]}", name)


def native_names(keys) -> dict[str, str]:
    """diffusers name -> Wan name for every key, checked by diffusers' own Wan single-file converter: it must
    map each Wan name back to the diffusers name it came from."""
    from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers
    names = {k: native_name(k) for k in keys}
    # the converter only renames keys, so the values can be the diffusers names themselves
    back = convert_wan_transformer_to_diffusers({n: k for k, n in names.items()})
    wrong = sorted(k for k in names if back.get(k) != k)
    if wrong or len(back) != len(names):
        raise VpaeError(f"no Wan-native name for {len(wrong)} parameter(s), e.g. {wrong[:3]}: "
                        "this model has modules the native export does not know")
    return names


def native_lora(lora_file: str | Path) -> dict:
    """A diffusers LoRA file (RUN/generator_lora/pytorch_lora_weights.safetensors) in ComfyUI / LightX2V names:
    `lora_A` -> `lora_down`, `lora_B` -> `lora_up`, and `.alpha` = scaling x rank so that their alpha / rank
    scaling equals the trained one. Checked by diffusers' `_convert_non_diffusers_wan_lora_to_diffusers`."""
    import torch
    from diffusers.loaders.lora_conversion_utils import _convert_non_diffusers_wan_lora_to_diffusers
    from safetensors import safe_open
    from safetensors.torch import load_file
    with safe_open(str(lora_file), "pt") as f:
        meta = json.loads((f.metadata() or {}).get("lora_adapter_metadata", "null") or "null") or {}
    # the pipelines' save_lora_weights prefixes each config field with the component's name
    meta = {k.removeprefix("transformer."): v for k, v in meta.items()}
    if "r" not in meta:
        raise VpaeError(f"{lora_file} has no LoRA config in its metadata (rank and alpha are unknown)")
    if meta.get("rank_pattern") or meta.get("alpha_pattern") or meta.get("use_dora"):
        raise VpaeError(f"{lora_file}: per-module ranks / alphas or DoRA have no ComfyUI LoRA equivalent here")
    r, alpha = meta["r"], meta["lora_alpha"]
    scaling = alpha / math.sqrt(r) if meta.get("use_rslora") else alpha / r
    sd = {k.removeprefix("transformer."): v for k, v in load_file(str(lora_file)).items()}
    modules = sorted({k.rsplit(".lora_", 1)[0] for k in sd})
    unknown = [k for k in sd if not k.endswith((".lora_A.weight", ".lora_B.weight"))]
    if unknown:
        raise VpaeError(f"{lora_file}: unexpected LoRA keys {unknown[:3]} (only lora_A / lora_B weights convert)")
    names = {m: native_name(m) for m in modules}
    out = {}
    for m, n in names.items():
        down = sd[f"{m}.lora_A.weight"]
        out[f"diffusion_model.{n}.lora_down.weight"] = down.contiguous()
        out[f"diffusion_model.{n}.lora_up.weight"] = sd[f"{m}.lora_B.weight"].contiguous()
        out[f"diffusion_model.{n}.alpha"] = torch.tensor(scaling * down.shape[0], dtype=torch.float32)
    try:
        # on copies: the converter scales some of its input tensors in place
        back = _convert_non_diffusers_wan_lora_to_diffusers({k: v.clone() for k, v in out.items()})
    except (ValueError, KeyError) as e:
        raise VpaeError(f"diffusers does not read the native LoRA back ({e}): a module the native "
                        "export does not know") from e
    if set(back) != {f"transformer.{k}" for k in sd}:
        raise VpaeError(f"diffusers reads the native LoRA back with other keys than {lora_file}'s")
    return out


def export_native(generator_dir: str | Path, out_dir: str | Path) -> Path:
    """RUN/generator (a diffusers transformer folder) -> out_dir/generator.safetensors in Wan's names, and,
    when the run has RUN/generator_lora, out_dir/generator_lora.safetensors in ComfyUI's LoRA names. Loads the
    whole state dict in memory (the 14B generator: ~28 GiB in bf16). Published atomically."""
    from safetensors.torch import load_file, save_file

    from vpae.export import _atomic_dir
    generator_dir = Path(generator_dir)
    files = sorted(generator_dir.glob("*.safetensors"))
    if not (generator_dir / "config.json").is_file() or not files:
        raise VpaeError(f"{generator_dir} is not a transformer folder (config.json + *.safetensors); "
                        f"`vpae distill` writes one to RUN/generator")
    lora_file = generator_dir.parent / "generator_lora" / "pytorch_lora_weights.safetensors"
    lora = native_lora(lora_file) if lora_file.is_file() else None

    def write(tmp: Path):
        sd = {}
        for f in files:
            sd.update(load_file(str(f)))
        names = native_names(sd)
        save_file({names[k]: v.contiguous() for k, v in sd.items()}, str(tmp / NATIVE_MODEL_FILE),
                  metadata={"format": "pt"})
        if lora is not None:
            save_file(lora, str(tmp / NATIVE_LORA_FILE), metadata={"format": "pt"})
        (tmp / "vpae.json").write_text(json.dumps({"format": "wan-native",
                                                   "generator": str(generator_dir.resolve())}, indent=1))
    return _atomic_dir(Path(out_dir), write)
