"""Bitwise equivalence check of training across a refactor: short runs of 14 method variants through
recipes.run_distill, the generator weights hashed in float64 and every logged value kept. Run it on two commits
(`git worktree add OLD <commit>`; `cd OLD && PYTHONPATH=OLD/src python research/refactor_check/equiv.py old.json`)
and compare the two JSON files. Used for the layout change (issue 25): 14 of 14 variants equal."""
import hashlib, json, sys, tempfile, dataclasses
from pathlib import Path
import torch
torch.set_num_threads(1)
from vpae.config import load_config
from vpae import recipes

out_path = sys.argv[1]
only = sys.argv[2].split(",") if len(sys.argv) > 2 else None
import os; CFG = os.environ.get("EQ_CFG", "configs/toy/demo.yaml")
probe = load_config(CFG)
new = hasattr(probe, "comparison")
sec = "comparison" if new else "baseline"
base = ["priming.steps=3", "equilibrium.steps=3", "priming.batch_size=2", "equilibrium.batch_size=2",
        "train.eval_every=0", "train.checkpoint_every=2", f"{sec}.steps=4", f"{sec}.batch_size=2",
        "dmd2.fake_updates_per_generator=2", "md.fake_updates_per_generator=2"]
if new:
    base += ["comparison.layers=[0.5,1.0]", "comparison.head_dim=64", "comparison.head_queries=2", "comparison.head_attn_heads=4"]
variants = {
    "vpae": [], "vpae_lora": ["priming.generator_mode=lora"], "vpae_trained": ["equilibrium.backbone=trained"],
    "vpae_frozen": ["equilibrium.backbone=frozen"], "vpae_div": ["equilibrium.diversity_weight=0.5", "equilibrium.r1_on=both",
    "equilibrium.disc_condition_frame=true", "equilibrium.disc_blur=1.0", "equilibrium.loss=non_saturating"],
    "vpae_lcm": ["priming.kind=lcm"], "vpae_ca": ["equilibrium.head=ca", "equilibrium.disc_updates_per_generator=2"],
    "dmd2": ["method=dmd2"], "md": ["method=md"], "lcm": ["method=lcm"], "pcm": ["method=pcm"], "dcm": ["method=dcm"],
    "add": ["method=add"], "apt": ["method=apt"],
}
def h(mod):
    m = hashlib.sha256()
    for k, v in sorted(mod.state_dict().items()):
        m.update(k.encode()); m.update(v.detach().double().cpu().numpy().tobytes())
    return m.hexdigest()[:16]
res = {}
for name, ov in variants.items():
    if only and name not in only:
        continue
    with tempfile.TemporaryDirectory() as d:
        cfg = load_config(CFG, base + ov)
        r = recipes.run_distill(cfg, d, progress=False)
        rec = {"generator": h(r["generator"])}
        if r.get("ema") is not None:
            rec["ema"] = h(r["ema"])
        logs = {}
        for f in sorted(Path(d).rglob("log.jsonl")):
            lines = [json.loads(l) for l in f.read_text().splitlines()]
            logs[str(f.relative_to(d))] = [{k: v for k, v in l.items() if not k.startswith("time")} for l in lines]
        rec["logs"] = logs
        res[name] = rec
        print(name, rec["generator"], flush=True)
Path(out_path).write_text(json.dumps(res, indent=1, sort_keys=True))
