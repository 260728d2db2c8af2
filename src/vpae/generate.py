"""`vpae generate`: one video (mp4 + GIF) from a teacher or a distilled generator.

Models: a diffusers ``WanTransformer3DModel`` folder (config.json + *.safetensors, optionally the project's
``vpae.json`` next to them), a run directory holding an exported ``generator/`` folder, or ``builtin:toy``
(the shipped toy teacher).

Condition stack: the model family's (vpae.registry) whose `matches(meta, folder)` claims the model:

* a transformer/ folder inside a diffusers pipeline folder: the Wan family, the pipeline's VAE, UMT5 and CLIP;
* toy models (``vpae.json`` says "data": {"kind": "toy"}): the toy family, the identity codec, the MiniLM text
  encoder (outputs rounded to float16 exactly as in training) and the parameter-free patch image encoder;
* other models, or ``--embeddings`` with a pixel-space model: precomputed embeddings (safetensors with 'text'
  (L, D) and optionally 'negative_text' (L', D) and 'image' (N, D_img)). Models whose latents are not pixels
  need a VAE to decode them, which only a pipeline folder provides (clear error).

Every failure the user can fix (paths, sizes, sampler, missing inputs) raises :class:`GenerateError`.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from vpae.errors import VpaeError
from vpae.models import pipeline_root

SAMPLERS = ("euler", "few-step")


class GenerateError(VpaeError, ValueError):
    """A generation request that cannot be served; the message says what to change."""


@dataclass
class Stack:
    """What turns a prompt / image into a Conditioning and latents into pixels."""
    kind: str                 # the model family's name ("toy", "wan") | "embeddings" (precomputed, --embeddings)
    codec: object             # a vpae.codecs.LatentCodec
    text_encoder: object = None
    image_encoder: object = None
    image_patch: int = 1      # H, W multiple required by the image encoder


# ----------------------------------------------------------------------------------------------
# Model

def find_model_folder(model: str) -> Path:
    """'builtin:toy', a diffusers folder, a run directory with an exported generator/ folder, or a diffusers
    pipeline folder (`vpae export` writes one: its transformer/, with the pipeline's encoders and VAE)."""
    from vpae.models import ModelLoadError, resolve_model_path
    try:
        path = resolve_model_path(str(model))
    except ModelLoadError as e:
        raise GenerateError(str(e)) from e
    if not path.exists():
        raise GenerateError(f"model checkpoint folder not found: {path}")
    if pipeline_root(path / "transformer") is not None:
        return path / "transformer"
    if path.is_dir() and not (path / "config.json").is_file() and (path / "generator" / "config.json").is_file():
        return path / "generator"
    return path


def load_model(model: str, device: str | torch.device = "cpu"):
    """-> (WanBackbone in eval mode on device, folder, vpae.json metadata). Raises GenerateError."""
    from vpae.models import ModelLoadError, load_wan_backbone, read_model_meta
    path = find_model_folder(model)
    try:
        meta = read_model_meta(path) if path.is_dir() else {}
        backbone = load_wan_backbone(path, torch.float32, int(meta.get("text_len", 0) or 0))
    except ModelLoadError as e:
        raise GenerateError(str(e)) from e  # the message names the path
    except ValueError as e:  # e.g. an inconsistent Wan config rejected by WanBackbone
        raise GenerateError(f"cannot use model {path}: {e}") from e
    return backbone.eval().requires_grad_(False).to(device), path, meta


def build_stack(backbone, meta: dict, embeddings: Optional[Path], folder: Optional[Path] = None) -> Stack:
    """The condition stack of the model's family (vpae.registry.family_of), unless --embeddings are given for a
    pixel-space model; else precomputed embeddings, which need a pixel-space model (no VAE to decode)."""
    from vpae import registry
    from vpae.codecs import IdentityCodec
    cfg = backbone.model.config
    family = registry.family_of(meta, folder)
    if family is not None and (embeddings is None or cfg.out_channels != 3):
        s = family.model_stack(backbone, meta, folder)
        if s.codec.latent_channels != cfg.out_channels:
            raise GenerateError(f"the {family.name} condition stack's codec has {s.codec.latent_channels} latent "
                                f"channels, this model denoises {cfg.out_channels}")
        return Stack(family.name, s.codec, s.text_encoder, s.image_encoder,
                     getattr(s.image_encoder, "size_multiple", 1) if s.image_encoder is not None else 1)
    if cfg.out_channels != 3:
        raise GenerateError(
            f"this model denoises {cfg.out_channels}-channel latents, which need a Wan VAE to decode; "
            f"`vpae generate` does not support --vae yet (only pixel-space models such as the toy models)")
    if embeddings is not None:
        return Stack("embeddings", IdentityCodec())
    raise GenerateError(
        f"{'this model' if meta else 'this folder has no vpae.json, so'} names no text encoder "
        f"(text_dim {cfg.text_dim}); pass --embeddings, a safetensors "
        f"file with 'text' (L, {cfg.text_dim}) [+ 'negative_text', 'image' (N, {cfg.image_dim or 'D_img'})]")


# ----------------------------------------------------------------------------------------------
# Inputs

DEFAULT_SIZE = (9, 32, 32)


def size_and_image(meta: dict, folder: Path, backbone, frames, height, width, image):
    """Unset sizes from the size the model was trained at (vpae.json's data.frames / height / width), else 9 x 32
    x 32; an image-to-video model without --image takes the example condition its folder ships (example.json),
    said on stderr."""
    import json
    import sys
    data = meta.get("data", {}) if isinstance(meta.get("data"), dict) else {}
    trained = [data.get(k) for k in ("frames", "height", "width")]
    frames, height, width = (given if given is not None else (t if isinstance(t, int) else d)
                             for given, t, d in zip((frames, height, width), trained, DEFAULT_SIZE))
    example = Path(folder) / "example.json" if folder is not None else None
    if image is None and backbone.i2v and example is not None and example.is_file():
        spec = json.loads(example.read_text())
        image = Path(folder) / spec["image"]
        print(f"note: no --image: using the model's example condition {image} (its caption: {spec.get('prompt')!r})",
              file=sys.stderr)
    return frames, height, width, image


def check_request(backbone, stack: Stack, sampler: str, steps: int, frames: int, height: int, width: int) -> None:
    if sampler not in SAMPLERS:
        raise GenerateError(f"unknown sampler {sampler!r}; use one of: {', '.join(SAMPLERS)}")
    if steps < 1:
        raise GenerateError(f"steps must be >= 1, got {steps}")
    if frames < 1 or (frames - 1) % 4:
        raise GenerateError(f"frames must be 4n+1 (1, 5, 9, 13, ...), got {frames}")
    codec = stack.codec
    _, ph, pw = backbone.patch_size
    pt = backbone.patch_size[0]
    multiple = math.lcm(codec.spatial_stride * ph, codec.spatial_stride * pw, stack.image_patch,
                        getattr(codec, "size_multiple", 1))
    if height < 1 or width < 1 or height % multiple or width % multiple:
        raise GenerateError(f"height and width must be positive multiples of {multiple} (codec spatial stride "
                            f"{codec.spatial_stride} x patch size {ph}"
                            + (f", image patch {stack.image_patch}" if stack.image_patch > 1 else "")
                            + f"), got {height}x{width}")
    latent_frames = (frames - 1) // codec.temporal_stride + 1
    if latent_frames % pt:
        raise GenerateError(f"{frames} frames give {latent_frames} latent frames, not a multiple of the "
                            f"temporal patch size {pt}")
    try:
        codec.check_size(frames, height, width)
    except ValueError as e:
        raise GenerateError(str(e)) from e


def load_image(path: Path, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """png/jpg -> (as given (1, 3, h, w), resized (1, 3, height, width)), float32 in [-1, 1]. The resized one is
    what diffusers' Wan pipelines give the VAE (their VideoProcessor.preprocess: PIL resize with its Lanczos
    filter); an image encoder with its own processor (CLIP) gets the image as given, as the pipelines do."""
    import numpy as np
    from diffusers.video_processor import VideoProcessor
    from PIL import Image

    from vpae.eval.video import VideoError, read_image
    try:
        a = read_image(path)
    except VideoError as e:
        raise GenerateError(str(e)) from e
    original = torch.from_numpy(np.array(a, dtype=np.uint8)).permute(2, 0, 1)[None].float().div(127.5).sub(1.0)
    if a.shape[:2] == (height, width):
        return original, original
    resized = VideoProcessor(vae_scale_factor=1).preprocess(Image.fromarray(a), height=height, width=width)
    return original, resized.float()


def load_embeddings(path: Path, backbone) -> dict:
    from safetensors.torch import load_file
    path = Path(path)
    if not path.is_file():
        raise GenerateError(f"embeddings file not found: {path}")
    try:
        t = load_file(str(path))
    except Exception as e:  # noqa: BLE001 - safetensors raises several types
        raise GenerateError(f"cannot read embeddings {path}: {type(e).__name__}: {e}") from e
    cfg = backbone.model.config
    if "text" not in t:
        raise GenerateError(f"embeddings {path} have no 'text' tensor (keys: {sorted(t)})")
    out = {}
    for key, dim in (("text", cfg.text_dim), ("negative_text", cfg.text_dim), ("image", cfg.image_dim)):
        if key not in t:
            continue
        x = t[key].float()
        if x.ndim == 3 and x.shape[0] == 1:
            x = x[0]
        if x.ndim != 2 or (dim is not None and x.shape[1] != dim):
            raise GenerateError(f"embeddings {path}: '{key}' must be (N, {dim}), got {tuple(t[key].shape)}")
        if key != "image" and x.shape[0] > backbone.text_len:
            raise GenerateError(f"embeddings {path}: '{key}' has {x.shape[0]} tokens, the model takes at most "
                                f"{backbone.text_len}")
        out[key] = x[None]
    return out


def build_conditioning(backbone, stack: Stack, prompt: Optional[str], embeddings: Optional[Path],
                       image: Optional[Path], frames: int, height: int, width: int, negative_only: bool = False,
                       device: torch.device | str = "cpu"):
    from vpae.conditioning import Conditioning
    img = original = None
    if backbone.i2v:
        if image is None:
            raise GenerateError("this is an image-to-video model: pass --image (png/jpg condition frame)")
        original, img = (x.to(device) for x in load_image(image, height, width))
    if stack.text_encoder is not None and not (prompt or "").strip() and not negative_only:
        raise GenerateError("no prompt (or an empty one): pass --prompt TEXT, or --negative-only to sample "
                            "with the empty prompt on purpose")
    if stack.text_encoder is not None:
        text, mask = stack.text_encoder.encode([prompt or ""])
        neg = stack.text_encoder.negative(1)
        own_processor = hasattr(stack.image_encoder, "processor")  # CLIP resizes and crops the image itself
        tokens = stack.image_encoder(original if own_processor else img) if img is not None else None
    else:
        emb = load_embeddings(embeddings, backbone)
        text, mask, neg = emb["text"], None, emb.get("negative_text")
        tokens = emb.get("image")
        if backbone.i2v and tokens is None:
            raise GenerateError(f"this is an image-to-video model: the embeddings {embeddings} need an 'image' "
                                f"tensor (N, {backbone.model.config.image_dim}) of image-encoder tokens")
    cond_latent = cond_mask = None
    if img is not None:
        cond_latent, cond_mask = stack.codec.encode_condition(img, frames)
        if cond_mask.shape[1] != backbone.mask_channels:
            raise GenerateError(f"the codec's condition mask has {cond_mask.shape[1]} channels, the model expects "
                                f"{backbone.mask_channels}")
    return Conditioning(text=text, text_mask=mask, negative_text=neg, image=tokens,
                        cond_latent=cond_latent, cond_mask=cond_mask)


# ----------------------------------------------------------------------------------------------
# Generation

@torch.no_grad()
def generate_video(model: str, out: Path, prompt: Optional[str] = None, embeddings: Optional[Path] = None,
                   image: Optional[Path] = None, sampler: str = "euler", steps: int = 50,
                   guidance: Optional[float] = None, shift: float = 3.0, seed: int = 0, frames: Optional[int] = None,
                   height: Optional[int] = None, width: Optional[int] = None, fps: float = 8.0,
                   device: Optional[str] = None,
                   negative_only: bool = False, world=None, schedule: str = "trailing") -> dict:
    """Generate one video and write ``out/sample.mp4``, ``out/sample.gif`` (native size) and the sampled
    latents ``out/latents.safetensors``.

    world: a vpae.training.parallel.World with cp_size > 1 (`torchrun --nproc_per_node N vpae generate`): the
    model runs with diffusers' context parallelism over the N ranks (each holds the whole model, the token
    sequence is split), the same result as one process; rank 0 writes the files.

    sampler: 'euler' (the teacher baseline: `steps` Euler steps over shifted sigmas with CFG) or
    'few-step' (x0 prediction + re-noising over few_step_sigmas(steps, shift, schedule); steps=1 is one-step;
    schedule linspace is what an exported diffusers pipeline samples at N > 1 steps).
    guidance None: 5 for euler, 1 (no negative branch) for few-step. Deterministic for a seed.

    Returns dict(mp4, gif, video ((3, F, H, W) in [-1, 1]), nfe, diffusion_s (sampler only), total_s (conditioning
    + sampling + decode, model load and file writing excluded), load_s, write_s, frames, height, width, sampler, steps,
    guidance, model, device). Raises GenerateError on anything the user can fix.
    """
    from vpae.eval.latency import sync_device
    from vpae.sampling import few_step_sample, few_step_sigmas, initial_noise, teacher_sample

    if sampler not in SAMPLERS:
        raise GenerateError(f"unknown sampler {sampler!r}; use one of: {', '.join(SAMPLERS)}")
    if steps < 1:
        raise GenerateError(f"steps must be >= 1, got {steps}")
    if fps <= 0:
        raise GenerateError(f"fps must be > 0, got {fps}")
    if guidance is None:
        guidance = 5.0 if sampler == "euler" else 1.0
    dev = torch.device(world.device if world is not None else device or ("cuda" if torch.cuda.is_available() else "cpu"))

    t0 = time.perf_counter()
    backbone, folder, meta = load_model(model, dev)
    frames, height, width, image = size_and_image(meta, folder, backbone, frames, height, width, image)
    if world is not None and world.cp_size > 1:
        from vpae.training.parallel import enable_context_parallel
        enable_context_parallel(backbone, world)
    stack = build_stack(backbone, meta, embeddings, folder)
    for part in (stack.codec, stack.text_encoder, stack.image_encoder):  # every component on the device
        if part is not None and callable(getattr(part, "to", None)):
            part.to(dev)
    check_request(backbone, stack, sampler, steps, frames, height, width)
    load_s = time.perf_counter() - t0

    t1 = time.perf_counter()
    cond = build_conditioning(backbone, stack, prompt, embeddings, image, frames, height, width, negative_only,
                              dev).to(dev)
    shape = (1, *stack.codec.latent_shape(frames, height, width))
    noise = initial_noise(shape, seed, dev)
    sync_device(dev)
    t2 = time.perf_counter()
    try:
        if sampler == "euler":
            r = teacher_sample(backbone, noise, cond, steps, guidance, shift)
        else:
            r = few_step_sample(backbone, noise, cond, few_step_sigmas(steps, shift, schedule), guidance, seed)
    except ValueError as e:
        raise GenerateError(f"sampling failed: {e}") from e
    sync_device(dev)
    diffusion_s = time.perf_counter() - t2
    video = stack.codec.decode(r.x0)[0].float().clamp(-1, 1).cpu()
    total_s = time.perf_counter() - t1

    t3 = time.perf_counter()
    out = Path(out)
    mp4, gif = out / "sample.mp4", out / "sample.gif"
    result = dict(mp4=mp4, gif=gif, video=video, nfe=r.nfe, diffusion_s=diffusion_s, total_s=total_s, load_s=load_s,
                  frames=frames, height=height, width=width, sampler=sampler, steps=steps, guidance=guidance,
                  model=str(folder), device=str(dev), latents=out / "latents.safetensors")
    if world is not None and not world.main:
        return {**result, "write_s": 0.0}
    from safetensors.torch import save_file

    from vpae.eval.video import write_video
    try:
        write_video(mp4, video, fps)
        write_video(gif, video, fps)
        save_file({"x0": r.x0.detach().float().cpu().contiguous()}, str(out / "latents.safetensors"))
    except Exception as e:  # noqa: BLE001 - ffmpeg / Pillow / filesystem errors
        raise GenerateError(f"cannot write the video to {out}: {type(e).__name__}: {e}") from e
    for f in (mp4, gif):
        if not f.is_file() or f.stat().st_size == 0:
            raise GenerateError(f"writing {f} produced no file")
    return {**result, "write_s": time.perf_counter() - t3}
