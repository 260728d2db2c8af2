"""VBench formula checks on constructed inputs with hand-computed values (no backbones)."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vpae.eval import preprocess, vbench
from vpae.eval.fd import frechet_distance
from vpae.eval.metrics import aggregates, dynamic_degree
from vpae.eval.run import table_row
from vpae.eval.video import VideoError, to_tensor, to_uint8


def test_i2v_consistency_hand_computed():
    img = np.array([1.0, 0.0])
    # frames at angles 0, 60, 90 degrees (unnormalised lengths must not matter) and one at 180
    f = np.array([[2.0, 0.0], [0.5, math.sqrt(3) / 2], [0.0, 3.0], [-1.0, 0.0]])
    # s = max(0, cos) to the image: 1, 0.5, 0, 0 ; c = consecutive: cos60=.5, cos30=.866, cos90=0
    s_max = 1.0
    c = [0.5, math.sqrt(3) / 2, 0.0]
    want = 0.4 * s_max + 0.3 * np.mean(c) + 0.3 * min(c)
    assert vbench.i2v_consistency(img, f) == pytest.approx(want, abs=1e-12)


def test_consistency_is_frame_weighted_over_all_pairs():
    a = np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])   # pairs: (0 + 0)/2, (1 + 0)/2  -> sum 0.5, 2 pairs
    b = np.array([[1.0, 0.0], [1.0, 1.0]])               # (cos45 + cos45)/2 = .7071 -> 1 pair
    s, n = vbench.consistency_pairs(a)
    assert (s, n) == (pytest.approx(0.5), 2)
    val, per = vbench.consistency_dimension([a, b])
    assert val == pytest.approx((0.5 + math.sqrt(0.5)) / 3)           # not the mean of per-video means
    assert per == [pytest.approx(0.25), pytest.approx(math.sqrt(0.5))]
    # negative cosines are clamped to 0
    s, _ = vbench.consistency_pairs(np.array([[1.0, 0.0], [-1.0, 0.0]]))
    assert s == 0.0


def test_vfi_score_and_dynamic_params():
    frames = np.zeros((5, 2, 2, 3), np.uint8)
    frames[1] = 10
    frames[3] = 30
    mids = [np.zeros((2, 2, 3), np.uint8), np.zeros((2, 2, 3), np.uint8)]
    assert vbench.vfi_score(frames, mids) == pytest.approx((255 - 20) / 255)
    assert vbench.dynamic_params(256, 512, 16) == (6.0, 4)          # 6 * min(H, W) / 256, exact in binary
    assert vbench.dynamic_params(128, 128, 8) == (3.0, 2)           # no fps factor (vbench 0.1.5 / head)
    assert vbench.dynamic_frame_interval(30) == 4 and vbench.dynamic_frame_interval(8) == 1
    assert vbench.dynamic_frame_interval(4) == 1 and vbench.dynamic_frame_interval(12) == 2   # max(1, round(fps/8))
    flow = np.zeros((10, 10, 2))
    flow[0, :5, 0] = 3.0    # top 5 of 100 magnitudes are 3, 4 rest 0
    assert vbench.top_flow_magnitude(flow) == pytest.approx(3.0)
    assert vbench.is_dynamic([7, 1, 7], 6.0, 2) and not vbench.is_dynamic([7, 1, 1], 6.0, 2)
    # upstream compares the count after each pair: count_num 0 is dynamic once there is a pair, never without one
    assert vbench.is_dynamic([0.0], 6.0, 0) and not vbench.is_dynamic([], 6.0, 0)


def test_dynamic_degree_one_kept_frame_is_not_dynamic():
    """3 frames at 24 fps keep one frame (interval round(24 / 8) = 3): no pair, count_num = round(4 / 16) = 0.
    VBench's check_move never enters its loop and answers False; the flow model is never called."""
    video = np.zeros((3, 32, 32, 3), np.uint8)

    def flow(a, b):
        raise AssertionError("no pair to score")

    value, per, pairs = dynamic_degree([video], flow, [24.0])
    assert value == 0.0 and per == [0.0] and pairs == [[]]


