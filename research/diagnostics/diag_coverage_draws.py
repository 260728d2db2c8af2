"""Per-condition mode coverage of samplers over independent noise draws (eval seeds 0, 4, 8, 12: four draws of 4
noises per held-out video), to tell a sampler's coverage from one draw's luck. Session 8: the 50-step teacher
0.728 +- 0.029 (sd over draws), the demo's 1-NFE generator 0.600 +- 0.042 (docs/RESULTS.md, "Session 8").

    python research/diagnostics/diag_coverage_draws.py SPEC [SPEC ...] [--set data.toy.sizes=[large] ...]
    SPEC = PATH:SAMPLER:STEPS, e.g. outputs/demo/run/generator:few_step:1 or src/vpae/toy/teacher:few_step:50
"""
import argparse

import numpy as np

from diag_args import add_world_options, load_sampler, load_world
from vpae.toy.evaluate import MODE_SAMPLES, oracle_eval

ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
add_world_options(ap)
ap.add_argument("--draws", type=int, default=4)
a = ap.parse_args()
cfg, data = load_world(a)
batch = data.heldout(cfg.data.heldout_size)
for spec in a.specs:
    model, method = load_sampler(spec, cfg)
    values = [oracle_eval(model, data, batch, method, seed=d * MODE_SAMPLES)[0]["mode_coverage"] for d in range(a.draws)]
    print(f"{spec}: per-condition mode coverage {np.mean(values):.3f} +- {np.std(values, ddof=1):.3f} (sd over "
          f"{a.draws} draws: {', '.join(f'{v:.3f}' for v in values)})", flush=True)
