"""The export forms other tools load, checked by their loaders (diffusers'), not by ours: the LoRA adapter
through `pipe.load_lora_weights` and `transformer.load_lora_adapter`, the pipeline's scheduler at N steps
against `vpae generate --sampler few-step --steps N`, and the Wan-native files through diffusers'
`from_single_file` and its ComfyUI-LoRA converter. Tiny random models, built offline."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import LATENT_C, MASK_C, make_cond, make_latent, make_wan, tiny_wan_vae_and_clip

from vpae.backbones.wan import WAN_TEXT_LEN, WanBackbone, pad_text
from vpae.conditioning import Conditioning
from vpae.errors import VpaeError
from vpae.export import export_backbone, export_pipeline
from vpae.export_native import NATIVE_LORA_FILE, NATIVE_MODEL_FILE, export_native
from vpae.sampling import few_step_sample, few_step_sigmas, initial_noise
from vpae.training.model import add_lora

H = W = 32
NUM_FRAMES = 5
LAT_SHAPE = (2, LATENT_C, 2, 4, 4)
LORA_FILE = "pytorch_lora_weights.safetensors"


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
    """A LoRA run's exports: RUN/generator (merged) and RUN/generator_lora (the adapter alone), from the
    teacher make_wan(seed=3) with a trained-looking adapter (B != 0; alpha != rank so the scaling matters)."""
    gen = make_wan(i2v=True, seed=3)
    add_lora(gen, "generator", rank=4, alpha=8,
             targets=["to_q", "to_k", "to_v", "to_out.0", "add_k_proj", "add_v_proj", "ffn.net.0.proj", "ffn.net.2"])
    with torch.no_grad():
        g = torch.Generator().manual_seed(5)
        for n, p in gen.model.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    run = tmp_path_factory.mktemp("run")
    export_backbone(gen, run / "generator", {"role": "generator"}, lora_dir=run / "generator_lora")
    return run


def _velocity(model, seed: int = 0) -> torch.Tensor:
    with torch.no_grad():
        return WanBackbone(model).eval().velocity(make_latent(LAT_SHAPE, seed=seed), torch.tensor([0.9, 0.4]),
                                                  make_cond(i2v=True, seed=seed))


def _merged(run):
    from diffusers import WanTransformer3DModel
    return WanTransformer3DModel.from_pretrained(str(run / "generator")).eval()


def test_lora_export_loads_with_load_lora_weights_and_load_lora_adapter(lora_run):
    from diffusers import FlowMatchEulerDiscreteScheduler, WanImageToVideoPipeline
    assert (lora_run / "generator_lora" / LORA_FILE).is_file()
    merged = _velocity(_merged(lora_run))
    teacher = _velocity(make_wan(i2v=True, seed=3).model)
    assert (merged - teacher).abs().max() > 1e-3  # the adapter changes the output: loading nothing would show
    # the pipeline way: the folder as it is
    pipe = WanImageToVideoPipeline(tokenizer=None, text_encoder=None, vae=None, image_processor=None,
                                   image_encoder=None, scheduler=FlowMatchEulerDiscreteScheduler(),
                                   transformer=make_wan(i2v=True, seed=3).model)
    pipe.load_lora_weights(str(lora_run / "generator_lora"))
    by_pipe = _velocity(pipe.transformer)
    # the model way (diffusers' model-level loader looks for a .bin unless told the safetensors file)
    model = make_wan(i2v=True, seed=3).model
    model.load_lora_adapter(str(lora_run / "generator_lora"), weight_name=LORA_FILE)
    by_model = _velocity(model)
    torch.testing.assert_close(by_pipe, merged, rtol=0, atol=1e-5)
    torch.testing.assert_close(by_model, merged, rtol=0, atol=1e-5)


@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    """Tiny local base pipelines, I2V and T2V, with the teacher's multi-step scheduler (the export replaces it)."""
    from diffusers import UniPCMultistepScheduler, WanImageToVideoPipeline, WanPipeline
    vae, clip, proc = tiny_wan_vae_and_clip()
    root = tmp_path_factory.mktemp("bases")
    WanImageToVideoPipeline(tokenizer=None, text_encoder=None, vae=vae, scheduler=UniPCMultistepScheduler(),
                            image_processor=proc, image_encoder=clip,
                            transformer=make_wan(i2v=True, seed=3).model).save_pretrained(str(root / "i2v"))
    WanPipeline(tokenizer=None, text_encoder=None, vae=vae, scheduler=UniPCMultistepScheduler(),
                transformer=make_wan(i2v=False, seed=3).model).save_pretrained(str(root / "t2v"))
    return root