def test_dynamic_degree_threshold_ignores_fps():
    """A 4 fps video whose flow magnitude (4 px) is above 6 * 128 / 256 = 3 px in every pair is dynamic, as
    in VBench; the briefly-upstream max(1, 8 / fps) factor would have doubled the threshold to 6 px."""
    video = np.zeros((8, 128, 128, 3), np.uint8)
    calls = []

    def flow(a, b):
        calls.append(1)
        f = np.zeros((128, 128, 2))
        f[..., 0] = 4.0
        return f

    value, per, scores = dynamic_degree([video], flow, [4.0])
    assert (value, per) == (1.0, [1.0]) and scores == [[4.0] * 7] and len(calls) == 7
    calls.clear()   # 24 fps: every 3rd of 16 frames -> 6 frames, 5 pairs, count_num round(4 * 6 / 16) = 2
    dynamic_degree([np.zeros((16, 128, 128, 3), np.uint8)], flow, [24.0])
    assert len(calls) == 5


def test_frame_resizes_keep_floats_like_vbench_load_video():
    """VBench's load_video yields float32 frames, so torchvision's Resize returns unrounded, unclamped
    floats. Same ops in the same order, so the comparisons are exact."""
    edge = np.zeros((1, 64, 96, 3), np.uint8)
    edge[:, :, 48:] = 255
    x = preprocess.to_nchw(edge)
    up = F.interpolate(x, size=(224, 336), mode="bicubic", align_corners=False, antialias=False)
    assert up.max() > 255 and up.min() < 0 and (up != up.round()).any()   # rounding/clamping would show
    assert torch.equal(preprocess.resize_short(x, 224, "bicubic"), up)
    clip_want = preprocess.normalize(preprocess.center_crop(up, 224) / 255.0, preprocess.CLIP_MEAN, preprocess.CLIP_STD)
    assert torch.equal(preprocess.clip_frames(edge), clip_want)
    bil = F.interpolate(x, size=(224, 336), mode="bilinear", align_corners=False, antialias=False)
    dino_want = preprocess.normalize(bil / 255.0, preprocess.IMAGENET_MEAN, preprocess.IMAGENET_STD)
    assert torch.equal(preprocess.dino_frames(edge), dino_want)


def test_i2v_frame_resizes_antialias_like_torchvision_0_17():
    """The I2V transforms leave antialias to torchvision's default: True since torchvision 0.17 (followed
    here, preprocess.I2V_TENSOR_ANTIALIAS)."""
    assert preprocess.I2V_TENSOR_ANTIALIAS is True
    noise = np.random.default_rng(0).integers(0, 256, (1, 300, 400, 3), dtype=np.uint8)
    x = preprocess.to_nchw(noise)

    def bicubic(size, aa):
        return F.interpolate(x, size=size, mode="bicubic", align_corners=False, antialias=aa)

    assert (bicubic((224, 224), True) - bicubic((224, 224), False)).abs().max() > 10   # the setting matters
    assert torch.equal(preprocess.dreamsim_frames(noise), bicubic((224, 224), True) / 255.0)
    want = preprocess.normalize(preprocess.center_crop(bicubic((256, 341), True), 224) / 255.0,
                                preprocess.IMAGENET_MEAN, preprocess.IMAGENET_STD)
    assert torch.equal(preprocess.dino_internet_frames(noise), want)


RAW = {"i2v_subject": 0.95, "i2v_background": 0.96, "subject_consistency": 0.94,
       "background_consistency": 0.95, "motion_smoothness": 0.98, "dynamic_degree": 0.4,
       "aesthetic_quality": 0.6, "imaging_quality": 0.7}


def _n(v, lo, hi):
    return (v - lo) / (hi - lo)


