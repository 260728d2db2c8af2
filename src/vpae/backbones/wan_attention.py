"""A Wan cross-attention processor whose image/text split uses a configured text length.

diffusers' WanAttnProcessor splits `[image tokens; text tokens]` at `L - 512` (a hard-coded T5 length), so
with image tokens the text must be padded to 512. Real Wan checkpoints were trained that way and keep it
(text_len = 512, the processor is not replaced). Models trained here with a short text encoder (the toy
teacher: 24 MiniLM tokens) use this processor instead, which splits at `L - text_len` and saves the cost
of ~500 padded keys per cross-attention. The math is the same as diffusers' I2V cross-attention: text
attention plus decoupled image attention (added K/V), then the output projection.
"""

from __future__ import annotations

import torch.nn.functional as F
from diffusers.models.transformers.transformer_wan import WanAttnProcessor


class WanTextLenAttnProcessor(WanAttnProcessor):
    def __init__(self, text_len: int):
        super().__init__()
        self.text_len = text_len

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, rotary_emb=None):
        if attn.add_k_proj is None or encoder_hidden_states is None:
            return super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, rotary_emb)
        n_img = encoder_hidden_states.shape[1] - self.text_len
        if n_img < 0:
            raise ValueError(f"cross-attention got {encoder_hidden_states.shape[1]} tokens, "
                             f"fewer than text_len={self.text_len}")
        image, text = encoder_hidden_states[:, :n_img], encoder_hidden_states[:, n_img:]

        def heads(x):  # (B, L, H*D) -> (B, H, L, D)
            return x.unflatten(2, (attn.heads, -1)).transpose(1, 2)

        query = heads(attn.norm_q(attn.to_q(hidden_states)))
        key, value = heads(attn.norm_k(attn.to_k(text))), heads(attn.to_v(text))
        out = F.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask)
        if n_img > 0:
            key_img = heads(attn.norm_added_k(attn.add_k_proj(image)))
            out = out + F.scaled_dot_product_attention(query, key_img, heads(attn.add_v_proj(image)))
        out = out.transpose(1, 2).flatten(2, 3).type_as(query)
        return attn.to_out[1](attn.to_out[0](out))


def install_text_len_processor(model, text_len: int) -> None:
    """Use WanTextLenAttnProcessor in every block's cross-attention (attn2)."""
    for block in model.blocks:
        block.attn2.set_processor(WanTextLenAttnProcessor(text_len))
