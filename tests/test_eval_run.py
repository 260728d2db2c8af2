"""run_eval / write_report / bench_latency end to end on tiny inputs, and bad-input errors."""

import json
from pathlib import Path
from typing import get_type_hints

import numpy as np
import pytest
import torch

from vpae import sampling
from vpae.cli import eval_command, latency_command
from vpae.errors import VpaeError
from vpae.eval import bench_latency, latency_markdown, run_eval, write_report
from vpae.eval.latency import load_wan_transformer, time_interleaved, tiny_setup
from vpae.eval.metrics import EvalConfig
from vpae.eval.run import discover
from vpae.eval.video import EvalError, VideoError, read_video, write_video


def _video(seed, frames=5, h=48, w=64, moving=True):
    rng = np.random.default_rng(seed)
    base = (rng.random((h // 8, w // 8, 3)) * 255).astype(np.uint8).repeat(8, 0).repeat(8, 1)
    return np.stack([np.roll(base, 2 * t if moving else 0, axis=1) for t in range(frames)])


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("videos")
    from PIL import Image
    (root / "images").mkdir()
    manifest = {}
    for i in range(1):
        v = _video(i)
        Image.fromarray(v[0]).save(root / "images" / f"{i}.png")
        manifest[f"{i:03d}.mp4"] = {"prompt": f"prompt {i}", "image": f"images/{i}.png"}
        write_video(root / "teacher" / f"{i:03d}.mp4", v, fps=8)
        write_video(root / "student" / f"{i:03d}.mp4", _video(i, moving=False), fps=8)
        write_video(root / "reference" / f"{i:03d}.gif", _video(10 + i), fps=8)
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root


def test_video_io_roundtrip(tmp_path):
    v = _video(0)
    for ext in ("gif", "mp4"):
        out, fps = read_video(write_video(tmp_path / f"a.{ext}", v, fps=8))
        assert out.shape == v.shape and fps == pytest.approx(8, rel=0.05)
        assert np.abs(out.astype(int) - v).mean() < (2 if ext == "gif" else 12)
    t = torch.rand(3, 4, 16, 16) * 2 - 1
    assert read_video(write_video(tmp_path / "t.gif", t))[0].shape == (4, 16, 16, 3)


def test_run_eval_end_to_end(folder, tmp_path):
    extra = {"student": {"oracle/pos_err": 0.12}}
    latency = {"teacher": {"nfe": 100, "latency_s": 2.0}, "student": {"nfe": 1, "latency_s": 0.05}}
    res = run_eval(folder, tmp_path / "out", config=EvalConfig(progress=False), extra_metrics=extra, latency=latency)
    assert set(res["methods"]) == {"teacher", "student"}        # reference/ is the FD set, not a method
    t, s = res["methods"]["teacher"], res["methods"]["student"]
    assert s["dimensions"]["dynamic_degree"]["value"] == 0.0 and t["dimensions"]["motion_smoothness"]["value"] < 1.0
    assert s["dimensions"]["subject_consistency"]["value"] == pytest.approx(1.0, abs=1e-6)
    assert t["dimensions"]["i2v_subject"]["value"] is not None          # manifest images were found
    assert t["prompts"] == ["prompt 0"]
    assert set(t["fd"]) == {"FD-EffNetLite0-frames"} and "FVD" not in t["fd"]
    assert s["extra_metrics"] == {"oracle/pos_err": 0.12} and t["latency"]["nfe"] == 100
    assert res["aggregate_kind"] == "proxy" and res["tiers"]["aesthetic_quality"] == "unavailable"
    out = tmp_path / "out"
    for f in ("results.json", "report.md", "report.html", "samples_grid.gif", "plots/metrics.png"):
        assert (out / f).is_file(), f
    md = (out / "report.md").read_text()
    assert "proxy_total_score[missing=0]" in md and "proxy_total_score[renormalized]" in md
    assert "oracle/pos_err" in md and "NFE" in md and "FD-EffNetLite0-frames" in md and "vbench_" not in md
    # camera motion is labelled missing in the table, the notes and the aggregates (never a silent 0)
    assert "| method | Camera Motion |" in md
    assert md.count("missing (CoTracker not available)") >= 3          # 2 table rows + the note
    assert "- camera_motion: missing (CoTracker not available)" in md
    assert "missing (CoTracker not available)" in (out / "report.html").read_text()
    assert t["aggregates"]["camera_motion"] == "missing (CoTracker not available)"
    assert t["aggregates"]["missing"]["camera_motion"] == "missing (CoTracker not available)"
    assert "camera_motion" in md.split("aggregate missing", 1)[1]
    saved = json.loads((out / "results.json").read_text())
    assert saved["backbones"]["effnet_lite0"]["files"]
    grid, _ = read_video(out / "samples_grid.gif")
    assert grid.shape[0] == 5 and grid.shape[1] == 2 * 128


def test_write_report_generic(tmp_path):
    rows = {"teacher": {"FD": 1.0, "NFE": 100}, "vpae": {"FD": 2.0, "NFE": 1, "note": "x"}}
    grids = {"teacher": [torch.rand(3, 4, 16, 24) * 2 - 1], "vpae": [_video(1, frames=2)] * 2}
    curves = {"loss/gen": [(0, 1.0), (10, 0.5)], "loss/fake": [(0, 2.0), (10, 1.0)]}
    paths = write_report(tmp_path, rows, grids, curves, title="demo", notes=["toy world"])
    assert {"markdown", "html", "grid", "metrics_plot", "curves_plot"} <= set(paths)
    assert "| vpae | 2.0000 | 1 | x |" in paths["markdown"].read_text()
    assert read_video(paths["grid"])[0].shape[0] == 4


def test_bad_inputs(tmp_path):
    with pytest.raises(FileNotFoundError):
        run_eval(tmp_path / "missing", tmp_path / "o")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no method subfolders"):
        run_eval(tmp_path / "empty", tmp_path / "o")
    loose = tmp_path / "loose"
    write_video(loose / "a.gif", _video(0))
    with pytest.raises(ValueError, match="own subfolder"):
        discover(loose)
    bad = tmp_path / "bad" / "m"
    bad.mkdir(parents=True)
    (bad / "x.mp4").write_bytes(b"\x00\x01garbage" * 10)
    with pytest.raises(VideoError, match="x.mp4"):
        run_eval(tmp_path / "bad", tmp_path / "o", config=EvalConfig(progress=False))
    from PIL import Image
    frames = [Image.new("RGB", (16, 16), (255, 0, 0)), Image.new("RGB", (20, 12), (0, 255, 0))]
    frames[0].save(tmp_path / "mixed.gif", save_all=True, append_images=frames[1:], duration=100)
    try:
        read_video(tmp_path / "mixed.gif")   # Pillow may pad frames to the canvas; if not, a clear error
    except VideoError as e:
        assert "mismatched" in str(e)
    with pytest.raises(VideoError, match="cannot open .* as a video"):  # any container PyAV reads; this is none
        read_video(tmp_path / "x.avi") if (tmp_path / "x.avi").write_bytes(b"0") else None


def test_bench_latency_tiny():
    teacher, student, cond, shape = tiny_setup(frames=2, height=4, width=4)

    class Codec:
        def decode(self, z):
            return torch.tanh(z[:, :3])

    res = bench_latency(teacher, cond, shape, student=student, codec=Codec(), teacher_steps=6, guidance=3.0,
                        warmup=1, repeats=2)
    rows = {r["name"]: r for r in res["rows"]}
    assert list(rows) == ["teacher_6step_cfg", "teacher_4step", "teacher_1step", "student_1step", "student_4step"]
    assert [r["nfe"] for r in res["rows"]] == [12, 8, 2, 1, 4]
    assert rows["teacher_6step_cfg"]["speedup"] == 1.0
    assert rows["student_1step"]["nfe_ratio"] == 12.0
    assert all(r["total_s"] > 0 and r["diffusion_s"] > 0 for r in res["rows"])
    assert "student_1step" in latency_markdown(res)


def test_time_interleaved_warms_up_every_function_then_interleaves():
    log = []
    fns = [(n, lambda n=n: log.append(n) or n) for n in ("a", "b", "c")]
    times, outs = time_interleaved(fns, "cpu", warmup=2, repeats=3)
    assert log == ["a", "b", "c"] * (2 + 3)       # same warm-up for each, then round-robin repeats
    assert outs == {"a": "a", "b": "b", "c": "c"} and all(len(t) == 3 for t in times.values())
    with pytest.raises(EvalError):
        time_interleaved(fns, "cpu", warmup=0, repeats=0)


def test_bench_latency_warms_up_and_interleaves_configs(monkeypatch):
    teacher, _, cond, shape = tiny_setup(frames=2, height=4, width=4, student=False)
    log = []

    def fake_teacher_sample(backbone, z, cond, steps, guidance, shift):
        log.append(steps)
        return sampling.SampleResult(x0=z, nfe=2 * steps)

    monkeypatch.setattr(sampling, "teacher_sample", fake_teacher_sample)
    res = bench_latency(teacher, cond, shape, teacher_steps=6, few_steps=(4, 1), warmup=1, repeats=2, device="cpu")
    # per round: every config's diffusion then total function, configs in turn; 1 warm-up round + 2 timed
    assert log == [6, 6, 4, 4, 1, 1] * 3
    assert [r["nfe"] for r in res["rows"]] == [12, 8, 2]
    assert all(len(r["diffusion_runs_s"]) == len(r["total_runs_s"]) == 2 for r in res["rows"])


def test_bench_latency_identical_configs_same_order_of_magnitude():
    """Two identical configurations (few_steps=(1, 1)) do equal work, so they must time alike. Real
    timings on a possibly busy CPU: only the order of magnitude is asserted (medians within 10x)."""
    teacher, _, cond, shape = tiny_setup(frames=2, height=4, width=4, student=False)
    res = bench_latency(teacher, cond, shape, teacher_steps=2, few_steps=(1, 1), warmup=1, repeats=5, device="cpu")
    a, b = res["rows"][1], res["rows"][2]
    assert a["name"] == b["name"] == "teacher_1step" and a["nfe"] == b["nfe"] == 2
    for k in ("diffusion_s", "total_s"):
        assert 0.1 < a[k] / b[k] < 10, (k, a[k], b[k])


def test_model_folders_are_local_only(tmp_path, monkeypatch):
    from diffusers import WanTransformer3DModel
    hub_name = "Wan-AI/Wan2.1-I2V-14B-480P-Diffusers"
    with pytest.raises(EvalError, match="Wan-AI/Wan2.1-I2V-14B-480P-Diffusers.*must be a local") as e:
        load_wan_transformer(hub_name, torch.float32, "teacher")
    assert isinstance(e.value, VpaeError)
    with pytest.raises(EvalError, match="local folder"):       # checked before any model is built
        latency_command(teacher=Path(hub_name), device="cpu")
    with pytest.raises(EvalError, match="needs --teacher"):
        latency_command(student=tmp_path, device="cpu")
    seen = {}
    monkeypatch.setattr(WanTransformer3DModel, "from_pretrained",
                        classmethod(lambda cls, path, **kw: seen.update(path=path, **kw) or "model"))
    assert load_wan_transformer(tmp_path, torch.bfloat16) == "model"
    assert seen == {"path": str(tmp_path), "torch_dtype": torch.bfloat16, "local_files_only": True}


def test_torchscript_options_say_they_run_code():
    hints = get_type_hints(eval_command, include_extras=True)
    for opt in ("dino", "clip_b32", "dreamsim", "raft", "amt", "musiq", "aesthetic", "i3d"):
        help_text = hints[opt].__metadata__[0].help
        assert "TorchScript" in help_text and "runs the code" in help_text and "trust" in help_text, opt


def test_videos_of_different_sizes_or_lengths_in_one_comparison_are_refused(tmp_path):
    from typer.testing import CliRunner

    from vpae.cli import app
    for method, (f, h, w) in {"a": (5, 48, 64), "b": (5, 32, 32), "c": (9, 48, 64)}.items():
        write_video(tmp_path / "v" / method / "000.gif", _video(0, frames=f, h=h, w=w), fps=8)
    with pytest.raises(EvalError, match=r"same frame count and size.*a: 5x48x64; b: 5x32x32; c: 9x48x64"):
        run_eval(tmp_path / "v", tmp_path / "out")
    r = CliRunner().invoke(app, ["eval", str(tmp_path / "v"), "--out", str(tmp_path / "out2")])
    assert r.exit_code == 2 and "error: videos in one comparison" in r.output


def test_gif_roundtrip_keeps_repeated_frames(tmp_path):
    v = _video(0, frames=5)
    v[:, 2] = v[:, 1]  # a repeated frame, which GIF writers merge into one longer frame
    out, fps = read_video(write_video(tmp_path / "r.gif", v, fps=8))
    assert out.shape[0] == 5 and fps == pytest.approx(8.0, rel=0.05)  # GIF durations are whole centiseconds


def test_discover_takes_the_common_containers(tmp_path):
    """`vpae eval` lists .mov/.mkv/.webm/.avi/.m4v beside .mp4/.gif (read through PyAV), and skips other files."""
    src = write_video(tmp_path / "src.mp4", _video(0), fps=8)
    method = tmp_path / "videos" / "m"
    method.mkdir(parents=True)
    for name in ("a.mp4", "b.MOV", "c.mkv", "d.m4v"):
        (method / name).write_bytes(src.read_bytes())
    (method / "notes.txt").write_text("not a video")
    methods, _, _ = discover(tmp_path / "videos")
    assert [p.name for p in methods["m"]] == ["a.mp4", "b.MOV", "c.mkv", "d.m4v"]
    assert read_video(method / "c.mkv")[0].shape == read_video(method / "a.mp4")[0].shape
