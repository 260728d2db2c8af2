"""What every benchmark report shares: the machine it ran on, Markdown tables, the command line and the
JSON output path (outputs/benchmarks/)."""

from __future__ import annotations

import json
import os
import platform
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
OUT_DIR = ROOT / "outputs" / "benchmarks"


def machine_info(args) -> dict:
    cpu = ""
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    info = {"platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
            "cpu": cpu, "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "loadavg_at_start": list(os.getloadavg()), "device": args.device}
    if args.device == "cuda":
        info["gpu"] = torch.cuda.get_device_name()
    return info


def machine_line(info: dict, args) -> str:
    """The report's 'Machine: ...' sentence (CPU, threads, load at start, device, torch)."""
    return (f"Machine: {info['cpu'] or info['platform']} ({info['cpu_count']} CPUs, torch threads "
            f"{info['torch_threads']}, load avg at start {info['loadavg_at_start'][0]:.2f}), device {args.device}"
            + (f" ({info['gpu']})" if args.device == "cuda" else "") + f", torch {info['torch']}.\n")


def peak_description(args) -> str:
    return "cuda max_memory_allocated" if args.device == "cuda" else "peak RSS delta in a fresh subprocess"


def md_table(header: list[str], rows: list[list]) -> str:
    def fmt(x):
        if isinstance(x, float):
            return f"{x:.3g}" if abs(x) < 1000 else f"{x:,.0f}"
        if isinstance(x, int):
            return f"{x:,}"
        return str(x)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(fmt(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def write_json(args, default_name: str, payload: dict) -> Path:
    path = Path(args.out) if args.out else OUT_DIR / default_name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=1))
    return path


def command_line() -> str:
    return " ".join([".venv/bin/python", os.path.relpath(sys.argv[0], ROOT), *sys.argv[1:]])
