"""WanBackbone against the raw diffusers WanTransformer3DModel: inputs, the image/text split, features."""

from __future__ import annotations

import pytest
import torch
from conftest import IMAGE_DIM, LATENT_SHAPE, TEXT_DIM, make_cond, make_latent, make_wan

from vpae.backbones.base import resolve_layers
from vpae.backbones.wan import WAN_TEXT_LEN, WanBackbone, pad_text, tiny_wan_config
from vpae.conditioning import Conditioning, first_frame_condition

SIGMA = torch.tensor([0.7, 0.3])


def _exact(a, b):
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def _hook_states(bb: WanBackbone, x_t, sigma, cond):
    """Hidden states after every block, captured with forward hooks in a plain model forward."""
    captured = []
    hooks = [blk.register_forward_hook(lambda m, a, out: captured.append(out)) for blk in bb.model.blocks]
    try:
        v = bb.velocity(x_t, sigma, cond)
    finally:
        for h in hooks:
            h.remove()
    return captured, v


# -- resolve_layers ----------------------------------------------------------------------------------

def test_resolve_layers():
    assert resolve_layers([0], 40) == [0]
    assert resolve_layers([-1], 40) == [39]
    assert resolve_layers([1.0], 40) == [39]
    assert resolve_layers([0.5], 40) == [19]
    assert resolve_layers([0.25, 0.75], 40) == [9, 29]
    assert resolve_layers([0.01], 40) == [0]
    assert resolve_layers([0.5, 19, -21, 0.1], 40) == [3, 19]  # sorted, de-duplicated
    assert resolve_layers([1.0, 0], 2) == [0, 1]
    assert resolve_layers([0.5], 2) == [0]
    # float noise must not push a fraction into the next block: 0.14 * 50 = 7.000000000000001
    assert resolve_layers([0.14], 50) == [6]
    assert resolve_layers([0.28], 25) == [6]
    assert resolve_layers([0.56], 50) == [27]
    for bad in ([0.0], [1.5], [-0.5]):
        with pytest.raises(ValueError):
            resolve_layers(bad, 40)
    for bad in ([40], [-41]):
        with pytest.raises(ValueError):
            resolve_layers(bad, 40)
    with pytest.raises(TypeError):
        resolve_layers([True], 40)


# -- velocity == the raw diffusers model, inputs laid out as WanImageToVideoPipeline does ---------------

def test_velocity_i2v_matches_raw_model_pipeline_layout():
    bb, cond, x = make_wan(i2v=True), make_cond(text_len=WAN_TEXT_LEN), make_latent()
    with torch.no_grad():
        ours = bb.velocity(x, SIGMA, cond)
        hidden = torch.cat([x, torch.cat([cond.cond_mask, cond.cond_latent], dim=1)], dim=1)
        assert hidden.shape[1] == bb.model.config.in_channels == 36
        raw = bb.model(hidden_states=hidden, timestep=SIGMA * 1000, encoder_hidden_states=cond.text,
                       encoder_hidden_states_image=cond.image).sample
    assert ours.shape == x.shape
    _exact(ours, raw)


def test_velocity_t2v_matches_raw_model():
    """T2V text is zero-padded to 512 too (as Wan and the pipeline's T5 path do): the zero tokens matter
    because Wan's cross-attention has no mask."""
    bb, cond, x = make_wan(i2v=False), make_cond(i2v=False, text_len=7), make_latent()
    padded = pad_text(cond.text, WAN_TEXT_LEN)
    with torch.no_grad():
        ours = bb.velocity(x, SIGMA, cond)
        raw = bb.model(hidden_states=x, timestep=SIGMA * 1000, encoder_hidden_states=padded).sample
        raw_short = bb.model(hidden_states=x, timestep=SIGMA * 1000, encoder_hidden_states=cond.text).sample
        _exact(bb.velocity(x, SIGMA, Conditioning(text=padded)), ours)
    _exact(ours, raw)
    assert (raw - raw_short).abs().max() > 1e-4
    # a scalar sigma is broadcast to the batch
    with torch.no_grad():
        _exact(bb.velocity(x, 0.4, cond), bb.velocity(x, torch.tensor([0.4, 0.4]), cond))


