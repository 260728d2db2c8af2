"""vpae.generate.generate_video: model loading, toy condition stack, size checks, samplers, NFE, files."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vpae.backbones.wan import WanBackbone, tiny_wan_config
from vpae.eval.video import read_video
from vpae.export import export_backbone
from vpae.generate import GenerateError, generate_video


def _random_wan(cfg: dict, seed: int = 0, text_len: int = 24) -> WanBackbone:
    torch.manual_seed(seed)
    bb = WanBackbone.from_config(cfg, text_len)
    with torch.no_grad():  # randomise the zero-initialised parts so every input matters
        for p in bb.model.parameters():
            if p.abs().sum() == 0:
                p.normal_(0, 0.02)
    return bb.eval()


def toy_i2v_config() -> dict:
    return tiny_wan_config(True, latent_channels=3, mask_channels=1, text_dim=384, image_dim=192,
                           patch_size=(1, 4, 4))


@pytest.fixture(scope="session")
def toy_model(tmp_path_factory):
    """A tiny random toy-compatible I2V model, exported like the pipeline exports (vpae.json text_len 24)."""
    return export_backbone(_random_wan(toy_i2v_config()), tmp_path_factory.mktemp("models") / "toy_i2v",
                           {"data": {"kind": "toy", "text_tokens": 24, "image_patch": 8}})


@pytest.fixture(scope="session")
def cond_image(tmp_path_factory):
    from PIL import Image
    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("img") / "cond.png"
    Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(path)  # resized on load
    return path


def _gen(model, out, **kw):
    args = dict(prompt="a red circle moves right", sampler="few-step", steps=1, seed=0, frames=9, height=32,
                width=32, fps=8.0)
    args.update(kw)
    return generate_video(model=str(model), out=out, **args)


def test_writes_playable_mp4_and_gif(toy_model, cond_image, tmp_path):
    r = _gen(toy_model, tmp_path / "a", image=cond_image, sampler="euler", steps=2, guidance=5.0,
             frames=5, height=16, width=24)
    assert r["nfe"] == 4  # 2 Euler steps with CFG (both branches)
    assert (r["frames"], r["height"], r["width"]) == (5, 16, 24)
    assert r["diffusion_s"] > 0 and r["total_s"] >= r["diffusion_s"]
    for key in ("mp4", "gif"):
        video, fps = read_video(r[key])
        assert video.shape == (5, 16, 24, 3)
        assert fps == pytest.approx(8.0, rel=0.1)


def test_few_step_nfe_and_default_guidance(toy_model, cond_image, tmp_path):
    assert _gen(toy_model, tmp_path / "a", image=cond_image)["nfe"] == 1          # guidance defaults to 1
    assert _gen(toy_model, tmp_path / "b", image=cond_image, steps=2)["nfe"] == 2
    assert _gen(toy_model, tmp_path / "c", image=cond_image, guidance=3.0)["nfe"] == 2


def test_same_seed_same_video(toy_model, cond_image, tmp_path):
    a = _gen(toy_model, tmp_path / "a", image=cond_image, seed=3)
    b = _gen(toy_model, tmp_path / "b", image=cond_image, seed=3)
    c = _gen(toy_model, tmp_path / "c", image=cond_image, seed=4)
    va, vb, vc = (read_video(r["gif"])[0] for r in (a, b, c))
    assert np.array_equal(va, vb)
    assert not np.array_equal(va, vc)
    assert a["mp4"].read_bytes() == b["mp4"].read_bytes()


@pytest.mark.parametrize("kw, msg", [
    (dict(height=30), "multiples of 8"),
    (dict(width=36), "multiples of 8"),
    (dict(frames=8), r"4n\+1"),
    (dict(sampler="ddim"), "unknown sampler"),
    (dict(steps=0), "steps must be >= 1"),
])
def test_bad_requests(toy_model, cond_image, tmp_path, kw, msg):
    with pytest.raises(GenerateError, match=msg):
        _gen(toy_model, tmp_path, image=cond_image, **kw)
    assert not (tmp_path / "sample.mp4").exists()


def test_i2v_needs_an_image(toy_model, tmp_path):
    with pytest.raises(GenerateError, match="image-to-video.*--image"):
        _gen(toy_model, tmp_path)
    with pytest.raises(GenerateError, match="not found"):
        _gen(toy_model, tmp_path, image=tmp_path / "nope.png")


def test_missing_and_corrupt_checkpoints(toy_model, tmp_path):
    missing = tmp_path / "no_such_model"
    with pytest.raises(GenerateError, match="no_such_model"):
        _gen(missing, tmp_path / "o")
    import shutil
    bad = tmp_path / "corrupt"
    shutil.copytree(toy_model, bad)
    (bad / "diffusion_pytorch_model.safetensors").write_bytes(b"\x00garbage" * 100)
    with pytest.raises(GenerateError, match="cannot load Wan transformer from .*corrupt") as e:
        _gen(bad, tmp_path / "o")
    assert str(bad) in str(e.value)


def test_run_directory_with_exported_generator(toy_model, cond_image, tmp_path):
    import shutil
    shutil.copytree(toy_model, tmp_path / "run" / "generator")
    r = _gen(tmp_path / "run", tmp_path / "o", image=cond_image)
    assert r["model"].endswith("generator") and r["mp4"].is_file()


def test_embeddings_models(tmp_path):
    """Models without a bundled text encoder need --embeddings; latent models need a VAE (not supported)."""
    from safetensors.torch import save_file
    t2v = export_backbone(_random_wan(tiny_wan_config(False, latent_channels=3, text_dim=32, patch_size=(1, 2, 2)),
                                      text_len=8), tmp_path / "t2v")
    with pytest.raises(GenerateError, match="--embeddings"):
        _gen(t2v, tmp_path / "o", height=8, width=8)
    emb = tmp_path / "emb.safetensors"
    save_file({"text": torch.randn(5, 32), "negative_text": torch.zeros(1, 32)}, str(emb))
    r = _gen(t2v, tmp_path / "o", embeddings=emb, sampler="euler", steps=2, guidance=2.0, height=8, width=6 + 2)
    assert r["nfe"] == 4 and read_video(r["gif"])[0].shape == (9, 8, 8, 3)
    save_file({"text": torch.randn(5, 31)}, str(emb))
    with pytest.raises(GenerateError, match="'text' must be"):
        _gen(t2v, tmp_path / "o", embeddings=emb, height=8, width=8)
    latent = export_backbone(_random_wan(tiny_wan_config(False, latent_channels=16, text_dim=32)), tmp_path / "lat")
    with pytest.raises(GenerateError, match="VAE"):
        _gen(latent, tmp_path / "o", embeddings=emb)


def test_builtin_toy_teacher_one_step(tmp_path):
    from PIL import Image

    from vpae.toy.world import ToyWorld, ToyWorldConfig
    batch = ToyWorld(ToyWorldConfig(frames=9, height=32, width=32)).heldout(1, seed=0)
    frame0 = ((batch.video[0, :, 0].permute(1, 2, 0).clamp(-1, 1) + 1) * 127.5).round().byte().numpy()
    Image.fromarray(frame0).save(tmp_path / "first.png")
    r = generate_video(model="builtin:toy", out=tmp_path / "o", prompt=batch.captions[0], embeddings=None,
                       image=tmp_path / "first.png", sampler="few-step", steps=1, guidance=None, shift=3.0,
                       seed=0, frames=9, height=32, width=32, fps=8.0)
    assert r["nfe"] == 1
    video, _ = read_video(r["mp4"])
    assert video.shape == (9, 32, 32, 3)
    # the one-step teacher output keeps the condition frame recognisable (loose: a blurry mean)
    err = np.abs(read_video(r["gif"])[0][0].astype(float) - frame0.astype(float)).mean()
    assert err < 60


def test_the_condition_stack_comes_from_the_folder_not_from_its_sizes(tmp_path, cond_image):
    """A model of the toy sizes (text_dim 384) without vpae.json saying "toy" is not assumed to be one."""
    bare = export_backbone(_random_wan(toy_i2v_config()), tmp_path / "bare")
    (bare / "vpae.json").unlink()
    with pytest.raises(GenerateError, match="no vpae.json.*--embeddings"):
        _gen(bare, tmp_path / "o", image=cond_image)


def test_builtin_toy_defaults_come_from_the_model(tmp_path):
    """`vpae generate --model builtin:toy --prompt ...` with no size and no image: the size the teacher was trained
    at (vpae.json: 5 x 16 x 16) and the example condition it ships."""
    from vpae.generate import generate_video
    caption = "a large yellow circle moves left over a checkered background"
    r = generate_video(model="builtin:toy", out=tmp_path, prompt=caption, sampler="few-step", steps=1, device="cpu")
    assert (r["frames"], r["height"], r["width"]) == (5, 16, 16)
    assert tuple(r["video"].shape) == (3, 5, 16, 16)
    # not noise: the first frame keeps the example condition's picture
    from vpae.eval.video import read_image
    from vpae.toy.family import BUILTIN_TEACHER
    first = torch.from_numpy(read_image(BUILTIN_TEACHER / "example_condition.png")).permute(2, 0, 1).float() / 127.5 - 1
    assert (r["video"][:, 0] - first).abs().mean() < 0.1
