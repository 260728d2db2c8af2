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


PIPELINE_README = """# One-step V-PAE generator (diffusers pipeline folder)

Written by `vpae export`: the base pipeline's components with the distilled transformer in `transformer/`
and a flow-matching Euler scheduler (shift {shift}). Sample in ONE step, without CFG:

```python
import torch
from diffusers import {pipeline}
pipe = {pipeline}.from_pretrained("{out}", torch_dtype=torch.bfloat16).to("cuda")
video = pipe(..., num_inference_steps=1, guidance_scale=1.0).frames[0]
```
"""


def export_pipeline(generator_dir: str | Path, base_dir: str | Path, out_dir: str | Path, shift: float = 3.0,
                    link: bool = False) -> Path:
    """A diffusers pipeline folder that runs the distilled generator in one step: every component of the
    local base pipeline `base_dir` (VAE, text encoder + tokenizer, image encoder + processor), the generator's
    transformer folder (`vpae distill` writes RUN/generator) as `transformer/`, and a
    FlowMatchEulerDiscreteScheduler(shift) as `scheduler/`: with num_inference_steps=1 and guidance_scale=1 the
    pipeline computes x0 = z - v(z, 1), our one-step sample. A LoRA run's adapter (RUN/generator_lora, diffusers'
    LoRA format) is copied as `transformer_lora/` (`pipe.transformer.load_lora_adapter` on the teacher's
    transformer gives the generator again). `link` symlinks the base components instead of
    copying them (14B: the UMT5 encoder alone is ~11 GB). Published atomically."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    from vpae.errors import VpaeError
    generator_dir, base_dir = Path(generator_dir), Path(base_dir)
    index_file = base_dir / "model_index.json"
    if not index_file.is_file():
        raise VpaeError(f"{base_dir} is not a local diffusers pipeline folder (no model_index.json)")
    if not (generator_dir / "config.json").is_file() or not any(generator_dir.glob("*.safetensors")):
        raise VpaeError(f"{generator_dir} is not a transformer folder (config.json + *.safetensors); "
                        f"`vpae distill` writes one to RUN/generator")
    index = json.loads(index_file.read_text())
    out = Path(out_dir)

    def write(tmp: Path):
        for name, spec in index.items():
            if name.startswith("_") or name in ("transformer", "scheduler") or spec in (None, [None, None]):
                continue
            src = base_dir / name
            if src.is_dir():
                if link:
                    (tmp / name).symlink_to(src.resolve(), target_is_directory=True)
                else:
                    shutil.copytree(src, tmp / name)
        (tmp / "transformer").mkdir()
        for f in generator_dir.iterdir():
            if f.is_file():
                shutil.copy2(f, tmp / "transformer" / f.name)
        lora = generator_dir.parent / "generator_lora"  # a LoRA run's adapter alone, in diffusers' LoRA keys
        if lora.is_dir():
            shutil.copytree(lora, tmp / "transformer_lora")
        FlowMatchEulerDiscreteScheduler(shift=shift).save_pretrained(str(tmp / "scheduler"))
        index["scheduler"] = ["diffusers", "FlowMatchEulerDiscreteScheduler"]
        (tmp / "model_index.json").write_text(json.dumps(index, indent=2))
        (tmp / "README.md").write_text(PIPELINE_README.format(shift=shift, pipeline=index.get("_class_name", "WanPipeline"),
                                                              out=out))
        (tmp / "vpae.json").write_text(json.dumps({"sampling": {"num_inference_steps": 1, "guidance_scale": 1.0},
                                                   "generator": str(generator_dir.resolve())}, indent=1))
    return _atomic_dir(out, write)
