"""The toy model family (`registry.model_family("toy")`): Wan-architecture models of the toy world and their
condition stack, the identity codec (latents are pixels), MiniLM text states rounded to float16 (what training
sees, with or without a caption bank) and the parameter-free patch image encoder; the shipped teacher
(`builtin:toy`); and the check that a toy teacher is used on the world it was trained on.

A toy model's vpae.json records the data section it was trained with under "data": {"kind": "toy", ...}, with
the toy world's settings in its section "toy" (models exported before the section existed have them flat in
"data"; both are read).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import warnings
from pathlib import Path

from vpae.registry import register_model_family

BUILTIN_TEACHER = Path(__file__).resolve().parent / "teacher"
"""The shipped toy teacher (`builtin:toy`): a diffusers WanTransformer3DModel folder with its vpae.json."""


def trained_data(meta: dict) -> dict:
    """The data section a model's vpae.json records, in the current layout (the toy settings under "toy"); {}
    if it records none."""
    from vpae.config import nest_data_sections
    data = meta.get("data")
    return nest_data_sections(data) if isinstance(data, dict) else {}


def is_toy_model(meta: dict) -> bool:
    """Whether the folder says it was trained on the toy world (vpae.json "data.kind": every toy export writes
    it); a model is never assumed toy from its sizes."""
    return trained_data(meta).get("kind") == "toy"


@functools.lru_cache(maxsize=4)
def _minilm(max_tokens: int):
    from vpae.toy.data import Fp16TextEncoder
    from vpae.toy.encoders import TextEncoder
    return Fp16TextEncoder(TextEncoder(max_tokens=max_tokens))


def _stack(text_encoder, image_encoder):
    from vpae.codecs import IdentityCodec
    from vpae.data.prepare import EncoderStack
    from vpae.data.source import ConditionSizes
    codec = IdentityCodec()
    sizes = ConditionSizes(latent_channels=codec.latent_channels, mask_channels=codec.mask_channels,
                           text_dim=text_encoder.dim, text_len=text_encoder.max_tokens,
                           image_dim=image_encoder.dim if image_encoder is not None else None)
    return EncoderStack(codec, text_encoder, image_encoder, sizes)


def warn_if_other_toy_world(cfg, meta: dict) -> list[str]:
    """A toy teacher used on another toy world than the one it was trained on runs without error and gives
    meaningless samples: warn, naming each setting of the world (vpae.toy.world.world_config) that differs from
    the teacher's vpae.json. -> the differing keys ("data.toy.small_radius", ...)."""
    from vpae.config import build, to_dict
    from vpae.toy.world import WORLD_FIELDS, ToyDataConfig, world_config
    trained = trained_data(meta)
    if cfg.data.kind != "toy" or trained.get("kind") != "toy":
        return []
    core = {k: trained[k] for k in ("frames", "height", "width") if k in trained}
    known = {f.name for f in dataclasses.fields(ToyDataConfig)}
    recorded = {k: v for k, v in (trained.get("toy") or {}).items() if k in known}
    then_toy = build(ToyDataConfig, {**to_dict(cfg.data.toy), **recorded}, "data.toy")
    then = dataclasses.asdict(world_config(dataclasses.replace(cfg.data, **core, toy=then_toy)))
    now = dataclasses.asdict(world_config(cfg.data))
    keys = [(k, f"data.{k}") for k in ("frames", "height", "width")] + [(k, f"data.toy.{k}") for k in WORLD_FIELDS]
    diff = [(k, name) for k, name in keys if now[k] != then[k]]
    if diff:
        warnings.warn("the teacher was trained on another toy world: " + ", ".join(
            f"{name} {then[k]} (teacher) vs {now[k]} (config)" for k, name in diff)
            + "; set these in the config's data section to match the teacher's vpae.json", stacklevel=3)
    return [name for _, name in diff]


class ToyFamily:
    """The toy model family (registered as "toy")."""

    name = "toy"
    builtin_model = BUILTIN_TEACHER

    def matches(self, meta: dict, folder: Path | None = None) -> bool:
        return is_toy_model(meta)

    def model_stack(self, backbone, meta: dict, folder: Path | None = None):
        """The stack a toy model was trained with: text tokens and image patch from its vpae.json (the patch
        from image_dim = 3 p^2 when it records none). Raises GenerateError when the encoder is unavailable or
        does not fit the model."""
        from vpae.generate import GenerateError
        from vpae.toy.encoders import PatchImageEncoder
        data = trained_data(meta)
        text_tokens = int(data.get("text_tokens") or meta.get("text_len") or 24)
        image_encoder = None
        if backbone.i2v:
            image_dim = backbone.model.config.image_dim
            patch = (data.get("toy") or {}).get("image_patch")
            patch = int(round(math.sqrt(image_dim / 3)) if patch is None else patch)
            if 3 * patch * patch != image_dim:
                raise GenerateError(f"toy model image_dim {image_dim} does not match image patches of size {patch} "
                                    f"(3 x {patch}^2 = {3 * patch * patch})")
            image_encoder = PatchImageEncoder(patch_size=patch)
        try:
            text_encoder = _minilm(text_tokens)
        except (ImportError, FileNotFoundError) as e:
            raise GenerateError(f"the toy text encoder (MiniLM) is unavailable: {e}; pass --embeddings instead") from e
        return _stack(text_encoder, image_encoder)

    def config_stack(self, cfg, base: Path | None = None):
        """The stack of a toy config: MiniLM (float16-rounded, as ToyData encodes) with data.text_tokens and the
        patch encoder with data.toy.image_patch."""
        from vpae.toy.data import Fp16TextEncoder
        from vpae.toy.encoders import PatchImageEncoder, TextEncoder
        return _stack(Fp16TextEncoder(TextEncoder(max_tokens=cfg.data.text_tokens)),
                      PatchImageEncoder(patch_size=cfg.data.toy.image_patch))

    def check_teacher(self, cfg, meta: dict) -> list[str]:
        return warn_if_other_toy_world(cfg, meta)


TOY_FAMILY = register_model_family("toy")(ToyFamily())
