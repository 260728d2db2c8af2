"""Latent codecs: pixels <-> the latent space the backbone denoises, plus the I2V first-frame condition.

- `IdentityCodec`: latent = pixels (3 channels, strides 1). The toy-world default on CPU.
- `WanVAECodec`: diffusers `AutoencoderKLWan`, latents normalised with the config's
  latents_mean / latents_std exactly as diffusers' WanImageToVideoPipeline does.

`make_conditioning` assembles a `vpae.conditioning.Conditioning` (text, negative text, image tokens,
first-frame condition) for a batch, so a training loop only does `cond = make_conditioning(...)`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from vpae.conditioning import Conditioning, first_frame_condition
from vpae.errors import VpaeError

Tensor = torch.Tensor


class CodecError(VpaeError, ValueError):
    """A codec that cannot be loaded as asked (e.g. a path that is not a local model folder)."""


class LatentCodec(torch.nn.Module):
    """Interface. Videos are (B, 3, F, H, W) in [-1, 1]; latents (B, C, F', H', W')."""

    latent_channels: int
    temporal_stride: int
    spatial_stride: int
    mask_channels: int
    size_multiple: int  # H and W must be multiples of this

    def check_size(self, frames: int, height: int, width: int) -> None:
        """Raise ValueError if a video of this size cannot be encoded."""
        ts = self.temporal_stride
        if frames < 1 or (frames - 1) % ts != 0:
            raise ValueError(f"{type(self).__name__}: frames must be {ts}n+1 (temporal stride {ts}), got {frames}")
        m = self.size_multiple
        if height < 1 or width < 1 or height % m or width % m:
            raise ValueError(f"{type(self).__name__}: height and width must be positive multiples of {m}, "
                             f"got {height}x{width}")

    def latent_shape(self, frames: int, height: int, width: int) -> tuple[int, int, int, int]:
        """(C, F', H', W') of the latent of a (3, frames, height, width) video."""
        self.check_size(frames, height, width)
        return (self.latent_channels, (frames - 1) // self.temporal_stride + 1,
                height // self.spatial_stride, width // self.spatial_stride)

    def _check_video(self, video: Tensor) -> None:
        if video.ndim != 5 or video.shape[1] != 3:
            raise ValueError(f"video must be (B, 3, F, H, W), got {tuple(video.shape)}")
        self.check_size(*video.shape[2:])

    def encode(self, video: Tensor) -> Tensor:
        raise NotImplementedError

    def decode(self, latent: Tensor) -> Tensor:
        raise NotImplementedError

    def encode_condition(self, image: Tensor, frames: int) -> tuple[Tensor, Tensor]:
        """I2V first-frame condition for a (B, 3, H, W) image: (cond_latent (B, C, F', H', W'),
        cond_mask (B, mask_channels, F', H', W'))."""
        raise NotImplementedError


class IdentityCodec(LatentCodec):
    """latent = pixels. The condition latent is [frame 0, zeros...] and the mask (1 channel) is 1 on
    frame 0 (`vpae.conditioning.first_frame_condition`). Exact round trip."""

    def __init__(self, size_multiple: int = 1):
        super().__init__()
        self.latent_channels = 3
        self.temporal_stride = 1
        self.spatial_stride = 1
        self.mask_channels = 1
        self.size_multiple = int(size_multiple)

    def encode(self, video: Tensor) -> Tensor:
        self._check_video(video)
        return video

    def decode(self, latent: Tensor) -> Tensor:
        return latent

    def encode_condition(self, image: Tensor, frames: int) -> tuple[Tensor, Tensor]:
        if image.ndim != 4 or image.shape[1] != 3:
            raise ValueError(f"image must be (B, 3, H, W), got {tuple(image.shape)}")
        self.check_size(frames, *image.shape[2:])
        return first_frame_condition(image.unsqueeze(2), frames, self.mask_channels)


class WanVAECodec(LatentCodec):
    """diffusers `AutoencoderKLWan`, frozen. Latents are normalised `(z - latents_mean) / latents_std`
    (diffusers' WanImageToVideoPipeline.prepare_latents) and encoded with the posterior mode
    (`sample_mode="argmax"`). The I2V condition is the VAE encoding of [image, zeros...] (normalised)
    and the mask has `temporal_stride` (4) channels, all 1 on latent frame 0 and 0 elsewhere, built as
    that pipeline builds it. Gradients flow through encode/decode to the input (the VAE's own
    parameters are frozen)."""

    def __init__(self, vae, size_multiple: int | None = None):
        super().__init__()
        self.vae = vae.eval().requires_grad_(False)
        cfg = vae.config
        patch = cfg.get("patch_size", None) or 1
        self.latent_channels = int(cfg.z_dim)
        self.temporal_stride = 2 ** int(sum(bool(t) for t in cfg.temperal_downsample))
        self.spatial_stride = 2 ** (len(cfg.dim_mult) - 1) * int(patch)
        self.mask_channels = self.temporal_stride
        # Wan transformers patchify the latent 2x2, so the pixel size must be a multiple of 2 * stride.
        self.size_multiple = int(size_multiple) if size_multiple is not None else 2 * self.spatial_stride
        self.register_buffer("latents_mean", torch.tensor(cfg.latents_mean, dtype=torch.float32)
                             .view(1, -1, 1, 1, 1), persistent=False)
        self.register_buffer("latents_std", torch.tensor(cfg.latents_std, dtype=torch.float32)
                             .view(1, -1, 1, 1, 1), persistent=False)
        if self.latents_mean.shape[1] != self.latent_channels:
            raise ValueError("latents_mean length != z_dim in the VAE config")

    @classmethod
    def tiny(cls, seed: int = 0) -> "WanVAECodec":
        """A tiny random Wan VAE built offline (for tests and shape checks; not a useful autoencoder)."""
        from diffusers import AutoencoderKLWan

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            vae = AutoencoderKLWan(base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                                   temperal_downsample=[False, True, True])
        return cls(vae)

    @classmethod
    def from_pretrained(cls, path: str, subfolder: str | None = "vae", **kwargs) -> "WanVAECodec":
        """Load `AutoencoderKLWan` from a LOCAL diffusers folder (`path/subfolder`), always with
        local_files_only=True: nothing is downloaded. Raises CodecError naming the path when it is not a
        local folder (e.g. a hub name)."""
        p = Path(path).expanduser()
        where = p / subfolder if subfolder else p
        if not where.is_dir():
            raise CodecError(f"Wan VAE: {where} is not a local folder; the path must be a local diffusers "
                             f"model folder (hub names are not downloaded)")
        if kwargs.pop("local_files_only", True) is not True:
            raise CodecError("Wan VAE: loading is local only (local_files_only=False is not supported)")
        from diffusers import AutoencoderKLWan

        return cls(AutoencoderKLWan.from_pretrained(str(p), subfolder=subfolder, local_files_only=True, **kwargs))

    def _encode_raw(self, video: Tensor) -> Tensor:
        dist = self.vae.encode(video.to(self.vae.dtype)).latent_dist
        return dist.mode()

    def _normalise(self, z: Tensor) -> Tensor:
        return (z.float() - self.latents_mean.to(z.device)) / self.latents_std.to(z.device)

    def encode(self, video: Tensor) -> Tensor:
        self._check_video(video)
        return self._normalise(self._encode_raw(video)).to(video.dtype)

    def decode(self, latent: Tensor) -> Tensor:
        if latent.ndim != 5 or latent.shape[1] != self.latent_channels:
            raise ValueError(f"latent must be (B, {self.latent_channels}, F, H, W), got {tuple(latent.shape)}")
        z = latent.float() * self.latents_std.to(latent.device) + self.latents_mean.to(latent.device)
        return self.vae.decode(z.to(self.vae.dtype)).sample.to(latent.dtype)

    def encode_condition(self, image: Tensor, frames: int) -> tuple[Tensor, Tensor]:
        if image.ndim != 4 or image.shape[1] != 3:
            raise ValueError(f"image must be (B, 3, H, W), got {tuple(image.shape)}")
        b, _, h, w = image.shape
        self.check_size(frames, h, w)
        video = torch.cat([image.unsqueeze(2), image.new_zeros(b, 3, frames - 1, h, w)], dim=2)
        cond = self._normalise(self._encode_raw(video)).to(image.dtype)
        # The mask exactly as WanImageToVideoPipeline.prepare_latents builds it.
        ts = self.temporal_stride
        lh, lw = h // self.spatial_stride, w // self.spatial_stride
        m = torch.ones(b, 1, frames, lh, lw, device=image.device, dtype=image.dtype)
        m[:, :, 1:] = 0
        m = torch.cat([m[:, :, :1].repeat_interleave(ts, dim=2), m[:, :, 1:]], dim=2)
        m = m.view(b, -1, ts, lh, lw).transpose(1, 2)
        return cond, m


def make_conditioning(video_or_first_frame: Tensor | None, captions: Sequence[str], text_encoder,
                      image_encoder=None, codec: LatentCodec | None = None,
                      frames: int | None = None) -> Conditioning:
    """Build the Conditioning for a batch.

    video_or_first_frame: (B, 3, F, H, W) video (its frame 0 is the condition) or (B, 3, H, W) image,
        in [-1, 1]; None for text-to-video.
    captions: B strings. text_encoder: `TextEncoder` (or anything with `.encode(list) -> (emb, mask)`
        and `.negative(B)`). image_encoder: e.g. `PatchImageEncoder` (None: no image tokens).
    codec: builds cond_latent / cond_mask (None: no first-frame latent condition).
    frames: pixel frames of the video to generate (default: F of the given video).
    Tensors are placed on the device of the given video (CPU for T2V).
    """
    captions = list(captions)
    text, mask = text_encoder.encode(captions)
    b = text.shape[0]
    neg = text_encoder.negative(b)
    image = cond_latent = cond_mask = None
    device = torch.device("cpu")
    if video_or_first_frame is not None:
        x = video_or_first_frame
        device = x.device
        if x.ndim == 5:
            frames = x.shape[2] if frames is None else frames
            x = x[:, :, 0]
        elif x.ndim != 4:
            raise ValueError(f"expected a video (B,3,F,H,W) or an image (B,3,H,W), got {tuple(x.shape)}")
        if x.shape[0] != b:
            raise ValueError(f"{x.shape[0]} images but {b} captions")
        if image_encoder is not None:
            image = image_encoder(x)
        if codec is not None:
            if frames is None:
                raise ValueError("frames is required when conditioning on an image")
            cond_latent, cond_mask = codec.encode_condition(x, frames)
    return Conditioning(text=text.to(device), text_mask=mask.to(device),
                        negative_text=neg.to(device).contiguous(), image=image,
                        cond_latent=cond_latent, cond_mask=cond_mask)
