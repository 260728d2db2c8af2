"""Measured activation cost per video token of ONE Wan2.1-14B-shaped transformer block, with and
without activation checkpointing, for the three ways the V-PAE networks back-propagate through a block.

    .venv/bin/python benchmarks/activation_cost.py [--tokens 256 512 --dtype bfloat16]

The block is diffusers' WanTransformer3DModel built with num_layers=1 and Wan2.1-I2V-14B's dims (dim 5120 =
40 heads x 128, FFN 13824, cross-attention over 257 image + 512 text tokens, qk RMS norm across heads,
cross_attn_norm), random weights. The model's own pre-processing (rope, patch embedding, condition embedder)
runs without grad to make the block's inputs, exactly as WanBackbone.features() feeds its blocks; then ONE block
forward runs with grad, inside torch.autograd.graph.saved_tensors_hooks that record every tensor autograd
saves for backward, deduplicated by storage (untyped_storage data_ptr -> nbytes). Parameter storages are not
activations and are left out. Storages that are the block's shared inputs (context = image+text tokens, the
timestep projection, the rotary tables: one copy per forward, shared by all 40 blocks) are reported apart.
No backward is run: what autograd saves is fixed at the end of the forward.

Modes (which tensors require grad decides what autograd saves):
  trained  every weight trainable; the block input, context and timestep projection require grad
           (the generator in both phases; a 'trained' discriminator backbone)
  input    weights frozen, only the block input requires grad (phase II: the EMA backbone read through
           features() with the gradient flowing to the generated video)
  lora     weights frozen + the fake-score peft LoRA (rank 64 on PrimingConfig.lora_targets) trainable, the
           block input requires grad (phase I: the fake-score update)
Checkpointing: diffusers' gradient checkpointing (model.enable_gradient_checkpointing(), what the project's
model.gradient_checkpointing sets), called as WanBackbone.features() calls it
(model._gradient_checkpointing_func(block, ...), torch.utils.checkpoint non-reentrant). Non-reentrant
checkpointing keeps the block's inputs alive for the recomputation without going through saved-tensor hooks,
so with checkpointing the retained bytes = saved (hooks) + the block input (counted here explicitly); during
the backward one block at a time is recomputed, whose saved bytes are the no-checkpointing figure.

Two token counts give per-token slope and constant: bytes(N) = slope * N + constant. Writes
outputs/benchmarks/activation_cost.json.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from memory_arithmetic import wan14b_config  # noqa: E402
from reporting import OUT_DIR, ROOT, command_line, machine_info, machine_line, md_table  # noqa: E402

MODES = ("trained", "input", "lora")
TEXT_TOKENS, IMAGE_TOKENS = 512, 257


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokens", type=int, nargs="+", default=[256, 512, 768],
                   help="video token counts (multiples of 256); the fit uses the first and last, the others check it")
    p.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"))
    p.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    p.add_argument("--lora-rank", type=int, default=64)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--t2v", action="store_true", help="T2V block (no image tokens / added k,v)")
    p.add_argument("--out", default="", help="JSON path (default outputs/benchmarks/activation_cost.json)")
    return p.parse_args(argv)


def build_model(args):
    from diffusers import WanTransformer3DModel
    cfg = {**wan14b_config(), "num_layers": 1}
    if args.t2v:
        cfg.update(in_channels=16, image_dim=None, added_kv_proj_dim=None)
    dtype = getattr(torch, args.dtype)
    torch.manual_seed(0)
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # build directly in the target dtype (no fp32 copy of 0.6 B params)
    try:
        model = WanTransformer3DModel(**cfg)
    finally:
        torch.set_default_dtype(old)
    # what from_pretrained(torch_dtype=bf16) does (diffusers' _keep_in_fp32_modules: norms, rope, time embedder,
    # scale_shift_table stay float32), so the block's dtypes are the loaded 14B model's
    keep = getattr(model, "_keep_in_fp32_modules", None) or []
    for name, t in list(model.named_parameters()) + list(model.named_buffers()):
        if any(k in name.split(".") for k in keep):
            t.data = t.data.float()
    return model.eval(), cfg


def block_inputs(backbone, n_tokens: int, i2v: bool, dtype):
    """The inputs features() gives block 0 for a latent of n_tokens tokens (batch 1), made without grad."""
    from vpae.conditioning import Conditioning
    m = backbone.model
    side = 32  # latent 32 x 32 -> 16 x 16 = 256 tokens per latent frame (patch 1x2x2)
    frames = n_tokens // 256
    assert frames * 256 == n_tokens, "token counts must be multiples of 256"
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, 16, frames, side, side, generator=g)
    text = torch.randn(1, TEXT_TOKENS, 4096, generator=g)
    kw = {}
    if i2v:
        kw = dict(image=torch.randn(1, IMAGE_TOKENS, 1280, generator=g), cond_latent=torch.randn_like(x),
                  cond_mask=torch.ones(1, 4, frames, side, side))
    cond = Conditioning(text=text, **kw)
    with torch.no_grad():
        inp = backbone.model_inputs(x, torch.full((1,), 0.95), cond)
        hidden = inp["hidden_states"]
        rotary = m.rope(hidden)
        hidden = m.patch_embedding(hidden).flatten(2).transpose(1, 2).contiguous()
        _, temb, text_e, image_e = m.condition_embedder(inp["timestep"], inp["encoder_hidden_states"],
                                                        inp["encoder_hidden_states_image"])
        temb = temb.unflatten(1, (6, -1))
        context = torch.cat([image_e, text_e], dim=1) if image_e is not None else text_e
    assert hidden.shape[1] == n_tokens, hidden.shape
    return hidden, context, temb, rotary


class SavedBytes:
    """saved_tensors_hooks that record every saved tensor's storage once (parameters excluded)."""

    def __init__(self, exclude: set[int], shared: dict[int, str]):
        self.exclude, self.shared = exclude, shared
        self.storages: dict[int, tuple[int, str]] = {}

    def pack(self, t):
        s = t.untyped_storage()
        ptr = s.data_ptr()
        if ptr not in self.exclude and ptr not in self.storages:
            self.storages[ptr] = (s.nbytes(), f"{tuple(t.shape)} {str(t.dtype).replace('torch.', '')}")
        return t

    @staticmethod
    def unpack(t):
        return t

    def split(self) -> tuple[int, int, list]:
        own = sum(nb for p, (nb, _) in self.storages.items() if p not in self.shared)
        shared = sum(nb for p, (nb, _) in self.storages.items() if p in self.shared)
        top = sorted(((nb, d) for p, (nb, d) in self.storages.items() if p not in self.shared), reverse=True)
        return own, shared, top


