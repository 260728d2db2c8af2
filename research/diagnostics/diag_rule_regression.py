"""Can the one-step generator learn even a SIMPLE noise -> mode rule? Regresses a 1-NFE generator onto targets
whose mode is a fixed function of its own noise: for a two-mode condition the target is the mode chosen by the
sign of the sum of the noise (--rule global) or of latent frame 1's noise (--rule frame1); a unimodal condition's
target is its video. Fresh conditions and fresh noise every step, so unlike the ODE-pair regression
(diag_ode_regression.py) there is no generalisation gap. Every 500 steps: the oracle's metrics with the generator's
time input --time on pure noise (4 noises per held-out video). Session 8: from V-PAE-I, at lr 1e-4 / 3e-4 / 1e-3 and
time 1.0 or 0.7, it falls back to the blurred average of the two modes (per-condition coverage 0.04-0.10)
instead of learning the rule (docs/RESULTS.md, "Session 8").

    python research/diagnostics/diag_rule_regression.py GENERATOR_DIR [--rule global] [--steps 1500] [--lr 1e-4] [--time 1.0]
"""
import argparse
import json
import time

import torch

from vpae.config import load_config
from vpae.models import load_wan_backbone
from vpae.sampling import initial_noise, predict_x0
from vpae.toy.oracle import mode_report, oracle_report
from vpae.toy.data import ToyData
from vpae.toy.world import caption_modes, render

ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
ap.add_argument("generator", help="diffusers folder of the generator to start from (e.g. a consolidated V-PAE-I)")
ap.add_argument("--rule", choices=("global", "frame1"), default="global")
ap.add_argument("--steps", type=int, default=1500)
ap.add_argument("--lr", type=float, default=1e-4)
ap.add_argument("--time", type=float, default=1.0, help="the generator's time input (its input is pure noise)")
ap.add_argument("--batch", type=int, default=16)
ap.add_argument("--threads", type=int, default=1)
a = ap.parse_args()
torch.set_num_threads(a.threads)
torch.manual_seed(0)
cfg = load_config("configs/toy/demo.yaml")
data = ToyData(cfg)
wc = data.world.cfg
gen = load_wan_backbone(a.generator, torch.float32, cfg.model.text_len or cfg.data.text_tokens).train()


def chosen_mode(z):
    w = torch.ones_like(z[0])
    if a.rule == "frame1":
        w.zero_()
        w[:, 1] = 1
    return ((z * w).flatten(1).sum(1) > 0).long()


def targets(batch, z):
    choice, out = chosen_mode(z), []
    for i, p in enumerate(batch.params):
        modes = caption_modes(p, wc)
        out.append(render(modes[choice[i].item()], wc) if len(modes) > 1 else batch.video[i])
    return data.codec.encode(torch.stack(out))


keys = ("caption_following", "persistence", "first_frame_psnr", "sharpness", "mode_coverage", "mode_assigned",
        "mode_diversity")
heldout = data.heldout(64)
x_h, cond_h = data.encode(heldout)
opt = torch.optim.Adam([p for p in gen.parameters() if p.requires_grad], lr=a.lr)
t0 = time.time()
for step in range(a.steps + 1):
    if step % 500 == 0 or step == a.steps:
        gen.eval()
        with torch.no_grad():
            sets = [predict_x0(gen, torch.stack([initial_noise(x_h.shape[1:], k * 100003 + i) for i in range(len(heldout))]),
                               a.time, cond_h)[0].clamp(-1, 1) for k in range(4)]
        gen.train()
        rep = {**oracle_report(data.codec.decode(sets[0]), heldout.params, heldout.first_frame, wc),
               **mode_report([data.codec.decode(s) for s in sets], heldout.params, wc)}
        print(step, f"{time.time() - t0:.0f} s", json.dumps({k: round(rep[k], 3) for k in keys}), flush=True)
    if step == a.steps:
        break
    batch = data.world.stream_batch(a.batch, 5, step)
    x, cond = data.encode(batch)
    z = torch.randn_like(x)
    loss = (predict_x0(gen, z, a.time, cond)[0] - targets(batch, z)).pow(2).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
    if step % 250 == 0:
        print(f"step {step}: regression loss {loss.item():.5f}", flush=True)
