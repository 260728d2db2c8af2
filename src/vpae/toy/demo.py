"""`vpae demo`: the whole method on the toy world, on a CPU, with the paper's Table 1 analogue.

Shipped teacher -> phase I (stability priming) -> phase II (unified adversarial equilibrium) ->
held-out evaluation of teacher 100/4/1 NFE and V-PAE-I / V-PAE at 4/1 NFE -> report.html/report.md.
"""

from __future__ import annotations

import copy
import json
import math
import platform
import time
from pathlib import Path

import torch

from vpae.config import VPAEConfig, to_dict
from vpae.toy.evaluate import (
    SamplerSpec,
    generate,
    ground_truth_report,
    oracle_columns,
    oracle_eval,
    proxy_metrics,
    teacher_methods,
)
from vpae.training.checkpoint import latest_checkpoint, load_checkpoint
from vpae.training.loop import read_log
from vpae.training.model import generator_checkpoint_view
from vpae.training.tracking import discriminator_curves

CURVE_KEYS = ("loss/fake", "loss/dmd", "loss/g_adv", "loss/c_sds", "loss/d", "loss/st_r1", "d/accuracy", "d/logit_gap",
              "adv/scale", "eval/probe_acc",
              "eval/caption_following", "eval/first_frame_psnr", "eval/persistence",
              "collapse/motion_ratio", "collapse/first_frame_drift", "collapse/flash_level", "collapse/contrast_ratio")


GRIDS_FILE = "grid_videos.pt"
"""The sample-grid videos of a demo run ({row label: (N, 3, F, H, W) in [-1, 1]}), saved for write_demo_report."""


def read_curves(run_dir: Path) -> dict[str, list[tuple[float, float]]]:
    """The training curves ("<phase> <key>": [(step, value)]) of CURVE_KEYS from a run's phase logs."""
    curves: dict[str, list[tuple[float, float]]] = {}
    for phase in ("priming", "equilibrium"):
        for rec in read_log(Path(run_dir) / phase / "log.jsonl"):
            for k in CURVE_KEYS:
                if k in rec:
                    curves.setdefault(f"{phase} {k}", []).append((rec["step"], rec[k]))
    disc = discriminator_curves(read_log(Path(run_dir) / "equilibrium" / "log.jsonl"))
    for kind, title in (("pair accuracy", "equilibrium d/ pair accuracy per t bin (0 = lowest)"),
                        ("probe", "equilibrium held-out probe per t bin")):
        panel = {name.replace(kind + " ", ""): pts for name, pts in disc.items() if name.startswith(kind) and pts}
        if panel:
            curves[title] = panel
    return curves


def curve_eval_fn(data, n: int, seed: int):
    """step -> 1-NFE oracle metrics of the current generator on a small held-out batch (training curves)."""
    batch = data.heldout(n)

    def factory(generator):
        def fn(step):
            rep, _ = oracle_eval(generator, data, batch, SamplerSpec("1", "few_step", 1), seed, mode_samples=1)
            return {k: rep[k] for k in ("caption_following", "first_frame_psnr", "persistence", "sharpness")}
        return fn
    return factory


