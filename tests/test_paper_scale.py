"""Paper scale on CPU/gloo: the device mesh (dp x cp, diffusers' context parallelism), gradient accumulation,
per-role precision, a divergence on one rank, kills and resumes across meshes; each against the 1-process run.

The 1-process reference runs the demo's two phases on a global batch of 4 (2 steps each, phase II with the
mode-seeking term). The same steps are
computed by
- 1 process with train.grad_accum=2 (two micro-batches of 2);
- 4 ranks as dp 2 x cp 2 (each sample's token sequence split over 2 ranks) with grad_accum 2 (micro-batches of 1,
  FSDP2 reducing gradients after the second only).
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_distributed import ROLES, _assert_same_steps, _final, _log, _ok, _torchrun

from vpae.config import load_config
from vpae.recipes import run_distill
from vpae.training.checkpoint import checkpoint_tensors, complete_checkpoints

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "configs/toy/demo.yaml"
STEPS = 2
B4 = [f"priming.steps={STEPS}", f"equilibrium.steps={STEPS}", "priming.batch_size=4", "equilibrium.batch_size=4",
      "train.eval_every=0", "train.checkpoint_every=1", "train.keep_checkpoints=5", "train.log_every=1",
      "equilibrium.diversity_weight=0.5"]  # the mode-seeking pair too is split-invariant
MESH = B4 + ["parallel.dp_shard=2", "parallel.cp=2", "train.grad_accum=2"]


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    run = tmp_path_factory.mktemp("scale") / "one"
    run_distill(load_config(DEMO, B4), run, progress=False)
    return run


@pytest.fixture(scope="module")
def mesh_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("scale") / "mesh"
    _ok(_torchrun(run, MESH, nproc=4))
    return run


def test_gradient_accumulation_takes_the_whole_batch_step(one_process, tmp_path):
    run = tmp_path / "accum"
    run_distill(load_config(DEMO, B4 + ["train.grad_accum=2"]), run, progress=False)
    _assert_same_steps(one_process, run, load_config(DEMO, B4), steps=STEPS)
    # the losses of every step, not only the first: the micro-batches drew the whole batch's noise (the
    # adversarial ones read the heads, whose Adam steps may differ within the bound above)
    for phase in ROLES:
        for ra, rb in zip(_log(one_process, phase), _log(run, phase), strict=True):
            for k in ("loss/dmd", "loss/fake", "loss/c_sds"):
                if k in ra:
                    assert rb[k] == pytest.approx(ra[k], rel=1e-3, abs=1e-6), (phase, ra["step"], k)


def test_grad_accum_must_cut_the_batch_evenly(tmp_path):
    from vpae.errors import VpaeError
    with pytest.raises(VpaeError, match="train.grad_accum=3 equal micro-batches"):
        run_distill(load_config(DEMO, B4 + ["train.grad_accum=3"]), tmp_path / "r", progress=False)


def test_dp2_x_cp2_with_accumulation_takes_the_single_process_steps(mesh_run, one_process, tmp_path):
    _assert_same_steps(one_process, mesh_run, load_config(DEMO, B4), steps=STEPS)
    meta = (mesh_run / f"equilibrium/checkpoints/step_{STEPS:07d}/meta.json").read_text()
    assert '"world_size": 4' in meta
    for r in range(4):  # every rank wrote its shard
        assert (mesh_run / f"equilibrium/checkpoints/step_{STEPS:07d}/__{r}_0.distcp").is_file()
    # the exported generator is the consolidated checkpoint
    exported = load_file(str(mesh_run / "generator" / "diffusion_pytorch_model.safetensors"))
    final = _final(mesh_run, "equilibrium", "generator", STEPS)
    assert {f"model.{k}" for k in exported} == set(final)
    assert all(torch.equal(final[f"model.{k}"], v) for k, v in exported.items())
    # `vpae consolidate`: the same folder from the sharded checkpoint, in one process
    from vpae.recipes import export_checkpoint
    again = load_file(str(export_checkpoint(mesh_run, out=tmp_path / "gen") / "diffusion_pytorch_model.safetensors"))
    assert again.keys() == exported.keys() and all(torch.equal(again[k], v) for k, v in exported.items())


def test_mesh_run_killed_mid_step_and_during_a_save_resumes_bitwise(mesh_run, tmp_path):
    """On the dp 2 x cp 2 mesh: rank 1 is SIGKILLed in priming step 2 while the others are inside that step's
    collectives; the rerun resumes from step 1 and is killed while publishing step 2 (every shard written, not yet
    renamed); the third run resumes from step 1 again. Phase I then ends bitwise equal to the uninterrupted run's
    (phase II left out: it would only repeat the same resume at twice the cost)."""
    run, config = tmp_path / "killed", MESH + ["equilibrium.steps=0"]
    killed = _torchrun(run, config, nproc=4, kill_mid_step="priming:2")
    assert killed.returncode != 0
    assert [c.name for c in complete_checkpoints(run / "priming")] == ["step_0000001"]
    killed = _torchrun(run, config, nproc=4, kill_at_publish="priming/checkpoints/step_0000002")
    assert killed.returncode != 0
    assert [c.name for c in complete_checkpoints(run / "priming")] == ["step_0000001"]
    assert list((run / "priming" / "checkpoints").glob("step_0000002.tmp-*"))
    _ok(_torchrun(run, config, nproc=4))
    assert not list(run.glob("*/checkpoints/*.tmp-*"))
    for role in ROLES["priming"]:
        a, b = _final(mesh_run, "priming", role, STEPS), _final(run, "priming", role, STEPS)
        assert a and all(torch.equal(a[k], b[k]) for k in a), role


def test_resume_across_meshes_dp2cp2_then_cp2_then_one_process(mesh_run, one_process, tmp_path):
    """The dp 2 x cp 2 checkpoints continue on 2 ranks as cp 2 (one more phase II step), then in 1 process (one
    more). The cp 2 step equals the 1-process step from the same checkpoint: cp 2 alone computes the single-process
    step."""
    more = [o for o in B4 if not o.startswith("equilibrium.steps")]
    cp_run, one_run = tmp_path / "cp2", tmp_path / "one"
    for dst in (cp_run, one_run):
        shutil.copytree(mesh_run, dst)
    _ok(_torchrun(cp_run, more + [f"equilibrium.steps={STEPS + 1}", "parallel.cp=2"], nproc=2))
    r = run_distill(load_config(DEMO, more + [f"equilibrium.steps={STEPS + 1}"]), one_run, progress=False)
    assert r["equilibrium"]["resumed_from"] == STEPS
    assert [x["step"] for x in _log(cp_run, "equilibrium")][-1] == STEPS + 1
    _assert_same_steps(one_run, cp_run, load_config(DEMO, B4), steps=STEPS + 1, first_step=STEPS + 1,
                       phases=("equilibrium",))
    r = run_distill(load_config(DEMO, more + [f"equilibrium.steps={STEPS + 2}"]), cp_run, progress=False)
    assert r["equilibrium"]["resumed_from"] == STEPS + 1
    before = _final(cp_run, "equilibrium", "generator", STEPS + 1)
    after = _final(cp_run, "equilibrium", "generator", STEPS + 2)
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_one_rank_diverging_stops_every_rank_in_seconds(tmp_path):
    """Rank 1 alone meets a non-finite DMD gradient in priming step 2. Both ranks agree before the backward and
    end with the one-line error and exit code 2, long before the training timeout."""
    t0 = time.perf_counter()
    proc = _torchrun(tmp_path / "run", B4 + ["parallel.timeout_s=300"], nproc=2, diverge_at="priming:2")
    seconds = time.perf_counter() - t0
    assert proc.returncode != 0
    assert proc.stderr.count("error: non-finite DMD gradient") + proc.stderr.count("error: priming diverged") >= 2, \
        proc.stderr[-3000:]
    assert "exitcode  : 2" in proc.stderr and "Traceback" not in proc.stderr.split("Root Cause")[0].split("error:")[0]
    assert seconds < 120, seconds  # startup included; a hang would last parallel.timeout_s = 300 s
    assert [c.name for c in complete_checkpoints(tmp_path / "run" / "priming")] == ["step_0000001"]


def test_per_role_precision_fp32_masters_move_at_the_papers_lr(tmp_path):
    """The shipped 8-GPU configs' precision (fp32 master weights, bf16 frozen teacher, bf16 compute) on 2 ranks:
    no dtype crash (diffusers keeps some modules in fp32, FSDP2 needs one dtype per unit: the fp32 fake LoRA is a
    unit of its own inside each bf16 teacher block), and one Adam step at the paper's lr 1e-6 changes nearly every
    generator weight, where bf16 master weights keep most of them (the bf16 trap)."""
    shipped = load_config(ROOT / "configs/wan/i2v_14b_480p_8gpu.yaml")
    assert shipped.model.dtype == "float32" and shipped.model.frozen_dtype == "bfloat16"
    precision = [f"model.dtype={shipped.model.dtype}", f"model.frozen_dtype={shipped.model.frozen_dtype}",
                 f"parallel.param_dtype={shipped.parallel.param_dtype}",
                 f"parallel.reduce_dtype={shipped.parallel.reduce_dtype}", "model.gradient_checkpointing=true"]
    one_step = ["priming.steps=1", "equilibrium.steps=1", "priming.batch_size=2", "equilibrium.batch_size=2",
                "train.eval_every=0", "train.log_every=1", "priming.lr=1e-6"]
    _ok(_torchrun(tmp_path / "run", one_step + precision))
    for phase in ROLES:
        (record,) = _log(tmp_path / "run", phase)
        assert all(torch.isfinite(torch.tensor(v)) for k, v in record.items() if k.startswith(("loss/", "grad_norm/")))
    teacher = load_file(str(ROOT / "src/vpae/toy/teacher/diffusion_pytorch_model.safetensors"))
    after = checkpoint_tensors(tmp_path / "run/priming/checkpoints/step_0000001", "model.generator.model.")
    assert all(v.dtype == torch.float32 for v in after.values())
    moved = torch.cat([(after[k] != teacher[k].float()).flatten() for k in teacher]).float().mean()
    assert moved > 0.9, moved
    fake = checkpoint_tensors(tmp_path / "run/priming/checkpoints/step_0000001", "model.fake_lora.")
    assert fake and all(v.dtype == torch.float32 for v in fake.values())
    exported = load_file(str(tmp_path / "run" / "generator" / "diffusion_pytorch_model.safetensors"))
    assert all(v.dtype == torch.float32 for v in exported.values())
    # the trap, in one process: bf16 master weights
    run_distill(load_config(DEMO, one_step + ["model.dtype=bfloat16", "equilibrium.steps=0"]), tmp_path / "bf16",
                phase="priming", progress=False)
    after16 = checkpoint_tensors(tmp_path / "bf16/priming/checkpoints/step_0000001", "model.generator.model.")
    moved16 = torch.cat([(after16[k].float() != teacher[k].to(torch.bfloat16).float()).flatten()
                         for k in teacher]).float().mean()
    assert moved16 < 0.2, moved16


def test_consolidate_a_lora_generator_run_from_either_phase(tmp_path):
    """`vpae consolidate` on a LoRA-generator run: phase II's checkpoint (and phase I's) give the folder the run
    exported (merged weights equal) and the adapter alone."""
    from vpae.recipes import export_checkpoint
    lora = ["priming.steps=1", "equilibrium.steps=1", "priming.batch_size=2", "equilibrium.batch_size=2",
            "train.eval_every=0", "priming.generator_mode=lora", "priming.lora_rank=4", "priming.lora_alpha=4"]
    run = tmp_path / "run"
    run_distill(load_config(DEMO, lora), run, progress=False)
    exported = load_file(str(run / "generator" / "diffusion_pytorch_model.safetensors"))
    again = export_checkpoint(run, out=tmp_path / "gen")
    merged = load_file(str(again / "diffusion_pytorch_model.safetensors"))
    assert merged.keys() == exported.keys() and all(torch.equal(merged[k], v) for k, v in exported.items())
    adapter = load_file(str(tmp_path / "gen_lora" / "pytorch_lora_weights.safetensors"))
    assert adapter and all("lora" in k for k in adapter)
    phase1 = export_checkpoint(run, checkpoint=run / "priming/checkpoints/step_0000001", out=tmp_path / "gen1")
    assert (phase1 / "diffusion_pytorch_model.safetensors").is_file()


def test_generate_with_context_parallelism_equals_one_process(tmp_path):
    """`torchrun --nproc_per_node 2 vpae generate`: the toy model's sequence split over 2 ranks gives the latents
    of one process (bitwise: Ulysses moves whole heads, each attention is computed as in one process)."""
    import subprocess
    import sys

    import numpy as np
    from PIL import Image
    Image.fromarray((np.random.RandomState(0).rand(32, 32, 3) * 255).astype("uint8")).save(tmp_path / "cond.png")
    args = ["-m", "vpae.cli", "generate", "--model", "builtin:toy", "--prompt", "a red circle", "--image",
            str(tmp_path / "cond.png"), "--sampler", "few-step", "--steps", "2"]
    env = {**__import__("os").environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    from vpae.generate import generate_video
    generate_video(model="builtin:toy", out=tmp_path / "one", prompt="a red circle", image=tmp_path / "cond.png",
                   sampler="few-step", steps=2, device="cpu")
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *args,
                          "--out", str(tmp_path / "two")], env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    _ok(two)
    a = load_file(str(tmp_path / "one/latents.safetensors"))["x0"]
    b = load_file(str(tmp_path / "two/latents.safetensors"))["x0"]
    assert torch.equal(a, b)
    assert two.stdout.count("wrote ") == 1  # rank 0 reports


def test_exported_pipeline_under_diffusers_context_parallelism_equals_one_process(tmp_path):
    """scripts/pipeline_cp.py: diffusers' WanImageToVideoPipeline from a `vpae export` folder, its transformer under
    diffusers' own enable_parallelism on 2 ranks, gives the latents of one process."""
    import subprocess
    import sys

    import numpy as np
    from conftest import make_wan, tiny_wan_vae_and_clip
    from diffusers import UniPCMultistepScheduler, WanImageToVideoPipeline
    from PIL import Image
    from safetensors.torch import save_file

    from vpae.export import export_backbone, export_pipeline
    vae, clip, proc = tiny_wan_vae_and_clip()
    WanImageToVideoPipeline(tokenizer=None, text_encoder=None, vae=vae, scheduler=UniPCMultistepScheduler(),
                            image_processor=proc, image_encoder=clip,
                            transformer=make_wan(i2v=True, seed=3).model).save_pretrained(str(tmp_path / "base"))
    gen_dir = export_backbone(make_wan(i2v=True, seed=7), tmp_path / "generator", {"role": "generator"})
    pipeline = export_pipeline(gen_dir, tmp_path / "base", tmp_path / "pipeline")
    Image.fromarray((np.random.RandomState(0).rand(32, 32, 3) * 255).astype("uint8")).save(tmp_path / "cond.png")
    text = torch.randn(7, make_wan().model.config.text_dim, generator=torch.Generator().manual_seed(1))
    save_file({"text": text}, str(tmp_path / "text.safetensors"))
    args = [str(ROOT / "scripts/pipeline_cp.py"), "--pipeline", str(pipeline), "--image", str(tmp_path / "cond.png"),
            "--prompt-embeds", str(tmp_path / "text.safetensors"), "--height", "32", "--width", "32", "--frames", "5",
            "--latents"]
    env = {**__import__("os").environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    import importlib.util
    spec = importlib.util.spec_from_file_location("pipeline_cp", ROOT / "scripts/pipeline_cp.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    script.main(args[1:] + ["--out", str(tmp_path / "one")])  # one process, in this one
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *args,
                          "--out", str(tmp_path / "two")], env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    _ok(two)
    a = load_file(str(tmp_path / "one/latents.safetensors"))["latents"]
    b = load_file(str(tmp_path / "two/latents.safetensors"))["latents"]
    assert a.abs().max() > 0 and torch.equal(a, b)


def test_after_update_work_runs_once_per_step_whatever_the_micro_batches():
    """An EMA or target update (AfterUpdate) runs once per training step, not once per micro-batch; each
    micro-batch's loss is backpropagated with weight 1/micro_batches into one optimizer step."""
    from vpae.training.loop import Optimizers, take_step
    from vpae.training.methods.base import AfterUpdate, OptimizerSpec, Phase, Update

    class Counting(Phase):
        name = "counting"

        def __init__(self):
            self.w = torch.nn.Parameter(torch.zeros(3))
            self.after = 0

        def optimizers(self):
            return {"w": OptimizerSpec([self.w], 0.1, (0.0, 0.0), 0.0, kind="adam")}

        def modules(self):
            return {"w": torch.nn.ParameterList([self.w])}

        def step(self, step, x, cond):
            yield Update("w", (self.w * x).sum(1).mean(), {"loss/x": float(x.mean())})
            yield AfterUpdate(lambda: setattr(self, "after", self.after + 1))

    x = torch.arange(12.0).reshape(4, 3)
    for micro in (1, 2, 4):
        phase = Counting()
        opt = Optimizers(phase.optimizers())
        stats = take_step(phase, opt, 0, x, None, micro_batches=micro)
        assert phase.after == 1, micro
        assert stats["grad_norm/w"] == pytest.approx(float(x.mean(0).norm()), rel=1e-6), micro
        assert stats["loss/x"] == pytest.approx(float(x.mean())), micro


def test_a_run_that_cannot_fit_is_refused_before_loading(tmp_path):
    """Wan2.1-I2V-14B's shape in one process on this CPU: refused with one error line naming the GiB it needs and
    the GiB free, before any weight is read (the shape is counted on the meta device)."""
    from typer.testing import CliRunner

    from vpae.cli import app
    wan14b = ("{patch_size: [1, 2, 2], num_attention_heads: 40, attention_head_dim: 128, in_channels: 36, "
              "out_channels: 16, text_dim: 4096, freq_dim: 256, ffn_dim: 13824, num_layers: 40, cross_attn_norm: true, "
              "qk_norm: rms_norm_across_heads, eps: 1.0e-6, image_dim: 1280, added_kv_proj_dim: 5120}")
    t0 = time.perf_counter()
    r = CliRunner().invoke(app, ["distill", "--config", "configs/wan/i2v_14b_480p.yaml", "--out", str(tmp_path / "r"),
                                 "--set", 'model.teacher=""', "--set", f"model.wan_config={wan14b}",
                                 "--set", "train.device=cpu"])
    assert r.exit_code == 2, r.output
    assert "needs at least" in r.output and "16.39 B parameters" in r.output and "GiB are free" in r.output
    assert time.perf_counter() - t0 < 60
