"""Text / image encoders, latent codecs and make_conditioning, end to end into a tiny Wan backbone."""

from __future__ import annotations

import pytest
import torch

from vpae.backbones.wan import WanBackbone, tiny_wan_config
from vpae.codecs import CodecError, IdentityCodec, WanVAECodec, make_conditioning
from vpae.conditioning import first_frame_condition
from vpae.toy.encoders import PatchImageEncoder, TextEncoder
from vpae.toy.world import ToyWorld, ToyWorldConfig


@pytest.fixture(scope="module")
def text_encoder():
    return TextEncoder(max_tokens=24)


@pytest.fixture(scope="module")
def batch():
    return ToyWorld().batch(3, seed=0)


@pytest.fixture(scope="module")
def small():
    """A smaller world (5 frames, 16x16) keeps the backbone / VAE passes cheap."""
    return ToyWorld(ToyWorldConfig(frames=5, height=16, width=16)).batch(2, seed=0)


@pytest.fixture(scope="module")
def wan_codec():
    return WanVAECodec.tiny(seed=0)


def test_text_encoder_shapes_mask_padding(text_encoder, batch):
    emb, mask = text_encoder.encode(batch.captions)
    assert emb.shape == (3, 24, 384) and mask.shape == (3, 24) and mask.dtype == torch.bool
    assert text_encoder.dim == 384
    n = mask.sum(1)
    assert (n > 5).all() and (n < 24).all()
    assert (emb[~mask] == 0).all() and (emb[mask].abs().sum(-1) > 0).all()
    short = TextEncoder(max_tokens=6, model_path=text_encoder.model_path)
    e6, m6 = short.encode(batch.captions[:1])
    assert e6.shape == (1, 6, 384) and m6.all()  # truncated, no padding


def test_text_encoder_distinct_and_cached(text_encoder):
    a = "a small red square moves left quickly over a checkered background"
    b = "a large blue circle moves up slowly over a plain dark background"
    e1, _ = text_encoder.encode([a, b])
    assert not torch.allclose(e1[0], e1[1], atol=1e-3)
    calls = text_encoder.model_calls
    e2, _ = text_encoder.encode([b, a, a])
    assert text_encoder.model_calls == calls  # all cache hits
    assert torch.equal(e2[0], e1[1]) and torch.equal(e2[1], e1[0]) and torch.equal(e2[2], e1[0])
    # a cached embedding equals a fresh computation
    fresh, _ = text_encoder._run([a])
    assert torch.allclose(fresh[0], e1[0], atol=1e-5)


def test_negative_is_empty_prompt(text_encoder):
    neg = text_encoder.negative(4)
    e, m = text_encoder.encode([""])
    assert neg.shape == (4, 24, 384) and torch.equal(neg[2], e[0])
    assert m.sum() == 2  # [CLS] [SEP]


def test_text_encoder_disk_cache(tmp_path, text_encoder):
    te = TextEncoder(cache_dir=tmp_path, model_path=text_encoder.model_path)
    e1, m1 = te.encode(["a small green triangle moves down slowly over a checkered background"])
    assert len(list(tmp_path.glob("*.pt"))) == 1
    te2 = TextEncoder(cache_dir=tmp_path, model_path=text_encoder.model_path)
    e2, m2 = te2.encode(["a small green triangle moves down slowly over a checkered background"])
    assert te2.model_calls == 0 and torch.equal(e1, e2) and torch.equal(m1, m2)


def test_patch_image_encoder(batch):
    enc = PatchImageEncoder(patch_size=8)
    img = batch.first_frame
    tok = enc(img)
    assert tok.shape == (3, 16, 192) and enc.dim == 192 and enc.num_tokens(32, 32) == 16
    assert len(list(enc.parameters())) == 0
    assert torch.equal(enc.decode(tok, 32, 32), img)  # lossless: colour, shape and position preserved
    assert torch.equal(tok[0, 1], img[0, :, :8, 8:16].reshape(-1))  # token 1 = top row, second patch
    assert torch.equal(enc(img), tok)
    with pytest.raises(ValueError, match="multiple of the patch size"):
        enc(torch.zeros(1, 3, 30, 32))


def test_identity_codec(batch):
    c = IdentityCodec()
    z = c.encode(batch.video)
    assert torch.equal(c.decode(z), batch.video)
    assert c.latent_shape(9, 32, 32) == (3, 9, 32, 32)
    cond, mask = c.encode_condition(batch.first_frame, 9)
    ref_c, ref_m = first_frame_condition(batch.first_frame.unsqueeze(2), 9, 1)
    assert torch.equal(cond, ref_c) and torch.equal(mask, ref_m)
    assert torch.equal(cond[:, :, 0], batch.first_frame) and (cond[:, :, 1:] == 0).all()
    assert mask.shape == (3, 1, 9, 32, 32) and (mask[:, :, 0] == 1).all() and (mask[:, :, 1:] == 0).all()
    with pytest.raises(ValueError):
        c.encode(batch.video[:, :2])


