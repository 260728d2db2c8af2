"""Frechet distance between two feature sets, named for the features it uses.

`FD-EffNetLite0-frames` (offline): per-frame EfficientNet-Lite0 pooled features. This is NOT FVD.
`FVD` (reference): I3D clip features from a user-supplied TorchScript file; only then is the name FVD used.
"""

from __future__ import annotations

import numpy as np

FD_OFFLINE_NAME = "FD-EffNetLite0-frames"
FVD_NAME = "FVD"


def gaussian_stats(feats) -> tuple[np.ndarray, np.ndarray]:
    f = np.asarray(feats, dtype=np.float64)
    if f.ndim != 2 or len(f) < 2:
        raise ValueError(f"need at least 2 feature vectors (N, D) for a Frechet distance, got shape {f.shape}")
    return f.mean(0), np.cov(f, rowvar=False)


def _sqrt_psd(s: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((s + s.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet_distance_stats(mu1, s1, mu2, s2) -> float:
    """||mu1 - mu2||^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^{1/2}).

    tr((S1 S2)^{1/2}) is computed as sum(sqrt(eig(A S2 A))) with A = S1^{1/2} (A S2 A is symmetric PSD
    and similar to S1 S2), which is exact for PSD covariances, stable when they are singular (N < D) and
    much faster than a general sqrtm. Clamped at 0."""
    diff = mu1 - mu2
    a = _sqrt_psd(s1)
    m = a @ s2 @ a
    tr_covmean = float(np.sum(np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0, None))))
    return float(max(0.0, diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * tr_covmean))


def frechet_distance(feats_a, feats_b) -> float:
    mu1, s1 = gaussian_stats(feats_a)
    mu2, s2 = gaussian_stats(feats_b)
    return frechet_distance_stats(mu1, s1, mu2, s2)
