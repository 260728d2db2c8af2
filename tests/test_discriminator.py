"""Discriminator heads (Table 3: conv, ca, semantic) and the self discriminator on a tiny Wan backbone."""

from __future__ import annotations

import pytest
import torch
from conftest import make_cond, make_latent, make_wan

from vpae.discriminator import HEADS, FeatureDiscriminator, build_head

B, D, GRID, TEXT_DIM, IMAGE_DIM = 2, 24, (2, 2, 2), 32, 24


def _inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    n = GRID[0] * GRID[1] * GRID[2]
    feats = [torch.randn(B, n, D, generator=g) for _ in range(2)]
    text = torch.randn(B, 7, TEXT_DIM, generator=g)
    mask = torch.ones(B, 7, dtype=torch.bool)
    mask[1, 5:] = False
    image = torch.randn(B, 5, IMAGE_DIM, generator=g)
    return feats, text, mask, image


def _head(kind):
    torch.manual_seed(0)
    return build_head(kind, feature_dim=D, num_layers=2, text_dim=TEXT_DIM, image_dim=IMAGE_DIM, hidden_dim=16,
                      num_queries=2, num_heads=2)


@pytest.mark.parametrize("kind", sorted(HEADS))
def test_head_logits_trainable_and_roundtrip(kind, tmp_path):
    head = _head(kind)
    feats, text, mask, image = _inputs()
    feats = [f.requires_grad_() for f in feats]
    logits = head(feats, GRID, text, mask, image)
    assert logits.shape == (B,)
    logits.sum().backward()
    params = list(head.named_parameters())
    assert params and all(p.requires_grad for _, p in params)
    with_grad = [n for n, p in params if p.grad is not None and p.grad.abs().sum() > 0]
    assert len(with_grad) >= len(params) // 2, with_grad
    # the logits depend on every layer's features
    assert all(f.grad.abs().sum() > 0 for f in feats)
    # per-sample: changing sample 1's features leaves sample 0's logit alone
    with torch.no_grad():
        feats2 = [f.detach().clone() for f in feats]
        feats2[0][1] += torch.randn_like(feats2[0][1])
        l2 = head(feats2, GRID, text, mask, image)
        assert l2[0] == logits[0] and l2[1] != logits[1]
    head.save_pretrained(str(tmp_path / kind))
    loaded = type(head).from_pretrained(str(tmp_path / kind))
    assert type(loaded) is HEADS[kind]
    assert {k: v for k, v in loaded.config.items() if k != "_name_or_path"} == dict(head.config)
    # from_pretrained returns eval mode; nn.MultiheadAttention's eval fast path rounds differently, so
    # compare both in eval mode
    head.eval()
    assert not loaded.training
    a, b = head.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # identical weights; logits agree to float32 rounding (the loaded tensors' memory layout/alignment
    # can pick a different SIMD path: measured 1.5e-8)
    with torch.no_grad():
        assert torch.allclose(loaded(feats, GRID, text, mask, image), head(feats, GRID, text, mask, image),
                              rtol=0, atol=1e-6)


def test_semantic_head_uses_text_and_image():
    head = _head("semantic").eval()
    feats, text, mask, image = _inputs()
    with torch.no_grad():
        base = head(feats, GRID, text, mask, image)
        other_text = head(feats, GRID, torch.randn_like(text), mask, image)
        other_image = head(feats, GRID, text, mask, torch.randn_like(image))
        # masked-out text tokens are ignored (sample 1 has tokens 5: masked)
        text_pad = text.clone()
        text_pad[1, 5:] = 100.0
        padded = head(feats, GRID, text_pad, mask, image)
    assert (other_text - base).abs().min() > 1e-6
    assert (other_image - base).abs().min() > 1e-6
    assert torch.allclose(padded, base, atol=1e-6)


def test_non_semantic_heads_ignore_text():
    for kind in ("conv", "ca"):
        head = _head(kind)
        feats, text, mask, image = _inputs()
        with torch.no_grad():
            assert torch.equal(head(feats, GRID, text, mask, image), head(feats, GRID, torch.randn_like(text), mask, None))


def test_build_head_unknown():
    with pytest.raises(ValueError, match="unknown head 'mlp'"):
        build_head("mlp", feature_dim=D, num_layers=2, text_dim=TEXT_DIM, image_dim=None, hidden_dim=8,
                   num_queries=1, num_heads=1)


@pytest.mark.parametrize("kind", sorted(HEADS))
def test_feature_discriminator_on_wan(kind):
    bb = make_wan().requires_grad_(False)
    head = build_head(kind, feature_dim=bb.feature_dim, num_layers=2, text_dim=TEXT_DIM, image_dim=IMAGE_DIM,
                      hidden_dim=16, num_queries=2, num_heads=2)
    disc = FeatureDiscriminator(head, (0.5, 1.0))
    x = make_latent().requires_grad_()
    c = make_cond()
    s = torch.full((2,), 0.95)
    logits = disc(bb, x, s, c, backbone_grad=True)
    assert logits.shape == (2,)
    (gx,) = torch.autograd.grad(logits.sum(), x)
    assert gx.abs().sum() > 0
    assert all(p.grad is None for p in bb.parameters())
    # backbone_grad=False: no graph to the input, the heads still learn
    logits2 = disc(bb, x, s, c, backbone_grad=False)
    assert torch.equal(logits2.detach(), logits.detach())
    logits2.sum().backward()
    assert x.grad is None
    assert any(p.grad is not None for p in head.parameters())


def test_blur_frames_is_a_normalised_separable_gaussian_per_frame():
    from vpae.discriminator import blur_frames
    x = torch.zeros(2, 3, 4, 16, 16, dtype=torch.float64)
    x[0, 1, 2, 8, 5] = 1.0  # an impulse away from the borders
    y = blur_frames(x, 1.0)
    r = torch.arange(-3, 4, dtype=torch.float64)
    g = torch.exp(-r ** 2 / 2)
    g = g / g.sum()
    # the impulse response is the outer product of the normalised 1-D kernel, in its own frame and channel only
    assert torch.allclose(y[0, 1, 2, 5:12, 2:9], torch.outer(g, g), rtol=0, atol=1e-15)
    assert y.sum().item() == pytest.approx(1.0, abs=1e-12) and y[0, 1, 2].sum() == pytest.approx(1.0, abs=1e-12)
    # a constant video is unchanged (replicate padding), sigma 0 is the identity
    c = torch.full((1, 2, 3, 8, 8), 0.3, dtype=torch.float64)
    assert torch.allclose(blur_frames(c, 2.0), c, rtol=0, atol=1e-15)
    assert blur_frames(x, 0.0) is x
    # differentiable: the generator's adversarial gradient passes through it (the adjoint of a symmetric blur)
    v = torch.randn(1, 1, 1, 16, 16, dtype=torch.float64, requires_grad=True)
    w = torch.zeros(1, 1, 1, 16, 16, dtype=torch.float64)
    w[..., 8, 8] = 1.0
    (blur_frames(v, 1.0) * w).sum().backward()
    assert torch.allclose(v.grad[0, 0, 0, 5:12, 5:12], torch.outer(g, g), rtol=0, atol=1e-15)
