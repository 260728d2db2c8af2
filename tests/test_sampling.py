"""Samplers, checked against a real client: diffusers' WanImageToVideoPipeline and WanPipeline built from tiny
random components offline, run on the same initial latents, must give the same latents as our Euler sampler.

Notes on building the I2V pipeline offline (diffusers 0.42.1):
- `check_inputs` refuses `image` together with `image_embeds`, yet `__call__` always needs `image` to build
  the condition latent (`video_processor.preprocess(image)` in step 5). So we pass a real (tiny) PIL image and
  a tiny random `CLIPVisionModel` + `CLIPImageProcessor` (both build from configs), and take our image tokens
  from `pipe.encode_image`, which is what the pipeline itself uses.
- Text: no tokenizer/T5 (tokenizers need files). We give the pipeline `prompt_embeds` zero-padded to 512
  tokens, which is exactly what its T5 path produces, and give our sampler the *unpadded* text: the adapter
  must pad it.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import LATENT_C, MASK_C, TEXT_DIM, make_cond, make_latent, make_wan, tiny_wan_vae_and_clip

from vpae import flow
from vpae.backbones.base import Backbone
from vpae.backbones.wan import WAN_TEXT_LEN, pad_text
from vpae.conditioning import Conditioning, first_frame_condition
from vpae.sampling import (
    SampleResult,
    euler_sample,
    few_step_sample,
    few_step_sigmas,
    guided_velocity,
    initial_noise,
    one_step_sample,
    predict_x0,
    teacher_sample,
)

H = W = 32          # pixels -> latent 4 x 4 (VAE x8); tokens 2 x 2 per frame with patch (1, 2, 2)
NUM_FRAMES = 5      # -> 2 latent frames (VAE temporal x4)
LAT_SHAPE = (2, LATENT_C, 2, 4, 4)


# -- a real diffusers client ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_components():
    return tiny_wan_vae_and_clip()


@pytest.fixture(scope="module")
def i2v_pipe(tiny_components):
    from diffusers import FlowMatchEulerDiscreteScheduler, WanImageToVideoPipeline

    tiny_vae, clip, proc = tiny_components
    bb = make_wan(i2v=True, seed=3)
    pipe = WanImageToVideoPipeline(tokenizer=None, text_encoder=None, vae=tiny_vae,
                                   scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
                                   image_processor=proc, image_encoder=clip, transformer=bb.model)
    pipe.set_progress_bar_config(disable=True)
    return pipe, bb


@pytest.fixture(scope="module")
def t2v_pipe(tiny_components):
    from diffusers import FlowMatchEulerDiscreteScheduler, WanPipeline

    bb = make_wan(i2v=False, seed=4)
    pipe = WanPipeline(tokenizer=None, text_encoder=None, vae=tiny_components[0],
                       scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), transformer=bb.model)
    pipe.set_progress_bar_config(disable=True)
    return pipe, bb


def _image():
    from PIL import Image

    return Image.fromarray((np.random.RandomState(0).rand(H, W, 3) * 255).astype(np.uint8))


def _texts(seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(2, 7, TEXT_DIM, generator=g), torch.randn(2, 3, TEXT_DIM, generator=g)


@pytest.mark.parametrize("steps,guidance", [(3, 5.0), (2, 1.0)])
def test_euler_matches_wan_i2v_pipeline(i2v_pipe, steps, guidance):
    pipe, bb = i2v_pipe
    image = _image()
    text, neg = _texts()
    latents = make_latent(LAT_SHAPE, seed=11)
    with torch.no_grad():
        ref = pipe(image=image, prompt_embeds=pad_text(text, WAN_TEXT_LEN),
                   negative_prompt_embeds=pad_text(neg, WAN_TEXT_LEN), height=H, width=W, num_frames=NUM_FRAMES,
                   num_inference_steps=steps, guidance_scale=guidance, latents=latents.clone(),
                   output_type="latent").frames
        # the pipeline's own condition = cat(mask, cond_latent), and its own image tokens
        pixels = pipe.video_processor.preprocess(image, height=H, width=W).to(dtype=torch.float32)
        _, condition = pipe.prepare_latents(pixels, 2, LATENT_C, H, W, NUM_FRAMES, torch.float32,
                                            torch.device("cpu"), None, latents.clone())
        image_tokens = pipe.encode_image(image, torch.device("cpu")).repeat(2, 1, 1)
    assert condition.shape == (2, MASK_C + LATENT_C, 2, 4, 4)
    mask, cond_latent = condition[:, :MASK_C], condition[:, MASK_C:]
    # our first_frame_condition lays the mask out exactly as the pipeline does
    _, our_mask = first_frame_condition(cond_latent[:, :, :1], 2, MASK_C)
    torch.testing.assert_close(our_mask, mask, rtol=0, atol=0)
    cond = Conditioning(text=text, negative_text=neg, image=image_tokens, cond_latent=cond_latent, cond_mask=mask)

    sigmas = pipe.scheduler.sigmas
    torch.testing.assert_close(flow.sigma_schedule(steps, 3.0), sigmas, rtol=0, atol=0)
    ours = euler_sample(bb, latents.clone(), cond, sigmas, guidance=guidance)
    assert ours.nfe == steps * (2 if guidance != 1.0 else 1)
    assert (ref - latents).abs().max() > 0.1  # the pipeline really moved the latents
    # float32 latents of O(1) after `steps` Euler updates: the pipeline computes the same terms in another
    # order (scheduler.step vs ours), each step adding ~eps; 1e-5 is ~100 ulps over a handful of steps
    assert (ours.x0 - ref).abs().max().item() <= 1e-5
    # teacher_sample is the same thing with the default schedule construction
    t = teacher_sample(bb, latents.clone(), cond, steps=steps, guidance=guidance, shift=3.0)
    assert (t.x0 - ref).abs().max().item() <= 1e-5


@pytest.mark.parametrize("steps,guidance", [(3, 5.0)])
def test_euler_matches_wan_t2v_pipeline(t2v_pipe, steps, guidance):
    pipe, bb = t2v_pipe
    text, neg = _texts(1)
    latents = make_latent(LAT_SHAPE, seed=12)
    with torch.no_grad():
        ref = pipe(prompt_embeds=pad_text(text, WAN_TEXT_LEN), negative_prompt_embeds=pad_text(neg, WAN_TEXT_LEN),
                   height=H, width=W, num_frames=NUM_FRAMES, num_inference_steps=steps, guidance_scale=guidance,
                   latents=latents.clone(), output_type="latent").frames
    cond = Conditioning(text=text, negative_text=neg)
    ours = euler_sample(bb, latents.clone(), cond, pipe.scheduler.sigmas, guidance=guidance)
    assert ours.nfe == 2 * steps
    assert (ref - latents).abs().max() > 0.1
    assert (ours.x0 - ref).abs().max().item() <= 1e-5


# -- a spy backbone: records every call; velocity depends on x, sigma and the text ----------------------

class SpyBackbone(Backbone):
    num_layers, feature_dim, latent_channels = 1, 1, LATENT_C

    def __init__(self):
        super().__init__()
        self.calls: list[tuple[torch.Tensor, Conditioning]] = []

    def velocity(self, x_t, sigma, cond):
        self.calls.append((torch.as_tensor(sigma).clone(), cond))
        t = cond.text.mean(dim=(1, 2)).reshape(-1, 1, 1, 1, 1)
        return 0.3 * x_t + t + torch.as_tensor(sigma).reshape(-1, 1, 1, 1, 1)


def test_nfe_counts():
    cond, z = make_cond(), make_latent()
    spy = SpyBackbone()
    r = teacher_sample(spy, z, cond, steps=50, guidance=5.0)
    assert isinstance(r, SampleResult) and r.nfe == 100 and len(spy.calls) == 100
    # the sigmas visited are the shifted schedule, each twice (cond, uncond)
    sched = flow.sigma_schedule(50, 3.0)
    visited = torch.stack([c[0] for c in spy.calls[::2]])
    torch.testing.assert_close(visited, sched[:-1, None].expand(50, 2), rtol=0, atol=0)
    spy = SpyBackbone()
    assert teacher_sample(spy, z, cond, steps=50, guidance=1.0).nfe == 50 and len(spy.calls) == 50
    spy = SpyBackbone()
    r = few_step_sample(spy, z, cond, [1.0, 0.75, 0.5, 0.25])
    assert r.nfe == 4 and len(spy.calls) == 4
    spy = SpyBackbone()
    assert few_step_sample(spy, z, cond, [1.0, 0.75, 0.5, 0.25, 0.0]).nfe == 4  # trailing 0 ignored
    assert few_step_sample(SpyBackbone(), z, cond, [1.0, 0.5], guidance=5.0).nfe == 4
    assert one_step_sample(SpyBackbone(), z, cond).nfe == 1
    assert few_step_sigmas(1) == [1.0]
    assert len(few_step_sigmas(4, 3.0)) == 4


def test_cfg_negative_changes_only_text():
    cond, z = make_cond(), make_latent()
    spy = SpyBackbone()
    v, n = guided_velocity(spy, z, torch.full((2,), 0.6), cond, guidance=5.0)
    assert n == 2 and len(spy.calls) == 2
    (s_pos, c_pos), (s_neg, c_neg) = spy.calls
    assert c_pos is cond
    torch.testing.assert_close(s_neg, s_pos, rtol=0, atol=0)
    for name in ("image", "cond_latent", "cond_mask"):
        assert torch.equal(getattr(c_neg, name), getattr(cond, name)), name
    assert torch.equal(c_neg.text, cond.negative_text)
    assert not torch.equal(c_neg.text, cond.text)
    # the standard CFG combination
    v_pos = spy.velocity(z, torch.full((2,), 0.6), cond)
    v_neg = spy.velocity(z, torch.full((2,), 0.6), cond.negative())
    torch.testing.assert_close(v, v_neg + 5.0 * (v_pos - v_neg), rtol=0, atol=0)
    # no negative text given: the negative branch is zeros of the text's shape, image etc. unchanged
    spy = SpyBackbone()
    nocond = make_cond(negative=False)
    guided_velocity(spy, z, torch.full((2,), 0.6), nocond, guidance=3.0)
    c_neg = spy.calls[1][1]
    assert torch.equal(c_neg.text, torch.zeros_like(nocond.text))
    for name in ("image", "cond_latent", "cond_mask"):
        assert torch.equal(getattr(c_neg, name), getattr(nocond, name)), name
    # guidance 1: one evaluation, no negative branch
    spy = SpyBackbone()
    assert guided_velocity(spy, z, torch.full((2,), 0.6), cond, guidance=1.0)[1] == 1 and len(spy.calls) == 1
    # through the whole sampler: every uncond call keeps image and condition latent
    spy = SpyBackbone()
    euler_sample(spy, z, cond, [1.0, 0.5, 0.0], guidance=5.0)
    for i, (_, c) in enumerate(spy.calls):
        assert torch.equal(c.image, cond.image) and torch.equal(c.cond_latent, cond.cond_latent)
        assert torch.equal(c.text, cond.text if i % 2 == 0 else cond.negative_text)


# -- one-step / few-step against their definitions on the tiny Wan ----------------------------------------

def test_one_step_is_z_minus_v(wan_i2v_session):
    bb, cond, z = wan_i2v_session, make_cond(), make_latent()
    with torch.no_grad():
        v = bb.velocity(z, torch.ones(2), cond)
        r = one_step_sample(bb, z, cond)
        torch.testing.assert_close(r.x0, z - v, rtol=0, atol=0)
        assert r.nfe == 1
        # with guidance
        v_neg = bb.velocity(z, torch.ones(2), cond.negative())
        rg = one_step_sample(bb, z, cond, guidance=4.0)
        # float32: the same CFG combination, possibly fused differently (v_neg + w (v - v_neg) vs w v + (1-w) v_neg)
        torch.testing.assert_close(rg.x0, z - (v_neg + 4.0 * (v - v_neg)), rtol=0, atol=1e-6)
        assert rg.nfe == 2
        # and equals one Euler step over the 1-step schedule [1, 0]
        torch.testing.assert_close(euler_sample(bb, z, cond, flow.sigma_schedule(1, 3.0)).x0, r.x0,
                                   rtol=0, atol=1e-6)


def test_few_step_definition(wan_i2v_session):
    bb, cond, z = wan_i2v_session, make_cond(), make_latent()
    sig = [1.0, 0.8, 0.5, 0.2]
    r = few_step_sample(bb, z, cond, sig, seed=7)
    assert r.nfe == 4
    g = torch.Generator().manual_seed(8)
    x = z
    with torch.no_grad():
        for i, s in enumerate(sig):
            x0 = x - s * bb.velocity(x, torch.full((2,), s), cond)
            if i + 1 < len(sig):
                x = (1 - sig[i + 1]) * x0 + sig[i + 1] * torch.randn(x0.shape, generator=g)
    # float32: the same operations; (1 - s) x0 + s eps may be evaluated as one fused op in the sampler
    torch.testing.assert_close(r.x0, x0, rtol=0, atol=1e-6)
    with pytest.raises(ValueError):
        few_step_sample(bb, z, cond, [0.0])


def test_predict_x0_is_differentiable(wan_i2v_session):
    bb, cond = wan_i2v_session, make_cond()
    x = make_latent().requires_grad_(True)
    x0, n = predict_x0(bb, x, 0.5, cond)
    assert n == 1 and x0.requires_grad
    x0.square().mean().backward()
    assert x.grad.abs().sum() > 0
    bb.zero_grad(set_to_none=True)


def test_samplers_deterministic(wan_i2v_session):
    bb, cond = wan_i2v_session, make_cond()
    z1, z2 = initial_noise(LAT_SHAPE, seed=3), initial_noise(LAT_SHAPE, seed=3)
    assert torch.equal(z1, z2) and not torch.equal(z1, initial_noise(LAT_SHAPE, seed=4))
    a = teacher_sample(bb, z1, cond, steps=3, guidance=5.0)
    b = teacher_sample(bb, z2, cond, steps=3, guidance=5.0)
    assert torch.equal(a.x0, b.x0)
    assert torch.equal(one_step_sample(bb, z1, cond).x0, one_step_sample(bb, z2, cond).x0)
    f1 = few_step_sample(bb, z1, cond, [1.0, 0.6, 0.3], seed=5)
    f2 = few_step_sample(bb, z2, cond, [1.0, 0.6, 0.3], seed=5)
    assert torch.equal(f1.x0, f2.x0)
    assert not torch.equal(f1.x0, few_step_sample(bb, z1, cond, [1.0, 0.6, 0.3], seed=6).x0)


def test_euler_sample_validates_sigmas():
    spy, cond, z = SpyBackbone(), make_cond(), make_latent()
    with pytest.raises(ValueError):
        euler_sample(spy, z, cond, [1.0])
    with pytest.raises(ValueError):
        euler_sample(spy, z, cond, [[1.0, 0.0]])
