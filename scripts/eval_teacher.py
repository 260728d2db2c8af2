"""Oracle evaluation of a toy teacher (a diffusers folder, 'builtin:toy', or a pretrain checkpoint's EMA) on
the held-out split: direction-word sensitivity, then the oracle metrics of each sampler. Prints and writes JSON.

    python scripts/eval_teacher.py builtin:toy --n 64 --out outputs/teacher_eval.json
    python scripts/eval_teacher.py runs/teacher/checkpoints/step_0000500 --n 16 --quick
    python scripts/eval_teacher.py runs/t/checkpoints/latest --quick --set data.toy.small_radius=0.15625 ...  (another world)
"""
import argparse
import json
import time
from pathlib import Path

import torch

from vpae.config import load_config
from vpae.models import build_teacher
from vpae.toy.data import ToyData
from vpae.toy.evaluate import direction_sensitivity, ground_truth_report, oracle_eval, teacher_methods, teacher_sweep
from vpae.training.checkpoint import load_checkpoint

ap = argparse.ArgumentParser()
ap.add_argument("teacher", help="diffusers folder, builtin:toy, or a pretrain checkpoint directory (its EMA)")
ap.add_argument("--n", type=int, default=64, help="held-out videos")
ap.add_argument("--quick", action="store_true", help="only the configured sampler and 1 NFE (no sampler sweep)")
ap.add_argument("--key", default="ema", help="module in a checkpoint: ema | model")
ap.add_argument("--out", type=Path)
ap.add_argument("--threads", type=int, default=0)
ap.add_argument("--set", action="append", default=[], help="config override key=value (the teacher's world)")
a = ap.parse_args()
if a.threads:
    torch.set_num_threads(a.threads)

is_ckpt = (Path(a.teacher) / "meta.json").is_file()
cfg = load_config("configs/toy/demo.yaml", ["model.teacher=" + ("builtin:toy" if is_ckpt else a.teacher), *a.set])
data = ToyData(cfg)
teacher = build_teacher(cfg)
if is_ckpt:  # the checkpoint's architecture must be the shipped one (load_checkpoint checks every tensor)
    load_checkpoint(a.teacher, {a.key: teacher}, {})
batch = data.heldout(a.n)
res = {"teacher": a.teacher, "n": a.n,
       "direction_sensitivity": {str(k): round(v, 4) for k, v in direction_sensitivity(teacher, data, batch).items()}}
print("direction sensitivity (loss ratio, opposite / true direction word):", res["direction_sensitivity"], flush=True)
s = cfg.sampling
specs = teacher_sweep(s.teacher_steps, s.shift)  # the SamplerSpecs compared
if a.quick:
    specs = [teacher_methods(s.teacher_steps, s.guidance, s.shift, s.teacher_sampler)[0], specs[-1]]
keys = ("caption_following", "direction_accuracy", "caption_score", "first_frame_psnr", "persistence", "sharpness")
if data.world.cfg.multimodal:
    keys += ("mode_coverage", "mode_coverage_pooled", "mode_diversity", "mode_assigned")
gt = ground_truth_report(data, batch)
res["ground truth"] = {k: round(gt[k], 4) for k in keys}
print("ground truth: " + ", ".join(f"{k} {gt[k]:.3f}" for k in keys), flush=True)
for m in specs:
    t0 = time.perf_counter()
    rep, _ = oracle_eval(teacher, data, batch, m)
    res[m.name] = {k: round(rep[k], 4) for k in keys + ("nfe",)}
    print(f"{m.name}: " + ", ".join(f"{k} {rep[k]:.3f}" for k in keys) + f" ({time.perf_counter() - t0:.0f} s)", flush=True)
if a.out:
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(res, indent=1))
