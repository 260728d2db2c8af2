"""Oracle metrics for the toy world: the ground truth of every video is known, so generated videos can be
checked exactly (no learned feature extractor).

Per video (3, F, H, W) in [-1, 1] with its `ToyVideoParams` (and the I2V condition image):
- first-frame fidelity: PSNR (dB) of frame 0 against the condition image (capped at 100 dB).
- caption following: the object is tracked by colour (soft mask of pixels near its known RGB, weighted
  centroid); its displacement from frame 0 is compared frame by frame with the captioned motion.
- object persistence: area and colour stability of the tracked object relative to frame 0, in [0, 1].
- sharpness: mean spatial gradient magnitude relative to the ground-truth rendering (1 = as sharp).
`oracle_report` averages them over a batch. `corrupt` makes the standard failure cases for testing.
"""

from __future__ import annotations

import functools
import math
from typing import Sequence

import numpy as np
import torch

from vpae.discriminator import blur_frames
from vpae.toy.world import DIRECTIONS, ToyVideoParams, ToyWorldConfig, caption_modes, render_numpy, trajectory

Tensor = torch.Tensor

# Colour distances (RGB in [0, 1]) for the soft tracking mask: weight 1 below TAU_IN, 0 above TAU_OUT.
TAU_IN = 0.15
TAU_OUT = 0.45
COLOUR_SCALE = 0.3      # colour drift (RGB distance) at which colour similarity reaches 0
COLOUR_NOISE = 0.05     # colour drift tolerated as pixel noise: the tracked colour is the mean of 3-20 pixels,
                        # and zero-mean noise at a sampler's per-pixel level (RMS 0.07) moves it 0.03-0.05 per
                        # frame; identity failures (fading, colour change, ghosts) move it by 0.15 or more
FOLLOW_THRESHOLD = 0.6  # caption score needed to count a video as following its caption
PSNR_CAP = 100.0


def _np_video(video) -> np.ndarray:
    if isinstance(video, torch.Tensor):
        video = video.detach().float().cpu().numpy()
    video = np.asarray(video, dtype=np.float32)
    if video.ndim != 4 or video.shape[0] != 3:
        raise ValueError(f"video must be (3, F, H, W), got {video.shape}")
    return video


def _cfg_for(video: np.ndarray, cfg: ToyWorldConfig | None) -> ToyWorldConfig:
    _, f, h, w = video.shape
    if cfg is None:
        return ToyWorldConfig(frames=f, height=h, width=w)
    if (cfg.frames, cfg.height, cfg.width) != (f, h, w):
        raise ValueError(f"video is {f}x{h}x{w} but the config says {cfg.frames}x{cfg.height}x{cfg.width}")
    return cfg


def track_object(video, rgb: Sequence[float]) -> dict[str, np.ndarray]:
    """Soft colour mask of the object per frame. Returns centroids (F, 2) as (x, y) in pixels (NaN where
    the mask is empty), areas (F,) in pixels (soft count) and mean colours (F, 3) in [0, 1]."""
    v = (_np_video(video) + 1) / 2  # (3, F, H, W) in [0, 1]
    col = np.asarray(rgb, dtype=np.float32)[:, None, None, None]
    d = np.sqrt(((v - col) ** 2).sum(0))  # (F, H, W)
    wgt = np.clip((TAU_OUT - d) / (TAU_OUT - TAU_IN), 0, 1)
    area = wgt.sum(axis=(1, 2))
    _, _, h, w = v.shape
    xs = np.arange(w, dtype=np.float32) + 0.5
    ys = np.arange(h, dtype=np.float32) + 0.5
    with np.errstate(invalid="ignore", divide="ignore"):
        cx = (wgt.sum(1) * xs).sum(1) / area
        cy = (wgt.sum(2) * ys).sum(1) / area
        colours = (v * wgt[None]).sum(axis=(2, 3)).T / area[:, None]
    return {"centroids": np.stack([cx, cy], 1), "areas": area, "colours": colours}


def first_frame_psnr(video, cond_image) -> float:
    """PSNR (dB) of frame 0 vs the condition image, both in [-1, 1] (peak-to-peak 2). Capped at 100."""
    v = _np_video(video)[:, 0]
    c = cond_image.detach().float().cpu().numpy() if isinstance(cond_image, torch.Tensor) else np.asarray(cond_image)
    if c.shape != v.shape:
        raise ValueError(f"condition image {c.shape} does not match the frame {v.shape}")
    mse = float(((v - c) ** 2).mean())
    return PSNR_CAP if mse <= 0 else min(PSNR_CAP, 10 * math.log10(4.0 / mse))