def test_image_text_split_is_right():
    """Text shorter than 512 is zero-padded like the pipeline's T5 path. The raw model given the unpadded
    text mis-splits (it takes the last 512 context tokens as text), so it disagrees with us."""
    bb, x = make_wan(i2v=True), make_latent()
    cond = make_cond(text_len=7, image_len=5)
    with torch.no_grad():
        ours = bb.velocity(x, SIGMA, cond)
        hidden = torch.cat([x, cond.cond_mask, cond.cond_latent], dim=1)
        padded = torch.cat([cond.text, cond.text.new_zeros(2, WAN_TEXT_LEN - 7, TEXT_DIM)], dim=1)
        raw_padded = bb.model(hidden, SIGMA * 1000, padded, cond.image).sample
        raw_unpadded = bb.model(hidden, SIGMA * 1000, cond.text, cond.image).sample
    _exact(ours, raw_padded)
    assert (ours - raw_unpadded).abs().max() > 1e-3
    _exact(pad_text(cond.text, WAN_TEXT_LEN), padded)

    # image tokens really reach the image branch: changing only them changes the output ... (a random
    # change: a constant shift would be removed by the image embedder's LayerNorm)
    g = torch.Generator().manual_seed(5)
    d_img = torch.randn(cond.image.shape, generator=g)
    cond_img = Conditioning(text=cond.text, image=cond.image + d_img, cond_latent=cond.cond_latent,
                            cond_mask=cond.cond_mask)
    # ... and so does changing only the text, and only the condition latent.
    cond_txt = Conditioning(text=cond.text + 1.0, image=cond.image, cond_latent=cond.cond_latent,
                            cond_mask=cond.cond_mask)
    cond_lat = Conditioning(text=cond.text, image=cond.image, cond_latent=cond.cond_latent + 1.0,
                            cond_mask=cond.cond_mask)
    with torch.no_grad():
        for c in (cond_img, cond_txt, cond_lat):
            assert (bb.velocity(x, SIGMA, c) - ours).abs().max() > 1e-4

    # the split is at L - 512: if the image part were misread as text, changing the image tokens would act
    # through the text path; zeroing the image-branch projections must remove the image tokens' effect.
    with torch.no_grad():
        for blk in bb.model.blocks:
            for proj in (blk.attn2.add_k_proj, blk.attn2.add_v_proj):
                proj.weight.zero_()
                proj.bias.zero_()
        base = bb.velocity(x, SIGMA, cond)
        _exact(bb.velocity(x, SIGMA, cond_img), base)
        # whereas the raw model fed unpadded text still "sees" the image tokens as text
        raw_a = bb.model(hidden, SIGMA * 1000, cond.text, cond.image).sample
        raw_b = bb.model(hidden, SIGMA * 1000, cond.text, cond.image + d_img).sample
        assert (raw_a - raw_b).abs().max() > 1e-4


def test_text_longer_than_512_refused():
    bb, x = make_wan(i2v=True), make_latent()
    cond = make_cond(text_len=WAN_TEXT_LEN + 1)
    with pytest.raises(ValueError, match="512"):
        bb.velocity(x, SIGMA, cond)


# -- input validation ----------------------------------------------------------------------------------

