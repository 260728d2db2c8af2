"""Discriminator heads that turn multi-layer backbone features into one logit per video.

All heads share one signature:
    head(features: list[(B, N, D)], grid: (F', H', W'), text (B, L, D_text), text_mask (B, L) | None,
         image (B, N_img, D_img) | None) -> logits (B,)
They are diffusers `ModelMixin, ConfigMixin` modules, so they save/load with save_pretrained.
"""

from __future__ import annotations

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

Tensor = torch.Tensor


class ConvHead(ModelMixin, ConfigMixin):
    """Table 3 row "Conv": a small 3-D conv classifier per layer on the token grid; logits summed."""

    @register_to_config
    def __init__(self, feature_dim: int, num_layers: int, hidden_dim: int = 256, text_dim: int | None = None,
                 image_dim: int | None = None, num_queries: int = 0, num_heads: int = 0):
        # text_dim, image_dim, num_queries, num_heads: unused; accepted so every head shares build_head's
        # keywords. Explicit (not **kwargs): diffusers' register_to_config would store a `**` parameter as
        # inspect._empty and save_pretrained could not serialise the config.
        super().__init__()
        self.per_layer = nn.ModuleList(
            nn.Sequential(
                nn.GroupNorm(1, feature_dim),
                nn.Conv3d(feature_dim, hidden_dim, 3, padding=1), nn.SiLU(),
                nn.Conv3d(hidden_dim, hidden_dim, 3, stride=(1, 2, 2), padding=1), nn.SiLU(),
                nn.AdaptiveAvgPool3d(1), nn.Flatten(), nn.Linear(hidden_dim, 1),
            ) for _ in range(num_layers))

    def forward(self, features, grid, text=None, text_mask=None, image=None) -> Tensor:
        f, h, w = grid
        logits = 0
        for feat, net in zip(features, self.per_layer, strict=True):
            b, n, d = feat.shape
            # (B, D, F', H', W'). contiguous(): torch 2.13's CPU GroupNorm backward segfaults on this
            # channels-last view when the input needs no grad (the discriminator step).
            vol = feat.transpose(1, 2).reshape(b, d, f, h, w).contiguous()
            logits = logits + net(vol).squeeze(-1)
        return logits


class CrossAttentionHead(ModelMixin, ConfigMixin):
    """Table 3 row "CA" (APT-style): learnable queries cross-attend each layer's features; all queries
    concatenated -> LayerNorm -> FFN -> logit."""

    @register_to_config
    def __init__(self, feature_dim: int, num_layers: int, hidden_dim: int = 256, num_queries: int = 4,
                 num_heads: int = 4, text_dim: int | None = None, image_dim: int | None = None):
        # text_dim, image_dim: unused (this head sees no text); accepted for build_head's shared keywords.
        super().__init__()
        self.queries = nn.Parameter(torch.randn(num_layers, num_queries, hidden_dim) * 0.02)
        self.feat_norm = nn.ModuleList(nn.LayerNorm(feature_dim) for _ in range(num_layers))
        self.cross = nn.ModuleList(
            nn.MultiheadAttention(hidden_dim, num_heads, kdim=feature_dim, vdim=feature_dim, batch_first=True)
            for _ in range(num_layers))
        total = num_layers * num_queries * hidden_dim
        self.ffn = nn.Sequential(nn.LayerNorm(total), nn.Linear(total, hidden_dim), nn.SiLU(), nn.Linear(hidden_dim, 1))

    def forward(self, features, grid=None, text=None, text_mask=None, image=None) -> Tensor:
        b = features[0].shape[0]
        outs = []
        for i, feat in enumerate(features):
            q = self.queries[i].unsqueeze(0).expand(b, -1, -1)
            kv = self.feat_norm[i](feat)
            outs.append(self.cross[i](q, kv, kv, need_weights=False)[0])  # (B, n, d)
        return self.ffn(torch.cat(outs, dim=1).flatten(1)).squeeze(-1)


