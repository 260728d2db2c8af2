"""Model loading: the teacher (a local diffusers folder, the shipped toy teacher, or random from a config)
and the generator's starting point. Nothing downloads: folders are local only."""

from __future__ import annotations

from pathlib import Path

import torch

from vpae.backbones.wan import WanBackbone
from vpae.config import VPAEConfig
from vpae.errors import VpaeError


class ModelLoadError(VpaeError, RuntimeError):
    pass


def read_model_meta(path: str | Path) -> dict:
    """The project's metadata next to a diffusers model folder (vpae.json), {} if absent."""
    import json
    f = Path(path) / "vpae.json"
    if not f.is_file():
        return {}
    try:
        return json.loads(f.read_text())
    except ValueError as e:
        raise ModelLoadError(f"corrupt {f}: {e}") from e


def load_wan_backbone(path: str | Path, dtype: torch.dtype = torch.float32, text_len: int = 0) -> WanBackbone:
    """Load a diffusers WanTransformer3DModel folder (config.json + *.safetensors) with clear errors.
    text_len 0: take it from the folder's vpae.json, else 512 (real Wan)."""
    from diffusers import WanTransformer3DModel

    path = Path(path)
    if not path.is_dir():
        raise ModelLoadError(f"model checkpoint folder not found: {path}")
    if not (path / "config.json").is_file():
        raise ModelLoadError(f"{path} is not a diffusers model folder (no config.json)")
    if not any(path.glob("*.safetensors")):
        raise ModelLoadError(f"{path} has no .safetensors weights")
    try:
        model = WanTransformer3DModel.from_pretrained(str(path), torch_dtype=dtype, use_safetensors=True,
                                                      local_files_only=True)
    except Exception as e:
        raise ModelLoadError(f"cannot load Wan transformer from {path}: {type(e).__name__}: {e}") from e
    text_len = text_len or int(read_model_meta(path).get("text_len", 512))
    return WanBackbone(model, text_len)


PACKAGE_ROOT = Path(__file__).resolve().parent
BUILTIN_TEACHER = PACKAGE_ROOT / "toy" / "teacher"


def resolve_model_path(path: str) -> Path:
    """'builtin:toy' is the shipped toy teacher; other paths are used as given."""
    if path in ("builtin:toy", "toy"):
        return BUILTIN_TEACHER
    return Path(path).expanduser()


def dtype_of(cfg: VPAEConfig) -> torch.dtype:
    return {"float32": torch.float32, "bfloat16": torch.bfloat16}[cfg.model.dtype]


def warn_if_other_toy_world(cfg: VPAEConfig, meta: dict) -> list[str]:
    """A toy teacher used on another toy world than the one it was trained on runs without error and gives
    meaningless samples (session 10 changed the shipped world's object sizes): warn, naming each field of the
    world (vpae.toy.world.world_config) that differs from the teacher's vpae.json. -> the differing fields."""
    import dataclasses
    import warnings

    from vpae.toy.world import world_config
    trained = meta.get("data") or {}
    if cfg.data.kind != "toy" or trained.get("kind") != "toy":
        return []
    fields = [f.name for f in dataclasses.fields(cfg.data)]  # in the config's order, for the message
    then = dataclasses.asdict(world_config(dataclasses.replace(cfg.data, **{k: v for k, v in trained.items() if k in fields})))
    now = dataclasses.asdict(world_config(cfg.data))
    diff = [f for f in fields if f in now and now[f] != then[f]]
    if diff:
        warnings.warn("the teacher was trained on another toy world: " + ", ".join(
            f"data.{f} {then[f]} (teacher) vs {now[f]} (config)" for f in diff)
            + "; set these in the config's data section to match the teacher's vpae.json", stacklevel=2)
    return diff


def build_teacher(cfg: VPAEConfig, device: str | None = None) -> WanBackbone:
    """The teacher from cfg.model.teacher (a diffusers folder or 'builtin:toy'), or random from wan_config, on
    `device` (default cfg.train.device)."""
    if cfg.model.teacher:
        path = resolve_model_path(cfg.model.teacher)
        bb = load_wan_backbone(path, dtype_of(cfg), cfg.model.text_len)
        warn_if_other_toy_world(cfg, read_model_meta(path))
    else:
        if not cfg.model.wan_config:
            raise ValueError("model.teacher is empty and model.wan_config is empty: nothing to build")
        from diffusers import WanTransformer3DModel
        wc = dict(cfg.model.wan_config)
        if "patch_size" in wc:
            wc["patch_size"] = tuple(wc["patch_size"])
        torch.manual_seed(cfg.train.seed)  # the same random teacher in every process (resume, tests)
        model = WanTransformer3DModel(**wc)
        if dtype_of(cfg) != torch.float32:
            model = model.to(dtype_of(cfg))
        bb = WanBackbone(model, cfg.model.text_len or 512)
    if cfg.model.gradient_checkpointing:
        bb.model.enable_gradient_checkpointing()
    return bb.to(device or cfg.train.device)
