"""VBench-I2V formulas, normalisation constants and aggregation, written from Vchitect/VBench
(`vbench/*.py`, `vbench2_beta_i2v/*.py`, `scripts/constant.py`, `scripts/cal_i2v_final_score.py`).

Everything here is pure numpy on features / flows / frames, so it is tested independently of which
feature backbone (reference or offline tier) produced the inputs.
"""

from __future__ import annotations

from typing import Iterable, Mapping, Sequence

import numpy as np

# dimension keys (VBench's own keys) and the names the official tables use
DIMENSIONS = (
    "i2v_subject", "i2v_background", "subject_consistency", "background_consistency",
    "motion_smoothness", "dynamic_degree", "aesthetic_quality", "imaging_quality",
)
ALL_KEYS = ("camera_motion",) + DIMENSIONS
DISPLAY = {
    "camera_motion": "Video-Text Camera Motion",
    "i2v_subject": "Video-Image Subject Consistency",
    "i2v_background": "Video-Image Background Consistency",
    "subject_consistency": "Subject Consistency",
    "background_consistency": "Background Consistency",
    "motion_smoothness": "Motion Smoothness",
    "dynamic_degree": "Dynamic Degree",
    "aesthetic_quality": "Aesthetic Quality",
    "imaging_quality": "Imaging Quality",
}
NORMALIZE = {  # (min, max) from scripts/constant.py NORMALIZE_DIC_I2V
    "camera_motion": (0.0, 1.0),
    "i2v_subject": (0.1462, 1.0),
    "i2v_background": (0.2615, 1.0),
    "subject_consistency": (0.1462, 1.0),
    "background_consistency": (0.2615, 1.0),
    "motion_smoothness": (0.7060, 0.9975),
    "dynamic_degree": (0.0, 1.0),
    "aesthetic_quality": (0.0, 1.0),
    "imaging_quality": (0.0, 1.0),
}
WEIGHTS = {k: 1.0 for k in ALL_KEYS} | {"camera_motion": 0.1, "dynamic_degree": 0.5}
QUALITY_LIST = ("subject_consistency", "background_consistency", "motion_smoothness", "dynamic_degree",
                "aesthetic_quality", "imaging_quality")
I2V_LIST = ("camera_motion", "i2v_subject", "i2v_background")
I2V_WEIGHT = 1.0
I2V_QUALITY_WEIGHT = 1.0
I2V_CONSISTENCY_WEIGHTS = (0.4, 0.3, 0.3)  # max(conformity), mean(consecutive), min(consecutive)
# Camera motion (vbench2_beta_i2v/camera_motion.py) tracks points with CoTracker, which is neither
# implemented nor loadable here (no weights, no download). It is never computed and every table, note
# and aggregate labels it with this text instead of showing a silent 0.
CAMERA_MOTION_MISSING = "missing (CoTracker not available)"


# ---------------------------------------------------------------------------------------- features
def _unit(x) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    n = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(n, 1e-12)


def clamped_cos(a, b) -> np.ndarray:
    """max(0, cos(a, b)) along the last axis (features are L2-normalised first, as VBench does)."""
    return np.maximum(0.0, np.sum(_unit(a) * _unit(b), axis=-1))


def i2v_consistency(image_feat, frame_feats, weights: Sequence[float] = I2V_CONSISTENCY_WEIGHTS) -> float:
    """Per-video I2V subject/background score: with s_i = max(0, cos(f_img, f_i)) over all frames and
    c_i = max(0, cos(f_{i-1}, f_i)) for i >= 1: w_max*max(s) + w_mean*mean(c) + w_min*min(c)."""
    f = np.asarray(frame_feats, dtype=np.float64)
    if f.ndim != 2 or len(f) < 2:
        raise ValueError(f"need (F>=2, D) frame features, got shape {f.shape}")
    s = clamped_cos(np.asarray(image_feat, dtype=np.float64)[None], f)
    c = clamped_cos(f[:-1], f[1:])
    w_max, w_mean, w_min = weights
    return float(w_max * s.max() + w_mean * c.mean() + w_min * c.min())


def consistency_pairs(frame_feats) -> tuple[float, int]:
    """Subject/background consistency of one video as (sum, count) over frames i >= 1 of
    (max(0, cos(f_{i-1}, f_i)) + max(0, cos(f_0, f_i))) / 2."""
    f = np.asarray(frame_feats, dtype=np.float64)
    if f.ndim != 2 or len(f) < 1:
        raise ValueError(f"need (F, D) frame features, got shape {f.shape}")
    if len(f) < 2:
        return 0.0, 0
    prev = clamped_cos(f[:-1], f[1:])
    first = clamped_cos(f[:1], f[1:])
    return float(np.sum((prev + first) / 2)), len(f) - 1


def consistency_dimension(per_video_feats: Iterable) -> tuple[float, list[float]]:
    """Dimension value = sum over ALL frame pairs of all videos / number of pairs (frame-weighted, as
    VBench's `sim / cnt`); also returns the per-video means. No pairs at all gives 1.0 (VBench)."""
    total, count, per_video = 0.0, 0, []
    for feats in per_video_feats:
        s, n = consistency_pairs(feats)
        total += s
        count += n
        per_video.append(s / n if n else 1.0)
    return (total / count if count else 1.0), per_video


