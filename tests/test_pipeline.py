"""Wiring pieces: the text-length attention processor, the caption bank, model export, timed training."""

import copy
import json

import pytest
import torch

from vpae.backbones.wan import WanBackbone, tiny_wan_config
from vpae.backbones.wan_attention import install_text_len_processor
from vpae.conditioning import Conditioning, first_frame_condition


def _i2v_inputs(b=2, text_len=512, frames=5):
    c, m = first_frame_condition(torch.randn(b, 3, 1, 8, 8), frames, 1)
    cond = Conditioning(text=torch.randn(b, text_len, 384), image=torch.randn(b, 16, 192), cond_latent=c, cond_mask=m)
    return torch.randn(b, 3, frames, 8, 8), torch.rand(b), cond


def test_text_len_processor_equals_diffusers_at_512():
    torch.manual_seed(0)
    ref = WanBackbone.from_config(tiny_wan_config(True, 3, 1, text_dim=384, image_dim=192))
    model = copy.deepcopy(ref.model)
    install_text_len_processor(model, 512)
    ours = WanBackbone(model)
    x, s, cond = _i2v_inputs()
    assert torch.equal(ref.velocity(x, s, cond), ours.velocity(x, s, cond))


def test_text_len_processor_splits_image_from_short_text():
    torch.manual_seed(0)
    bb = WanBackbone.from_config(tiny_wan_config(True, 3, 1, text_dim=384, image_dim=192), text_len=24)
    x, s, cond = _i2v_inputs(text_len=24)
    other = Conditioning(text=cond.text, image=torch.randn_like(cond.image), cond_latent=cond.cond_latent,
                         cond_mask=cond.cond_mask)
    assert not torch.allclose(bb.velocity(x, s, cond), bb.velocity(x, s, other))
    # With the image K/V projections zeroed, image tokens must have no effect at all: the split is right.
    for blk in bb.model.blocks:
        for lin in (blk.attn2.add_k_proj, blk.attn2.add_v_proj):
            torch.nn.init.zeros_(lin.weight), torch.nn.init.zeros_(lin.bias)
    # float32 outputs of O(1): zero K/V make the image branch add exactly 0, but softmax over a different
    # set of exp() inputs may round differently (a few ulps), so 1e-6 absolute rather than bitwise
    torch.testing.assert_close(bb.velocity(x, s, cond), bb.velocity(x, s, other), rtol=0, atol=1e-6)


def test_caption_bank_equals_live_encoding(tmp_path):
    from vpae.toy.data import CaptionBank, Fp16TextEncoder, build_caption_bank
    from vpae.toy.encoders import TextEncoder
    caps = ["a small red square moves left slowly over a plain dark background",
            "a large blue circle moves up quickly over a checkered background"]
    bank = CaptionBank(build_caption_bank(tmp_path / "bank.safetensors", 24, captions=caps))
    live = Fp16TextEncoder(TextEncoder(max_tokens=24))
    for a, b in zip(bank.encode(caps), live.encode(caps)):
        assert torch.equal(a, b)
    assert torch.equal(bank.negative(2), live.negative(2))
    try:
        bank.encode(["not a toy caption"])
        raise AssertionError("unknown caption accepted")
    except KeyError as e:
        assert "not in the bank" in str(e)


def test_export_round_trip_keeps_outputs_and_text_len(tmp_path):
    from vpae.export import export_backbone
    from vpae.models import load_wan_backbone
    torch.manual_seed(0)
    bb = WanBackbone.from_config(tiny_wan_config(True, 3, 1, text_dim=384, image_dim=192), text_len=24)
    export_backbone(bb, tmp_path / "m")
    loaded = load_wan_backbone(tmp_path / "m")
    assert loaded.text_len == 24
    x, s, cond = _i2v_inputs(text_len=24)
    assert torch.equal(bb.velocity(x, s, cond), loaded.velocity(x, s, cond))


def _tiny_pretrain_config(extra):
    from vpae.config import load_config
    wc = tiny_wan_config(True, 3, 1, text_dim=384, image_dim=192, num_layers=1)
    over = ["model.teacher=''", "model.text_len=24", "data.frames=5", "data.height=16", "data.width=16",
            "pretrain.batch_size=2", "data.toy.caption_bank=.cache/toy_captions.safetensors"]

    def yaml_value(v):
        if isinstance(v, tuple):
            return str(list(v))
        if isinstance(v, float):
            return f"{v:.6e}"  # YAML 1.1 needs the dot to read a float
        return "null" if v is None else str(v)
    over += [f"model.wan_config.{k}={yaml_value(v)}" for k, v in wc.items()]
    return load_config("configs/toy/teacher.yaml", over + extra)


def test_pretrain_max_seconds_stops_with_checkpoint(tmp_path):
    from vpae.recipes import run_pretrain
    from vpae.training.checkpoint import latest_checkpoint
    cfg = _tiny_pretrain_config(["pretrain.steps=100000", "pretrain.max_seconds=0.5", "train.checkpoint_every=100000"])
    r = run_pretrain(cfg, tmp_path / "run", tmp_path / "teacher", progress=False)
    assert 0 < r["step"] < 100000
    assert latest_checkpoint(tmp_path / "run").name == f"step_{r['step']:07d}"
    assert (tmp_path / "teacher" / "vpae.json").is_file()


