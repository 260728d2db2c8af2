"""run_eval / write_report / bench_latency end to end on tiny inputs, and bad-input errors."""

import json

import numpy as np
import pytest
import torch

from vpae.eval import bench_latency, latency_markdown, run_eval, write_report
from vpae.eval.latency import tiny_setup
from vpae.eval.metrics import EvalConfig
from vpae.eval.run import discover
from vpae.eval.video import VideoError, read_video, write_video


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
    with pytest.raises(VideoError, match="unsupported"):
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
