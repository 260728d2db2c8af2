"""usage: python research/diagnostics/diag_mode_switch.py GENERATOR_DIR [...]   (e.g. outputs/demo/run/generator, src/vpae/toy/teacher)

Where in noise space does a 1-NFE generator draw partial averages? For two-mode held-out conditions, take
noise pairs whose samples land in different modes and walk the great circle between them (slerp, 17 points):
the share of points assigned to no mode is the width of the switch between the modes."""
import argparse, torch, numpy as np
from vpae.config import load_config
from vpae.toy.data import ToyData
from vpae.models import load_wan_backbone
from vpae.sampling import predict_x0
from vpae.toy.world import caption_modes
from vpae.toy.oracle import assign_mode
ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[1])
ap.add_argument("generators", nargs="+", help="diffusers folders of 1-NFE generators")
a = ap.parse_args()
torch.set_num_threads(1)
cfg = load_config("configs/toy/demo.yaml"); data = ToyData(cfg); wc = data.world.cfg
text_len = cfg.model.text_len or cfg.data.text_tokens
batch = data.heldout(64); x, cond = data.encode(batch)
idx = [i for i, p in enumerate(batch.params) if len(caption_modes(p, wc)) > 1]
def slerp(a, b, u):
    om = torch.arccos((a * b).sum() / (a.norm() * b.norm()))
    return (torch.sin((1 - u) * om) * a + torch.sin(u * om) * b) / torch.sin(om)
for gdir in a.generators:
    gen = load_wan_backbone(gdir, torch.float32, text_len).eval()
    widths, switches, pairs = [], [], 0
    with torch.no_grad():
        for i in idx:
            c = cond[i:i + 1]
            zs = [torch.randn((1,) + x.shape[1:], generator=torch.Generator().manual_seed(1000 * i + k)) for k in range(8)]
            modes = [assign_mode(predict_x0(gen, z, torch.ones(1), c)[0][0].numpy(), batch.params[i], wc) for z in zs]
            a = next((k for k, m in enumerate(modes) if m == 0), None); b = next((k for k, m in enumerate(modes) if m == 1), None)
            if a is None or b is None:
                continue
            pairs += 1
            path = [assign_mode(predict_x0(gen, slerp(zs[a], zs[b], u), torch.ones(1), c)[0][0].numpy(), batch.params[i], wc)
                    for u in np.linspace(0, 1, 17)]
            widths.append(np.mean([m is None for m in path]))
            switches.append(sum(1 for p, q in zip(path, path[1:]) if p != q))
    print(f"{gdir}: {pairs} pairs over {len(idx)} two-mode conditions; share of the path in no mode "
          f"{np.mean(widths):.2f}; changes of assignment along a path {np.mean(switches):.1f} (1 or 2 = one clean switch)")
