"""Re-score the finished rows of a `vpae ablate` reproduction with the current oracle, from their saved
generators (no training): every `row.json` under OUT whose run folder has a `generator/` and a `config.yaml`
gets its oracle/* columns recomputed exactly as `vpae ablate` computes them (1 NFE, the run's seed); the
other columns (train_s, proxies) are kept. Rerunning the same `vpae ablate` command then rebuilds the report
from the re-scored rows. For a change of the mode coverage's definition (e.g. per condition instead of the pooled
histogram): every other oracle metric must come out identical, which the script checks.

    python scripts/rescore_rows.py outputs/reproduce [--workers 2]
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import sys
from pathlib import Path


def rescore(run_dir: str) -> str:
    import torch
    torch.set_num_threads(1)
    from vpae.config import load_config
    from vpae.recipes import build_data
    from vpae.toy.ablate import ablation_columns
    from vpae.toy.evaluate import oracle_eval, sampler_from_spec

    run = Path(run_dir)
    cfg = load_config(run / "config.yaml")
    data = build_data(cfg)
    batch = data.heldout(cfg.data.heldout_size)
    gen, one_step = sampler_from_spec(f"{run / 'generator'}:few_step:1", cfg)  # 1 NFE, no CFG, as vpae ablate samples
    rep, _ = oracle_eval(gen, data, batch, one_step, cfg.train.seed)
    old = json.loads((run / "row.json").read_text())
    new = ablation_columns(rep)
    # the definition that changed is the mode coverage; everything else must come out as it was
    same = [k for k in old if k.startswith("oracle/") and k != "oracle/mode_coverage"]
    drift = [k for k in same if k in new and not math.isclose(old[k], new[k], rel_tol=1e-9, abs_tol=1e-9)]
    if drift:
        return f"{run}: NOT rewritten, metrics differ from the saved row: {drift}"
    row = {**old, **new}
    tmp = run / "row.json.tmp"
    tmp.write_text(json.dumps(row))
    tmp.replace(run / "row.json")
    return (f"{run}: mode_coverage {old.get('oracle/mode_coverage', float('nan')):.3f} (saved row) -> "
            f"{row['oracle/mode_coverage']:.3f} (current oracle)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", help="a `vpae ablate --out` folder")
    ap.add_argument("--workers", type=int, default=1)
    args = ap.parse_args()
    runs = sorted(str(p.parent) for p in Path(args.out).glob("*/seed_*/row.json")
                  if (p.parent / "generator").is_dir() and (p.parent / "config.yaml").is_file())
    if not runs:
        print(f"error: no finished rows with a saved generator under {args.out}; give a `vpae ablate --out` folder",
              file=sys.stderr)
        return 2
    with mp.get_context("spawn").Pool(args.workers) as pool:
        for line in pool.imap_unordered(rescore, runs):
            print(line, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
