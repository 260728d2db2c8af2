"""Train toy-teacher candidates on a GPU machine and evaluate them with the oracle (device run)."""
import json, sys, time, os
import torch
sys.path.insert(0, "src")
from vpae.config import load_config
from vpae.pipeline import run_pretrain, build_data, ToyData
from vpae.training.roles import load_wan_backbone
from vpae.toy_eval import teacher_methods, oracle_eval

name, steps, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
overrides = sys.argv[4:]
cfg = load_config("configs/toy/teacher.yaml", [f"pretrain.steps={steps}", "train.device=" + os.environ.get("DEV", "cuda"), "train.num_workers=" + os.environ.get("NW", "6"),
                                               "data.caption_bank=.cache/toy_captions.safetensors", "train.checkpoint_every=1000", "train.log_every=250"] + overrides)
t0 = time.time()
r = run_pretrain(cfg, f"{out}/run_{name}", f"{out}/teacher_{name}", progress=False)
train_s = time.time() - t0
data = build_data(cfg)
teacher = load_wan_backbone(f"{out}/teacher_{name}").to(cfg.train.device)
batch = data.heldout(64)
res = {"name": name, "train_seconds": train_s, "overrides": overrides, "last": r["last"]}
for m in teacher_methods(cfg.sampling.teacher_steps, cfg.sampling.guidance, cfg.sampling.shift):
    rep, _ = oracle_eval(teacher, data, batch, m)
    res[m.name] = rep
for g in (1.0, 3.0):
    from vpae.toy_eval import Method
    rep, _ = oracle_eval(teacher, data, batch, Method(f"teacher 50 steps w={g}", "euler", 50, g, 3.0))
    res[f"teacher 50 steps w={g}"] = rep
print(json.dumps(res, indent=1))
json.dump(res, open(f"{out}/teacher_{name}/result.json", "w"), indent=1)