def _reference_areas(params: ToyVideoParams, cfg: ToyWorldConfig) -> np.ndarray:
    return track_object(render_numpy(params, cfg), params.rgb)["areas"]


def caption_following(video, params: ToyVideoParams, cfg: ToyWorldConfig | None = None) -> dict:
    """Does the object move as captioned? In a world whose captions leave the speed open
    (cfg.caption_speed False) every caption-consistent trajectory (`caption_modes`) is tried and the best
    one counts; `mode` says which (index into caption_modes).

    Per trajectory, with measured centroids M_t and the trajectory E_t (from the params), both taken relative
    to frame 0 (m_t = M_t - M_0, e_t = E_t - E_0): score = clip(1 - sum_t |m_t - e_t| / sum_t |e_t|, 0, 1)
    over t >= 1; a frame where the object is not found (soft area < 25% of the ground truth's) counts
    as error 2|e_t|. `follows` = object found in every frame, score >= 0.6, and the net displacement
    has a positive component along the captioned direction; where the caption has two or more modes, also in
    one mode by assign_mode's rule (a half-way blend of two modes does not follow). A frozen, reversed or time-shuffled video
    scores ~0; moving at half the captioned speed scores 0.5 (fails), at double speed 0 (fails).
    `direction_ok` is the looser check that ignores speed: the object was found in the last frame and its
    net displacement covers at least 40% of the captioned one along the captioned direction
    (d . e >= 0.4 |e|^2; half speed passes, standing still or moving sideways fails). A model that moves
    objects in random directions gets ~25% (4 directions).
    Returns follows, direction_ok, score, displacement (measured net (dx, dy) frame 0 -> last, px),
    expected (dx, dy), speed_px (measured |displacement| / (F-1)), found (frames where the object was found),
    mode.
    """
    v = _np_video(video)
    cfg = _cfg_for(v, cfg)
    tr, found = _track(v, params, cfg)
    modes = caption_modes(params, cfg)
    rows = [_follow_one(tr, found, mode, cfg) for mode in modes]
    best = max(range(len(rows)), key=lambda i: (rows[i]["follows"], rows[i]["direction_ok"], rows[i]["score"]))
    row = {**rows[best], "mode": best}
    if len(modes) > 1 and row["follows"] and _nearest_mode(tr, found, modes, cfg) != best:
        # a caption that leaves the direction open is followed by a sample in one of its modes, not by a blend
        # of two that scores >= FOLLOW_THRESHOLD against both
        row["follows"] = row["direction_ok"] = False
    return row


def _track(v: np.ndarray, params: ToyVideoParams, cfg: ToyWorldConfig) -> tuple[dict, np.ndarray]:
    """track_object plus, per frame, whether the object was found (soft area >= 25 % of the ground truth's)."""
    tr = track_object(v, params.rgb)
    return tr, tr["areas"] >= np.maximum(1.0, 0.25 * _reference_areas(params, cfg))


def _displacements(params: ToyVideoParams, cfg: ToyWorldConfig) -> np.ndarray:
    """The trajectory relative to frame 0: (F, 2) px."""
    E = trajectory(params, cfg.frames, cfg.height, cfg.width)
    return E - E[0]


def _follow_one(tr: dict, found: np.ndarray, params: ToyVideoParams, cfg: ToyWorldConfig) -> dict:
    e = _displacements(params, cfg)
    M = tr["centroids"]
    f = cfg.frames
    exp_disp = tuple(float(x) for x in e[-1])
    if not found[0] or f < 2:
        return {"follows": False, "direction_ok": False, "score": 0.0, "displacement": (math.nan, math.nan),
                "expected": exp_disp,
                "speed_px": math.nan, "found": int(found.sum())}
    m = M - M[0]
    e_norm = np.linalg.norm(e[1:], axis=1)
    err = np.where(found[1:], np.linalg.norm(np.nan_to_num(m[1:] - e[1:]), axis=1), 2 * e_norm)
    score = float(np.clip(1 - err.sum() / max(e_norm.sum(), 1e-6), 0, 1))
    disp = m[-1] if found[-1] else np.array([math.nan, math.nan])
    dvec = np.asarray(DIRECTIONS[params.direction], dtype=np.float64)
    along = float(disp @ dvec) if found[-1] else math.nan
    # After a reflection the net displacement may point backwards or be zero: trust the score.
    follows = bool(found.all() and score >= FOLLOW_THRESHOLD and (params.bounce or along > 0))
    # Bouncing objects may end anywhere along the captioned axis; their direction check is the score's.
    direction_ok = bool(found[-1] and (follows if params.bounce else float(disp @ e[-1]) >= 0.4 * float(e[-1] @ e[-1])))
    return {"follows": follows, "direction_ok": direction_ok, "score": score,
            "displacement": (float(disp[0]), float(disp[1])), "expected": exp_disp,
            "speed_px": float(np.linalg.norm(disp) / (f - 1)), "found": int(found.sum())}


