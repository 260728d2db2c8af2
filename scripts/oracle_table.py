"""Validate the oracle on the world a config describes: the metrics of the ground truth (a random
caption-consistent mode per sample), of one fixed mode, of the modes' average (the "blurred mean"), and of
corrupted videos (frozen, time-shuffled, blurred). Prints a Markdown table (docs/TOY_WORLD.md).

    python scripts/oracle_table.py --config configs/toy/demo.yaml --n 64
"""
import argparse

import numpy as np
import torch

from vpae.config import load_config
from vpae.toy.evaluate import MODE_SAMPLES
from vpae.toy.oracle import corrupt, mode_report, oracle_report
from vpae.toy.world import ToyWorld, caption_modes, render, world_config

ap = argparse.ArgumentParser()
ap.add_argument("--config", default="configs/toy/demo.yaml")
ap.add_argument("--n", type=int, default=64)
a = ap.parse_args()
cfg = world_config(load_config(a.config).data)
b = ToyWorld(cfg).heldout(a.n)
rng = np.random.default_rng(0)
modes = [caption_modes(p, cfg) for p in b.params]
sets = {
    "ground truth (random mode per sample)": [torch.stack([render(m[rng.integers(len(m))], cfg) for m in modes])
                                              for _ in range(MODE_SAMPLES)],
    "always the first mode": [torch.stack([render(m[0], cfg) for m in modes])] * MODE_SAMPLES,
    "average of the modes (the blurred mean)":
        [torch.stack([sum(render(x, cfg) for x in m) / len(m) for m in modes])] * MODE_SAMPLES,
}
truth = sets["ground truth (random mode per sample)"]
for kind, label in (("freeze", "frozen"), ("shuffle", "time-shuffled"), ("blur", "Gaussian blur sigma 1.5")):
    sets[label] = [torch.stack([corrupt(v, kind, seed=i) for i, v in enumerate(s)]) for s in truth]
keys = ("caption_following", "persistence", "sharpness", "mode_coverage", "mode_diversity", "mode_assigned")
print(f"{a.n} held-out conditions, {sum(len(m) > 1 for m in modes)} of them with two or more modes; K = {MODE_SAMPLES}\n")
print("| videos | " + " | ".join(keys) + " |")
print("|---" * (len(keys) + 1) + "|")
for label, s in sets.items():
    rep = {**oracle_report(s[0], b.params, b.first_frame, cfg), **mode_report(s, b.params, cfg)}
    print(f"| {label} | " + " | ".join(f"{rep[k]:.2f}" for k in keys) + " |")
