"""Everything a backbone is conditioned on, in one dataclass."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import torch

Tensor = torch.Tensor


@dataclass
class Conditioning:
    """Conditioning for one batch.

    text:          (B, L, D_text) text-encoder hidden states (padded; see `text_mask`).
    text_mask:     (B, L) bool, True on real tokens (None: all real).
    negative_text: (B, L', D_text) for classifier-free guidance (None: zeros of text's shape, the
                   usual "empty prompt" stand-in when no negative embedding is given).
    image:         (B, N_img, D_img) image tokens (CLIP for Wan I2V), None for T2V.
    cond_latent:   (B, C, F, H, W) first-frame condition latent (the image then zeros, encoded).
    cond_mask:     (B, M, F, H, W) first-frame mask channels (1 on the condition frame).
    """

    text: Tensor
    text_mask: Tensor | None = None
    negative_text: Tensor | None = None
    image: Tensor | None = None
    cond_latent: Tensor | None = None
    cond_mask: Tensor | None = None

    def __post_init__(self) -> None:
        if self.text.ndim != 3:
            raise ValueError(f"text must be (B, L, D), got shape {tuple(self.text.shape)}")
        b = self.text.shape[0]
        for f in fields(self):
            t = getattr(self, f.name)
            if t is not None and t.shape[0] != b:
                raise ValueError(f"{f.name} has batch {t.shape[0]}, text has batch {b}")
        if (self.cond_latent is None) != (self.cond_mask is None):
            raise ValueError("cond_latent and cond_mask must be given together")

    @property
    def batch_size(self) -> int:
        return self.text.shape[0]

    @property
    def is_i2v(self) -> bool:
        return self.cond_latent is not None

    def negative(self) -> "Conditioning":
        """The CFG negative branch: only the text changes; image tokens and condition latent stay."""
        neg = self.negative_text if self.negative_text is not None else torch.zeros_like(self.text)
        return replace(self, text=neg, text_mask=None, negative_text=None)

    def map(self, fn) -> "Conditioning":
        """Apply fn to every tensor (e.g. `.to(device)`, indexing, repeat)."""
        return replace(self, **{f.name: (fn(getattr(self, f.name)) if getattr(self, f.name) is not None else None)
                                for f in fields(self)})

    def to(self, *args, **kwargs) -> "Conditioning":
        return self.map(lambda t: t.to(*args, **kwargs))

    def detach(self) -> "Conditioning":
        return self.map(lambda t: t.detach())

    def __getitem__(self, idx) -> "Conditioning":
        return self.map(lambda t: t[idx])

    @staticmethod
    def cat(parts: "list[Conditioning]") -> "Conditioning":
        """The batches of `parts` as one batch (every part has the same fields set)."""
        first = parts[0]
        return replace(first, **{f.name: (torch.cat([getattr(p, f.name) for p in parts])
                                          if getattr(first, f.name) is not None else None) for f in fields(first)})


def first_frame_condition(cond_frame_latent: Tensor, num_frames: int, mask_channels: int) -> tuple[Tensor, Tensor]:
    """Build Wan's I2V condition latent and mask from a latent of the first frame.

    cond_frame_latent: (B, C, 1, H, W). Returns cond_latent (B, C, F, H, W) = [frame, zeros...] and
    mask (B, M, F, H, W) = 1 on latent frame 0. (For the real Wan VAE, encode [image, zeros...] instead
    of padding in latent space: see codecs.WanVAECodec.encode_condition.)
    """
    b, c, _, h, w = cond_frame_latent.shape
    cond = cond_frame_latent.new_zeros(b, c, num_frames, h, w)
    cond[:, :, :1] = cond_frame_latent
    mask = cond_frame_latent.new_zeros(b, mask_channels, num_frames, h, w)
    mask[:, :, 0] = 1
    return cond, mask
