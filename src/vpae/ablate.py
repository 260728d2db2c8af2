"""`vpae ablate`: the paper's ablations (Tables 2 and 3) on the toy world with equal budgets.

Every variant runs the same phase II budget from the same phase I result (phase I runs once and is shared;
the "no priming" row starts phase II from the teacher). Each variant trains in a fresh process so its peak
memory (max RSS) is its own. Results: outputs/ablate/report.{md,html}, results.json.
"""

from __future__ import annotations

import multiprocessing as mp
import resource
import shutil
import time
from pathlib import Path

# name -> (table, config overrides); the default V-PAE is semantic head, unified backbone, lambda 10.
VARIANTS: dict[str, tuple[str, list[str]]] = {
    "UAE + none (no priming)": ("Table 2", ["priming.steps=0"]),
    "UAE + V-PAE-I (default)": ("Table 2/3", []),
    "head conv": ("Table 3 head", ["equilibrium.head=conv"]),
    "head ca": ("Table 3 head", ["equilibrium.head=ca"]),
    "backbone frozen": ("Table 3 backbone", ["equilibrium.backbone=frozen"]),
    "backbone trained": ("Table 3 backbone", ["equilibrium.backbone=trained"]),
    "lambda 0": ("Table 3 C-SDS", ["equilibrium.sds_lambda=0"]),
    "lambda 2.5": ("Table 3 C-SDS", ["equilibrium.sds_lambda=2.5"]),
    "lambda 100": ("Table 3 C-SDS", ["equilibrium.sds_lambda=100"]),
}


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name).strip("_").lower()


def _variant_worker(config_path, base_overrides, overrides, run_dir, shared_priming, queue):
    import torch
    torch.set_num_threads(max(1, torch.get_num_threads()))
    from vpae.config import load_config
    from vpae.pipeline import build_data, run_distill
    from vpae.toy_eval import Method, oracle_columns, oracle_eval, proxy_metrics

    cfg = load_config(config_path, list(base_overrides) + list(overrides))
    run_dir = Path(run_dir)
    if cfg.priming.steps > 0 and shared_priming and not (run_dir / "priming").exists():
        shutil.copytree(shared_priming, run_dir / "priming")
    t0 = time.perf_counter()
    r = run_distill(cfg, run_dir, "all", progress=False)
    train_s = time.perf_counter() - t0
    data = build_data(cfg)
    batch = data.heldout(cfg.data.heldout_size)
    rep, vids = oracle_eval(r["generator"].eval(), data, batch, Method("1", "few_step", 1), cfg.train.seed)
    row = oracle_columns(rep)
    row.update(proxy_metrics(vids, batch, cfg.data.proxy_videos))
    row["train_s"] = train_s
    row["peak_rss_MB"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    queue.put(row)


def run_ablation(config_path: str | Path, out_dir: str | Path, overrides: list[str] | None = None,
                 variants: list[str] | None = None, progress: bool = True) -> dict:
    from tqdm.auto import tqdm
    from vpae.config import load_config
    from vpae.eval import write_report
    from vpae.pipeline import run_distill

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    overrides = list(overrides or [])
    names = variants or list(VARIANTS)
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown variants {unknown}; choose from {list(VARIANTS)}")
    t0 = time.perf_counter()
    # Phase I once, shared by every variant that uses it.
    cfg = load_config(config_path, overrides + ["equilibrium.steps=0"])
    shared = out / "shared_phase1"
    run_distill(cfg, shared, "priming", progress=progress)
    ctx = mp.get_context("spawn")
    rows = {}
    for name in tqdm(names, desc="ablate", disable=not progress):
        table, ov = VARIANTS[name]
        q = ctx.Queue()
        p = ctx.Process(target=_variant_worker, args=(str(config_path), overrides, ov, str(out / _slug(name)),
                                                      str(shared / "priming"), q))
        p.start()
        row = q.get()
        p.join()
        rows[name] = {"table": table, **row}
    total = time.perf_counter() - t0
    notes = [f"Equal budgets: every variant runs phase II with the same steps and batch from the same phase I "
             f"checkpoint (except 'no priming', which starts from the teacher). Total wall time {total:.0f}s.",
             "All rows are the 1-NFE generator on the held-out toy split; oracle/* from ground truth, proxy/* "
             "offline-tier VBench-I2V substitutes, FD on EffNet-Lite0 frame features (not FVD).",
             "peak_rss_MB: max resident memory of the variant's own process (CPU)."]
    write_report(out, rows, None, None, title="V-PAE ablations on the toy world (Tables 2-3 analogue)",
                 notes=notes, results={"rows": rows, "total_s": total, "overrides": overrides})
    return {"rows": rows, "total_s": total, "out": out}
