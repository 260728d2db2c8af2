"""One GPU, a few minutes: a random Wan2.1-T2V-1.3B-shaped model in bf16 at a 480p-like latent
(16 x 21 x 60 x 104 = 32,760 tokens): phase I and phase II step time and peak memory (unified vs trained
discriminator backbone), and 1-NFE vs 100-NFE latency.

    .venv/bin/python benchmarks/gpu_wan_1_3b.py            # CUDA; prints a Markdown table, writes JSON
    .venv/bin/python benchmarks/gpu_wan_1_3b.py --tiny     # the same code path on CPU, tiny config (a test)

Model: diffusers WanTransformer3DModel with Wan2.1-T2V-1.3B's config (30 layers, dim 1536 = 12 heads x 128, FFN
8960, text 4096, patch 1x2x2, in = out = 16), random weights, model.dtype bfloat16 and model.gradient_checkpointing
true as configs/wan/t2v_1_3b.yaml; text = 512 tokens of width 4096 (random; umT5's width). Networks and phases are
the project's own: recipes.build_networks, methods.vpae.PrimingPhase (K = --fake-updates; paper 5),
methods.vpae.EquilibriumPhase with backbone unified / trained (semantic head; sds_lambda from --sds-lambda, 0 as the
T2V config: no C-SDS without an image), each stepped with its optimizers by loop.PhaseStepper. Sampling:
sampling.one_step_sample (1 NFE) with the generator, sampling.teacher_sample (50 Euler steps, CFG 5 = 100 NFE)
with the teacher's real score; the VAE decode is not included.

Each variant is built after the previous one is freed; its peak = torch.cuda.max_memory_allocated() after
reset_peak_memory_stats(), minus the bytes allocated before it was built (weights, grads, optimizer states and
activations of the variant). Step time: median of --repeats steps after --warmup, each bracketed by
torch.cuda.synchronize(). Writes outputs/benchmarks/gpu_wan_1_3b.json (--tiny: gpu_wan_1_3b_tiny.json).
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from reporting import OUT_DIR, ROOT, command_line, machine_info, md_table  # noqa: E402

TEXT_LEN, TEXT_DIM = 512, 4096


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true", help="tiny model on CPU (tests the code path)")
    p.add_argument("--device", default="", help="default: cuda (cpu with --tiny)")
    p.add_argument("--latent", type=int, nargs=3, default=[21, 60, 104], help="latent frames, height, width")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--fake-updates", type=int, default=1, help="priming.fake_updates_per_generator (paper 5)")
    p.add_argument("--sds-lambda", type=float, default=0.0, help="equilibrium.sds_lambda (T2V config: 0)")
    p.add_argument("--no-checkpointing", action="store_true", help="model.gradient_checkpointing false")
    p.add_argument("--variants", nargs="+", default=["phase1", "phase2_unified", "phase2_trained", "sampling"])
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--teacher-steps", type=int, default=50, help="Euler steps of the CFG baseline (x2 NFE)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="")
    args = p.parse_args(argv)
    if args.tiny:
        args.device = args.device or "cpu"
        args.latent = [5, 16, 16]
        args.teacher_steps = min(args.teacher_steps, 3)
    args.device = args.device or "cuda"
    return args


def wan_config(tiny: bool) -> dict:
    if tiny:
        return dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=32, in_channels=16, out_channels=16,
                    text_dim=TEXT_DIM, freq_dim=256, ffn_dim=128, num_layers=2, cross_attn_norm=True,
                    qk_norm="rms_norm_across_heads", eps=1e-6, image_dim=None, added_kv_proj_dim=None,
                    rope_max_seq_len=1024)
    # Wan-AI/Wan2.1-T2V-1.3B-Diffusers transformer/config.json
    return dict(patch_size=(1, 2, 2), num_attention_heads=12, attention_head_dim=128, in_channels=16, out_channels=16,
                text_dim=TEXT_DIM, freq_dim=256, ffn_dim=8960, num_layers=30, cross_attn_norm=True,
                qk_norm="rms_norm_across_heads", eps=1e-6, image_dim=None, added_kv_proj_dim=None, rope_max_seq_len=1024)


def make_cfg(args, backbone: str = "unified"):
    from vpae.config import (
        DataConfig,
        EquilibriumConfig,
        ModelConfig,
        PrimingConfig,
        SamplingConfig,
        TrainConfig,
        VPAEConfig,
    )
    return VPAEConfig(
        model=ModelConfig(wan_config=wan_config(args.tiny), text_len=TEXT_LEN, dtype="bfloat16",
                          gradient_checkpointing=not args.no_checkpointing),
        data=DataConfig(frames=81, height=480, width=832),  # the clip the latent stands for (not read by the networks)
        sampling=SamplingConfig(shift=3.0, teacher_steps=args.teacher_steps, guidance=5.0),
        priming=PrimingConfig(batch_size=args.batch, fake_updates_per_generator=args.fake_updates),
        equilibrium=EquilibriumConfig(batch_size=args.batch, backbone=backbone, head="semantic", sds_lambda=args.sds_lambda),
        train=TrainConfig(device=args.device, seed=0),
    )


def make_batch(args):
    from vpae.conditioning import Conditioning
    f, h, w = args.latent
    g = torch.Generator().manual_seed(1)
    x = torch.randn(args.batch, 16, f, h, w, generator=g)
    text = torch.randn(args.batch, TEXT_LEN, TEXT_DIM, generator=g)
    cond = Conditioning(text=text, negative_text=torch.zeros_like(text))
    return x.to(args.device), cond.to(args.device)


def sync(args):
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()


class Meter:
    def __init__(self, args):
        self.cuda = args.device.startswith("cuda")

    def begin(self):
        gc.collect()
        if self.cuda:
            torch.cuda.empty_cache()
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        else:
            self.base = 0

    def now(self) -> int:
        return torch.cuda.memory_allocated() - self.base if self.cuda else 0

    def peak(self) -> int:
        if not self.cuda:
            return 0
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - self.base


def timed(args, fn, n: int) -> list[float]:
    out = []
    for _ in range(n):
        sync(args)
        t = time.perf_counter()
        fn()
        sync(args)
        out.append(time.perf_counter() - t)
    return out


def run_step_variant(args, name: str) -> dict:
    from types import SimpleNamespace

    from vpae import randomness
    from vpae.recipes import build_method, build_networks
    from vpae.training.loop import PhaseStepper, step_seed
    from vpae.training.methods.vpae import EquilibriumPhase, PrimingPhase
    meter = Meter(args)
    meter.begin()
    backbone = "trained" if name.endswith("trained") else "unified"
    cfg = make_cfg(args, backbone)
    t0 = time.perf_counter()
    data = SimpleNamespace(sizes=SimpleNamespace(text_dim=TEXT_DIM, image_dim=None))
    nets = build_networks(cfg, data, build_method(cfg))
    # phase II as run_distill starts it: the EMA (and the 'trained' copy) made now, then its optimizers
    stepper = PhaseStepper(PrimingPhase(nets, cfg) if name == "phase1" else EquilibriumPhase(nets, cfg))
    build_s = time.perf_counter() - t0
    x, cond = make_batch(args)
    params = sum(p.numel() for p in nets.generator.parameters())
    after_build = meter.now()
    i = [0]

    def one():
        seed = step_seed(0, name, i[0])
        torch.manual_seed(seed)
        with randomness.batch_stream(seed, 0):
            stepper.step(i[0], x, cond)
        i[0] += 1

    warm = timed(args, one, args.warmup)
    times = timed(args, one, args.repeats)
    res = {"variant": name, "generator_params": params, "build_s": build_s, "warmup_s": warm, "step_s": times,
           "median_step_s": statistics.median(times), "after_build_bytes": after_build, "peak_bytes": meter.peak()}
    return res  # the variant's networks, optimizers and batch are freed with this frame (main then collects)


def run_sampling(args) -> dict:
    from vpae.models import build_teacher
    from vpae.sampling import initial_noise, one_step_sample, teacher_sample
    from vpae.training import model as M
    meter = Meter(args)
    meter.begin()
    cfg = make_cfg(args)
    teacher = build_teacher(cfg)
    teacher.requires_grad_(False)
    generator = M.copy_generator(teacher)  # a one-step generator has the teacher's architecture
    generator.requires_grad_(False)
    x, cond = make_batch(args)
    noise = initial_noise(x.shape, 0, args.device)
    s = cfg.sampling
    res = {"variant": "sampling"}
    one_step_sample(generator, noise, cond)  # warm-up
    r1 = []
    for _ in range(max(1, args.repeats)):
        sync(args)
        t = time.perf_counter()
        out = one_step_sample(generator, noise, cond)
        sync(args)
        r1.append(time.perf_counter() - t)
    res["one_step"] = {"nfe": out.nfe, "seconds": r1, "median_s": statistics.median(r1)}
    sync(args)
    t = time.perf_counter()
    out = teacher_sample(teacher, noise, cond, steps=s.teacher_steps, guidance=s.guidance, shift=s.shift)
    sync(args)
    res["teacher"] = {"nfe": out.nfe, "seconds": time.perf_counter() - t, "steps": s.teacher_steps,
                      "guidance": s.guidance}
    res["speedup"] = res["teacher"]["seconds"] / res["one_step"]["median_s"]
    res["peak_bytes"] = meter.peak()
    del teacher, generator
    return res


def main(argv=None):
    args = parse(argv)
    torch.set_num_threads(args.threads)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run with --tiny (CPU) or on a GPU machine")
    info = machine_info(argparse.Namespace(device="cuda" if args.device.startswith("cuda") else "cpu"))
    if args.device.startswith("cuda"):
        info["gpu_total_gib"] = torch.cuda.get_device_properties(0).total_memory / 2 ** 30
        torch.backends.cuda.matmul.allow_tf32 = True
    f, h, w = args.latent
    tokens = f * (h // 2) * (w // 2)
    results = {}
    t_all = time.perf_counter()
    for v in args.variants:
        print(f"... {v}", flush=True)
        results[v] = run_sampling(args) if v == "sampling" else run_step_variant(args, v)
        gc.collect()
        if args.device.startswith("cuda"):
            torch.cuda.empty_cache()
    wall = time.perf_counter() - t_all

    gib = lambda b: b / 2 ** 30  # noqa: E731
    rows = []
    for v in args.variants:
        r = results[v]
        if v == "sampling":
            continue
        rows.append([v, f"{r['median_step_s']:.3f}", " ".join(f"{t:.3f}" for t in r["step_s"]),
                     f"{gib(r['after_build_bytes']):.2f}", f"{gib(r['peak_bytes']):.2f}"])
    if "phase2_unified" in results and "phase2_trained" in results:
        u, t = results["phase2_unified"], results["phase2_trained"]
        rows.append(["trained / unified", f"{t['median_step_s'] / u['median_step_s']:.2f}", "",
                     f"{t['after_build_bytes'] / max(1, u['after_build_bytes']):.2f}",
                     f"{t['peak_bytes'] / max(1, u['peak_bytes']):.2f}"])
    name = "Wan2.1-T2V-1.3B-shaped" if not args.tiny else "TINY (code-path test, not a measurement)"
    gpu = info.get("gpu", "none (CPU)")
    n_params = results.get("phase1", results.get("phase2_unified", {})).get("generator_params", 0)
    text = [f"# {name}: phase step time, peak memory, 1-NFE vs 100-NFE\n\n`{command_line()}`\n",
            f"Device {args.device} ({gpu}), torch {info['torch']}. Model {n_params:,} params, bf16, "
            f"gradient checkpointing {'off' if args.no_checkpointing else 'on'}; batch {args.batch}, latent 16x{f}x{h}x{w} "
            f"({tokens:,} tokens), text {TEXT_LEN}x{TEXT_DIM}; phase I K = {args.fake_updates}; phase II semantic head, "
            f"C-SDS lambda {args.sds_lambda}. Whole run {wall:.0f} s.\n",
            md_table(["variant", "step s (median)", "raw s", "GiB after build", "peak GiB (max_memory_allocated)"], rows)]
    if "sampling" in results:
        s = results["sampling"]
        text.append(f"\nLatency (no VAE): 1 NFE {s['one_step']['median_s']:.3f} s; teacher {s['teacher']['nfe']} NFE "
                    f"({s['teacher']['steps']} Euler steps, CFG {s['teacher']['guidance']}) "
                    f"{s['teacher']['seconds']:.2f} s; "
                    f"speed-up {s['speedup']:.0f}x; peak {gib(s['peak_bytes']):.2f} GiB.\n")
    report = "\n".join(text)
    print(report)
    default = "gpu_wan_1_3b_tiny.json" if args.tiny else "gpu_wan_1_3b.json"
    path = Path(args.out) if args.out else OUT_DIR / default
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"command": command_line(), "args": vars(args), "machine": info, "tokens": tokens,
                                "results": results, "wall_s": wall, "report_markdown": report}, indent=1))
    print(f"wrote {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")


if __name__ == "__main__":
    main()