MODE_TOLERANCE = 0.25
"""A sample belongs to a mode when its mean centroid error to that mode's trajectory is at most this
fraction of the smallest mean distance between two modes' trajectories (so a blurred average of two modes,
whose centroid lies half-way, belongs to none)."""


def assign_mode(video, params: ToyVideoParams, cfg: ToyWorldConfig | None = None) -> int | None:
    """Index into caption_modes(params, cfg) of the trajectory this video follows, or None (object lost in
    some frame, or no trajectory close enough: see MODE_TOLERANCE). A unimodal world has one mode, taken
    when the video follows its caption."""
    v = _np_video(video)
    cfg = _cfg_for(v, cfg)
    modes = caption_modes(params, cfg)
    if len(modes) == 1:
        return 0 if caption_following(v, params, cfg)["follows"] else None
    tr, found = _track(v, params, cfg)
    return _nearest_mode(tr, found, modes, cfg)


def _nearest_mode(tr: dict, found: np.ndarray, modes: Sequence[ToyVideoParams], cfg: ToyWorldConfig) -> int | None:
    """assign_mode's rule on a tracked video with two or more modes."""
    if not found.all():
        return None
    m = tr["centroids"] - tr["centroids"][0]
    rel = [_displacements(p, cfg) for p in modes]
    err = [float(np.linalg.norm(m[1:] - e[1:], axis=1).mean()) for e in rel]
    sep = min(float(np.linalg.norm(a[1:] - b[1:], axis=1).mean())
              for i, a in enumerate(rel) for b in rel[i + 1:])
    best = int(np.argmin(err))
    return best if err[best] <= MODE_TOLERANCE * sep else None


def mode_report(sample_sets: Sequence, params: Sequence[ToyVideoParams], cfg: ToyWorldConfig | None = None) -> dict:
    """Mode coverage of a sampler from K sample sets of the same N conditions (sample_sets[k][i] is the k-th
    sample for params[i], each drawn with other noise). The data draws every caption-consistent trajectory
    with equal probability (caption_modes). Only conditions with at least two modes count (where the caption
    is silent; the others are judged by caption_following). For one such condition with m modes, its K samples
    give a histogram of assigned modes (with "none" as one more bin):
    - mode_coverage = mean over conditions of 1 - total variation distance between the condition's histogram
      and the data's proportions (1/m each). Per condition, so that a generator that picks one mode per
      condition (the mode a function of the image and caption, not of the noise) scores 0.5 even when its
      choices balance out over conditions; samples that belong to no mode score 0. With K samples the data
      itself scores expected_mode_coverage(m, K) (0.8125 for m=2, K=4: four fair coin flips rarely split 2/2),
      reported as mode_coverage_data for these conditions.
    - mode_coverage_pooled = the same distance for the histogram pooled over all conditions of a group: blind to
      per-condition collapse, kept for comparison with tables that report it.
    - mode_coverage_se = standard error of mode_coverage over the conditions (sd / sqrt(n)): how far another
      draw of conditions and noises may move it (about 0.035 for 25 conditions x 4 samples).
    - mode_diversity = fraction of those conditions whose K samples hit at least two different modes (the
      data itself scores 1 - m (1/m)^K: 0.875 for m=2, K=4; see expected_mode_diversity).
    - mode_assigned = fraction of their samples that belong to some mode.
    - mode_conditions = how many conditions had two or more modes.
    A world without such conditions (or a batch without any) reports coverage = assigned = the fraction of
    samples that follow their caption, diversity 0."""
    params = list(params)
    if not sample_sets or any(len(s) != len(params) for s in sample_sets):
        raise ValueError("every sample set needs one video per condition")
    v0 = _np_video(sample_sets[0][0])
    cfg = _cfg_for(v0, cfg)
    k = len(sample_sets)
    pooled: dict[int, np.ndarray] = {}
    per_condition, expected = [], []
    diverse = multi = 0
    single = []
    for i, p in enumerate(params):
        m = len(caption_modes(p, cfg))
        hits = [assign_mode(s[i], p, cfg) for s in sample_sets]
        if m < 2:
            single += [h is not None for h in hits]
            continue
        multi += 1
        c = np.zeros(m + 1)
        for h in hits:
            c[m if h is None else h] += 1
        pooled[m] = pooled.get(m, np.zeros(m + 1)) + c
        per_condition.append(_coverage(c))
        expected.append(expected_mode_coverage(m, k))
        diverse += len({h for h in hits if h is not None}) >= 2
    if not pooled:
        follows = float(np.mean(single))
        return {"mode_coverage": follows, "mode_coverage_se": 0.0, "mode_coverage_pooled": follows,
                "mode_coverage_data": 1.0, "mode_diversity": 0.0, "mode_assigned": follows, "mode_samples": k,
                "mode_conditions": 0}
    total = sum(c.sum() for c in pooled.values())
    coverage_pooled = sum(c.sum() / total * _coverage(c) for c in pooled.values())
    assigned = sum(c[:-1].sum() for c in pooled.values()) / total
    se = float(np.std(per_condition, ddof=1) / math.sqrt(len(per_condition))) if len(per_condition) > 1 else 0.0
    return {"mode_coverage": float(np.mean(per_condition)), "mode_coverage_se": se,
            "mode_coverage_pooled": float(coverage_pooled), "mode_coverage_data": float(np.mean(expected)),
            "mode_diversity": float(diverse / multi), "mode_assigned": float(assigned), "mode_samples": k,
            "mode_conditions": multi}


