"""VBench-I2V dimensions computed with the feature networks of `EvalConfig.plan()`, tier recorded per number."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Sequence

import numpy as np

from vpae.eval import feature_nets, vbench
from vpae.eval.fd import FD_OFFLINE_NAME, FVD_NAME, frechet_distance
from vpae.eval.video import image_to_uint8, to_uint8


@dataclass
class EvalConfig:
    """Local weight files for the reference tier (None -> offline tier for that dimension).
    See docs/EVALUATION.md for each file's expected format. TorchScript files run their own code when
    loaded: pass only trusted files (a warning is printed for each)."""

    dino: str | None = None        # DINO ViT-B/16: state dict (.pth / .safetensors, tensors only) or TorchScript
    clip_b32: str | None = None    # CLIP ViT-B/32 image encoder, TorchScript
    dreamsim: str | None = None    # DreamSim embed, TorchScript
    raft: str | None = None        # RAFT-things, TorchScript
    amt: str | None = None         # AMT-S, TorchScript
    musiq: str | None = None       # MUSIQ-SPAQ, TorchScript
    aesthetic: str | None = None   # CLIP-L/14 + LAION head, TorchScript
    i3d: str | None = None         # I3D for FVD, TorchScript
    device: str = "cpu"
    niqe_max_frames: int = 8       # offline imaging quality: evenly spaced frames per video (0 = all)
    progress: bool = True

    def plan(self) -> dict[str, tuple[str | None, str | None]]:
        """dimension -> (backbone name or None if unavailable, weight path)."""
        pick = lambda path, ref, off: (ref, path) if path else (off, None)  # noqa: E731
        return {
            "i2v_subject": pick(self.dino, "dino_vitb16", "effnet_lite0"),
            "i2v_background": pick(self.dreamsim, "dreamsim", "effnet_lite0"),
            "subject_consistency": pick(self.dino, "dino_vitb16", "effnet_lite0"),
            "background_consistency": pick(self.clip_b32, "clip_vitb32", "effnet_lite0"),
            "motion_smoothness": pick(self.amt, "amt_s", "flow_interp"),
            "dynamic_degree": pick(self.raft, "raft", "dis_flow"),
            "aesthetic_quality": pick(self.aesthetic, "laion_aesthetic", None),
            "imaging_quality": pick(self.musiq, "musiq_spaq", "niqe"),
        }

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _bar(it, desc, enable, total=None):
    if not enable:
        return it
    from tqdm.auto import tqdm
    return tqdm(it, desc=desc, leave=False, total=total)


def _fps_list(fps, n) -> list[float]:
    if isinstance(fps, (int, float)):
        return [float(fps)] * n
    fps = [float(f) for f in fps]
    if len(fps) != n:
        raise ValueError(f"got {len(fps)} fps values for {n} videos")
    return fps


# ------------------------------------------------------------------------------------ dimensions
def i2v_dimension(videos, images, feats: feature_nets.ImageFeatures, dim: str, progress=False):
    per = []
    for v, img in _bar(list(zip(videos, images)), dim, progress):
        if img is None:
            per.append(None)
            continue
        f = feats.frames(v, dim).numpy()
        fi = feats.image(img, dim).numpy()[0]
        per.append(vbench.i2v_consistency(fi, f))
    vals = [p for p in per if p is not None]
    return (float(np.mean(vals)) if vals else None), per


def consistency_dimension(videos, feats: feature_nets.ImageFeatures, dim: str, progress=False):
    return vbench.consistency_dimension(feats.frames(v, dim).numpy() for v in _bar(videos, dim, progress))


def motion_smoothness(videos, interp, progress=False):
    per = []
    for v in _bar(videos, "motion_smoothness", progress):
        even = v[0::2]
        if len(even) < 2:
            raise ValueError(f"motion smoothness needs at least 3 frames, got {len(v)}")
        mids = [interp(a, b) for a, b in zip(even[:-1], even[1:])]
        per.append(vbench.vfi_score(v, mids))
    return float(np.mean(per)), per


def dynamic_degree(videos, flow, fps, progress=False):
    per, pair_scores = [], []
    for v, f in _bar(list(zip(videos, fps)), "dynamic_degree", progress):
        frames = v[:: vbench.dynamic_frame_interval(f)]
        thres, count_num = vbench.dynamic_params(v.shape[1], v.shape[2], len(frames))
        scores = [vbench.top_flow_magnitude(flow(a, b)) for a, b in zip(frames[:-1], frames[1:])]
        per.append(float(vbench.is_dynamic(scores, thres, count_num)))
        pair_scores.append(scores)
    return float(np.mean(per)), per, pair_scores


def imaging_quality(videos, quality, max_frames=0, progress=False):
    per, raw = [], []
    for v in _bar(videos, "imaging_quality", progress):
        idx = np.arange(len(v))
        if max_frames and len(v) > max_frames:
            idx = np.unique(np.linspace(0, len(v) - 1, max_frames).round().astype(int))
        r = [quality.raw(v[i]) for i in idx]
        raw.append(float(np.mean(r)))
        per.append(float(np.mean([quality.proxy(x) for x in r])))
    return float(np.mean(per)), per, raw


def aesthetic_quality(videos, model, progress=False):
    per = [float(np.mean(model.frames(v))) for v in _bar(videos, "aesthetic_quality", progress)]
    return float(np.mean(per)), per


# ------------------------------------------------------------------------------------ driver
def evaluate_videos(videos: Sequence, images: Sequence | None = None, config: EvalConfig | None = None,
                    fps: float | Sequence[float] = 8.0, dimensions: Sequence[str] | None = None) -> dict[str, Any]:
    """Score one method's videos on the VBench-I2V dimensions.

    videos: list of videos (torch (3,F,H,W) in [-1,1] or uint8 (F,H,W,3)); images: matching condition
    images (or None entries / None: I2V dimensions then cover only the videos that have one).
    Returns {"dimensions": {dim: {value, tier, backbone, per_video, ...}}, "backbones": {...},
    "aggregates": {...}}; a dimension whose model is unavailable has value None and tier "unavailable".
    """
    config = config or EvalConfig()
    vids = [to_uint8(v) for v in videos]
    if not vids:
        raise ValueError("no videos to evaluate")
    imgs = [None] * len(vids) if images is None else [None if i is None else image_to_uint8(i) for i in images]
    if len(imgs) != len(vids):
        raise ValueError(f"{len(imgs)} condition images for {len(vids)} videos")
    fps = _fps_list(fps, len(vids))
    dims = list(dimensions or vbench.DIMENSIONS)
    plan = config.plan()
    out: dict[str, Any] = {}
    infos: dict[str, Any] = {}
    prog = config.progress
    for dim in dims:
        name, path = plan[dim]
        if name is None:
            out[dim] = {"value": None, "tier": feature_nets.UNAVAILABLE, "backbone": None,
                        "note": "no offline substitute; supply the CLIP-L/14 + LAION head file"}
            continue
        model = feature_nets.build(name, path, config.device)
        infos[name] = model.info.as_dict()
        rec: dict[str, Any] = {"tier": model.info.tier, "backbone": name}
        if dim in ("i2v_subject", "i2v_background"):
            if all(i is None for i in imgs):
                out[dim] = {"value": None, "tier": feature_nets.UNAVAILABLE, "backbone": name,
                            "note": "no condition images given"}
                continue
            rec["value"], rec["per_video"] = i2v_dimension(vids, imgs, model, dim, prog)
        elif dim in ("subject_consistency", "background_consistency"):
            rec["value"], rec["per_video"] = consistency_dimension(vids, model, dim, prog)
        elif dim == "motion_smoothness":
            rec["value"], rec["per_video"] = motion_smoothness(vids, model, prog)
        elif dim == "dynamic_degree":
            rec["value"], rec["per_video"], rec["pair_scores"] = dynamic_degree(vids, model, fps, prog)
        elif dim == "imaging_quality":
            mf = config.niqe_max_frames if name == "niqe" else 0
            rec["value"], rec["per_video"], raw = imaging_quality(vids, model, mf, prog)
            rec["raw_mean"] = float(np.mean(raw))
            rec["raw_name"] = "NIQE (lower is better)" if name == "niqe" else "MUSIQ (0..100)"
        elif dim == "aesthetic_quality":
            rec["value"], rec["per_video"] = aesthetic_quality(vids, model, prog)
        out[dim] = rec
    return {"dimensions": out, "backbones": infos, "aggregates": aggregates(out)}


def aggregates(dims: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """VBench quality / I2V / total under both missing-dimension policies. Named `vbench_*` only when
    all eight dimensions were computed with the reference tier; otherwise `proxy_*`.

    Camera motion is never computed here (VBench computes it with CoTracker, which is not available), so
    it is always missing: `camera_motion` and `missing` say so, with the reason for every missing
    dimension. Under [missing=0] its raw 0 caps the I2V score at 2 / 2.1 (as the official script would
    with a 0 entry); [renormalized] leaves it out."""
    official = all(dims.get(d, {}).get("tier") == feature_nets.REFERENCE for d in vbench.DIMENSIONS)
    kind = "vbench" if official else "proxy"
    raw = {d: r.get("value") for d, r in dims.items()}
    out: dict[str, Any] = {"kind": kind, "camera_motion": vbench.CAMERA_MOTION_MISSING}
    for policy, label in (("zero", "missing=0"), ("renormalize", "renormalized")):
        a = vbench.aggregate(raw, policy)
        for k in ("quality_score", "i2v_score", "total_score"):
            out[f"{kind}_{k}[{label}]"] = a[k]
        out[f"missing[{label}]"] = a["missing"]
    out["missing"] = {d: missing_reason(d, dims.get(d)) for d in out["missing[missing=0]"]}
    return out


def missing_reason(dim: str, rec: dict[str, Any] | None) -> str:
    """Why a dimension has no value, as shown in tables and notes."""
    if dim == "camera_motion":
        return vbench.CAMERA_MOTION_MISSING
    note = (rec or {}).get("note")
    return f"missing ({note})" if note else "missing (not computed)"


def fd_features(videos: Sequence, config: EvalConfig | None = None) -> dict[str, np.ndarray]:
    """Features for Frechet distances: always FD-EffNetLite0-frames (per-frame), plus FVD (per-video I3D
    on the first 16 frames) when an I3D file is configured."""
    config = config or EvalConfig()
    vids = [to_uint8(v) for v in videos]
    eff = feature_nets.build("effnet_lite0", None, config.device)
    out = {FD_OFFLINE_NAME: np.concatenate([eff.frames(v, "fd").numpy() for v in
                                            _bar(vids, "fd features", config.progress)])}
    if config.i3d:
        i3d = feature_nets.build("i3d", config.i3d, config.device)
        out[FVD_NAME] = np.concatenate([i3d.video(v[:16]).numpy() for v in vids])
    return out


def fd_scores(feats: dict[str, np.ndarray], ref: dict[str, np.ndarray]) -> dict[str, float]:
    return {k: frechet_distance(feats[k], ref[k]) for k in feats if k in ref}