def test_input_errors():
    bb, x = make_wan(i2v=True), make_latent()
    cond = make_cond()
    with pytest.raises(ValueError, match="channels"):
        bb.velocity(torch.randn(2, 8, 2, 4, 4), SIGMA, cond)
    with pytest.raises(ValueError, match="divisible"):
        c5 = make_cond(h=5, w=4)
        bb.velocity(torch.randn(2, 16, 2, 5, 4), SIGMA, c5)
    with pytest.raises(ValueError, match="image"):
        bb.velocity(x, SIGMA, make_cond(i2v=False))
    with pytest.raises(ValueError, match="batch"):
        bb.velocity(torch.randn(3, *LATENT_SHAPE[1:]), torch.tensor([0.5] * 3), cond)
    with pytest.raises(ValueError, match="shape"):
        bb.velocity(torch.randn(2, 16, 2, 6, 6), SIGMA, cond)  # cond latent of another size
    with pytest.raises(ValueError):
        bb.velocity(x[0], SIGMA, cond)  # not 5-D
    with pytest.raises(ValueError, match="batch"):
        Conditioning(text=torch.randn(2, 3, TEXT_DIM), image=torch.randn(3, 5, IMAGE_DIM))
    with pytest.raises(ValueError, match="batch"):
        # wrong number of sigmas for the batch
        bb.velocity(x, torch.tensor([0.1, 0.2, 0.3]), cond)
    with pytest.raises(ValueError):
        WanBackbone.from_config(tiny_wan_config(i2v=True, mask_channels=0))


def test_mask_channels_read_off_config():
    bb = WanBackbone.from_config(tiny_wan_config(i2v=True, mask_channels=2, num_layers=1, image_dim=IMAGE_DIM,
                                                 text_dim=TEXT_DIM))
    assert bb.mask_channels == 2 and bb.model.config.in_channels == 34
    frame = torch.randn(2, 16, 1, 4, 4)
    lat, mask = first_frame_condition(frame, 2, 2)
    cond = Conditioning(text=torch.randn(2, 3, TEXT_DIM), image=torch.randn(2, 5, IMAGE_DIM), cond_latent=lat,
                        cond_mask=mask)
    with torch.no_grad():
        assert bb.velocity(make_latent(), SIGMA, cond).shape == LATENT_SHAPE
    bad = Conditioning(text=cond.text, image=cond.image, cond_latent=lat, cond_mask=torch.cat([mask, mask], 1))
    with pytest.raises(ValueError, match="cond_mask"):
        bb.velocity(make_latent(), SIGMA, bad)


# -- features --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("i2v", [True, False])
def test_features_equal_forward_hooks(i2v):
    bb, cond, x = make_wan(i2v=i2v, num_layers=3), make_cond(i2v=i2v), make_latent()
    with torch.no_grad():
        hooked, _ = _hook_states(bb, x, SIGMA, cond)
        feats = bb.features(x, SIGMA, cond, [0, 1, 2])
        assert len(hooked) == 3 and len(feats) == 3
        for f, h in zip(feats, hooked):
            assert f.shape == (2, 8, bb.feature_dim)
            _exact(f, h)
        # fraction / negative index / order-independence
        _exact(bb.features(x, SIGMA, cond, [1.0])[0], hooked[2])
        f2 = bb.features(x, SIGMA, cond, [-1, 0])
        _exact(f2[0], hooked[0])
        _exact(f2[1], hooked[2])


