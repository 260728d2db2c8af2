"""`run_eval`: score a folder of videos (one subfolder per method) and write results.json + reports.

Layout::

    videos/
      manifest.json            # optional: {"000.mp4": {"prompt": "...", "image": "images/000.png"}, ...}
      teacher/000.mp4 ...      # one subfolder per method (mp4 or gif)
      vpae_1step/000.mp4 ...
      reference/000.mp4 ...    # optional: real videos used as the reference set for Frechet distances

Manifest keys are a file name shared across methods ("000.mp4") or "method/000.mp4" (which wins);
image paths are relative to the manifest. A method folder may carry its own manifest.json too.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from vpae.eval import vbench
from vpae.eval.metrics import EvalConfig, evaluate_videos, fd_features, fd_scores
from vpae.eval.report import write_report
from vpae.eval.video import VIDEO_EXTS, EvalError, read_image, read_video

SHORT = {
    "i2v_subject": "I2V Subj", "i2v_background": "I2V Bkg", "subject_consistency": "Subj Cons",
    "background_consistency": "Bkg Cons", "motion_smoothness": "Motion Smooth", "dynamic_degree": "Dyn Degree",
    "aesthetic_quality": "Aesthetic", "imaging_quality": "Imaging",
}


def _video_files(d: Path) -> list[Path]:
    return sorted(p for p in d.iterdir() if p.is_file() and p.suffix.lower() in VIDEO_EXTS)


def _load_manifest(path: Path) -> dict[str, dict[str, Any]]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise EvalError(f"manifest {path} is not valid JSON: {e}") from e
    if not isinstance(data, dict):
        raise EvalError(f"manifest {path} must map video file -> {{prompt, image}}")
    out = {}
    for k, v in data.items():
        v = dict(v) if isinstance(v, dict) else {"prompt": v}
        if v.get("image"):
            v["image"] = str((path.parent / v["image"]).resolve())
        out[k] = v
    return out


def discover(video_dir) -> tuple[dict[str, list[Path]], list[Path] | None, dict[str, dict]]:
    """(methods -> video files, reference files or None, merged manifest). Raises on empty input."""
    root = Path(video_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"video folder not found: {root}")
    manifest = _load_manifest(root / "manifest.json")
    methods, ref = {}, None
    for d in sorted(p for p in root.iterdir() if p.is_dir()):
        files = _video_files(d)
        for k, v in _load_manifest(d / "manifest.json").items():
            manifest[f"{d.name}/{k}"] = v
        if not files:
            continue
        if d.name == "reference":
            ref = files
        else:
            methods[d.name] = files
    if not methods:
        loose = _video_files(root)
        hint = (f" ({len(loose)} videos lie directly in it: put each method's videos in its own subfolder)"
                if loose else "")
        raise EvalError(f"no method subfolders with .mp4/.gif videos in {root}{hint}")
    return methods, ref, manifest


def _load_method(files: list[Path], method: str, manifest: dict):
    videos, images, fps, prompts = [], [], [], []
    for f in files:
        v, r = read_video(f)
        videos.append(v)
        fps.append(r)
        entry = manifest.get(f"{method}/{f.name}") or manifest.get(f.name) or {}
        images.append(read_image(entry["image"]) if entry.get("image") else None)
        prompts.append(entry.get("prompt"))
    return videos, images, fps, prompts


def check_same_shape(loaded: Mapping[str, list]) -> None:
    """Videos compared with each other (every method and the FD reference) must share frame count and size:
    the per-frame metrics, the FD features and the dynamic-degree threshold all depend on them, so a
    comparison across sizes would be silently unfair. Refuses with the shapes found per method."""
    shapes = {m: sorted({tuple(v.shape[:3]) for v in vids}) for m, vids in loaded.items() if vids}
    if len({s for ss in shapes.values() for s in ss}) > 1:
        found = "; ".join(f"{m}: " + ", ".join(f"{f}x{h}x{w}" for f, h, w in ss) for m, ss in shapes.items())
        raise EvalError(f"videos in one comparison must have the same frame count and size (frames x height x "
                        f"width), found {found}; resample them to one size first")


def _latency_table(latency) -> dict[str, dict[str, Any]]:
    if latency is None:
        return {}
    if isinstance(latency, (str, Path)):
        latency = json.loads(Path(latency).read_text())
    if isinstance(latency, Mapping) and "rows" in latency:  # bench_latency output
        latency = {r["name"]: r for r in latency["rows"]}
    return {m: dict(v) for m, v in latency.items()}


def run_eval(video_dir, out_dir, *, config: EvalConfig | None = None, reference=None,
             extra_metrics: Mapping[str, Mapping[str, float]] | None = None,
             latency: Mapping[str, Mapping[str, Any]] | str | Path | None = None,
             max_grid: int = 4, title: str = "V-PAE evaluation") -> dict[str, Any]:
    """Evaluate every method folder under video_dir; write results.json, report.md, report.html,
    samples_grid.gif and plots/ into out_dir; return the results dict.

    reference: a method name or a folder of reference videos for Frechet distances (default: the
        `reference/` subfolder if present; none -> no FD).
    extra_metrics: {method: {metric: value}} merged into the table and results (e.g. toy-world oracle
        metrics from vpae.toy.oracle.oracle_report).
    latency: {method: {"nfe": .., "latency_s": .., ...}}, a JSON file of that, or bench_latency's output
        (rows matched to methods by name).
    """
    config = config or EvalConfig()
    methods, ref_files, manifest = discover(video_dir)
    if isinstance(reference, str) and reference in methods:
        ref_files = methods[reference]
    elif reference is not None:
        ref_dir = Path(reference)
        if not ref_dir.is_dir():
            raise FileNotFoundError(f"reference must be a method name {sorted(methods)} or a folder: {reference}")
        ref_files = _video_files(ref_dir)
        if not ref_files:
            raise EvalError(f"no reference videos in {ref_dir}")
    lat = _latency_table(latency)
    extra = {m: dict(v) for m, v in (extra_metrics or {}).items()}

    loaded = {m: _load_method(files, m, manifest) for m, files in methods.items()}
    ref_videos = [read_video(f)[0] for f in ref_files] if ref_files else []
    check_same_shape({**{m: x[0] for m, x in loaded.items()}, "reference": ref_videos})
    ref_feats = fd_features(ref_videos, config) if ref_videos else None

    results: dict[str, Any] = {"config": config.as_dict(), "video_dir": str(Path(video_dir).resolve()),
                               "reference": [str(f) for f in ref_files] if ref_files else None,
                               "methods": {}, "backbones": {}}
    rows, grids = {}, {}
    for m, files in methods.items():
        videos, images, fps, prompts = loaded[m]
        res = evaluate_videos(videos, images, config, fps)
        results["backbones"].update(res.pop("backbones"))
        rec: dict[str, Any] = {"files": [str(f) for f in files], "prompts": prompts, **res}
        if ref_feats is not None:
            rec["fd"] = fd_scores(fd_features(videos, config), ref_feats)
        if m in lat:
            rec["latency"] = lat[m]
        if m in extra:
            rec["extra_metrics"] = extra[m]
        results["methods"][m] = rec
        rows[m] = table_row(rec)
        grids[m] = videos[:max_grid]
    tiers = {d: r["tier"] for d, r in next(iter(results["methods"].values()))["dimensions"].items()}
    kind = next(iter(results["methods"].values()))["aggregates"]["kind"]
    results["tiers"] = tiers
    results["aggregate_kind"] = kind
    notes = report_notes(tiers, kind, results["backbones"], ref_feats is not None)
    results["notes"] = notes
    write_report(out_dir, rows, grids, None, title=title, notes=notes, results=results,
                 fps=float(np.median(fps)) if fps else 8.0)
    return results


def table_row(rec: Mapping[str, Any]) -> dict[str, Any]:
    """One paper-style table row from a method's results record."""
    row: dict[str, Any] = {"Camera Motion": vbench.CAMERA_MOTION_MISSING}   # never computed: labelled, not a silent 0
    for d in vbench.DIMENSIONS:
        r = rec["dimensions"].get(d, {})
        tag = "" if r.get("tier") == "reference" else ("*" if r.get("tier") == "offline" else "")
        row[SHORT[d] + tag] = r.get("value")
    agg = rec["aggregates"]
    for k, v in agg.items():
        if k.endswith("]") and not k.startswith("missing"):
            row[k] = v
    row["aggregate missing"] = ", ".join(agg.get("missing[missing=0]", [])) or "none"
    for k, v in rec.get("fd", {}).items():
        row[k] = v
    lat = rec.get("latency") or {}
    for k in ("nfe", "latency_s", "diffusion_s", "total_s", "speedup"):
        if k in lat:
            row[k.upper() if k == "nfe" else k] = lat[k]
    for k, v in (rec.get("extra_metrics") or {}).items():
        row[k] = v
    return row


