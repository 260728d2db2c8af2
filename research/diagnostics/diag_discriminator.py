"""usage: python research/diagnostics/diag_discriminator.py [--gen outputs/demo/run/generator] [--head semantic] [--band 0.02,0.2]
       [--steps 300] [--blur 0] [--hd 64]

Offline: train a head on real vs the demo generator's 1-NFE samples, then ask whether its logits rank the
generator's partial averages (two-mode samples the oracle assigns to no mode) below its good two-mode samples."""
import argparse
import numpy as np
import torch
from vpae import flow
from vpae.backbones.base import resolve_layers
from vpae.config import load_config
from vpae.discriminator import SelfDiscriminator, blur_frames, build_head
from vpae.losses import discriminator_loss
from vpae.models import load_wan_backbone
from vpae.recipes import build_data
from vpae.sampling import predict_x0
from vpae.toy.oracle import assign_mode
from vpae.toy.world import caption_modes
torch.set_num_threads(1)
ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[1])
ap.add_argument("--gen", default="outputs/demo/run/generator", help="diffusers folder of the 1-NFE generator")
ap.add_argument("--head", default="semantic", choices=("conv", "ca", "semantic"))
ap.add_argument("--band", default="0.02,0.2", help="re-noising band lo,hi")
ap.add_argument("--steps", type=int, default=300)
ap.add_argument("--blur", type=float, default=0.0)
ap.add_argument("--hd", type=int, default=64, help="head width")
a = ap.parse_args()
head_kind, steps, gdir, blur_sigma = a.head, a.steps, a.gen, a.blur
lo, hi = map(float, a.band.split(","))
def blur(v):
    return blur_frames(v, blur_sigma)
cfg = load_config("configs/toy/demo.yaml"); data = build_data(cfg)
gen = load_wan_backbone(gdir, torch.float32, cfg.model.text_len or cfg.data.text_tokens).requires_grad_(False)
layers = (0.5, 1.0)
torch.manual_seed(1)
heads = build_head(head_kind, feature_dim=gen.feature_dim, num_layers=len(resolve_layers(layers, gen.num_layers)), text_dim=data.sizes.text_dim,
                   image_dim=data.sizes.image_dim, hidden_dim=a.hd, num_queries=2, num_heads=4)
disc = SelfDiscriminator(heads, layers)
opt = torch.optim.Adam(heads.parameters(), lr=1e-3, betas=(0.5, 0.999))
bf = data.batch_fn(8, 5)
for step in range(steps):
    x, cond = bf(step)
    with torch.no_grad():
        fake = predict_x0(gen, torch.randn_like(x), torch.ones(8), cond)[0]
        t = lo + (hi - lo) * torch.rand(8); xr = flow.add_noise(blur(x), torch.randn_like(x), t)
        t2 = lo + (hi - lo) * torch.rand(8); xf = flow.add_noise(blur(fake), torch.randn_like(x), t2)
    loss = discriminator_loss(disc(gen, xr, t, cond, False), disc(gen, xf, t2, cond, False)).mean()
    opt.zero_grad(); loss.backward(); opt.step()
print("final train loss %.3f" % loss.item())
# held-out: two-mode conditions, 4 noises, logits averaged over 4 re-noisings at the band's middle
batch = data.heldout(64)
x, cond = data.encode(batch)
wc = data.world.cfg
good, bad = [], []
tm = torch.full((64,), (lo + hi) / 2)
with torch.no_grad():
    lr_ = sum(disc(gen, flow.add_noise(blur(x), torch.randn_like(x), tm), tm, cond, False) for _ in range(4)) / 4
    for k in range(4):
        g = torch.Generator().manual_seed(100 + k)
        fake = predict_x0(gen, torch.randn(x.shape, generator=g), torch.ones(64), cond)[0]
        lf = sum(disc(gen, flow.add_noise(blur(fake), torch.randn_like(x), tm), tm, cond, False) for _ in range(4)) / 4
        for i, p in enumerate(batch.params):
            if len(caption_modes(p, wc)) < 2:
                continue
            ok = assign_mode(fake[i].numpy(), p, wc) is not None  # toy latents are the videos
            (good if ok else bad).append(float(lf[i] - lr_[i]))
def auc(a, b):  # P(a > b)
    a, b = np.array(a)[:, None], np.array(b)[None]
    return float((a > b).mean() + 0.5 * (a == b).mean())
print(f"{head_kind} band {lo}-{hi}: two-mode fakes good {len(good)} bad {len(bad)}; mean logit-minus-real good "
      f"{np.mean(good):.3f} bad {np.mean(bad):.3f}; AUC(good > bad) {auc(good, bad):.2f}")