def test_aggregate_hand_computed_missing_camera():
    q_sum = (_n(0.94, .1462, 1) + _n(0.95, .2615, 1) + _n(0.98, .706, .9975) + 0.5 * 0.4 + 0.6 + 0.7)
    i_sum = _n(0.95, .1462, 1) + _n(0.96, .2615, 1)
    a = vbench.aggregate(RAW, "zero")
    assert a["quality_score"] == pytest.approx(q_sum / 5.5)
    assert a["i2v_score"] == pytest.approx(i_sum / 2.1)           # camera counted as 0
    assert a["total_score"] == pytest.approx((q_sum / 5.5 + i_sum / 2.1) / 2)
    r = vbench.aggregate(RAW, "renormalize")
    assert r["quality_score"] == pytest.approx(q_sum / 5.5)
    assert r["i2v_score"] == pytest.approx(i_sum / 2.0)           # camera dropped
    # with camera present both policies agree
    full = dict(RAW, camera_motion=0.3)
    assert vbench.aggregate(full, "zero")["i2v_score"] == pytest.approx((i_sum + 0.1 * 0.3) / 2.1)
    zero_total = vbench.aggregate(full, "zero")["total_score"]
    assert vbench.aggregate(full, "renormalize")["total_score"] == pytest.approx(zero_total)
    # a missing subject-type dimension counts as raw 0 -> negative normalised term (official behaviour)
    z = vbench.aggregate({k: v for k, v in RAW.items() if k != "subject_consistency"}, "zero")
    assert z["quality_score"] == pytest.approx((q_sum - _n(0.94, .1462, 1) + _n(0.0, .1462, 1)) / 5.5)
    with pytest.raises(ValueError):
        vbench.aggregate(RAW, "drop")


def test_aggregate_names_proxy_unless_all_reference():
    dims = {d: {"value": v, "tier": "reference"} for d, v in RAW.items()}
    assert aggregates(dims)["kind"] == "vbench"
    assert "vbench_total_score[missing=0]" in aggregates(dims)
    dims["imaging_quality"]["tier"] = "offline"
    agg = aggregates(dims)
    assert agg["kind"] == "proxy" and "proxy_total_score[renormalized]" in agg
    assert not any(k.startswith("vbench_") for k in agg)


def test_camera_motion_labelled_missing_in_aggregates_and_table():
    dims = {d: {"value": v, "tier": "offline"} for d, v in RAW.items()}
    dims["aesthetic_quality"] = {"value": None, "tier": "unavailable", "note": "no offline substitute"}
    agg = aggregates(dims)
    assert agg["camera_motion"] == vbench.CAMERA_MOTION_MISSING == "missing (CoTracker not available)"
    assert agg["missing"] == {"camera_motion": "missing (CoTracker not available)",
                              "aesthetic_quality": "missing (no offline substitute)"}
    assert "camera_motion" in agg["missing[missing=0]"] and "camera_motion" in agg["missing[renormalized]"]
    row = table_row({"dimensions": dims, "aggregates": agg})
    assert row["Camera Motion"] == "missing (CoTracker not available)"        # a label, never a silent 0
    assert row["aggregate missing"] == "aesthetic_quality, camera_motion"


def test_frechet_distance_zero_and_grows_with_noise():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 8))
    assert frechet_distance(x, x) == pytest.approx(0.0, abs=1e-6)
    d = [frechet_distance(x, x + rng.normal(scale=s, size=x.shape)) for s in (0.1, 0.5, 1.0)]
    assert 0 < d[0] < d[1] < d[2]
    assert frechet_distance(x, x + 1.0) == pytest.approx(8.0, rel=1e-6)   # mean shift only: ||1||^2
    with pytest.raises(ValueError):
        frechet_distance(x[:1], x)


def test_converters_roundtrip_and_errors():
    v = torch.rand(3, 4, 6, 8) * 2 - 1
    u = to_uint8(v)
    assert u.shape == (4, 6, 8, 3) and u.dtype == np.uint8
    assert torch.allclose(to_tensor(u), v, atol=1 / 127.5)
    assert to_uint8(np.zeros((2, 4, 4, 3), np.uint8)).shape == (2, 4, 4, 3)
    with pytest.raises(VideoError, match="mismatched"):
        to_uint8([np.zeros((4, 4, 3), np.uint8), np.zeros((5, 4, 3), np.uint8)])
    with pytest.raises(VideoError):
        to_uint8(torch.zeros(4, 3, 8, 8))
    with pytest.raises(VideoError):
        to_uint8(np.zeros((4, 8, 8), np.uint8))
