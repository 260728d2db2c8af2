"""Shared tiny fixtures: tiny random Wan backbones (I2V and T2V) and random Conditioning builders.

Everything here is built offline from configs (no hub) and is small enough that a forward pass takes
milliseconds on CPU.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from vpae.backbones.wan import WanBackbone, tiny_wan_config  # noqa: E402
from vpae.conditioning import Conditioning, first_frame_condition  # noqa: E402

# Tiny shapes shared by the tests: latent (B, 16, F=2, H=4, W=4) -> 2*2*2 = 8 tokens with patch (1, 2, 2).
LATENT_C = 16
MASK_C = 4
TEXT_DIM = 32
IMAGE_DIM = 24
LATENT_SHAPE = (2, LATENT_C, 2, 4, 4)


# One intra-op thread: the tiny models gain nothing from more, and on a 2-core machine that is busy with
# anything else, OpenMP's spin-waiting barriers make a 2-thread tiny Wan forward ~100x slower (measured:
# 10 ms with 1 thread vs 1 s with 2 threads under load). Override with VPAE_TEST_THREADS.
torch.set_num_threads(int(os.environ.get("VPAE_TEST_THREADS", "1")))


@pytest.fixture(autouse=True, scope="session")
def _torch_setup():
    tmp = Path(__file__).resolve().parents[1] / ".tmp"
    tmp.mkdir(exist_ok=True)
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(tmp / "inductor"))
    yield


def make_wan(i2v: bool = True, seed: int = 0, num_layers: int = 2) -> WanBackbone:
    """A tiny random Wan backbone in eval mode, float32."""
    torch.manual_seed(seed)
    bb = WanBackbone.from_config(tiny_wan_config(i2v=i2v, latent_channels=LATENT_C, mask_channels=MASK_C,
                                                 num_layers=num_layers, text_dim=TEXT_DIM,
                                                 image_dim=IMAGE_DIM))
    # Randomise the zero-initialised parts so every input path actually influences the output.
    with torch.no_grad():
        for p in bb.model.parameters():
            if p.abs().sum() == 0:
                p.normal_(0, 0.02)
    return bb.eval()


def make_cond(batch: int = 2, *, i2v: bool = True, text_len: int = 7, image_len: int = 5,
              frames: int = 2, h: int = 4, w: int = 4, seed: int = 0, negative: bool = True) -> Conditioning:
    """Random Conditioning of the tiny shapes (I2V: image tokens + first-frame condition latent)."""
    g = torch.Generator().manual_seed(seed)
    text = torch.randn(batch, text_len, TEXT_DIM, generator=g)
    neg = torch.randn(batch, text_len, TEXT_DIM, generator=g) if negative else None
    if not i2v:
        return Conditioning(text=text, negative_text=neg)
    image = torch.randn(batch, image_len, IMAGE_DIM, generator=g)
    frame = torch.randn(batch, LATENT_C, 1, h, w, generator=g)
    cond_latent, cond_mask = first_frame_condition(frame, frames, MASK_C)
    return Conditioning(text=text, negative_text=neg, image=image, cond_latent=cond_latent, cond_mask=cond_mask)


def tiny_wan_vae_and_clip(seed: int = 0):
    """The VAE and the CLIP vision encoder + processor of a tiny Wan I2V pipeline, built offline: a random
    AutoencoderKLWan (z_dim = LATENT_C, 8x spatial, 4x temporal) and a CLIPVisionModel of width IMAGE_DIM on
    32 x 32 images. Returns (vae, clip, processor)."""
    import warnings

    from diffusers import AutoencoderKLWan
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel
    torch.manual_seed(seed)
    vae = AutoencoderKLWan(base_dim=3, z_dim=LATENT_C, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                           temperal_downsample=[False, True, True]).eval()
    clip = CLIPVisionModel(CLIPVisionConfig(hidden_size=IMAGE_DIM, intermediate_size=32, num_hidden_layers=2,
                                            num_attention_heads=2, image_size=32, patch_size=8)).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        proc = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    return vae, clip, proc


def make_latent(shape=LATENT_SHAPE, seed: int = 1) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="session")
def wan_i2v_session() -> WanBackbone:
    return make_wan(i2v=True)


@pytest.fixture
def wan_i2v() -> WanBackbone:
    return make_wan(i2v=True)


@pytest.fixture
def wan_t2v() -> WanBackbone:
    return make_wan(i2v=False)


@pytest.fixture
def cond_i2v() -> Conditioning:
    return make_cond(i2v=True)


@pytest.fixture
def cond_t2v() -> Conditioning:
    return make_cond(i2v=False)


def nonzero_fake_lora_and_checkpointing(teacher: WanBackbone, generator: WanBackbone, checkpointing: bool,
                                        seed: int = 5) -> None:
    """For gradient-checkpointing tests: a non-zero fake LoRA (so reading the teacher with its adapters in the
    wrong state changes its output) and, if asked, checkpointing on the teacher and the generator (copies made
    from the generator afterwards inherit it)."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for n, p in teacher.named_parameters():
            if "lora_B" in n:
                p.copy_(0.2 * torch.randn_like(p))
    if checkpointing:
        for bb in (teacher, generator):
            bb.model.enable_gradient_checkpointing()