def sampling_latency(models: dict, methods: dict[str, SamplerSpec], data, batch, seed: int, repeats: int = 5) -> dict:
    """Seconds to sample one video (conditioning included) per method, all timed the same way: one warm-up
    call each, then `repeats` rounds that time every method once in turn (interleaved, so machine load and
    cache state hit all methods alike); the median per method. Equal work gets equal time."""
    one = type(batch)(batch.video[:1], batch.params[:1], batch.captions[:1])
    for name, method in methods.items():
        generate(models[name], data, one, method, seed)
    times: dict[str, list[float]] = {name: [] for name in methods}
    for _ in range(repeats):
        for name, method in methods.items():
            times[name].append(generate(models[name], data, one, method, seed)[2])
    return {name: sorted(t)[len(t) // 2] for name, t in times.items()}


def evaluate_methods(models: dict, methods: dict[str, SamplerSpec], data, batch, seed: int,
                     vbench: bool = True, progress: bool = True, proxy_videos: int = 8) -> tuple[dict, dict]:
    """Sample every method on the held-out batch: oracle metrics on all videos; offline VBench-I2V proxies
    and FD (to the held-out real videos) on the first `proxy_videos` (their feature nets dominate CPU time);
    latency of one video (sampling_latency). The first method is the latency baseline (the teacher's sampler)."""
    from tqdm.auto import tqdm

    from vpae.eval import EvalConfig, fd_features

    rows, videos = {}, {}
    ecfg = EvalConfig(progress=False, niqe_max_frames=3)
    k = min(proxy_videos, len(batch))
    ref_feats = fd_features(list(batch.video[:k]), ecfg) if vbench else None
    for name, method in tqdm(methods.items(), desc="evaluate", disable=not progress):
        model = models[name]
        rep, vids = oracle_eval(model, data, batch, method, seed)
        row = {"NFE": rep["nfe"], **oracle_columns(rep)}
        if vbench:
            row.update(proxy_metrics(vids, batch, k, ref_feats, ecfg))
        rows[name] = row
        videos[name] = vids
    for name, lat in sampling_latency(models, methods, data, batch, seed).items():
        rows[name]["latency_s"] = lat
    rows["ground truth"] = oracle_columns(ground_truth_report(data, batch, seed=seed))
    base = next(iter(rows.values()))["latency_s"] if rows else None
    if base:
        for r in rows.values():
            if "latency_s" in r:
                r["speedup_vs_100NFE"] = base / r["latency_s"]
    return rows, videos


def primed_generator(generator, run_dir: Path):
    """The generator at the end of phase I (V-PAE-I): a copy of `generator` (full or LoRA: the checkpoint
    holds the same modules) with phase I's last checkpoint loaded; the generator itself without phase I."""
    primed = copy.deepcopy(generator)
    pck = latest_checkpoint(Path(run_dir) / "priming")
    if pck is not None:
        load_checkpoint(pck, {"generator": generator_checkpoint_view(primed)}, {})
    return primed


def two_mode_examples(batch, world_cfg) -> list[int]:
    """Indices of the first held-out video of each object size whose caption leaves two or more modes open (the
    grid shows four noises of each: small objects, inside one latent patch, are where 1-NFE samples split)."""
    from vpae.toy.world import caption_modes
    if not world_cfg.multimodal:
        return []
    first: dict[str, int] = {}
    for i, p in enumerate(batch.params):
        if p.size not in first and len(caption_modes(p, world_cfg)) > 1:
            first[p.size] = i
    return sorted(first.values())


def run_demo(cfg: VPAEConfig, out_dir: str | Path, progress: bool = True, vbench: bool = True) -> dict:
    from vpae.models import build_teacher
    from vpae.recipes import build_data, run_distill

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    tc = cfg.train
    data = build_data(cfg)
    evf = curve_eval_fn(data, tc.eval_videos, tc.seed) if tc.eval_every > 0 else None
    result = run_distill(cfg, out / "run", "all", progress=progress, eval_fn_factory=evf)
    t_train = time.perf_counter() - t0

    # Models to compare: teacher (real score, adapters off), V-PAE-I (end of phase I), V-PAE (end of phase II).
    teacher = build_teacher(cfg).eval()
    generator = result["generator"].eval()
    primed = primed_generator(generator, out / "run")
    tm = teacher_methods(cfg.sampling.teacher_steps, cfg.sampling.guidance, cfg.sampling.shift, cfg.sampling.teacher_sampler)
    methods = {m.name: m for m in tm}
    methods["V-PAE-I 1 NFE"] = SamplerSpec("V-PAE-I 1 NFE", "few_step", 1)
    methods["V-PAE 4 NFE"] = SamplerSpec("V-PAE 4 NFE", "few_step", 4, 1.0, cfg.sampling.shift)
    methods["V-PAE 1 NFE"] = SamplerSpec("V-PAE 1 NFE", "few_step", 1)
    models = {n: teacher for n in methods if n.startswith("teacher")}
    models.update({"V-PAE-I 1 NFE": primed, "V-PAE 4 NFE": generator, "V-PAE 1 NFE": generator})
    batch = data.heldout(cfg.data.heldout_size)
    t1 = time.perf_counter()
    rows, videos = evaluate_methods(models, methods, data, batch, tc.seed, vbench, progress, cfg.data.proxy_videos)
    t_eval = time.perf_counter() - t1

    curves = read_curves(out / "run")
    t100 = tm[0].name
    grids = {"ground truth": list(batch.video[:4]),
             t100: list(videos[t100][:4]), "teacher 1 NFE": list(videos["teacher 1 NFE"][:4]),
             "V-PAE 1 NFE": list(videos["V-PAE 1 NFE"][:4])}
    noise_rows = []
    for i in two_mode_examples(batch, data.world.cfg):  # four noises of a condition the caption leaves open
        one = type(batch)(batch.video[i:i + 1], batch.params[i:i + 1], batch.captions[i:i + 1])
        for name in (t100, "V-PAE 1 NFE"):
            label = f"{name.split(' (')[0]}, video {i + 1} ({batch.params[i].size} object), 4 noises"
            grids[label] = [generate(models[name], data, one, methods[name], tc.seed + j)[0][0] for j in range(4)]
            noise_rows.append({"label": label, "method": name, "video": i + 1, "size": batch.params[i].size,
                               "caption": batch.captions[i]})
    total = time.perf_counter() - t0
    machine = (f"{platform.machine()} {platform.processor() or ''} {torch.get_num_threads()} threads, "
               f"torch {torch.__version__}")
    timings = result["timings"]
    notes = [
        f"Toy world held-out split: {len(batch)} videos, {cfg.data.frames} frames at {cfg.data.height}x{cfg.data.width}; "
        f"same noise per video for every method (seed {tc.seed}).",
        "oracle/* come from the toy world's ground truth (vpae.toy.oracle); proxy/* are offline-tier VBench-I2V "
        "dimensions (EffNet-Lite0 / OpenCV flow / NIQE substitutes, not the official models); aesthetic is "
        "unavailable offline.",
        "FD-* is a Frechet distance on EffNet-Lite0 frame features to the held-out real videos (not FVD).",
        "latency_s: median wall time of the diffusion part for one video on this CPU; speedup is against the "
        "multi-step teacher (first row).",
        f"Training {t_train:.0f}s (phase I {timings.get('priming', 0):.0f}s, phase II "
        f"{timings.get('equilibrium', 0):.0f}s), evaluation {t_eval:.0f}s, total {total:.0f}s on {machine}.",
        f"Config: priming {cfg.priming.steps} steps x batch {cfg.priming.batch_size}, equilibrium "
        f"{cfg.equilibrium.steps} steps x batch {cfg.equilibrium.batch_size} "
        f"(backbone {cfg.equilibrium.backbone}, head {cfg.equilibrium.head}, lambda {cfg.equilibrium.sds_lambda}).",
    ]
    acc = [a for _, a in curves.get("equilibrium d/accuracy", [])]
    if acc:
        late = acc[len(acc) // 2:]
        probe = [a for _, a in curves.get("equilibrium eval/probe_acc", [])]
        notes.append(f"Discriminator pair accuracy P(D(real) > D(generated)) (0.5 = chance) over phase II's second "
                     f"half: {sum(late) / len(late):.2f}" + (f"; last held-out probe {probe[-1]:.2f}" if probe else "")
                     + " (per noise bin: the discriminator curves).")
    contract = demo_contract(rows, t100)
    notes.append(format_contract(contract).replace("\n  ", "; "))
    results = {"contract": contract, "rows": rows,
               "timings": {"train_s": t_train, "eval_s": t_eval, "total_s": total, **timings},
               "config": to_dict(cfg), "machine": machine, "notes": notes, "teacher_row": t100,
               "grid": {"first_rows_videos": min(4, len(batch)), "captions": list(batch.captions[:4]),
                        "noise_rows": noise_rows}}
    # Saved before the report is written: `write_demo_report(out)` rebuilds the report from these files alone.
    from vpae.eval.report import _json_default
    (out / "results.json").write_text(json.dumps(results, indent=2, default=_json_default))
    torch.save({k: torch.stack([torch.as_tensor(v) for v in vs]) for k, vs in grids.items()}, out / GRIDS_FILE)
    write_demo_report(out, results, grids, curves)
    summary = summarize(rows, t100, total, out) + "\n" + format_contract(contract)
    (out / "summary.txt").write_text(summary)
    return {"rows": rows, "summary": summary, "timings": results["timings"], "out": out}


CONTRACT = ("caption_following", "persistence", "first_frame_psnr", "mode_coverage")
"""Metrics on which the 1-NFE V-PAE generator must reach >= 90 % of the multi-step teacher (the demo's contract)."""


def demo_contract(rows: dict, t100: str, student: str = "V-PAE 1 NFE", base: str = "teacher 1 NFE") -> dict:
    """Per contract metric: the student's value, the multi-step teacher's (row t100), their ratio, pass (ratio >= 0.9) and
    the 1-NFE teacher's value (which the student must beat)."""
    out = {}
    for m in CONTRACT:
        key = f"oracle/{m}"
        if key not in rows.get(t100, {}) or key not in rows.get(student, {}):
            continue
        s, t, b = rows[student][key], rows[t100][key], rows.get(base, {}).get(key, float("nan"))
        ratio = s / t if t else float("nan")
        out[m] = {"student": s, "teacher_multistep": t, "teacher_1nfe": b, "ratio": ratio, "pass": bool(ratio >= 0.9),
                  "beats_1nfe_teacher": bool(s > b)}
        se_s, se_t = rows[student].get(f"{key}_se"), rows[t100].get(f"{key}_se")
        if se_s is not None and se_t is not None and s and t:
            # delta method for a ratio of two independent estimates
            out[m].update(student_se=se_s, teacher_se=se_t, ratio_se=ratio * math.hypot(se_s / s, se_t / t))
    return out


def format_contract(contract: dict) -> str:
    lines = ["V-PAE 1 NFE / multi-step teacher (contract: >= 0.90):"]
    for m, c in contract.items():
        if "ratio_se" in c:
            lines.append(f"  {m}: {c['student']:.3f} +- {c['student_se']:.3f} / {c['teacher_multistep']:.3f} +- "
                         f"{c['teacher_se']:.3f} = {c['ratio']:.2f} +- {c['ratio_se']:.2f} (standard errors over the "
                         f"conditions) {'PASS' if c['pass'] else 'FAIL'}; teacher 1 NFE {c['teacher_1nfe']:.3f}")
            continue
        lines.append(f"  {m}: {c['student']:.3f} / {c['teacher_multistep']:.3f} = {c['ratio']:.2f} "
                     f"{'PASS' if c['pass'] else 'FAIL'}; teacher 1 NFE {c['teacher_1nfe']:.3f}")
    return "\n".join(lines)


def summarize(rows: dict, t100: str, total: float, out: Path) -> str:
    def g(name, key):
        v = rows.get(name, {}).get(key)
        return float("nan") if v is None else v
    cf = "oracle/caption_following"
    ps = "oracle/first_frame_psnr"
    return (f"V-PAE demo finished in {total:.0f}s. On the held-out toy split, the {g(t100, 'NFE'):.0f}-NFE teacher follows "
            f"{g(t100, cf):.0%} of captions (first-frame PSNR {g(t100, ps):.1f} dB); the same teacher at 1 NFE "
            f"{g('teacher 1 NFE', cf):.0%} ({g('teacher 1 NFE', ps):.1f} dB); V-PAE-I at 1 NFE {g('V-PAE-I 1 NFE', cf):.0%} "
            f"({g('V-PAE-I 1 NFE', ps):.1f} dB); V-PAE at 1 NFE {g('V-PAE 1 NFE', cf):.0%} "
            f"({g('V-PAE 1 NFE', ps):.1f} dB) and "
            f"at 4 NFE {g('V-PAE 4 NFE', cf):.0%}. One-step diffusion is "
            f"{g('V-PAE 1 NFE', 'speedup_vs_100NFE'):.0f}x faster "
            f"than the teacher's CFG sampler ({g(t100, 'NFE'):.0f} NFE). Report: {out / 'report.html'} (and report.md).")


CONTRACT_LABELS = {"caption_following": "caption following", "persistence": "persistence",
                   "first_frame_psnr": "first-frame PSNR (dB)", "mode_coverage": "mode coverage"}
KEY_COLUMNS = ("NFE", *(f"oracle/{m}" for m in CONTRACT), "latency_s", "speedup_vs_100NFE")
"""The report's short table: the contract's oracle metrics, the cost (NFE) and the speed."""
PLOT_COLUMNS = (*(f"oracle/{m}" for m in CONTRACT), "oracle/sharpness", "FD-EffNetLite0-frames",
                "proxy_total_score[renormalized]", "latency_s")
"""The report's metric panels (each a metric whose direction is known; NFE is a setting, not a metric)."""


def contract_verdict(contract: dict, rows: dict, t100: str, student: str = "V-PAE 1 NFE") -> list[str]:
    """The demo contract's outcome for the top of the report: a headline sentence, then one line per clause
    (the student's value / the multi-step teacher's = ratio, PASS or FAIL, and the 1-NFE teacher's value)."""
    if not contract:
        return ["Demo contract: not evaluated (the oracle metrics are missing from the table)."]
    failed = [CONTRACT_LABELS.get(m, m) for m, c in contract.items() if not c["pass"]]
    speed = rows.get(student, {}).get("speedup_vs_100NFE")
    fast = f", and samples {speed:.0f}x faster" if isinstance(speed, (int, float)) and math.isfinite(speed) else ""
    teacher = f"the multi-step teacher (\u201c{t100}\u201d)"
    if failed:
        head = (f"Demo contract FAIL: the 1-step generator ({student}) stays below 0.90x of {teacher} on "
                f"{', '.join(failed)}; {len(contract) - len(failed)} of {len(contract)} clauses pass{fast}.")
    else:
        head = (f"Demo contract PASS: the 1-step generator ({student}) reaches at least 0.90x of {teacher} on all "
                f"{len(contract)} oracle metrics{fast}.")
    lines = [head]
    for m, c in contract.items():
        se = "ratio_se" in c
        val = (lambda v, e: f"{v:.3f} \u00b1 {e:.3f}") if se else (lambda v, e: f"{v:.3f}")
        ratio = f"{c['ratio']:.2f}x" + (f" \u00b1 {c['ratio_se']:.2f}" if se else "")
        lines.append(f"{CONTRACT_LABELS.get(m, m)}: {val(c['student'], c.get('student_se'))} vs "
                     f"{val(c['teacher_multistep'], c.get('teacher_se'))} = {ratio} "
                     f"{'PASS' if c['pass'] else 'FAIL'} (the teacher's own 1-step sample: {c['teacher_1nfe']:.3f})")
    if any("ratio_se" in c for c in contract.values()):
        lines.append("\u00b1: standard errors over the two-mode conditions (the ratio's by the delta method).")
    return lines


def grid_caption(results: dict, grid_rows: list[str]) -> str:
    """What each row and column of the demo's sample grid shows (one line per group of rows)."""
    g = results.get("grid", {})
    noise = g.get("noise_rows") or []
    labels = {x["label"] for x in noise}
    firsts = [r for r in grid_rows if r not in labels]
    n = g.get("first_rows_videos", 4)
    caps = g.get("captions") or []
    lines = [f"Rows 1-{len(firsts)} ({', '.join(firsts)}): columns 1-{n} are the first {n} held-out conditions "
             "(condition image = frame 0, plus a caption), the same noise in every row; ground truth is the toy "
             "world's own rendering."]
    if caps:
        lines.append("Captions of columns 1-" + f"{len(caps)}: " +
                     "; ".join(f"({i + 1}) \u201c{c}\u201d" for i, c in enumerate(caps)) + ".")
    if noise:
        k = len(firsts)
        lines.append(f"Rows {k + 1}-{k + len(noise)}: the multi-step teacher and V-PAE at 1 NFE on one condition per "
                     "object size whose caption leaves two directions open; columns 1-4 are four noise draws. A good "
                     "sampler splits them between both directions and stays sharp. " +
                     "; ".join(f"video {x['video']}: \u201c{x['caption']}\u201d" for x in noise[::2]) + ".")
    lines.append("NFE = network evaluations per video. The GIF loops over the frames.")
    return "\n".join(lines)


def write_demo_report(out_dir: str | Path, results: dict | None = None, grids: dict | None = None,
                      curves: dict | None = None) -> dict[str, Path]:
    """(Re)write a demo run's report (report.html / report.md, plots, sample grid) from what the run saved in
    out_dir (results.json, grid_videos.pt, run/<phase>/log.jsonl); the arguments skip those reads."""
    from vpae.eval import write_report
    out = Path(out_dir)
    if results is None:
        results = json.loads((out / "results.json").read_text())
    if grids is None and (out / GRIDS_FILE).is_file():
        grids = {k: list(v) for k, v in torch.load(out / GRIDS_FILE, weights_only=True).items()}
    if curves is None:
        curves = read_curves(out / "run")
    rows = results["rows"]
    t100 = results.get("teacher_row") or next(iter(rows))
    return write_report(out, rows, grids, curves, title="V-PAE demo on the toy world (Table 1 analogue)",
                        notes=results.get("notes", ()), results=results,
                        verdict=contract_verdict(results.get("contract", {}), rows, t100),
                        key_columns=[c for c in KEY_COLUMNS if any(c in r for r in rows.values())],
                        plot_columns=[c for c in PLOT_COLUMNS if any(c in r for r in rows.values())],
                        grid_caption=grid_caption(results, list(grids or {})) if grids else None)
