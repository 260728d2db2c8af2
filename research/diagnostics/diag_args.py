"""Shared command-line pieces of the toy diagnostic scripts (diag_coverage_draws.py, diag_mode_histogram.py):
the world options and loading PATH:SAMPLER:STEPS specs with an `error:` line and exit 2 on bad input."""
import sys

import torch

from vpae.config import load_config
from vpae.errors import VpaeError
from vpae.toy.evaluate import sampler_from_spec
from vpae.toy.data import ToyData


def add_world_options(ap) -> None:
    ap.add_argument("specs", nargs="+", help="PATH:SAMPLER:STEPS (sampler few_step or euler)")
    ap.add_argument("--config", default="configs/toy/demo.yaml")
    ap.add_argument("--set", action="append", default=[], help="config override key=value")
    ap.add_argument("--threads", type=int, default=1)


def load_world(a):
    """-> (cfg, ToyData) from the parsed options; sets the thread count."""
    torch.set_num_threads(a.threads)
    cfg = load_config(a.config, a.set)
    return cfg, ToyData(cfg)


def load_sampler(spec: str, cfg):
    """sampler_from_spec, or an error line and exit 2."""
    try:
        return sampler_from_spec(spec, cfg)
    except (ValueError, VpaeError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
