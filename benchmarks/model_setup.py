"""The benchmarked model and data: the toy world's shapes, the model flags, the Wan config and VPAEConfig
they make, a random batch, the `Variant` a benchmark steps, and the shared start of a benchmark's main()."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from types import SimpleNamespace
from typing import Callable

import torch

# Toy-world data shapes (configs/toy/teacher.yaml, identity codec, MiniLM text, 8x8 patch image tokens).
LATENT_C, MASK_C = 3, 1
TEXT_DIM, TEXT_TOKENS = 384, 24
IMAGE_DIM, IMAGE_PATCH = 192, 8


def add_model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model and data (defaults: configs/toy/teacher.yaml's Wan architecture)")
    g.add_argument("--layers", type=int, default=4, help="Wan blocks")
    g.add_argument("--dim", type=int, default=128, help="hidden width = heads x head_dim")
    g.add_argument("--head-dim", type=int, default=32)
    g.add_argument("--ffn", type=int, default=0, help="FFN width (0: 4 x dim)")
    g.add_argument("--patch", type=int, default=4, help="spatial patch size (temporal 1)")
    g.add_argument("--batch", type=int, default=2)
    g.add_argument("--frames", type=int, default=9, help="latent frames (4n+1)")
    g.add_argument("--size", type=int, default=32, help="latent height = width")
    g.add_argument("--lora-rank", type=int, default=64, help="fake-score LoRA rank (PrimingConfig default 64)")
    g.add_argument("--generator-mode", default="full", choices=("full", "lora"))
    g.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    r = p.add_argument_group("run")
    r.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=("cpu", "cuda"))
    r.add_argument("--repeats", type=int, default=3, help="timed steps per variant (interleaved)")
    r.add_argument("--warmup", type=int, default=1, help="untimed steps per variant first")
    r.add_argument("--mem-steps", type=int, default=1, help="measured steps per variant in the memory subprocess")
    r.add_argument("--threads", type=int, default=1, help="torch intra-op threads (CPU)")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--no-memory", action="store_true", help="skip the per-variant memory subprocesses")
    r.add_argument("--out", default="", help="JSON path (default outputs/benchmarks/<script>.json)")
    r.add_argument("--child", default="", help=argparse.SUPPRESS)


def setup_torch(args) -> None:
    torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda but torch.cuda.is_available() is False")


def wan_config(args) -> dict:
    if args.dim % args.head_dim:
        raise SystemExit(f"--dim {args.dim} is not a multiple of --head-dim {args.head_dim}")
    heads = args.dim // args.head_dim
    return dict(patch_size=(1, args.patch, args.patch), num_attention_heads=heads, attention_head_dim=args.head_dim,
                in_channels=LATENT_C + MASK_C + LATENT_C, out_channels=LATENT_C, text_dim=TEXT_DIM, freq_dim=256,
                ffn_dim=args.ffn or 4 * args.dim, num_layers=args.layers, cross_attn_norm=True,
                qk_norm="rms_norm_across_heads", eps=1e-6, image_dim=IMAGE_DIM, added_kv_proj_dim=args.dim,
                rope_max_seq_len=1024)


def make_cfg(args, priming: dict | None = None, equilibrium: dict | None = None):
    from vpae.config import (
        DataConfig,
        EquilibriumConfig,
        ModelConfig,
        PretrainConfig,
        PrimingConfig,
        TrainConfig,
        VPAEConfig,
    )
    return VPAEConfig(
        model=ModelConfig(wan_config=wan_config(args), text_len=TEXT_TOKENS, dtype=args.dtype),
        data=DataConfig(frames=args.frames, height=args.size, width=args.size, text_tokens=TEXT_TOKENS),
        pretrain=PretrainConfig(batch_size=args.batch),
        priming=PrimingConfig(batch_size=args.batch, lora_rank=args.lora_rank, lora_alpha=args.lora_rank,
                              generator_mode=args.generator_mode, **(priming or {})),
        equilibrium=EquilibriumConfig(batch_size=args.batch, **(equilibrium or {})),
        train=TrainConfig(device=args.device, seed=args.seed),
    )


def data_stub():
    """What recipes.build_networks reads off the data source: the text and image token widths (its ConditionSizes)."""
    return SimpleNamespace(sizes=SimpleNamespace(text_dim=TEXT_DIM, image_dim=IMAGE_DIM))


def make_batch(args, seed: int = 1):
    """Random clean latents and I2V Conditioning of the toy world's shapes (timing does not depend on values)."""
    from vpae.conditioning import Conditioning, first_frame_condition
    g = torch.Generator().manual_seed(seed)
    b, f, s = args.batch, args.frames, args.size
    x = torch.randn(b, LATENT_C, f, s, s, generator=g)
    text = torch.randn(b, TEXT_TOKENS, TEXT_DIM, generator=g)
    n_img = max(1, (s // IMAGE_PATCH) ** 2)
    image = torch.randn(b, n_img, IMAGE_DIM, generator=g)
    cond_latent, cond_mask = first_frame_condition(x[:, :, :1], f, MASK_C)
    cond = Conditioning(text=text, negative_text=torch.zeros_like(text), image=image,
                        cond_latent=cond_latent, cond_mask=cond_mask)
    return x.to(args.device), cond.to(args.device)


# A benchmark variant: something to step, plus what it owns (for byte accounting).
@dataclasses.dataclass
class Variant:
    name: str
    step: Callable[[int], object]       # step(i) runs one optimisation step
    modules: dict                        # network name -> nn.Module
    optimizers: dict                     # name -> torch.optim.Optimizer (a PhaseStepper's: stepper.optimizers.optimizers)
    counter: int = 0

    def __call__(self):
        self.step(self.counter)
        self.counter += 1


def start(argv, parse, make_builders):
    """The shared start of a benchmark's main(): parse argv (default sys.argv[1:]), set torch up, build the
    variant builders. Returns (argv, args, builders); the caller dispatches to child_main when args.child."""
    argv = sys.argv[1:] if argv is None else argv
    args = parse(argv)
    setup_torch(args)
    return argv, args, make_builders(args)