class SemanticHead(ModelMixin, ConfigMixin):
    """Table 3 row "CA-dagger", paper Fig. 3: learnable logit queries q (n x d) are concatenated with the
    image and text embeddings (projected to d) plus modality position indices (0 query, 1 image, 2 text),
    fused by a semantic self-attention module; the fused queries then cross-attend every backbone layer's
    features; all processed queries are concatenated along channels and an FFN projects them to a logit."""

    @register_to_config
    def __init__(self, feature_dim: int, num_layers: int, text_dim: int, image_dim: int | None = None,
                 hidden_dim: int = 256, num_queries: int = 4, num_heads: int = 4):
        super().__init__()
        self.queries = nn.Parameter(torch.randn(num_queries, hidden_dim) * 0.02)
        self.text_proj = nn.Linear(text_dim, hidden_dim)
        self.image_proj = nn.Linear(image_dim, hidden_dim) if image_dim else None
        self.modality = nn.Embedding(3, hidden_dim)  # modality position indices
        self.semantic = nn.TransformerEncoderLayer(hidden_dim, num_heads, 2 * hidden_dim, dropout=0.0,
                                                   batch_first=True, norm_first=True)
        self.feat_norm = nn.ModuleList(nn.LayerNorm(feature_dim) for _ in range(num_layers))
        self.q_norm = nn.LayerNorm(hidden_dim)
        self.cross = nn.ModuleList(
            nn.MultiheadAttention(hidden_dim, num_heads, kdim=feature_dim, vdim=feature_dim, batch_first=True)
            for _ in range(num_layers))
        total = num_layers * num_queries * hidden_dim
        self.ffn = nn.Sequential(nn.LayerNorm(total), nn.Linear(total, hidden_dim), nn.SiLU(), nn.Linear(hidden_dim, 1))

    def fuse(self, b: int, text: Tensor, text_mask: Tensor | None, image: Tensor | None) -> Tensor:
        """Semantic self-attention over [queries; image; text] -> the fused queries (B, n, d)."""
        n = self.queries.shape[0]
        parts = [self.queries.unsqueeze(0).expand(b, -1, -1) + self.modality.weight[0]]
        pad = [torch.zeros(b, n, dtype=torch.bool, device=text.device)]
        if image is not None and self.image_proj is not None:
            parts.append(self.image_proj(image.to(self.queries.dtype)) + self.modality.weight[1])
            pad.append(torch.zeros(b, image.shape[1], dtype=torch.bool, device=text.device))
        parts.append(self.text_proj(text.to(self.queries.dtype)) + self.modality.weight[2])
        no_pad = torch.zeros(b, text.shape[1], dtype=torch.bool, device=text.device)
        pad.append(~text_mask if text_mask is not None else no_pad)
        fused = self.semantic(torch.cat(parts, 1), src_key_padding_mask=torch.cat(pad, 1))
        return fused[:, :n]

    def forward(self, features, grid=None, text=None, text_mask=None, image=None) -> Tensor:
        b = features[0].shape[0]
        q = self.q_norm(self.fuse(b, text, text_mask, image))
        outs = []
        for i, feat in enumerate(features):
            kv = self.feat_norm[i](feat)
            outs.append(q + self.cross[i](q, kv, kv, need_weights=False)[0])
        return self.ffn(torch.cat(outs, dim=1).flatten(1)).squeeze(-1)


HEADS = {"conv": ConvHead, "ca": CrossAttentionHead, "semantic": SemanticHead}


def build_head(kind: str, *, feature_dim: int, num_layers: int, text_dim: int, image_dim: int | None,
               hidden_dim: int, num_queries: int, num_heads: int) -> nn.Module:
    if kind not in HEADS:
        raise ValueError(f"unknown head {kind!r}; choose one of {sorted(HEADS)}")
    return HEADS[kind](feature_dim=feature_dim, num_layers=num_layers, text_dim=text_dim, image_dim=image_dim,
                       hidden_dim=hidden_dim, num_queries=num_queries, num_heads=num_heads)
