"""Export: a generator or teacher as a diffusers WanTransformer3DModel folder (safetensors, config.json,
vpae.json), a LoRA generator merged plus its adapter alone in diffusers' LoRA format; published atomically."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

from vpae.backbones.wan import WanBackbone


def export_backbone(backbone: WanBackbone, out_dir: str | Path, extra: dict | None = None,
                    lora_dir: str | Path | None = None) -> Path:
    """Write a diffusers WanTransformer3DModel folder (safetensors), loadable by `vpae generate` and by
    diffusers' WanTransformer3DModel.from_pretrained. A LoRA generator is written merged (diffusers'
    fuse_lora + unload_lora on a copy; the live model keeps its adapter); with `lora_dir`, its adapter is
    also written alone in diffusers' LoRA format (load_lora_adapter on the teacher restores the generator)."""
    out = Path(out_dir)
    model = backbone.model
    if getattr(model, "_hf_peft_config_loaded", False):
        if lora_dir is not None:
            for name in model.peft_config:
                _atomic_dir(Path(lora_dir) if len(model.peft_config) == 1 else Path(lora_dir) / name,
                            lambda tmp, name=name: model.save_lora_adapter(str(tmp), adapter_name=name))
        model = copy.deepcopy(model)
        model.fuse_lora()
        model.unload_lora()

    def write(tmp: Path):
        model.save_pretrained(str(tmp), safe_serialization=True)
        (tmp / "vpae.json").write_text(json.dumps({"text_len": backbone.text_len, **(extra or {})}, indent=1))
    return _atomic_dir(out, write)


def _atomic_dir(out: Path, write) -> Path:
    """write(tmp) fills a sibling temporary folder, which then replaces `out` by renames only: a crash never
    leaves a half-written export, and the previous one stays complete (as `out` or `out.old`) until the
    new one is in place."""
    tmp, old = out.with_name(out.name + ".tmp"), out.with_name(out.name + ".old")
    if old.exists() and not out.exists():  # a crash between the two renames: the old export is the good one
        old.rename(out)
    for stale in (tmp, old):
        if stale.exists():
            shutil.rmtree(stale)
    tmp.mkdir(parents=True)
    write(tmp)
    if out.exists():
        out.rename(old)
    tmp.rename(out)
    if old.exists():
        shutil.rmtree(old)
    return out