def test_wan_vae_codec_shapes_and_validation(wan_codec, small):
    c = wan_codec
    assert (c.latent_channels, c.temporal_stride, c.spatial_stride, c.mask_channels) == (16, 4, 8, 4)
    assert c.latent_shape(9, 32, 32) == (16, 3, 4, 4)
    assert c.latent_shape(17, 64, 48) == (16, 5, 8, 6)
    with pytest.raises(ValueError, match="4n\\+1"):
        c.check_size(8, 32, 32)
    with pytest.raises(ValueError, match="multiples of 16"):
        c.check_size(9, 24, 32)
    with torch.no_grad():
        z = c.encode(small.video)
        assert z.shape == (2, 16, 2, 2, 2) and torch.isfinite(z).all()
        # normalised exactly as diffusers' WanImageToVideoPipeline
        raw = c.vae.encode(small.video).latent_dist.mode()
        mean = torch.tensor(c.vae.config.latents_mean).view(1, -1, 1, 1, 1)
        std = torch.tensor(c.vae.config.latents_std).view(1, -1, 1, 1, 1)
        assert torch.allclose(z, (raw - mean) / std, atol=1e-5)
        assert c.decode(z).shape == small.video.shape
        cond, mask = c.encode_condition(small.first_frame, 5)
        pad = torch.cat([small.first_frame.unsqueeze(2), torch.zeros(2, 3, 4, 16, 16)], 2)
        assert torch.allclose(cond, c.encode(pad), atol=1e-5)
    assert mask.shape == (2, 4, 2, 2, 2)
    assert (mask[:, :, 0] == 1).all() and (mask[:, :, 1:] == 0).all()


def test_wan_vae_from_pretrained_is_local_only(wan_codec, tmp_path, monkeypatch):
    from diffusers import AutoencoderKLWan

    from vpae.errors import VpaeError
    hub_name = "Wan-AI/Wan2.1-I2V-14B-480P-Diffusers"
    with pytest.raises(CodecError, match="Wan-AI/Wan2.1-I2V-14B-480P-Diffusers.*must be a local") as e:
        WanVAECodec.from_pretrained(hub_name)
    assert isinstance(e.value, VpaeError)
    wan_codec.vae.save_pretrained(tmp_path / "vae")
    with pytest.raises(CodecError, match="local only"):
        WanVAECodec.from_pretrained(str(tmp_path), local_files_only=False)
    seen = {}
    real = AutoencoderKLWan.from_pretrained.__func__

    def spy(cls, path, **kw):
        seen.update(kw)
        return real(cls, path, **kw)

    monkeypatch.setattr(AutoencoderKLWan, "from_pretrained", classmethod(spy))
    loaded = WanVAECodec.from_pretrained(str(tmp_path))
    assert seen == {"subfolder": "vae", "local_files_only": True}
    sd, ref = loaded.vae.state_dict(), wan_codec.vae.state_dict()
    assert sd.keys() == ref.keys() and all(torch.equal(sd[k], ref[k]) for k in ref)   # exact round trip


def test_make_conditioning_identity_into_tiny_wan(text_encoder, batch):
    img_enc, codec = PatchImageEncoder(), IdentityCodec()
    cond = make_conditioning(batch.video, batch.captions, text_encoder, img_enc, codec)
    assert cond.is_i2v and cond.batch_size == 3
    assert cond.text.shape == (3, 24, 384) and cond.text_mask.shape == (3, 24)
    assert torch.equal(cond.negative_text[1], text_encoder.negative()[0])
    assert cond.image.shape == (3, 16, 192)
    assert cond.cond_latent.shape == (3, 3, 9, 32, 32) and cond.cond_mask.shape == (3, 1, 9, 32, 32)
    same = make_conditioning(batch.first_frame, batch.captions, text_encoder, img_enc, codec, frames=9)
    assert torch.equal(same.cond_latent, cond.cond_latent) and torch.equal(same.image, cond.image)
    torch.manual_seed(0)
    bb = WanBackbone.from_config(tiny_wan_config(i2v=True, latent_channels=3, mask_channels=1, text_dim=384,
                                                 image_dim=192)).eval()
    small = ToyWorld(ToyWorldConfig(frames=5, height=16, width=16)).batch(3, seed=0)
    cond = make_conditioning(small.video, small.captions, text_encoder, img_enc, codec)
    x = torch.randn(3, 3, 5, 16, 16)
    with torch.no_grad():
        v = bb.velocity(x, torch.full((3,), 0.5), cond)
        vn = bb.velocity(x, torch.full((3,), 0.5), cond.negative())
    assert v.shape == x.shape and torch.isfinite(v).all() and torch.isfinite(vn).all()
    t2v = make_conditioning(None, batch.captions, text_encoder)
    assert not t2v.is_i2v and t2v.image is None and t2v.text.shape == (3, 24, 384)
    with pytest.raises(ValueError):
        make_conditioning(batch.video[:2], batch.captions, text_encoder, img_enc, codec)


def test_make_conditioning_wan_vae(text_encoder, small, wan_codec):
    with torch.no_grad():
        cond = make_conditioning(small.video, small.captions, text_encoder, PatchImageEncoder(), wan_codec)
    assert cond.cond_latent.shape == (2, 16, 2, 2, 2) and cond.cond_mask.shape == (2, 4, 2, 2, 2)
    assert cond.image.shape == (2, 4, 192)
    torch.manual_seed(0)
    bb = WanBackbone.from_config(tiny_wan_config(i2v=True, latent_channels=16, mask_channels=4, text_dim=384,
                                                 image_dim=192)).eval()
    with torch.no_grad():
        v = bb.velocity(torch.randn(2, 16, 2, 2, 2), torch.full((2,), 0.7), cond)
    assert v.shape == (2, 16, 2, 2, 2)
