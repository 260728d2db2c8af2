"""Per-condition mode coverage of samplers over independent noise draws (eval seeds 0, 4, 8, 12: four draws of 4
noises per held-out video), to tell a sampler's coverage from one draw's luck. Session 8: the 50-step teacher
0.728 +- 0.029 (sd over draws), the demo's 1-NFE generator 0.600 +- 0.042 (docs/RESULTS.md, "Session 8").

    python scripts/diag_coverage_draws.py SPEC [SPEC ...] [--set data.sizes=[large] ...]
    SPEC = PATH:SAMPLER:STEPS, e.g. outputs/demo/run/generator:few_step:1 or src/vpae/toy/teacher:few_step:50
"""
import argparse
import sys

import numpy as np
import torch

from vpae.config import load_config
from vpae.errors import VpaeError
from vpae.toy.evaluate import MODE_SAMPLES, oracle_eval, sampler_from_spec
from vpae.toy.source import ToyData

ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
ap.add_argument("specs", nargs="+", help="PATH:SAMPLER:STEPS (sampler few_step or euler)")
ap.add_argument("--draws", type=int, default=4)
ap.add_argument("--config", default="configs/toy/demo.yaml")
ap.add_argument("--set", action="append", default=[], help="config override key=value")
ap.add_argument("--threads", type=int, default=1)
a = ap.parse_args()
torch.set_num_threads(a.threads)
cfg = load_config(a.config, a.set)
data = ToyData(cfg)
batch = data.heldout(cfg.data.heldout_size)
for spec in a.specs:
    try:
        model, method = sampler_from_spec(spec, cfg)
    except (ValueError, VpaeError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    values = [oracle_eval(model, data, batch, method, seed=d * MODE_SAMPLES)[0]["mode_coverage"] for d in range(a.draws)]
    print(f"{spec}: per-condition mode coverage {np.mean(values):.3f} +- {np.std(values, ddof=1):.3f} (sd over "
          f"{a.draws} draws: {', '.join(f'{v:.3f}' for v in values)})", flush=True)