def _coverage(counts: np.ndarray) -> float:
    """1 - TV distance between a histogram over m modes + "none" and the data's proportions (1/m each, 0)."""
    m = len(counts) - 1
    hist = counts / counts.sum()
    return float(1 - 0.5 * np.abs(hist - np.append(np.full(m, 1.0 / m), 0.0)).sum())


@functools.lru_cache(maxsize=None)  # mode_report asks once per condition; the answer depends on (m, K) only
def expected_mode_coverage(modes: int, samples: int) -> float:
    """mode_coverage of the data itself for one condition: E[1 - TV(histogram of K draws, uniform over m)],
    exact over the multinomial (K draws from m equally likely modes)."""
    if modes < 2:
        return 1.0
    total = 0.0
    for counts in _compositions(samples, modes):
        prob = math.factorial(samples) / math.prod(math.factorial(c) for c in counts) / modes ** samples
        total += prob * _coverage(np.array([*counts, 0], dtype=np.float64))
    return total


def _compositions(n: int, parts: int):
    """Every tuple of `parts` non-negative integers summing to n."""
    if parts == 1:
        yield (n,)
        return
    for first in range(n + 1):
        for rest in _compositions(n - first, parts - 1):
            yield (first, *rest)


def expected_mode_diversity(modes: int, samples: int) -> float:
    """mode_diversity of the data itself: P(K draws from m equally likely modes are not all the same)."""
    return 1.0 - modes * (1.0 / modes) ** samples if modes > 1 else 0.0


def object_persistence(video, params: ToyVideoParams) -> float:
    """Stability of the tracked object across frames, in [0, 1]: the mean over t >= 1 of
    area_sim_t * colour_sim_t, with area_sim_t = min(A_t, A_0) / max(A_t, A_0) (soft mask areas) and
    colour_sim_t = clip(1 - max(|C_t - C_0| - 0.05, 0) / (0.3 - 0.05), 0, 1) (mean RGB of the mask; drifts
    up to COLOUR_NOISE are pixel noise, which sharpness judges). 0 if the object is absent from frame 0.
    Insensitive to motion (a time-shuffled video keeps it); sensitive to the object vanishing, shrinking/growing,
    fading or changing colour."""
    tr = track_object(video, params.rgb)
    a, c = tr["areas"], tr["colours"]
    if a.shape[0] < 2:
        return 1.0
    if a[0] < 1.0:
        return 0.0
    area_sim = np.minimum(a[1:], a[0]) / np.maximum(np.maximum(a[1:], a[0]), 1e-6)
    cdist = np.linalg.norm(np.nan_to_num(c[1:] - c[0], nan=10.0), axis=1)
    col_sim = np.clip(1 - np.maximum(cdist - COLOUR_NOISE, 0) / (COLOUR_SCALE - COLOUR_NOISE), 0, 1)
    return float(np.mean(area_sim * col_sim))


