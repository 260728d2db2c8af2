"""The `vpae` command line (typer): help, and `vpae generate` end to end with its error exits."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from vpae.backbones.wan import WanBackbone, tiny_wan_config
from vpae.cli import app
from vpae.eval.video import read_video
from vpae.export import export_backbone

runner = CliRunner()


@pytest.fixture(scope="module")
def model_and_image(tmp_path_factory):
    from PIL import Image
    torch.manual_seed(1)
    bb = WanBackbone.from_config(tiny_wan_config(True, latent_channels=3, mask_channels=1, text_dim=384,
                                                 image_dim=192, patch_size=(1, 4, 4)), 24)
    with torch.no_grad():
        for p in bb.model.parameters():
            if p.abs().sum() == 0:
                p.normal_(0, 0.02)
    root = tmp_path_factory.mktemp("cli")
    model = export_backbone(bb.eval(), root / "model", {"data": {"kind": "toy", "text_tokens": 24, "image_patch": 8}})
    image = root / "first.jpg"
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(image)
    return model, image


def _run(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_help_lists_commands():
    r = _run("--help")
    assert r.exit_code == 0
    for cmd in ("pretrain", "distill", "generate", "caption-bank", "bench"):
        assert cmd in r.output
    r = _run("generate", "--help")
    assert r.exit_code == 0 and "--sampler" in r.output and "--image" in r.output


def test_generate_euler_cfg(model_and_image, tmp_path):
    model, image = model_and_image
    r = _run("generate", "--model", model, "--out", tmp_path, "--prompt", "a blue square", "--image", image,
             "--sampler", "euler", "--steps", 2, "--guidance", 5)
    assert r.exit_code == 0, r.output
    assert "NFE 4" in r.output
    for name in ("sample.mp4", "sample.gif"):
        video, _ = read_video(tmp_path / name)
        assert video.shape == (9, 32, 32, 3)


def test_generate_one_step_is_deterministic(model_and_image, tmp_path):
    model, image = model_and_image
    outs = []
    for sub in ("a", "b"):
        r = _run("generate", "--model", model, "--out", tmp_path / sub, "--image", image, "--sampler", "few-step",
                 "--steps", 1, "--guidance", 1, "--seed", 7, "--frames", 5, "--prompt", "a red square moves up")
        assert r.exit_code == 0, r.output
        assert "NFE 1" in r.output
        outs.append(read_video(tmp_path / sub / "sample.gif")[0])
    assert outs[0].shape == (5, 32, 32, 3)
    assert np.array_equal(outs[0], outs[1])


def test_generate_refuses_a_missing_or_empty_prompt_unless_asked(model_and_image, tmp_path):
    model, image = model_and_image
    common = ["generate", "--model", model, "--out", tmp_path, "--image", image, "--sampler", "few-step", "--steps", 1]
    for extra in ([], ["--prompt", "  "]):
        r = _run(*common, *extra)
        assert r.exit_code == 2 and "error: no prompt" in r.output and "--negative-only" in r.output
    assert _run(*common, "--negative-only").exit_code == 0


@pytest.mark.parametrize("extra, msg", [
    (["--height", 20], "multiples of 8"),
    (["--frames", 6], "4n+1"),
    (["--sampler", "heun"], "unknown sampler"),
])
def test_generate_bad_requests_exit_2(model_and_image, tmp_path, extra, msg):
    model, image = model_and_image
    r = _run("generate", "--model", model, "--out", tmp_path, "--image", image, *extra)
    assert r.exit_code == 2
    assert msg in r.output


def test_generate_i2v_without_image_exit_2(model_and_image, tmp_path):
    r = _run("generate", "--model", model_and_image[0], "--out", tmp_path)
    assert r.exit_code == 2 and "--image" in r.output


def test_generate_missing_model_exit_2(tmp_path):
    r = _run("generate", "--model", tmp_path / "nowhere", "--out", tmp_path / "o")
    assert r.exit_code == 2 and "nowhere" in r.output and "not found" in r.output


def test_generate_corrupt_safetensors_exit_2(model_and_image, tmp_path):
    import shutil
    bad = tmp_path / "bad_model"
    shutil.copytree(model_and_image[0], bad)
    (bad / "diffusion_pytorch_model.safetensors").write_bytes(np.random.default_rng(0).bytes(4096))
    r = _run("generate", "--model", bad, "--out", tmp_path / "o", "--image", model_and_image[1])
    assert r.exit_code == 2
    assert "bad_model" in r.output and "Traceback" not in r.output


def _distill(out, *sets):
    return _run("distill", "--config", "configs/toy/demo.yaml", "--out", out, "--phase", "priming",
                *[a for s in ("priming.batch_size=2", "train.eval_every=0", *sets) for a in ("--set", s)])


def test_expected_failures_are_one_error_line_with_exit_2(tmp_path):
    r = _distill(tmp_path / "a", "priming.batch_size=0")
    assert r.exit_code == 2 and "error: priming.batch_size must be >= 1" in r.output
    assert "Traceback" not in r.output
    r = _run("distill", "--config", tmp_path / "missing.yaml")
    assert r.exit_code == 2 and "config file not found" in r.output
    # --debug keeps the traceback of an expected failure (for bug reports)
    r = runner.invoke(app, ["--debug", "distill", "--config", str(tmp_path / "missing.yaml")])
    assert r.exit_code != 2 and "config file not found" in str(r.exception)


def test_diverging_run_stops_with_a_clear_error_and_exports_nothing(tmp_path):
    # lr 1.0: measured, the fake loss reaches 4e9 and the generator's gradient is exactly 0 from step 2 on
    r = _distill(tmp_path / "run", "priming.lr=1.0", "priming.steps=20", "train.checkpoint_every=1")
    assert r.exit_code == 2, r.output
    assert "error: priming diverged at step 2: loss exploded: loss/fake" in r.output
    assert "last checkpoint before it is" in r.output and "step_0000001" in r.output
    assert not (tmp_path / "run" / "generator").exists()
    assert sorted(p.name for p in (tmp_path / "run" / "priming" / "checkpoints").iterdir()) == ["latest", "step_0000001"]


def test_resume_with_an_incompatible_config_is_refused_and_keeps_the_recorded_one(tmp_path):
    run = tmp_path / "run"
    assert _distill(run, "priming.steps=1").exit_code == 0
    recorded = (run / "config.yaml").read_text()
    r = _distill(run, "priming.steps=2", "priming.lora_rank=8")
    assert r.exit_code == 2 and "priming.lora_rank: 16 -> 8" in r.output
    assert (run / "config.yaml").read_text() == recorded


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_training_device_auto_is_the_cpu_here_and_cuda_without_cuda_is_one_error(tmp_path, capsys):
    from vpae.config import load_config
    from vpae.recipes import usable_device
    assert usable_device("auto") == "cpu"
    assert "note: train.device=auto and no CUDA device: training on the CPU" in capsys.readouterr().err
    for config in ("configs/toy/demo.yaml", "configs/wan/i2v_14b_480p.yaml"):
        assert load_config(config).train.device == "auto"
    assert load_config("configs/wan/i2v_14b_480p_8gpu.yaml").train.device == "cuda"  # a torchrun job for GPUs
    r = _distill(tmp_path / "a", "train.device=cuda")
    assert r.exit_code == 2 and "error: train.device=cuda but this machine has no CUDA device" in r.output
    assert "Traceback" not in r.output and not (tmp_path / "a" / "priming").exists()