def measure(model, backbone, mode: str, checkpoint: bool, n_tokens: int, i2v: bool, dtype) -> dict:
    hidden, context, temb, rotary = block_inputs(backbone, n_tokens, i2v, dtype)
    hidden = hidden.detach().requires_grad_(True)
    if mode == "trained":
        context = context.detach().requires_grad_(True)
        temb = temb.detach().requires_grad_(True)
    block = model.blocks[0]
    exclude = {p.untyped_storage().data_ptr() for p in model.parameters()}
    shared = {t.untyped_storage().data_ptr(): name for name, t in
              (("context", context), ("temb", temb), ("rope_cos", rotary[0]), ("rope_sin", rotary[1]))}
    rec = SavedBytes(exclude, shared)
    model.gradient_checkpointing = checkpoint
    t0 = time.perf_counter()
    with torch.autograd.graph.saved_tensors_hooks(rec.pack, rec.unpack):
        if checkpoint:
            out = model._gradient_checkpointing_func(block, hidden, context, temb, rotary)
        else:
            out = block(hidden, context, temb, rotary)
    seconds = time.perf_counter() - t0
    assert out.requires_grad
    own, shared_b, top = rec.split()
    # non-reentrant checkpoint keeps the block's inputs for the recomputation; torch saves them as saved tensors
    # of a no-op autograd node (seen by the hooks above); count the block input explicitly only if it was not
    in_ptr = hidden.untyped_storage().data_ptr()
    retained_input = hidden.untyped_storage().nbytes() if checkpoint and in_ptr not in rec.storages else 0
    res = {"mode": mode, "checkpoint": checkpoint, "tokens": n_tokens, "saved_block_bytes": own,
           "saved_shared_input_bytes": shared_b, "checkpoint_retained_input_bytes": retained_input,
           "block_bytes": own + retained_input, "n_saved_storages": len(rec.storages),
           "forward_s": seconds, "top_saved": [f"{nb / 2**20:.2f} MiB {d}" for nb, d in top[:12]],
           "output_bytes": out.untyped_storage().nbytes()}
    del out, rec, hidden, context, temb, rotary
    gc.collect()
    return res


