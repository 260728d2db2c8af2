"""Model loading: the teacher (a local diffusers folder, a model family's built-in model such as `builtin:toy`,
or random from a config) and the generator's starting point. Nothing downloads: folders are local only."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch

from vpae.config import VPAEConfig
from vpae.errors import VpaeError

if TYPE_CHECKING:
    from vpae.backbones.wan import WanBackbone


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

    from vpae.backbones.wan import WanBackbone
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


BUILTIN = "builtin:"


def resolve_model_path(path: str) -> Path:
    """'builtin:NAME' (or a bare family name such as 'toy') is the model the family NAME ships (its
    `builtin_model`, vpae.registry); other paths are used as given (relative to the working directory)."""
    from vpae import registry
    name = path[len(BUILTIN):] if path.startswith(BUILTIN) else path
    if path.startswith(BUILTIN) or name in registry.model_family_names():
        try:
            builtin = getattr(registry.model_family(name), "builtin_model", None)
        except registry.UnknownName:
            builtin = None
        if builtin is not None:
            return Path(builtin)
        if path.startswith(BUILTIN):
            names = [n for n in registry.model_family_names()
                     if getattr(registry.model_family(n), "builtin_model", None) is not None]
            raise ModelLoadError(f"no built-in model {path!r}; the built-in models are "
                                 f"{', '.join(BUILTIN + n for n in names)}")
    return Path(path).expanduser()


def pipeline_root(transformer: Path) -> Path | None:
    """The diffusers pipeline folder a transformer/ folder belongs to (`vpae export` writes one), else None."""
    ok = transformer.name == "transformer" and (transformer / "config.json").is_file() \
        and (transformer.parent / "model_index.json").is_file()
    return transformer.parent if ok else None


def dtype_of(cfg: VPAEConfig) -> torch.dtype:
    return {"float32": torch.float32, "bfloat16": torch.bfloat16}[cfg.model.dtype]


def check_teacher(cfg: VPAEConfig, path: Path) -> list[str]:
    """The model family's checks of a teacher folder used with this config (e.g. a toy teacher on another toy
    world than it was trained on warns, naming each setting): -> the keys it warned about."""
    from vpae import registry
    meta = read_model_meta(path)
    check = getattr(registry.family_of(meta, path), "check_teacher", None)
    return check(cfg, meta) if check is not None else []


def _random_wan_config(cfg: VPAEConfig) -> dict:
    if not cfg.model.wan_config:
        raise ValueError("model.teacher is empty and model.wan_config is empty: nothing to build")
    wc = dict(cfg.model.wan_config)
    if "patch_size" in wc:
        wc["patch_size"] = tuple(wc["patch_size"])
    return wc


def build_teacher(cfg: VPAEConfig, device: str | None = None, empty: bool = False) -> WanBackbone:
    """The teacher from cfg.model.teacher (a diffusers folder or 'builtin:toy'), or random from
    wan_config, on `device` (default cfg.train.device). empty: its shape only, on the meta device, no weights
    read (the ranks that receive their shards from rank 0 under torchrun)."""
    from vpae.backbones.wan import WanBackbone
    if empty:
        from diffusers import WanTransformer3DModel
        if cfg.model.teacher:
            path = resolve_model_path(cfg.model.teacher)
            config = WanTransformer3DModel.load_config(str(path), local_files_only=True)
            text_len = cfg.model.text_len or int(read_model_meta(path).get("text_len", 512))
        else:
            config, text_len = _random_wan_config(cfg), cfg.model.text_len or 512
        with torch.device("meta"):
            model = WanTransformer3DModel.from_config(config)
        if dtype_of(cfg) != torch.float32:
            model = model.to(dtype_of(cfg))
        bb = WanBackbone(model, text_len)
        if cfg.model.gradient_checkpointing:
            bb.model.enable_gradient_checkpointing()
        return bb
    if cfg.model.teacher:
        path = resolve_model_path(cfg.model.teacher)
        bb = load_wan_backbone(path, dtype_of(cfg), cfg.model.text_len)
        check_teacher(cfg, path)
    else:
        if not cfg.model.wan_config:
            raise ValueError("model.teacher is empty and model.wan_config is empty: nothing to build")
        from diffusers import WanTransformer3DModel
        torch.manual_seed(cfg.train.seed)  # the same random teacher in every process (resume, tests)
        model = WanTransformer3DModel(**_random_wan_config(cfg))
        if dtype_of(cfg) != torch.float32:
            model = model.to(dtype_of(cfg))
        bb = WanBackbone(model, cfg.model.text_len or 512)
    if cfg.model.gradient_checkpointing:
        bb.model.enable_gradient_checkpointing()
    from vpae.config.schema import resolve_device
    return bb.to(device or resolve_device(cfg.train.device))
