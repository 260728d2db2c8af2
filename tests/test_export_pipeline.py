"""`vpae export`: a diffusers pipeline folder that diffusers itself loads and runs in one step, giving our
one-step sample. Built offline from tiny random components saved with save_pretrained (as in
test_sampling.py: no tokenizer / T5, the text goes in as prompt_embeds zero-padded to 512 tokens)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import LATENT_C, MASK_C, make_latent, make_wan, tiny_wan_vae_and_clip

from vpae.backbones.wan import WAN_TEXT_LEN, pad_text
from vpae.conditioning import Conditioning
from vpae.errors import VpaeError
from vpae.export import export_backbone, export_pipeline
from vpae.sampling import one_step_sample

H = W = 32
NUM_FRAMES = 5
LAT_SHAPE = (2, LATENT_C, 2, 4, 4)


@pytest.fixture(scope="module")
def base_pipeline(tmp_path_factory):
    from diffusers import UniPCMultistepScheduler, WanImageToVideoPipeline
    vae, clip, proc = tiny_wan_vae_and_clip()
    teacher = make_wan(i2v=True, seed=3)
    # the teacher's own multi-step scheduler (Wan ships UniPC); the export replaces it
    pipe = WanImageToVideoPipeline(tokenizer=None, text_encoder=None, vae=vae, scheduler=UniPCMultistepScheduler(),
                                   image_processor=proc, image_encoder=clip, transformer=teacher.model)
    root = tmp_path_factory.mktemp("wan_base")
    pipe.save_pretrained(str(root))
    return root


def test_exported_pipeline_runs_in_diffusers_and_equals_our_one_step_sample(base_pipeline, tmp_path):
    from diffusers import WanImageToVideoPipeline
    from PIL import Image
    gen = make_wan(i2v=True, seed=7)  # "the distilled generator": any weights other than the teacher's
    gen_dir = export_backbone(gen, tmp_path / "generator", {"role": "generator"})
    out = export_pipeline(gen_dir, base_pipeline, tmp_path / "onestep")
    # the tiny base has no T5 / tokenizer (they need files): pass them as None, as a real folder would not need
    pipe = WanImageToVideoPipeline.from_pretrained(str(out), text_encoder=None, tokenizer=None, transformer_2=None)
    pipe.set_progress_bar_config(disable=True)
    assert type(pipe.scheduler).__name__ == "FlowMatchEulerDiscreteScheduler"
    image = Image.fromarray((np.random.RandomState(0).rand(H, W, 3) * 255).astype(np.uint8))
    text = torch.randn(2, 7, gen.model.config.text_dim, generator=torch.Generator().manual_seed(1))
    latents = make_latent(LAT_SHAPE, seed=11)
    with torch.no_grad():
        ref = pipe(image=image, prompt_embeds=pad_text(text, WAN_TEXT_LEN), height=H, width=W, num_frames=NUM_FRAMES,
                   num_inference_steps=1, guidance_scale=1.0, latents=latents.clone(), output_type="latent").frames
        pixels = pipe.video_processor.preprocess(image, height=H, width=W).to(dtype=torch.float32)
        _, condition = pipe.prepare_latents(pixels, 2, LATENT_C, H, W, NUM_FRAMES, torch.float32,
                                            torch.device("cpu"), None, latents.clone())
        tokens = pipe.encode_image(image, torch.device("cpu")).repeat(2, 1, 1)
        cond = Conditioning(text=text, image=tokens, cond_latent=condition[:, MASK_C:], cond_mask=condition[:, :MASK_C])
        ours = one_step_sample(gen.eval(), latents.clone(), cond).x0
    assert (ref - latents).abs().max() > 0.1  # the pipeline really ran the generator
    # float32: the pipeline's scheduler step computes z + (0 - 1) v where we compute z - v (a few ulps)
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-5)
    # the teacher's weights are not what ran
    assert not torch.equal(pipe.transformer.state_dict()["proj_out.weight"],
                           make_wan(i2v=True, seed=3).model.state_dict()["proj_out.weight"])


def test_export_refuses_what_is_not_a_pipeline_or_a_transformer(base_pipeline, tmp_path):
    gen_dir = export_backbone(make_wan(i2v=True, seed=7), tmp_path / "generator")
    with pytest.raises(VpaeError, match="not a local diffusers pipeline folder"):
        export_pipeline(gen_dir, tmp_path / "nowhere", tmp_path / "o")
    with pytest.raises(VpaeError, match="not a transformer folder"):
        export_pipeline(tmp_path, base_pipeline, tmp_path / "o")


def test_export_command(base_pipeline, tmp_path):
    from typer.testing import CliRunner

    from vpae.cli import app
    gen_dir = export_backbone(make_wan(i2v=True, seed=7), tmp_path / "generator")
    r = CliRunner().invoke(app, ["export", "--generator", str(gen_dir), "--base", str(base_pipeline), "--out",
                                 str(tmp_path / "o"), "--link"])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "o" / "vae").is_symlink() and (tmp_path / "o" / "transformer" / "config.json").is_file()
    r = CliRunner().invoke(app, ["export", "--generator", str(gen_dir), "--base", str(tmp_path),
                                 "--out", str(tmp_path / "p")])
    assert r.exit_code == 2 and "error:" in r.output and "model_index.json" in r.output
