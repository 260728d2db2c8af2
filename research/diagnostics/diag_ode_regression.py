"""Can the one-step generator learn a sharper noise -> mode map from direct supervision? Regresses a 1-NFE
generator onto pairs (noise z, x0 target) and every `--eval-every` steps scores it with the oracle on the held-out
split with fresh noises (mode coverage per condition, in a mode, diversity, and the rest).

Targets (`--target`):
- teacher: the teacher's Euler-ODE samples, a fixed set of `--pairs` drawn on the training stream (DMD's
  regression loss). Session 7: 4,096 pairs, 2,000 steps -> the pairs are fitted, the mode metrics do not move.
- self: the starting generator's own `--self-steps`-step samples, re-noised with the same z at every step (so the
  target is a function of z), fresh conditions and noise every step (no pair set to memorise). Session 9: the
  4-step target covers 0.72 per condition (0.875 in a mode); 2,000 steps at lr 1e-4 leave the 1-NFE generator at
  0.64 (docs/RESULTS.md, "Session 9").

    python research/diagnostics/diag_ode_regression.py GENERATOR_DIR [--target teacher|self] [--pairs 4096] [--steps 2000]
        [--lr 1e-4] [--euler-steps 25] [--self-steps 4] [--batch 16]
"""
import argparse
import copy
import json
import sys
import time

import torch

from vpae import flow
from vpae.config import load_config
from vpae.errors import VpaeError
from vpae.models import load_wan_backbone, resolve_model_path
from vpae.sampling import few_step_sigmas, predict_x0, teacher_sample
from vpae.toy.evaluate import SamplerSpec, oracle_eval
from vpae.toy.data import ToyData

ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
ap.add_argument("generator", help="diffusers folder of the generator to start from (e.g. a consolidated V-PAE-I)")
ap.add_argument("--target", choices=("teacher", "self"), default="teacher")
ap.add_argument("--pairs", type=int, default=4096, help="teacher target: size of the fixed pair set")
ap.add_argument("--steps", type=int, default=2000)
ap.add_argument("--lr", type=float, default=1e-4)
ap.add_argument("--euler-steps", type=int, default=25, help="teacher target: Euler steps of the ODE")
ap.add_argument("--self-steps", type=int, default=4, help="self target: steps of the generator's own sampler")
ap.add_argument("--batch", type=int, default=16)
ap.add_argument("--eval-every", type=int, default=500)
ap.add_argument("--threads", type=int, default=2)
a = ap.parse_args()
torch.set_num_threads(a.threads)
torch.manual_seed(0)
cfg = load_config("configs/toy/demo.yaml")
data = ToyData(cfg)
text_len = cfg.model.text_len or cfg.data.text_tokens
try:
    gen = load_wan_backbone(resolve_model_path(a.generator), torch.float32, text_len).train()
except VpaeError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
t0 = time.time()


def same_noise_sample(model, z, c, sigmas):
    """x0 prediction, then re-noise with the SAME z to the next sigma: the K-step sample is a function of z."""
    x = z
    for i, s in enumerate(sigmas):
        x0 = predict_x0(model, x, s, c)[0]
        if i + 1 < len(sigmas):
            x = flow.add_noise(x0, z, sigmas[i + 1])
    return x0


if a.target == "teacher":
    teacher = load_wan_backbone("src/vpae/toy/teacher", torch.float32, text_len).eval()
    chunk = 128
    batches = data.batch_fn(chunk, 777)
    pairs = []
    for i in range(max(1, a.pairs // chunk)):
        x, c = batches(i)
        z = torch.randn_like(x)
        with torch.no_grad():
            pairs.append((z, teacher_sample(teacher, z, c, a.euler_steps, 1.0, cfg.sampling.shift).x0, c))
    print(f"{len(pairs) * chunk} pairs in {time.time() - t0:.0f} s", flush=True)

    def next_pair(step):
        z, x0, c = pairs[torch.randint(0, len(pairs), ()).item()]
        idx = torch.randint(0, chunk, (a.batch,))
        return z[idx], x0[idx], c[idx]
else:
    reference = copy.deepcopy(gen).eval()
    sigmas = few_step_sigmas(a.self_steps, cfg.sampling.shift)
    stream = data.batch_fn(a.batch, 4242)

    def next_pair(step):
        x, c = stream(step)
        z = torch.randn_like(x)
        with torch.no_grad():
            return z, same_noise_sample(reference, z, c, sigmas), c

keys = ("caption_following", "persistence", "first_frame_psnr", "sharpness", "mode_coverage", "mode_coverage_pooled",
        "mode_assigned", "mode_diversity")
opt = torch.optim.Adam([p for p in gen.parameters() if p.requires_grad], lr=a.lr)
for step in range(a.steps + 1):
    if step % a.eval_every == 0 or step == a.steps:
        rep, _ = oracle_eval(gen.eval(), data, data.heldout(64), SamplerSpec("1 NFE", "few_step", 1))
        gen.train()
        print(step, f"{time.time() - t0:.0f} s", json.dumps({k: round(rep[k], 3) for k in keys}), flush=True)
    if step == a.steps:
        break
    z, x0_target, c = next_pair(step)
    loss = (predict_x0(gen, z, 1.0, c)[0] - x0_target).pow(2).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
    if step % 250 == 0:
        print(f"step {step}: regression loss {loss.item():.5f}", flush=True)
