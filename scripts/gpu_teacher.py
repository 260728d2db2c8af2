"""Train toy-teacher candidates on a GPU machine and evaluate them with the oracle (device run)."""
import json, sys, time, os
import torch
sys.path.insert(0, "src")
from vpae.config import load_config
from vpae.pipeline import run_pretrain, build_data, ToyData
from vpae.training.roles import load_wan_backbone
from vpae.toy_eval import direction_sensitivity, teacher_methods, oracle_eval

name, steps, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
overrides = sys.argv[4:]
cfg = load_config("configs/toy/teacher.yaml", [f"pretrain.steps={steps}", "train.device=" + os.environ.get("DEV", "cuda"), "train.num_workers=" + os.environ.get("NW", "6"),
                                               "data.caption_bank=.cache/toy_captions.safetensors", "train.checkpoint_every=1000", "train.log_every=250"] + overrides)
t0 = time.time()
r = run_pretrain(cfg, f"{out}/run_{name}", f"{out}/teacher_{name}", progress=False)
train_s = time.time() - t0
data = build_data(cfg)
batch = data.heldout(64)
res = {"name": name, "train_seconds": train_s, "overrides": overrides, "last": r["last"], "steps": r["step"]}
from vpae.toy_eval import Method
for which in ("", "_raw"):
    teacher = load_wan_backbone(f"{out}/teacher_{name}{which}").to(cfg.train.device)
    res["direction_sensitivity" + which] = direction_sensitivity(teacher, data, batch)  # ~1.0: direction word ignored
    for m in teacher_methods(cfg.sampling.teacher_steps, cfg.sampling.guidance, cfg.sampling.shift) + [
            Method("teacher 50 steps w=1", "euler", 50, 1.0, 3.0), Method("teacher 50 steps w=3", "euler", 50, 3.0, 3.0)]:
        rep, _ = oracle_eval(teacher, data, batch, m)
        res[m.name + which] = {k: round(v, 3) for k, v in rep.items()}
print(json.dumps(res))
json.dump(res, open(f"{out}/teacher_{name}/result.json", "w"), indent=1)
