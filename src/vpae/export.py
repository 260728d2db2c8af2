"""Export: a generator or teacher as a diffusers WanTransformer3DModel folder (safetensors, config.json,
vpae.json), a LoRA generator merged plus its adapter alone in diffusers' LoRA format (the file and keys that
`pipe.load_lora_weights` and `transformer.load_lora_adapter` look for); a diffusers pipeline folder whose
scheduler reproduces vpae's one- and few-step sampling; published atomically."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

from vpae.backbones.wan import WanBackbone
from vpae.models import read_model_meta


def export_backbone(backbone: WanBackbone, out_dir: str | Path, extra: dict | None = None,
                    lora_dir: str | Path | None = None) -> Path:
    """Write a diffusers WanTransformer3DModel folder (safetensors), loadable by `vpae generate` and by
    diffusers' WanTransformer3DModel.from_pretrained. A LoRA generator is written merged (diffusers'
    fuse_lora + unload_lora on a copy; the live model keeps its adapter); with `lora_dir`, its adapter is
    also written alone in diffusers' LoRA format (load_lora_weights / load_lora_adapter on the teacher restore
    the generator)."""
    out = Path(out_dir)
    model = backbone.model
    if getattr(model, "_hf_peft_config_loaded", False):
        if lora_dir is not None:
            for name in model.peft_config:
                _atomic_dir(Path(lora_dir) if len(model.peft_config) == 1 else Path(lora_dir) / name,
                            lambda tmp, name=name: save_lora(model, name, tmp))
        model = copy.deepcopy(model)
        model.fuse_lora()
        model.unload_lora()

    def write(tmp: Path):
        model.save_pretrained(str(tmp), safe_serialization=True)
        (tmp / "vpae.json").write_text(json.dumps({"text_len": backbone.text_len, **(extra or {})}, indent=1))
    return _atomic_dir(out, write)


def save_lora(model, adapter_name: str, out: Path) -> None:
    """One adapter as the Wan pipelines' own LoRA file: `pytorch_lora_weights.safetensors` with keys
    `transformer.<module>.lora_A/B.weight` and the LoraConfig in its metadata (so rank, alpha and targets load as
    trained). That is what `pipe.load_lora_weights(dir)` and `transformer.load_lora_adapter(dir)` look for by
    default; `model.save_lora_adapter` writes the keys without the `transformer.` prefix, which both skip."""
    from diffusers.loaders import WanLoraLoaderMixin
    from peft.utils import get_peft_model_state_dict
    WanLoraLoaderMixin.save_lora_weights(
        str(out), transformer_lora_layers=get_peft_model_state_dict(model, adapter_name=adapter_name),
        transformer_lora_adapter_metadata=model.peft_config[adapter_name].to_dict())


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


PIPELINE_README = """# Distilled V-PAE generator (diffusers pipeline folder)

Written by `vpae export`: the base pipeline's components with the distilled transformer in `transformer/`
and vpae's few-step sampler as the scheduler: FlowMatchEulerDiscreteScheduler(shift={shift},
stochastic_sampling=True) predicts x0 at each sigma and re-noises it with fresh noise to the next one. Sample
in {steps} step(s), without CFG:

```python
import torch
from diffusers import {pipeline}
pipe = {pipeline}.from_pretrained("{out}", torch_dtype=torch.bfloat16).to("cuda")
video = pipe(..., num_inference_steps={steps}, guidance_scale=1.0).frames[0]
```
`vpae generate --sampler few-step --steps N --shift {shift} --schedule linspace --seed S` gives the same
latents as this pipeline with `latents=torch.randn(shape, generator=torch.Generator().manual_seed(S))` and
`generator=torch.Generator().manual_seed(S + 1)` (vpae draws the start noise and the re-noising from two
seeds).
"""


def export_pipeline(generator_dir: str | Path, base_dir: str | Path, out_dir: str | Path, shift: float = 3.0,
                    link: bool = False, steps: int = 1) -> Path:
    """A diffusers pipeline folder that runs the distilled generator in `steps` steps: every component of the
    local base pipeline `base_dir` (VAE, text encoder + tokenizer, image encoder + processor), the generator's
    transformer folder (`vpae distill` writes RUN/generator) as `transformer/`, and a
    FlowMatchEulerDiscreteScheduler(shift, stochastic_sampling=True) as `scheduler/`, which is vpae's few-step
    sampler (x0 prediction at each of few_step_sigmas(N, shift, "linspace"), re-noised with fresh noise to the
    next): with num_inference_steps=N and guidance_scale=1 the pipeline computes `vpae generate --sampler few-step
    --steps N --schedule linspace` (N = 1: x0 = z - v(z, 1), the one-step sample, the same for every schedule;
    at N > 1 diffusers' scheduler has no trailing spacing, so the pipeline samples its linspace sigmas).
    `steps` is the N the README and vpae.json recommend.
    A LoRA run's adapter (RUN/generator_lora) is copied as `transformer_lora/` (`pipe.load_lora_weights` on
    the teacher's pipeline gives the generator again). `link` symlinks the base components instead of copying
    them (14B: the UMT5 encoder alone is ~11 GB). Published atomically."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    from vpae.errors import VpaeError
    if steps < 1:
        raise VpaeError(f"--steps must be >= 1, got {steps}")
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
        FlowMatchEulerDiscreteScheduler(shift=shift, stochastic_sampling=True).save_pretrained(str(tmp / "scheduler"))
        index["scheduler"] = ["diffusers", "FlowMatchEulerDiscreteScheduler"]
        (tmp / "model_index.json").write_text(json.dumps(index, indent=2))
        (tmp / "README.md").write_text(PIPELINE_README.format(
            shift=shift, steps=steps, pipeline=index.get("_class_name", "WanPipeline"), out=out))
        trained = read_model_meta(generator_dir).get("data", {})  # the clip size the generator was trained at
        size = {k: trained[f] for k, f in (("num_frames", "frames"), ("height", "height"), ("width", "width"))
                if f in trained}
        (tmp / "vpae.json").write_text(json.dumps({"sampling": {"num_inference_steps": steps, "guidance_scale": 1.0,
                                                                "shift": shift, **size},
                                                   "generator": str(generator_dir.resolve())}, indent=1))
    return _atomic_dir(out, write)
