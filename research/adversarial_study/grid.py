"""usage: python research/adversarial_study/grid.py STUDY_DIR OUT.gif VARIANT_SLUG [VARIANT_SLUG ...] [--seed 0]

The GIF grid of the adversarial-equilibrium study: the held-out real videos, then each variant's 1-NFE samples
(seed `--seed`'s run of `vpae ablate`), 8 held-out conditions with two-mode captions first; the captions are
printed. Used for docs/RESULTS.md, "The adversarial equilibrium, measured"."""
import argparse
from pathlib import Path

import torch

from vpae.config import load_config
from vpae.eval.report import make_grid
from vpae.eval.video import write_video
from vpae.models import load_wan_backbone
from vpae.recipes import build_data
from vpae.toy.evaluate import SamplerSpec, generate
from vpae.toy.world import caption_modes

ap = argparse.ArgumentParser()
ap.add_argument("study")
ap.add_argument("out")
ap.add_argument("variants", nargs="+")
ap.add_argument("--seed", type=int, default=0)
a = ap.parse_args()
torch.set_num_threads(1)
root = Path(a.study)
cfg = load_config(root / a.variants[0] / f"seed_{a.seed}" / "config.yaml")
data = build_data(cfg)
batch = data.heldout(cfg.data.heldout_size)
two = [i for i, p in enumerate(batch.params) if len(caption_modes(p, data.world.cfg)) > 1]
pick = (two + [i for i in range(len(batch.params)) if i not in two])[:8]
grids = {"real (held-out)": [batch.video[i] for i in pick]}
for slug in a.variants:
    gen = load_wan_backbone(root / slug / f"seed_{a.seed}" / "generator", torch.float32,
                            cfg.model.text_len or cfg.data.text_tokens)
    videos, _, _ = generate(gen.eval(), data, batch, SamplerSpec("1", "few_step", 1), a.seed)
    grids[slug.replace("_", " ")[:40]] = [videos[i] for i in pick]
write_video(a.out, make_grid(grids, max_per_method=8), fps=4)
for k, i in enumerate(pick):
    print(f"column {k + 1}: {batch.captions[i]}")
