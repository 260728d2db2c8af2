"""Adapter from diffusers' WanTransformer3DModel to the Backbone interface (T2V and I2V).

I2V input channels are `cat([x_t, mask, cond_latent])` (16 + 4 + 16 for real Wan), in that order, as in
diffusers' WanImageToVideoPipeline. The number of mask channels is read off the config
(in_channels - 2 * out_channels), so toy codecs with another temporal stride work unchanged.

PITFALL (FIELD_NOTES 3): diffusers' WanAttnProcessor splits image from text tokens as `L - 512`, so with
image tokens the text must be exactly 512 tokens long. `WanBackbone` zero-pads (as the pipeline does)
and refuses longer text. It pads for T2V too: Wan was trained on text zero-padded to 512 tokens (original
WanModel pads to text_len=512; diffusers' T5 path pads to max_sequence_length=512) and the cross-attention
has no mask, so the zero tokens change the output; padding makes a short text mean what it means to Wan.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch
from diffusers import WanTransformer3DModel

from vpae import flow
from vpae.backbones.base import Backbone, resolve_layers
from vpae.conditioning import Conditioning

Tensor = torch.Tensor

WAN_TEXT_LEN = 512  # hard-coded in diffusers' WanAttnProcessor for the image/text split


def tiny_wan_config(i2v: bool = True, latent_channels: int = 16, mask_channels: int = 4, *,
                    num_layers: int = 2, heads: int = 2, head_dim: int = 12, text_dim: int = 32,
                    ffn_dim: int = 32, image_dim: int = 24, patch_size=(1, 2, 2), freq_dim: int = 256,
                    rope_max_seq_len: int = 1024) -> dict[str, Any]:
    """A small WanTransformer3DModel config, built offline (no hub). Used by tests and the toy world."""
    cfg = dict(
        patch_size=tuple(patch_size), num_attention_heads=heads, attention_head_dim=head_dim,
        in_channels=latent_channels + (mask_channels + latent_channels if i2v else 0),
        out_channels=latent_channels, text_dim=text_dim, freq_dim=freq_dim, ffn_dim=ffn_dim,
        num_layers=num_layers, cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6,
        image_dim=image_dim if i2v else None, added_kv_proj_dim=heads * head_dim if i2v else None,
        rope_max_seq_len=rope_max_seq_len,
    )
    return cfg


def pad_text(text: Tensor, length: int) -> Tensor:
    """Zero-pad text tokens (B, L, D) to `length`, exactly as WanPipeline._get_t5_prompt_embeds does."""
    if text.shape[1] > length:
        raise ValueError(f"text has {text.shape[1]} tokens; Wan takes at most {length}")
    return torch.nn.functional.pad(text, (0, 0, 0, length - text.shape[1]))


class WanBackbone(Backbone):
    """Backbone over a diffusers WanTransformer3DModel. `self.model` is the diffusers module (peft
    adapters, gradient checkpointing, save_pretrained all work on it directly)."""

    def __init__(self, model: WanTransformer3DModel, text_len: int = WAN_TEXT_LEN):
        """text_len: the text length the model was trained with (512 for real Wan). Other values install
        WanTextLenAttnProcessor so the image/text split is right without padding to 512."""
        super().__init__()
        self.model = model
        self.text_len = text_len
        if text_len != WAN_TEXT_LEN:
            from vpae.backbones.wan_attention import install_text_len_processor
            install_text_len_processor(model, text_len)
        cfg = model.config
        self.num_layers = len(model.blocks)
        self.feature_dim = cfg.num_attention_heads * cfg.attention_head_dim
        self.latent_channels = cfg.out_channels
        self.i2v = cfg.image_dim is not None
        self.mask_channels = cfg.in_channels - 2 * cfg.out_channels if self.i2v else 0
        if self.i2v and self.mask_channels < 1:
            raise ValueError(f"I2V Wan config needs in_channels > 2*out_channels, got {cfg.in_channels}")
        if not self.i2v and cfg.in_channels != cfg.out_channels:
            raise ValueError("T2V Wan config needs in_channels == out_channels")
        self.patch_size = tuple(cfg.patch_size)

    @classmethod
    def from_config(cls, config: dict[str, Any], text_len: int = WAN_TEXT_LEN) -> "WanBackbone":
        return cls(WanTransformer3DModel(**config), text_len)

    # -- input assembly -------------------------------------------------------------------------
    def check_input(self, x_t: Tensor, cond: Conditioning) -> None:
        if x_t.ndim != 5:
            raise ValueError(f"x_t must be (B, C, F, H, W), got shape {tuple(x_t.shape)}")
        b, c, f, h, w = x_t.shape
        if c != self.latent_channels:
            raise ValueError(f"x_t has {c} channels, the backbone expects {self.latent_channels}")
        pt, ph, pw = self.patch_size
        if f % pt or h % ph or w % pw:
            raise ValueError(f"latent size (F={f}, H={h}, W={w}) is not divisible by the patch size {self.patch_size}")
        if cond.batch_size != b:
            raise ValueError(f"conditioning batch {cond.batch_size} != x_t batch {b}")
        if self.i2v:
            if cond.image is None or cond.cond_latent is None:
                raise ValueError("this is an image-to-video backbone: conditioning needs image tokens and a "
                                 "first-frame condition latent (pass an image)")
            if cond.cond_latent.shape != x_t.shape:
                raise ValueError(f"cond_latent shape {tuple(cond.cond_latent.shape)} != x_t shape {tuple(x_t.shape)}")
            if cond.cond_mask.shape[1] != self.mask_channels:
                raise ValueError(f"cond_mask has {cond.cond_mask.shape[1]} channels, expected {self.mask_channels}")

    def model_inputs(self, x_t: Tensor, sigma: Tensor, cond: Conditioning) -> dict[str, Tensor]:
        self.check_input(x_t, cond)
        dtype = self.model.dtype
        sigma = torch.as_tensor(sigma, device=x_t.device, dtype=torch.float32).reshape(-1)
        if sigma.numel() not in (1, x_t.shape[0]):
            raise ValueError(f"sigma has {sigma.numel()} values for a batch of {x_t.shape[0]} (want 1 or the batch)")
        sigma = sigma.expand(x_t.shape[0])
        hidden = x_t
        text = pad_text(cond.text, self.text_len)
        image = None
        if self.i2v:
            hidden = torch.cat([x_t, cond.cond_mask.to(x_t), cond.cond_latent.to(x_t)], dim=1)
            image = cond.image.to(dtype)
        return dict(hidden_states=hidden.to(dtype), timestep=flow.model_timestep(sigma),
                    encoder_hidden_states=text.to(dtype), encoder_hidden_states_image=image)

    # -- context parallelism (diffusers' enable_parallelism; training.parallel turns it on) ---------------------
    def cp_group(self):
        """The process group this model's sequence is split over, None without context parallelism."""
        config = getattr(self.model, "_parallel_config", None)
        cp = getattr(config, "context_parallel_config", None)
        return cp._flattened_mesh if cp is not None else None

    def _cp_input(self, x_t: Tensor) -> Tensor:
        """x_t as this rank's blocks see it. Each rank of a cp group holds the whole x_t but back-propagates
        only through its own part of the sequence, so a gradient with respect to x_t (the discriminator's input)
        is summed over the group: identity forward, all-reduce backward."""
        mesh = self.cp_group()
        if mesh is None:
            return x_t
        n, size = math.prod(self.token_grid(x_t)), mesh.size()
        if n % size:
            raise ValueError(f"{n} tokens per sample cannot be split over parallel.cp={size} ranks; choose a cp "
                             f"degree that divides the token count (frames x height x width / patch)")
        return _SumGradOver.apply(x_t, mesh.get_group()) if x_t.requires_grad else x_t

    def _cp_gather(self, hidden: Tensor) -> Tensor:
        """This rank's part of a feature map -> the whole sequence (diffusers' own differentiable all-gather)."""
        mesh = self.cp_group()
        if mesh is None:
            return hidden
        from diffusers.hooks.context_parallel import EquipartitionSharder
        return EquipartitionSharder.unshard(hidden, 1, mesh)

    # -- the interface --------------------------------------------------------------------------
    def velocity(self, x_t: Tensor, sigma: Tensor, cond: Conditioning) -> Tensor:
        out = self.model(**self.model_inputs(self._cp_input(x_t), sigma, cond), return_dict=False)[0]
        return out.to(x_t.dtype)

    def token_grid(self, x_t: Tensor) -> tuple[int, int, int]:
        """(F', H', W') of the token sequence for a latent of x_t's shape."""
        _, _, f, h, w = x_t.shape
        pt, ph, pw = self.patch_size
        return f // pt, h // ph, w // pw

    def features(self, x_t: Tensor, sigma: Tensor, cond: Conditioning,
                 layers: Sequence[int | float]) -> list[Tensor]:
        """Hidden states (B, N, D) after each requested block. Re-implements the head of
        WanTransformer3DModel.forward and stops after the deepest requested block: no forward hooks, so
        gradient checkpointing's recomputation cannot double count."""
        idx = resolve_layers(layers, self.num_layers)
        if not idx:
            raise ValueError("features() needs at least one layer")
        m = self.model
        inp = self.model_inputs(self._cp_input(x_t), sigma, cond)
        hidden = inp["hidden_states"]
        rotary_emb = m.rope(hidden)
        hidden = m.patch_embedding(hidden).flatten(2).transpose(1, 2).contiguous()
        _, timestep_proj, text, image = m.condition_embedder(
            inp["timestep"], inp["encoder_hidden_states"], inp["encoder_hidden_states_image"])
        timestep_proj = timestep_proj.unflatten(1, (6, -1))
        context = torch.cat([image, text], dim=1) if image is not None else text
        checkpointing = torch.is_grad_enabled() and m.gradient_checkpointing
        out = []
        wanted = set(idx)
        for i, block in enumerate(m.blocks[: idx[-1] + 1]):
            if checkpointing:
                hidden = m._gradient_checkpointing_func(block, hidden, context, timestep_proj, rotary_emb)
            else:
                hidden = block(hidden, context, timestep_proj, rotary_emb)
            if i in wanted:
                out.append(self._cp_gather(hidden))
        return out


class _SumGradOver(torch.autograd.Function):
    """Identity forward; backward sums the gradient over a process group."""

    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous()
        torch.distributed.all_reduce(grad, group=ctx.group)
        return grad, None
