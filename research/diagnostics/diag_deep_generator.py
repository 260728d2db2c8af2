"""Is the one-step generator's depth the limit on its mode choice? Runs `vpae` with a deeper generator: the teacher's
blocks followed by EXTRA copies of its last blocks whose output projections (self-attention, cross-attention, FFN)
start at zero, so the generator starts as the teacher exactly (checked: max |difference| 0.0 at t = 1) and is saved
as an ordinary diffusers WanTransformer3DModel with more layers. Session 8: 4 extra blocks (8 in all), demo config,
seeds 0 / 1: per-condition mode coverage 0.600 / 0.560 over four noise draws, the same as the 4-block generator's
0.600 / 0.568 (docs/RESULTS.md, "Session 8").

    python research/diagnostics/diag_deep_generator.py EXTRA -- distill --config configs/toy/demo.yaml --out outputs/deep4
    python research/diagnostics/diag_coverage_draws.py outputs/deep4/generator:few_step:1
"""
import copy
import sys

import torch

import vpae.training.model as R
from vpae.cli import app

if len(sys.argv) < 3 or sys.argv[2] != "--" or not sys.argv[1].isdigit():
    print("error: usage: python research/diagnostics/diag_deep_generator.py EXTRA -- <vpae command and options>", file=sys.stderr)
    sys.exit(2)
extra = int(sys.argv[1])
copy_generator = R.copy_generator


def deep_copy_generator(teacher, *args, **kwargs):
    gen = copy_generator(teacher, *args, **kwargs)
    blocks = gen.model.blocks
    n = len(blocks)
    for j in range(extra):
        block = copy.deepcopy(blocks[max(0, n - extra + j)])
        for out in (block.attn1.to_out[0], block.attn2.to_out[0], block.ffn.net[-1]):
            torch.nn.init.zeros_(out.weight)
            torch.nn.init.zeros_(out.bias)
        blocks.append(block)
    gen.model.register_to_config(num_layers=len(blocks))
    gen.num_layers = len(blocks)
    return gen


R.copy_generator = deep_copy_generator
sys.argv = ["vpae"] + sys.argv[3:]
app()