# ------------------------------------------------------------------------------- motion smoothness
def vfi_score(original: np.ndarray, interpolated: Sequence[np.ndarray]) -> float:
    """Motion smoothness of one video: (255 - mean_i mean|odd_i - interp_i|) / 255 over uint8 frames
    (VBench `MotionSmoothness.vfi_score`; the interpolated frames are uint8 as AMT's `tensor2img` makes
    them: clipped to 0..255 and truncated, see feature_nets.flow.AmtInterpolator).

    `interpolated[i]` is the frame predicted between even frames 2i and 2i+2, compared with original
    frame 2i+1 (as many as there are interpolations; VBench zips odd frames with interpolated ones)."""
    odd = original[1::2]
    n = min(len(odd), len(interpolated))
    if n < 1:
        raise ValueError("motion smoothness needs at least 3 frames")
    diffs = [np.mean(np.abs(odd[i].astype(np.int16) - np.asarray(interpolated[i]).astype(np.int16)))
             for i in range(n)]
    return float((255.0 - np.mean(diffs)) / 255.0)


# ---------------------------------------------------------------------------------- dynamic degree
def dynamic_frame_interval(fps: float) -> int:
    """VBench keeps every max(1, round(fps / 8))-th frame for dynamic degree (`DynamicDegree.get_frames`,
    vbench 0.1.5 and repository head; Python's round, so round(1.5) = round(2.5) = 2)."""
    return max(1, round(fps / 8))


def dynamic_params(height: int, width: int, count: int) -> tuple[float, int]:
    """(thres, count_num) of VBench `DynamicDegree.set_params`: thres = 6 * min(H, W) / 256 and
    count_num = round(4 * count / 16), where H, W is the (unpadded) frame size and count the number of
    kept frames. No fps factor: a `max(1, 8 / fps)` factor existed upstream only from 2024-07-03 to
    2024-07-13 (commits 11abda9..fc4620b) and is in neither vbench 0.1.5 nor the repository head."""
    return 6.0 * (min(height, width) / 256.0), round(4 * (count / 16.0))


def top_flow_magnitude(flow: np.ndarray, fraction: float = 0.05) -> float:
    """Mean of the largest `fraction` of flow magnitudes; flow is (H, W, 2) in pixels."""
    rad = np.sqrt(np.square(flow[..., 0]) + np.square(flow[..., 1])).ravel()
    cut = int(rad.size * fraction)
    if cut < 1:
        return float(rad.max())
    return float(np.mean(np.sort(rad)[::-1][:cut]))


def is_dynamic(pair_scores: Sequence[float], thres: float, count_num: int) -> bool:
    """VBench `check_move`: dynamic once `count_num` pair scores exceed `thres`. The count is compared after
    each pair, as upstream does: count_num 0 is dynamic as soon as there is one pair, and a video with no pair
    (one kept frame) is not dynamic whatever count_num is."""
    count = 0
    for s in pair_scores:
        if s > thres:
            count += 1
        if count >= count_num:
            return True
    return False


# ----------------------------------------------------------------------------------- aggregation
MISSING_POLICIES = ("zero", "renormalize")


def normalized(raw: Mapping[str, float]) -> dict[str, float]:
    """(raw - min) / (max - min) * weight for each present dimension."""
    out = {}
    for k, v in raw.items():
        if k not in NORMALIZE or v is None:
            continue
        lo, hi = NORMALIZE[k]
        out[k] = (float(v) - lo) / (hi - lo) * WEIGHTS[k]
    return out


def aggregate(raw: Mapping[str, float | None], missing: str = "zero") -> dict:
    """Quality score, I2V score and total from raw dimension values.

    missing="zero": a missing (or None) dimension's raw value is 0 before normalisation, exactly as
        `scripts/cal_i2v_final_score.py` does (for camera motion this contributes 0; for a dimension
        with min > 0 it contributes a negative term). Denominators are the full weight sums
        (quality / 5.5, I2V / 2.1).
    missing="renormalize": missing dimensions are left out of both numerator and denominator.
    """
    if missing not in MISSING_POLICIES:
        raise ValueError(f"missing must be one of {MISSING_POLICIES}, got {missing!r}")
    present = {k: v for k, v in raw.items() if k in NORMALIZE and v is not None and np.isfinite(v)}
    if missing == "zero":
        full = {k: present.get(k, 0.0) for k in ALL_KEYS}
        norm = normalized(full)
        keys_q, keys_i = QUALITY_LIST, I2V_LIST
    else:
        norm = normalized(present)
        keys_q = [k for k in QUALITY_LIST if k in norm]
        keys_i = [k for k in I2V_LIST if k in norm]

    def part(keys):
        w = sum(WEIGHTS[k] for k in keys)
        return sum(norm[k] for k in keys) / w if w else float("nan")

    q, i = part(keys_q), part(keys_i)
    total = (q * I2V_QUALITY_WEIGHT + i * I2V_WEIGHT) / (I2V_QUALITY_WEIGHT + I2V_WEIGHT)
    return {"quality_score": q, "i2v_score": i, "total_score": total, "normalized": norm,
            "missing": sorted(k for k in ALL_KEYS if k not in present), "missing_policy": missing}
