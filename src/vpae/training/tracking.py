"""Experiment tracking: where the training loop's per-step records go (train.logger).

RUN/<phase>/log.jsonl is always written; `tensorboard` adds a SummaryWriter in RUN/<phase>/tb
(torch.utils.tensorboard), `wandb` a W&B run in RUN/<phase>/wandb, offline unless WANDB_MODE says otherwise
(`wandb sync` uploads it later). Both packages are the optional extra `vpae[tracking]`.

On resume from checkpoint step k, records with step > k (logged after that checkpoint, before the run stopped)
are dropped so the rerun's records are the only ones: log.jsonl is rewritten, TensorBoard purges them itself
(purge_step), and the W&B run keeps one run id across resumes (W&B ignores a step below the one it has).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import secrets
from pathlib import Path

import torch

from vpae.errors import VpaeError

KINDS = ("jsonl", "tensorboard", "wandb")
_PACKAGE = {"tensorboard": "tensorboard", "wandb": "wandb"}


def require(kind: str) -> None:
    """Refuse a logger whose package is not installed, before training starts."""
    if kind not in KINDS:
        raise VpaeError(f"train.logger must be one of {', '.join(KINDS)} (got {kind!r})")
    package = _PACKAGE.get(kind)
    if package and importlib.util.find_spec(package) is None:
        raise VpaeError(f"train.logger={kind} needs the {package} package: pip install 'vpae[tracking]' "
                        f"(or pip install {package})")


def read_log(path: str | Path) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class JsonlLogger:
    """One JSON object per logged step, appended to `path`."""

    def __init__(self, path: Path, resume_step: int = 0):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self.truncate(resume_step)

    def truncate(self, step: int) -> None:
        """Keep only the records with step <= `step` (the rerun after a resume logs the later ones again);
        written to a temporary file and renamed, so a kill here leaves the old or the new log, never half."""
        records = read_log(self.path)
        kept = [r for r in records if r.get("step", 0) <= step]
        if len(kept) == len(records):
            return
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
        os.replace(tmp, self.path)

    def log(self, record: dict) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")

    def close(self) -> None:
        pass


class TensorBoardLogger:
    """Every numeric field of a record as a scalar at global_step = record["step"]."""

    def __init__(self, log_dir: Path, resume_step: int = 0):
        from torch.utils.tensorboard import SummaryWriter
        # purge_step hides the events a killed run wrote after its last checkpoint
        self.writer = SummaryWriter(log_dir=str(log_dir), purge_step=resume_step + 1 if resume_step else None)

    def log(self, record: dict) -> None:
        step = int(record["step"])
        for k, v in record.items():
            if k != "step" and isinstance(v, (int, float)):
                self.writer.add_scalar(k, v, global_step=step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class WandbLogger:
    """A W&B run (offline unless WANDB_MODE is set) whose id is kept in <dir>/run_id, so a resumed phase
    continues the same run."""

    def __init__(self, run_dir: Path, name: str, config: dict | None = None):
        import wandb
        wdir = run_dir / "wandb"
        wdir.mkdir(parents=True, exist_ok=True)
        id_file = wdir / "run_id"
        if id_file.is_file():
            run_id = id_file.read_text().strip()
        else:
            run_id = secrets.token_hex(4)
            id_file.write_text(run_id + "\n")
        if config is None:
            config = _recorded_config(run_dir)
        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", "vpae"), name=name, id=run_id,
                              resume="allow", dir=str(wdir), mode=os.environ.get("WANDB_MODE", "offline"),
                              config=config)

    def log(self, record: dict) -> None:
        self.run.log({k: v for k, v in record.items() if k != "step"}, step=int(record["step"]))

    def close(self) -> None:
        self.run.finish()


def _recorded_config(run_dir: Path) -> dict:
    """The run's config.yaml (in the folder itself for pretraining, in its parent for a method's phase), if any."""
    import yaml
    for path in (run_dir / "config.yaml", run_dir.parent / "config.yaml"):
        if path.is_file():
            data = yaml.safe_load(path.read_text())
            return data if isinstance(data, dict) else {}
    return {}


class Tracker:
    """The loop's logger: log.jsonl plus the train.logger backend, written by rank 0 only. The backend starts
    on the first record, so a call that has nothing left to train (a finished phase) opens no W&B run."""

    def __init__(self, run_dir: str | Path, kind: str = "jsonl", resume_step: int = 0, name: str = "",
                 config: dict | None = None):
        require(kind)
        self.run_dir, self.kind, self.resume_step = Path(run_dir), kind, resume_step
        self.name, self.config = name or self.run_dir.name, config
        self.backends: list = [JsonlLogger(self.run_dir / "log.jsonl", resume_step)]
        self.started = kind == "jsonl"

    def _start(self) -> None:
        if self.kind == "tensorboard":
            self.backends.append(TensorBoardLogger(self.run_dir / "tb", self.resume_step))
        elif self.kind == "wandb":
            self.backends.append(WandbLogger(self.run_dir, self.name, self.config))
        self.started = True

    def log(self, record: dict) -> None:
        if not self.started:
            self._start()
        for b in self.backends:
            b.log(record)

    def close(self) -> None:
        for b in self.backends:
            b.close()


def patch_size(modules) -> tuple[int, int, int] | None:
    """The (t, h, w) patch of the first Wan-style backbone among `modules` (None when there is none)."""
    for module in modules:
        for m in module.modules():
            p = getattr(m, "patch_size", None)
            if isinstance(p, (tuple, list)) and len(p) == 3 and all(isinstance(x, int) for x in p):
                return tuple(p)
    return None


def throughput(x_data: torch.Tensor, seconds: float, ranks: int, patch: tuple[int, int, int] | None) -> dict:
    """samples/s over the global batch (this rank's share x data-parallel ranks) and, when the latent is
    (B, C, F, H, W) and the patch is known, tokens/s with F x H x W / patch tokens per sample."""
    samples = x_data.shape[0] * ranks
    out = {"throughput/samples_per_s": samples / seconds}
    if patch is not None and x_data.ndim == 5:
        f, h, w = x_data.shape[2:]
        tokens = (f // patch[0]) * (h // patch[1]) * (w // patch[2])
        out["throughput/tokens_per_s"] = samples * tokens / seconds
    return out


def peak_memory(device: torch.device) -> dict:
    """The process's peak memory in GiB: CUDA's allocator peak on a CUDA device, else the peak resident set
    (VmHWM) from /proc/self/status."""
    if device.type == "cuda":
        return {"memory/cuda_peak_gib": torch.cuda.max_memory_allocated(device) / 2**30}
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:  # not Linux
        return {}
    m = re.search(r"^VmHWM:\s+(\d+)\s+kB", status, re.M)
    return {"memory/rss_peak_gib": int(m.group(1)) / 2**20} if m else {}


def discriminator_curves(records: list[dict], window: int = 10) -> dict[str, list[tuple[float, float]]]:
    """The discriminator's signals of a phase's log records, per noise-level bin k (bin 0 = lowest t):
    "pair accuracy bin k" = sum of d/bin{k}_ranked / sum of d/bin{k}_pairs over windows of `window` records
    (a window without pairs in the bin is left out), and "probe bin k" = eval/probe_acc_bin{k} where logged."""
    out: dict[str, list[tuple[float, float]]] = {}
    bins = sorted({int(k[len("d/bin"):-len("_pairs")]) for r in records for k in r
                   if k.startswith("d/bin") and k.endswith("_pairs")})
    for k in bins:
        pts = []
        for i in range(0, len(records), window):
            part = [r for r in records[i:i + window] if f"d/bin{k}_pairs" in r]
            pairs = sum(r[f"d/bin{k}_pairs"] for r in part)
            if pairs:
                pts.append((float(part[-1]["step"]), sum(r[f"d/bin{k}_ranked"] for r in part) / pairs))
        out[f"pair accuracy bin {k}"] = pts
        out[f"probe bin {k}"] = [(float(r["step"]), r[f"eval/probe_acc_bin{k}"]) for r in records
                                 if f"eval/probe_acc_bin{k}" in r]
    return out
