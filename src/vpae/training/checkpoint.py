"""Atomic, resumable checkpoints: model weights as safetensors, optimizer/RNG state loadable with
`torch.load(weights_only=True)`, and a JSON meta file. Nothing pickles code.

Layout of a run directory:
    checkpoints/step_000100/{<module>.safetensors, <optimizer>.pt, meta.json}
    checkpoints/latest            (text: the name of the newest complete checkpoint)
A checkpoint is written to `step_X.tmp-<pid>` and renamed only when complete, then `latest` is replaced
atomically, so a crash at any point leaves the last good checkpoint intact.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn


class CheckpointError(RuntimeError):
    pass


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + f".tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def module_state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}


def save_checkpoint(run_dir: str | Path, step: int, modules: dict[str, nn.Module],
                    optimizers: dict[str, torch.optim.Optimizer], meta: dict[str, Any], keep: int = 2) -> Path:
    root = Path(run_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    name = f"step_{step:07d}"
    final = root / name
    tmp = root / f"{name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    for key, module in modules.items():
        save_file(module_state(module), str(tmp / f"{key}.safetensors"))
    for key, opt in optimizers.items():
        torch.save(opt.state_dict(), tmp / f"{key}.pt")
    rng = {"torch": torch.get_rng_state()}
    torch.save(rng, tmp / "rng.pt")
    (tmp / "meta.json").write_text(json.dumps({**meta, "step": step,
                                                "modules": sorted(modules), "optimizers": sorted(optimizers)}, indent=1))
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    _atomic_write_text(root / "latest", name)
    # Prune older complete checkpoints, keeping `keep` including the one just written. Only names before
    # it are candidates: a stale newer-named directory (left by a crash or an earlier, longer run) must not
    # push the new checkpoint out of the window and leave `latest` dangling.
    older = sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("step_") and ".tmp" not in p.name
                   and p.name < name)
    for old in older[:max(0, len(older) - (keep - 1))] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    root = Path(run_dir) / "checkpoints"
    marker = root / "latest"
    if not marker.is_file():
        return None
    path = root / marker.read_text().strip()
    if not (path / "meta.json").is_file():
        raise CheckpointError(f"{marker} points to {path}, which is missing or incomplete")
    return path


def load_checkpoint(path: str | Path, modules: dict[str, nn.Module],
                    optimizers: dict[str, torch.optim.Optimizer], strict_meta: dict[str, Any] | None = None) -> dict:
    """Load weights and optimizer states in place; returns meta. Checks every expected file exists and
    every tensor matches (shape and name) before anything is modified, so a bad checkpoint changes nothing."""
    path = Path(path)
    meta_file = path / "meta.json"
    if not meta_file.is_file():
        raise CheckpointError(f"not a checkpoint (no meta.json): {path}")
    meta = json.loads(meta_file.read_text())
    for k, v in (strict_meta or {}).items():
        if meta.get(k) != v:
            raise CheckpointError(f"incompatible checkpoint {path}: {k} is {meta.get(k)!r}, expected {v!r}")
    states = {}
    for key, module in modules.items():
        f = path / f"{key}.safetensors"
        if not f.is_file():
            raise CheckpointError(f"checkpoint {path} has no weights for {key!r}")
        try:
            sd = load_file(str(f))
        except Exception as e:  # corrupt file
            raise CheckpointError(f"cannot read {f}: {e}") from e
        own = module.state_dict()
        missing, extra = set(own) - set(sd), set(sd) - set(own)
        bad = [n for n in set(own) & set(sd) if own[n].shape != sd[n].shape]
        if missing or extra or bad:
            raise CheckpointError(f"{f} does not match {key!r}: missing {sorted(missing)[:5]}, "
                                  f"unexpected {sorted(extra)[:5]}, shape mismatch {sorted(bad)[:5]}")
        states[key] = sd
    opt_states = {}
    for key in optimizers:
        f = path / f"{key}.pt"
        if not f.is_file():
            raise CheckpointError(f"checkpoint {path} has no optimizer state for {key!r}")
        opt_states[key] = torch.load(f, weights_only=True, map_location="cpu")
    for key, module in modules.items():
        module.load_state_dict(states[key])
    for key, opt in optimizers.items():
        opt.load_state_dict(opt_states[key])
    rng_file = path / "rng.pt"
    if rng_file.is_file():
        torch.set_rng_state(torch.load(rng_file, weights_only=True)["torch"])
    return meta
