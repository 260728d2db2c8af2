"""Can the one-step generator learn the teacher's noise -> mode map from direct supervision? Regresses a 1-NFE
generator onto teacher Euler-ODE pairs (noise z, x0 = ODE(z)) drawn on the training stream, and every 500 steps
scores it with the oracle on the held-out split with fresh noises (mode coverage per condition, in a mode,
diversity, and the rest). Session 7: 4,096 pairs, 2,000 steps -> the pairs are fitted, the mode metrics do not move
(docs/RESULTS.md, "Session 7").

    python scripts/diag_ode_regression.py GENERATOR_DIR [--pairs 4096] [--steps 2000] [--lr 1e-4] [--euler-steps 25] [--batch 16]
"""
import argparse
import json
import time

import torch

from vpae.config import load_config
from vpae.models import load_wan_backbone
from vpae.sampling import predict_x0, teacher_sample
from vpae.toy.evaluate import Method, oracle_eval
from vpae.toy.source import ToyData

ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
ap.add_argument("generator", help="diffusers folder of the generator to start from (e.g. a consolidated V-PAE-I)")
ap.add_argument("--pairs", type=int, default=4096)
ap.add_argument("--steps", type=int, default=2000)
ap.add_argument("--lr", type=float, default=1e-4)
ap.add_argument("--euler-steps", type=int, default=25)
ap.add_argument("--batch", type=int, default=16)
ap.add_argument("--threads", type=int, default=2)
a = ap.parse_args()
torch.set_num_threads(a.threads)
torch.manual_seed(0)
cfg = load_config("configs/toy/demo.yaml")
data = ToyData(cfg)
text_len = cfg.model.text_len or cfg.data.text_tokens
teacher = load_wan_backbone("src/vpae/toy/teacher", torch.float32, text_len).eval()
gen = load_wan_backbone(a.generator, torch.float32, text_len).train()
chunk = 128
batches = data.batch_fn(chunk, 777)
t0 = time.time()
pairs = []
for i in range(max(1, a.pairs // chunk)):
    x, c = batches(i)
    z = torch.randn_like(x)
    with torch.no_grad():
        pairs.append((z, teacher_sample(teacher, z, c, a.euler_steps, 1.0, cfg.sampling.shift).x0, c))
print(f"{len(pairs) * chunk} pairs in {time.time() - t0:.0f} s", flush=True)
keys = ("caption_following", "persistence", "first_frame_psnr", "sharpness", "mode_coverage", "mode_coverage_pooled",
        "mode_assigned", "mode_diversity")
opt = torch.optim.Adam([p for p in gen.parameters() if p.requires_grad], lr=a.lr)
for step in range(a.steps + 1):
    if step % 500 == 0 or step == a.steps:
        rep, _ = oracle_eval(gen.eval(), data, data.heldout(64), Method("1 NFE", "few_step", 1))
        gen.train()
        print(step, f"{time.time() - t0:.0f} s", json.dumps({k: round(rep[k], 3) for k in keys}), flush=True)
    if step == a.steps:
        break
    z, x0_ode, c = pairs[torch.randint(0, len(pairs), ()).item()]
    idx = torch.randint(0, chunk, (a.batch,))
    loss = (predict_x0(gen, z[idx], 1.0, c[idx])[0] - x0_ode[idx]).pow(2).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
    if step % 250 == 0:
        print(f"step {step}: regression loss {loss.item():.5f}", flush=True)
