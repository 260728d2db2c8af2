"""The Wan model family ("wan" in vpae.registry) and its encoder stack for `vpae data prepare` and `vpae
generate`, loaded from a LOCAL diffusers pipeline folder (nothing downloads): the Wan VAE (`vae/`), UMT5 + its
tokenizer (`text_encoder/`, `tokenizer/`) and, for image-to-video, the CLIP vision encoder + processor
(`image_encoder/`, `image_processor/`). Each encodes exactly as diffusers' Wan pipelines do
(`_get_t5_prompt_embeds`, `encode_image`), which the tests check against the pipeline itself; text keeps its
real tokens (zero past them) and is padded to 512 when loaded."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from vpae.data.prepare import EncoderStack, PrepareError
from vpae.data.source import ConditionSizes
from vpae.registry import register_model_family

WAN_TEXT_TOKENS = 512


class WanTextEncoder:
    """UMT5 states of a caption, as the Wan pipelines compute them: cleaned prompt, padded to 512 tokens,
    states past the real tokens zeroed."""

    def __init__(self, tokenizer, text_encoder, max_tokens: int = WAN_TEXT_TOKENS):
        self.tokenizer, self.model, self.max_tokens = tokenizer, text_encoder.eval(), max_tokens
        self.dim = int(text_encoder.config.d_model)

    @torch.no_grad()
    def encode(self, captions):
        from diffusers.pipelines.wan.pipeline_wan_i2v import prompt_clean
        t = self.tokenizer([prompt_clean(c) for c in captions], padding="max_length", max_length=self.max_tokens,
                           truncation=True, add_special_tokens=True, return_attention_mask=True, return_tensors="pt")
        mask = t.attention_mask.gt(0)
        h = self.model(t.input_ids.to(self.model.device), t.attention_mask.to(self.model.device))
        return h.last_hidden_state.float().cpu() * mask[..., None], mask

    def to(self, device):
        self.model.to(device)
        return self

    def negative(self, batch_size: int | None = None):
        e = self.encode([""])[0]
        return e if batch_size is None else e.expand(batch_size, -1, -1)


class WanImageEncoder:
    """CLIP vision tokens of the condition frame (penultimate hidden states), as WanImageToVideoPipeline.encode_image."""

    def __init__(self, processor, model):
        self.processor, self.model = processor, model.eval()
        self.dim = int(model.config.hidden_size)

    @torch.no_grad()
    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [-1, 1] -> (B, N, D): the frames as uint8 RGB, then the processor, as for PIL input."""
        pixels = [((im.permute(1, 2, 0).float().cpu().numpy() + 1) * 127.5).round().clip(0, 255).astype(np.uint8)
                  for im in image]
        inputs = self.processor(images=pixels, return_tensors="pt").to(self.model.device)
        return self.model(**inputs, output_hidden_states=True).hidden_states[-2].float().to(image.device)

    def to(self, device):
        self.model.to(device)
        return self


def wan_stack(base_dir: str | Path) -> EncoderStack:
    from transformers import AutoTokenizer, UMT5EncoderModel

    from vpae.codecs import WanVAECodec
    base = Path(base_dir).expanduser()
    for sub in ("vae", "text_encoder", "tokenizer"):
        if not (base / sub).is_dir():
            raise PrepareError(f"{base} is not a local Wan pipeline folder: no {sub}/ (nothing is downloaded)")
    codec = WanVAECodec.from_pretrained(str(base), "vae")
    text = WanTextEncoder(AutoTokenizer.from_pretrained(str(base / "tokenizer"), local_files_only=True),
                          UMT5EncoderModel.from_pretrained(str(base / "text_encoder"), local_files_only=True))
    image = None
    if (base / "image_encoder").is_dir():
        from transformers import CLIPImageProcessor, CLIPVisionModel
        image = WanImageEncoder(CLIPImageProcessor.from_pretrained(str(base / "image_processor"), local_files_only=True),
                                CLIPVisionModel.from_pretrained(str(base / "image_encoder"), local_files_only=True))
    sizes = ConditionSizes(latent_channels=codec.latent_channels, mask_channels=codec.mask_channels,
                           text_dim=text.dim, text_len=WAN_TEXT_TOKENS, image_dim=image.dim if image else None)
    return EncoderStack(codec, text, image, sizes)


class WanFamily:
    """Wan2.1 (registered as "wan"): its condition stack comes from a local diffusers pipeline folder, the one a
    transformer/ folder sits in (`vpae export` writes such folders) or the --base folder of `vpae data prepare`."""

    name = "wan"

    def matches(self, meta: dict, folder: Path | None = None) -> bool:
        from vpae.models import pipeline_root
        return folder is not None and pipeline_root(Path(folder)) is not None

    def model_stack(self, backbone, meta: dict, folder: Path | None = None) -> EncoderStack:
        from vpae.models import pipeline_root
        return wan_stack(pipeline_root(Path(folder)))

    def config_stack(self, cfg, base: Path | None = None) -> EncoderStack:
        if base is None:
            raise PrepareError("pass --base, a local Wan pipeline folder whose VAE, UMT5 and CLIP encode the videos")
        return wan_stack(base)


WAN_FAMILY = register_model_family("wan")(WanFamily())
