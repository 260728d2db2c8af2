"""Where does a sampler's mode coverage go? For every two-mode held-out condition (the caption names only the
axis), draw K noises and count the samples in each mode and in none; then split the samples in no mode by kind
(object lost in some frame / on neither path / half-way blend / frames that switch mode) and by object size.
Session 8: the demo's 1-NFE generator has 29 % in no mode against the teacher's 4 %, with the same per-condition
imbalance (docs/RESULTS.md, "Session 8").

    python research/diagnostics/diag_mode_histogram.py SPEC [SPEC ...] [--k 16] [--set data.toy.sizes=[large] ...]
    SPEC = PATH:SAMPLER:STEPS, e.g. outputs/demo/run/generator:few_step:1 or src/vpae/toy/teacher:few_step:50
"""
import argparse
import sys
import collections

import numpy as np

from vpae.toy import oracle as O
from diag_args import add_world_options, load_sampler, load_world
from vpae.toy.evaluate import generate
from vpae.toy.world import caption_modes

ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
add_world_options(ap)
ap.add_argument("--k", type=int, default=16, help="noises per condition")
ap.add_argument("--n", type=int, default=64, help="held-out videos (about 40 %% have two modes)")
a = ap.parse_args()
cfg, data = load_world(a)
wc = data.world.cfg
batch = data.heldout(a.n)
idx = [i for i, p in enumerate(batch.params) if len(caption_modes(p, wc)) > 1]
if not idx:
    print("error: no held-out condition has two modes in this world (caption_sign 1?)", file=sys.stderr)
    sys.exit(2)


def kind_of_miss(v, p) -> str:
    tr, found = O._track(v, p, wc)
    if not found.all():
        return "lost"
    m = tr["centroids"] - tr["centroids"][0]
    rel = [O._displacements(q, wc) for q in caption_modes(p, wc)]
    err = np.array([[np.linalg.norm(m[t] - e[t]) for e in rel] for t in range(1, wc.frames)])  # (F-1, modes)
    tol = 0.25 * np.maximum(np.linalg.norm(rel[0][1:] - rel[1][1:], axis=1), 1.0)
    if (err.min(1) <= tol).all():
        return "switches mode"
    if (np.abs(err[:, 0] - err[:, 1]) < tol).mean() > 0.5:
        return "half-way blend"
    return "on neither path"


for spec in a.specs:
    model, method = load_sampler(spec, cfg)
    hist = np.zeros((len(idx), 3))
    kinds, miss_by_size, n_by_size = collections.Counter(), collections.Counter(), collections.Counter()
    for k in range(a.k):
        videos = generate(model, data, batch, method, k)[0]
        for j, i in enumerate(idx):
            p, v = batch.params[i], O._np_video(videos[i])
            mode = O.assign_mode(v, p, wc)
            hist[j, 2 if mode is None else mode] += 1
            n_by_size[p.size] += 1
            if mode is None:
                kinds[kind_of_miss(v, p)] += 1
                miss_by_size[p.size] += 1
    share = hist / a.k
    imbalance = np.abs(share[:, 0] - share[:, 1]) / np.maximum(share[:, 0] + share[:, 1], 1e-9)
    total = len(idx) * a.k
    print(f"{spec}: {len(idx)} two-mode conditions x {a.k} noises")
    print(f"  in no mode {share[:, 2].mean():.2f}; per-condition imbalance |pA-pB|/(pA+pB) {imbalance.mean():.2f}; "
          f"conditions that never drew one of the modes {(np.minimum(hist[:, 0], hist[:, 1]) == 0).mean():.2f}")
    print("  samples in no mode, by kind (share of all samples): "
          + ", ".join(f"{kind} {c / total:.3f}" for kind, c in kinds.most_common()))
    print("  in no mode by object size: " + ", ".join(f"{s} {miss_by_size[s] / n_by_size[s]:.2f} "
                                                   f"({n_by_size[s] // a.k} conditions)" for s in sorted(n_by_size)))
    print("  per condition (mode A / mode B / none): " + " ".join(f"{int(x)}/{int(y)}/{int(z)}" for x, y, z in hist))