def rss_gib() -> float:
    import re
    m = re.search(r"^VmHWM:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M)
    return int(m.group(1)) / 2 ** 20 if m else float("nan")


def main(argv=None):
    args = parse(argv)
    torch.set_num_threads(args.threads)
    from vpae.backbones.wan import WanBackbone
    from vpae.config import PrimingConfig
    from vpae.training import model as M
    info = machine_info(argparse.Namespace(device="cpu"))
    dtype = getattr(torch, args.dtype)
    i2v = not args.t2v
    t0 = time.perf_counter()
    model, cfg = build_model(args)
    model.enable_gradient_checkpointing()  # installs _gradient_checkpointing_func; toggled per measurement
    backbone = WanBackbone(model, TEXT_TOKENS)
    n_block = sum(p.numel() for p in model.blocks[0].parameters())
    n_model = sum(p.numel() for p in model.parameters())
    build_s = time.perf_counter() - t0
    results = []
    for mode in args.modes:
        if mode == "lora":
            M.add_lora(backbone, M.FAKE_ADAPTER, args.lora_rank, args.lora_rank, PrimingConfig().lora_targets)
            model.requires_grad_(False)
            for n, p in model.named_parameters():
                if "lora_" in n:
                    p.requires_grad_(True)
        else:
            model.requires_grad_(mode == "trained")
        for ckpt in (False, True):
            for n in args.tokens:
                r = measure(model, backbone, mode, ckpt, n, i2v, dtype)
                results.append(r)
                print(f"{mode:8s} ckpt={ckpt!s:5s} N={n:5d}: block {r['block_bytes'] / 2**20:8.1f} MiB, shared "
                      f"inputs {r['saved_shared_input_bytes'] / 2**20:6.1f} MiB, {r['forward_s']:.1f} s", flush=True)

    # ---- per-token slope and constant
    n1, n2 = args.tokens[0], args.tokens[-1]
    fits = {}
    rows = []
    for mode in args.modes:
        for ckpt in (False, True):
            a, b = (next(r for r in results if r["mode"] == mode and r["checkpoint"] == ckpt and r["tokens"] == n)
                    for n in (n1, n2))
            slope = (b["block_bytes"] - a["block_bytes"]) / (n2 - n1)
            const = a["block_bytes"] - slope * n1
            sh_slope = (b["saved_shared_input_bytes"] - a["saved_shared_input_bytes"]) / (n2 - n1)
            sh_const = a["saved_shared_input_bytes"] - sh_slope * n1
            key = f"{mode}/{'ckpt' if ckpt else 'no_ckpt'}"
            check = [(r["tokens"], r["block_bytes"] - (slope * r["tokens"] + const)) for r in results
                     if r["mode"] == mode and r["checkpoint"] == ckpt and r["tokens"] not in (n1, n2)]
            fits[key] = {"per_token_bytes": slope, "constant_bytes": const, "shared_per_token_bytes": sh_slope,
                         "shared_constant_bytes": sh_const, "per_token_in_hidden_units": slope / (5120 * dtype.itemsize),
                         "fit_residual_bytes_at_other_tokens": check}
            rows.append([mode, "on" if ckpt else "off", a["block_bytes"] / 2**20, b["block_bytes"] / 2**20,
                         slope / 1024, slope / (5120 * dtype.itemsize), const / 2**20,
                         f"{sh_slope / 1024:.1f} KiB/tok + {sh_const / 2**20:.1f} MiB",
                         ", ".join(f"{n}: {d / 2**20:+.2f}" for n, d in check) or "-"])
    peak = rss_gib()
    out = [f"# Activation cost of one Wan2.1-14B-shaped block\n\n`{command_line()}`\n",
           machine_line(info, argparse.Namespace(device="cpu")),
           f"Block: {'I2V' if i2v else 'T2V'}, dim 5120 (40 x 128), FFN 13824, context {IMAGE_TOKENS if i2v else 0} image + "
           f"{TEXT_TOKENS} text tokens, {args.dtype}; {n_block / 1e6:.1f} M params in the block, {n_model / 1e6:.1f} M "
           f"in the 1-layer model (embedders included); batch 1; video tokens {n1} and {n2}. Build {build_s:.0f} s; "
           f"process peak RSS {peak:.1f} GiB.\n",
           "Bytes retained for backward by ONE block (saved tensors, dedup by storage, parameters excluded; with "
           "checkpointing + the block input kept for recomputation). Shared inputs (context, timestep projection, "
           "rotary tables) are one copy per forward for all blocks and are listed apart.\n",
           md_table([ "mode", "checkpointing", f"MiB @ {n1}", f"MiB @ {n2}", "KiB / token", "/ token in units of "
                        "5120 x dtype", "constant MiB", "shared inputs saved",
                        "fit residual MiB (middle N)"], rows)]
    top = next(r for r in results if r["mode"] == args.modes[0] and not r["checkpoint"] and r["tokens"] == n2)
    out.append(f"\nLargest saved storages ({top['mode']}, no checkpointing, {n2} tokens): "
               + "; ".join(top["top_saved"]) + "\n")
    text = "\n".join(out)
    print(text)
    path = Path(args.out) if args.out else OUT_DIR / "activation_cost.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"command": command_line(), "args": vars(args), "machine": info, "config": cfg,
                                "block_params": n_block, "model_params": n_model, "results": results, "fits": fits,
                                "peak_rss_gib": peak, "report_markdown": text}, indent=1, default=str))
    print(f"wrote {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")


if __name__ == "__main__":
    main()