def report_notes(tiers, kind, backbones, has_fd) -> list[str]:
    notes = []
    if kind == "proxy":
        notes.append("Aggregates are PROXY scores (proxy_*): not every dimension used the reference VBench "
                     "model. Columns marked * used the offline tier. They are not comparable with published VBench numbers.")
    else:
        notes.append("All eight dimensions used the reference VBench models; aggregates follow "
                     "scripts/cal_i2v_final_score.py.")
    notes.append(f"camera_motion: {vbench.CAMERA_MOTION_MISSING}. It is in every aggregate's missing list: "
                 "[missing=0] counts missing dimensions as raw 0, as the official script does (so the I2V score is "
                 "at most 2/2.1 = 0.952); [renormalized] drops them from numerator and denominator.")
    for d, t in tiers.items():
        notes.append(f"{d}: {t}")
    for name, info in backbones.items():
        files = ", ".join(f"{Path(p).name} sha256={h[:16]}..." for p, h in info["files"].items()) or "no weights"
        notes.append(f"backbone {name} ({info['tier']}): {info['description']}; {files}")
    if has_fd:
        notes.append("FD-EffNetLite0-frames is a Frechet distance on per-frame EfficientNet-Lite0 features, NOT FVD; "
                     "FVD appears only when an I3D file is supplied.")
    return notes