def gradient_energy(video) -> float:
    """Mean spatial gradient magnitude of a (3, F, H, W) video (finite differences, all channels)."""
    v = _np_video(video)
    gx = v[..., :-1, 1:] - v[..., :-1, :-1]
    gy = v[..., 1:, :-1] - v[..., :-1, :-1]
    return float(np.sqrt(gx ** 2 + gy ** 2).mean())


def sharpness(video, params: ToyVideoParams, cfg: ToyWorldConfig | None = None) -> float:
    """gradient_energy(video) / gradient_energy(ground-truth rendering): 1 for a perfect video, < 1 when
    blurred. (Noise raises it above 1, so read it together with the other metrics.)"""
    v = _np_video(video)
    ref = gradient_energy(render_numpy(params, _cfg_for(v, cfg)))
    return gradient_energy(v) / max(ref, 1e-8)


def oracle_metrics(video, params: ToyVideoParams, cond_image=None, cfg: ToyWorldConfig | None = None) -> dict:
    """All metrics of one video. first_frame_psnr only when a condition image is given."""
    cf = caption_following(video, params, cfg)
    out = {"caption_following": cf["follows"], "direction_ok": cf["direction_ok"], "caption_score": cf["score"],
           "displacement": cf["displacement"], "expected_displacement": cf["expected"],
           "persistence": object_persistence(video, params), "sharpness": sharpness(video, params, cfg)}
    if cond_image is not None:
        out["first_frame_psnr"] = first_frame_psnr(video, cond_image)
    return out


def oracle_report(videos, params: Sequence[ToyVideoParams], cond_images=None,
                  cfg: ToyWorldConfig | None = None) -> dict:
    """Means over a batch: first_frame_psnr (dB; only with condition images), caption_following (fraction
    of videos), direction_accuracy (fraction moving the captioned way, speed ignored), caption_score,
    displacement_error_px (|measured - expected net displacement|; NaN displacements count as the expected
    magnitude), persistence, sharpness; plus n."""
    params = list(params)
    if len(videos) != len(params):
        raise ValueError(f"{len(videos)} videos but {len(params)} params")
    if cond_images is not None and len(cond_images) != len(params):
        raise ValueError(f"{len(cond_images)} condition images but {len(params)} params")
    rows = [oracle_metrics(videos[i], params[i], None if cond_images is None else cond_images[i], cfg)
            for i in range(len(params))]
    if not rows:
        return {"n": 0}

    def disp_err(r):
        d, e = np.asarray(r["displacement"]), np.asarray(r["expected_displacement"])
        return float(np.linalg.norm(e)) if np.isnan(d).any() else float(np.linalg.norm(d - e))

    rep = {
        "n": len(rows),
        "caption_following": float(np.mean([r["caption_following"] for r in rows])),
        "direction_accuracy": float(np.mean([r["direction_ok"] for r in rows])),
        "caption_score": float(np.mean([r["caption_score"] for r in rows])),
        "displacement_error_px": float(np.mean([disp_err(r) for r in rows])),
        "persistence": float(np.mean([r["persistence"] for r in rows])),
        "sharpness": float(np.mean([r["sharpness"] for r in rows])),
    }
    if cond_images is not None:
        rep["first_frame_psnr"] = float(np.mean([r["first_frame_psnr"] for r in rows]))
    return rep


def _blur(video: Tensor, sigma: float) -> Tensor:
    """A (C, F, H, W) video blurred per frame (the discriminator's helper, one video at a time)."""
    return blur_frames(video[None], sigma)[0]


def corrupt(video: Tensor, kind: str, seed: int = 0, sigma: float = 1.5) -> Tensor:
    """Standard failure cases of a (3, F, H, W) video, for testing metrics and eval pipelines:
    "shuffle" (random frame order, frame 0 moved away), "freeze" (frame 0 repeated), "reverse" (time
    reversed), "blur" (Gaussian, `sigma` px)."""
    f = video.shape[1]
    if kind == "shuffle":
        g = torch.Generator().manual_seed(seed)
        perm = torch.randperm(f, generator=g)
        while f > 1 and perm[0] == 0:
            perm = torch.randperm(f, generator=g)
        return video[:, perm]
    if kind == "freeze":
        return video[:, :1].expand_as(video).clone()
    if kind == "reverse":
        return video.flip(1)
    if kind == "blur":
        return _blur(video, sigma)
    raise ValueError(f"unknown corruption {kind!r}")
