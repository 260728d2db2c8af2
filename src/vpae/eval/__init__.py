"""Evaluation: VBench-I2V dimensions (reference / offline tiers), Frechet distances, latency, reports.

See docs/EVALUATION.md. Public entry points:

* `run_eval(video_dir, out_dir, ...)` - score folders of videos, write reports
* `evaluate_videos(videos, images, config)` - score in-memory videos of one method
* `write_report(out_dir, table_rows, grids, curves, ...)` - generic Markdown/HTML/GIF/PNG report
* `bench_latency(teacher, cond, latent_shape, student=..., codec=...)`

The command-line wrappers (`vpae eval`, `vpae bench latency`) live in vpae.cli.
"""

from vpae.eval.fd import FD_OFFLINE_NAME, FVD_NAME, frechet_distance
from vpae.eval.feature_nets import REGISTRY, MissingWeightsError, build
from vpae.eval.latency import bench_latency, latency_markdown
from vpae.eval.metrics import EvalConfig, aggregates, evaluate_videos, fd_features, fd_scores
from vpae.eval.report import make_grid, write_report
from vpae.eval.run import run_eval
from vpae.eval.video import VideoError, read_video, to_tensor, to_uint8, write_video

__all__ = [
    "REGISTRY", "MissingWeightsError", "build", "FD_OFFLINE_NAME", "FVD_NAME", "frechet_distance",
    "bench_latency", "latency_markdown", "EvalConfig", "aggregates", "evaluate_videos",
    "fd_features", "fd_scores", "make_grid", "write_report", "run_eval", "VideoError",
    "read_video", "to_tensor", "to_uint8", "write_video",
]