@pytest.mark.parametrize("i2v", [True, False], ids=["i2v", "t2v"])
def test_exported_pipeline_at_n_steps_equals_vpae_few_step_sampling(bases, tmp_path, i2v):
    from diffusers import WanImageToVideoPipeline, WanPipeline
    from PIL import Image
    gen = make_wan(i2v=i2v, seed=7)
    shift, seed = 5.0, 4
    out = export_pipeline(export_backbone(gen, tmp_path / "generator"), bases / ("i2v" if i2v else "t2v"),
                          tmp_path / "pipe", shift=shift, steps=4)
    cls = WanImageToVideoPipeline if i2v else WanPipeline
    pipe = cls.from_pretrained(str(out), text_encoder=None, tokenizer=None, transformer_2=None)
    pipe.set_progress_bar_config(disable=True)
    text = torch.randn(2, 7, gen.model.config.text_dim, generator=torch.Generator().manual_seed(1))
    kw = dict(prompt_embeds=pad_text(text, WAN_TEXT_LEN), height=H, width=W, num_frames=NUM_FRAMES,
              guidance_scale=1.0, output_type="latent")
    cond = Conditioning(text=text)
    if i2v:
        kw["image"] = Image.fromarray((np.random.RandomState(0).rand(H, W, 3) * 255).astype(np.uint8))
        with torch.no_grad():
            pixels = pipe.video_processor.preprocess(kw["image"], height=H, width=W).to(dtype=torch.float32)
            _, condition = pipe.prepare_latents(pixels, 2, LATENT_C, H, W, NUM_FRAMES, torch.float32,
                                                torch.device("cpu"), None, make_latent(LAT_SHAPE))
            tokens = pipe.encode_image(kw["image"], torch.device("cpu")).repeat(2, 1, 1)
        cond = Conditioning(text=text, image=tokens, cond_latent=condition[:, MASK_C:],
                            cond_mask=condition[:, :MASK_C])
    results = {}
    for n in (1, 4):
        # vpae generate: the start noise from `seed`, the re-noising from `seed + 1`; Wan's pipelines do not
        # hand their generator to scheduler.step, so its re-noising draws from torch's global (CPU) RNG
        noise = initial_noise(LAT_SHAPE, seed)
        ours = few_step_sample(gen.eval(), noise.clone(), cond, few_step_sigmas(n, shift, "linspace"), 1.0, seed).x0
        with torch.no_grad(), torch.random.fork_rng():
            torch.manual_seed(seed + 1)
            ref = pipe(num_inference_steps=n, latents=noise.clone(), **kw).frames
        torch.testing.assert_close(ours, ref, rtol=0, atol=1e-5)
        results[n] = ref
    assert (results[4] - results[1]).abs().max() > 1e-2  # four steps really re-noised and ran again


def test_native_export_is_read_by_diffusers_single_file_and_lora_converter(lora_run, tmp_path):
    from diffusers import FlowMatchEulerDiscreteScheduler, WanImageToVideoPipeline, WanTransformer3DModel
    from safetensors import safe_open
    out = export_native(lora_run / "generator", tmp_path / "native")
    with safe_open(str(out / NATIVE_MODEL_FILE), "pt") as f:
        keys = set(f.keys())
    assert {"blocks.0.self_attn.q.weight", "blocks.0.cross_attn.k_img.weight", "head.head.weight",
            "head.modulation", "img_emb.proj.1.weight", "time_projection.1.weight"} <= keys
    assert not any("attn1" in k or "to_q" in k for k in keys)
    # diffusers' single-file loader rebuilds the same model (config from the diffusers export: offline)
    rebuilt = WanTransformer3DModel.from_single_file(str(out / NATIVE_MODEL_FILE), config=str(lora_run / "generator"))
    a, b = rebuilt.state_dict(), _merged(lora_run).state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    with safe_open(str(out / NATIVE_LORA_FILE), "pt") as f:
        lkeys = set(f.keys())
        assert f.get_tensor("diffusion_model.blocks.0.self_attn.q.alpha").item() == 8.0
    assert {"diffusion_model.blocks.1.self_attn.q.lora_down.weight", "diffusion_model.blocks.1.ffn.2.lora_up.weight",
            "diffusion_model.blocks.0.cross_attn.v_img.alpha"} <= lkeys
    # diffusers reads the ComfyUI-named LoRA through its own converter: the same outputs as the diffusers LoRA
    pipe = WanImageToVideoPipeline(tokenizer=None, text_encoder=None, vae=None, image_processor=None,
                                   image_encoder=None, scheduler=FlowMatchEulerDiscreteScheduler(),
                                   transformer=make_wan(i2v=True, seed=3).model)
    pipe.load_lora_weights(str(out), weight_name=NATIVE_LORA_FILE)
    torch.testing.assert_close(_velocity(pipe.transformer), _velocity(_merged(lora_run)), rtol=0, atol=1e-5)


def test_native_export_refuses_what_is_not_a_transformer_folder(tmp_path):
    with pytest.raises(VpaeError, match="not a transformer folder"):
        export_native(tmp_path, tmp_path / "native")


def test_export_command_native_and_its_refusals(lora_run, tmp_path):
    from typer.testing import CliRunner

    from vpae.cli import app
    r = CliRunner().invoke(app, ["export", "--generator", str(lora_run / "generator"), "--out", str(tmp_path / "n"),
                                 "--format", "native"])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "n" / NATIVE_MODEL_FILE).is_file() and (tmp_path / "n" / NATIVE_LORA_FILE).is_file()
    for args, msg in ((["--format", "comfy"], "--format must be"), ([], "needs --base")):
        r = CliRunner().invoke(app, ["export", "--generator", str(lora_run / "generator"), "--out",
                                     str(tmp_path / "x"), *args])
        assert r.exit_code == 2 and "error:" in r.output and msg in r.output, r.output
