"""benchmarks/gpu_paper_scale.py --tiny: the one-GPU paper-scale script's code path (run_distill phase I, phase II
unified and trained, 1-NFE vs CFG latency) on CPU with a tiny model; its JSON has every field, all finite."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_gpu_paper_scale_tiny_writes_finite_results(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, str(REPO / "benchmarks/gpu_paper_scale.py"), "--tiny", "--out", str(tmp_path)],
                   check=True, env=env, cwd=REPO, capture_output=True, timeout=600)
    doc = json.loads((tmp_path / "gpu_paper_scale.json").read_text())
    assert (tmp_path / "gpu_paper_scale.md").read_text().startswith("# TINY")
    r = doc["results"]
    for key in ("phase1", "phase2_unified", "phase2_trained"):
        run = r[key]
        for field in ("median_step_s", "call_s", "peak_bytes", "peak_gib", "generator_params"):
            assert math.isfinite(run[field]), (key, field)
        assert run["steps"] == doc["args"]["steps"] and all(math.isfinite(t) and t > 0 for t in run["step_s"])
    assert r["phase2_unified"]["backbone"] == "unified" and r["phase2_trained"]["backbone"] == "trained"
    lat = r["latency"]
    assert lat["one_step_nfe"] == 1 and lat["teacher_nfe"] == 2 * lat["teacher_steps"]
    for field in ("one_step_median_s", "teacher_s", "speedup"):
        assert math.isfinite(lat[field]) and lat[field] > 0
    assert all(math.isfinite(v) for v in r["trained_over_unified"].values())
    assert math.isfinite(doc["wall_s"]) and doc["tokens"] > 0