def test_a_failed_resume_changes_nothing_on_disk(tmp_path):
    """A resume with a changed lr that fails on a damaged checkpoint leaves config.yaml, config_changes.jsonl and
    log.jsonl as they were; the same resume from an intact checkpoint records the change once it has saved."""
    import shutil

    from vpae.recipes import run_pretrain
    from vpae.training.checkpoint import CheckpointError
    run = tmp_path / "run"
    run_pretrain(_tiny_pretrain_config(["pretrain.steps=2", "train.checkpoint_every=1", "train.log_every=1"]), run,
                 progress=False)
    ckpt = next(run.glob("**/checkpoints/step_0000002"))
    data = next(ckpt.glob("*.distcp"))
    data.write_bytes(data.read_bytes()[:100])
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    resumed = _tiny_pretrain_config(["pretrain.steps=3", "train.checkpoint_every=1", "train.log_every=1",
                                     "pretrain.lr=2e-5"])
    with pytest.raises(CheckpointError, match="step_0000002"):
        run_pretrain(resumed, run, progress=False)
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before
    shutil.rmtree(ckpt)
    run_pretrain(resumed, run, progress=False)
    changes = [json.loads(line)["changes"] for line in (run / "config_changes.jsonl").read_text().splitlines()]
    assert changes == [{"pretrain.steps": [2, 3], "pretrain.lr": [1e-3, 2e-5]}]
    assert "lr: 2.0e-05" in (run / "config.yaml").read_text()


def test_lora_generator_export_merges_the_adapter_and_saves_it_separately(tmp_path):
    from diffusers import WanTransformer3DModel

    from vpae.export import export_backbone
    from vpae.models import load_wan_backbone
    from vpae.training.model import GENERATOR_ADAPTER, copy_generator
    torch.manual_seed(0)
    teacher = WanBackbone.from_config(tiny_wan_config(True, 3, 1, text_dim=384, image_dim=192), text_len=24)
    gen = copy_generator(teacher, "lora", rank=4, alpha=4, targets=("to_q", "to_k", "to_v", "to_out.0", "add_k_proj"))
    with torch.no_grad():  # a trained adapter: B != 0, so the LoRA really changes the output
        for n, p in gen.model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.1)
    x, s, cond = _i2v_inputs(text_len=24)
    want = gen.velocity(x, s, cond)
    assert not torch.allclose(want, teacher.velocity(x, s, cond), atol=1e-4)
    export_backbone(gen, tmp_path / "g", lora_dir=tmp_path / "g_lora")
    merged = load_wan_backbone(tmp_path / "g")
    assert not any("lora" in k for k in merged.model.state_dict())
    # float32: the merged layer computes x (W + s B A) where the LoRA model computes x W + s (x A) B; the
    # rounding differs by ~eps * |x| |W| per layer and grows through the blocks: 1e-4 relative is ~1000 ulps
    torch.testing.assert_close(merged.velocity(x, s, cond), want, rtol=1e-4, atol=1e-5)
    # The export left the live generator untouched (still a LoRA model giving the same output).
    assert torch.equal(gen.velocity(x, s, cond), want)
    # The adapter alone, in diffusers' LoRA format, on top of the teacher gives the generator again.
    base = copy.deepcopy(teacher.model)
    base.load_lora_adapter(str(tmp_path / "g_lora"), weight_name="pytorch_lora_weights.safetensors",
                           adapter_name=GENERATOR_ADAPTER)
    torch.testing.assert_close(WanBackbone(base, text_len=24).velocity(x, s, cond), want, rtol=1e-4, atol=1e-5)
    assert isinstance(merged.model, WanTransformer3DModel)


def test_export_replaces_by_renames_and_recovers_from_a_crash_between_them(tmp_path):
    from vpae.export import _atomic_dir
    out = tmp_path / "m"
    _atomic_dir(out, lambda d: (d / "w").write_text("1"))
    def write_then_crash(d):
        (d / "w").write_text("2")
        raise ZeroDivisionError

    try:  # a crash while writing the new export leaves the previous one untouched
        _atomic_dir(out, write_then_crash)
    except ZeroDivisionError:
        pass
    assert (out / "w").read_text() == "1"
    out.rename(tmp_path / "m.old")  # as if the process died after moving the old export aside
    _atomic_dir(out, lambda d: (d / "w").write_text("3"))
    assert (out / "w").read_text() == "3" and not (tmp_path / "m.old").exists() and not (tmp_path / "m.tmp").exists()
    out.rename(tmp_path / "m.old")
    try:
        _atomic_dir(out, lambda d: 1 / 0)
    except ZeroDivisionError:
        pass
    assert (out / "w").read_text() == "3"  # restored from m.old before anything else