def test_features_with_gradient_checkpointing():
    """Checkpointing on (under grad): same features as hooks in a plain forward, one entry per layer (no
    double counting from recomputation), and the same gradients w.r.t. the input."""
    bb, cond, x = make_wan(i2v=True, num_layers=3), make_cond(), make_latent()
    bb.train()  # checkpointing is active in train mode too; there is no dropout in Wan
    layers = [0, 2]
    with torch.no_grad():
        hooked, _ = _hook_states(bb, x, SIGMA, cond)

    def run():
        xg = x.clone().requires_grad_(True)
        feats = bb.features(xg, SIGMA, cond, layers)
        loss = sum((f * torch.linspace(-1, 1, f.shape[-1])).square().sum() for f in feats)
        loss.backward()
        grads = {n: p.grad.clone() for n, p in bb.named_parameters() if p.grad is not None}
        return [f.detach() for f in feats], xg.grad.clone(), grads

    feats_plain, gx_plain, gp_plain = run()
    bb.zero_grad(set_to_none=True)
    bb.model.enable_gradient_checkpointing()
    assert bb.model.gradient_checkpointing
    calls = []
    hook = bb.model.blocks[0].register_forward_pre_hook(lambda *a: calls.append(1))  # fires on recompute too
    feats_ckpt, gx_ckpt, gp_ckpt = run()
    hook.remove()
    assert len(calls) == 2, "checkpointing should recompute block 0 in backward (else it was not active)"
    assert len(feats_ckpt) == 2
    for f_p, f_c, idx in zip(feats_plain, feats_ckpt, layers):
        _exact(f_p, hooked[idx])
        torch.testing.assert_close(f_c, hooked[idx], rtol=0, atol=1e-6)
    assert gx_plain.abs().max() > 0
    # float32: the recomputed forward is the same arithmetic, but backward accumulates the gradients in
    # another order; the differences are a few float32 ulps of O(1) values (eps 1.2e-7), hence 1e-5 relative
    torch.testing.assert_close(gx_ckpt, gx_plain, rtol=1e-5, atol=1e-7)
    assert gp_plain.keys() == gp_ckpt.keys() and "model.blocks.2.attn1.to_q.weight" in gp_plain
    assert "model.proj_out.weight" not in gp_plain  # the head after the deepest block is never run
    for n in gp_plain:
        torch.testing.assert_close(gp_ckpt[n], gp_plain[n], rtol=1e-5, atol=1e-7, msg=n)


def test_features_stop_after_deepest_requested_block():
    bb, cond, x = make_wan(i2v=True, num_layers=3), make_cond(), make_latent()

    def boom(*a, **k):
        raise RuntimeError("block beyond the deepest requested one was run")

    bb.model.blocks[2].forward = boom
    bb.model.blocks[1].forward = boom
    bb.model.proj_out.forward = boom
    with torch.no_grad():
        feats = bb.features(x, SIGMA, cond, [0])
        assert len(feats) == 1
        with pytest.raises(RuntimeError, match="beyond"):
            bb.velocity(x, SIGMA, cond)  # the patch really is on the module the forward uses


def test_features_differentiable_with_frozen_params():
    bb, cond, x = make_wan(i2v=True), make_cond(), make_latent()
    bb.requires_grad_(False)
    xg = x.clone().requires_grad_(True)
    feats = bb.features(xg, SIGMA, cond, [0.5, 1.0])
    assert all(f.requires_grad for f in feats)
    sum(f.square().mean() for f in feats).backward()
    assert xg.grad is not None and xg.grad.abs().sum() > 0
    assert all(p.grad is None for p in bb.parameters())
    # also with checkpointing on (inputs require grad, params do not)
    bb.model.enable_gradient_checkpointing()
    xg2 = x.clone().requires_grad_(True)
    feats2 = bb.features(xg2, SIGMA, cond, [0.5, 1.0])
    sum(f.square().mean() for f in feats2).backward()
    torch.testing.assert_close(xg2.grad, xg.grad, rtol=1e-5, atol=1e-8)  # float32, as above: accumulation order
    assert all(p.grad is None for p in bb.parameters())


def test_features_rejects_empty_layers():
    bb, cond, x = make_wan(i2v=True), make_cond(), make_latent()
    with pytest.raises(ValueError):
        bb.features(x, SIGMA, cond, [])


def test_backbone_attributes():
    bb = make_wan(i2v=True)
    assert bb.num_layers == 2 and bb.latent_channels == 16 and bb.mask_channels == 4 and bb.i2v
    assert bb.feature_dim == 24
    t = make_wan(i2v=False)
    assert not t.i2v and t.mask_channels == 0
    x = make_latent()
    assert bb.token_grid(x) == (2, 2, 2)
