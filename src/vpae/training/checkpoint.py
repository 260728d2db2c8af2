"""Atomic, resumable checkpoints: model weights as safetensors, optimizer/RNG state loadable with
`torch.load(weights_only=True)`, and a JSON meta file. Nothing pickles code.

Layout of a run directory:
    checkpoints/step_000100/{<module>.safetensors, <optimizer>.pt, meta.json}
    checkpoints/latest            (text: the name of the newest complete checkpoint)
A checkpoint is written to `step_X.tmp-<pid>` and renamed only when complete, then `latest` is replaced
atomically, so a crash at any point leaves the last good checkpoint intact. Resume does not trust `latest`
alone: it scans for the newest complete checkpoint (a deleted or dangling pointer loses nothing), and an
existing checkpoint is never overwritten. A checkpoint that cannot be read stops the run with a message
that names the bad file and the previous complete checkpoint.
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

from vpae.errors import VpaeError


class CheckpointError(VpaeError, RuntimeError):
    pass


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + f".tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def module_state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale_tmp(run_dir: str | Path) -> list[Path]:
    """Remove `step_X.tmp-PID` folders (and `latest.tmp-PID` files) left by saves that were killed, unless
    their process still runs. Returns what was removed."""
    root = Path(run_dir) / "checkpoints"
    removed = []
    if not root.is_dir():
        return removed
    for p in root.iterdir():
        if ".tmp-" not in p.name:
            continue
        pid = p.name.rsplit(".tmp-", 1)[1]
        if pid.isdigit() and int(pid) != os.getpid() and _pid_alive(int(pid)):
            continue
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
        removed.append(p)
    return removed


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
    if final.exists():  # never replace a checkpoint silently (resume always starts after the newest one)
        shutil.rmtree(tmp, ignore_errors=True)
        raise CheckpointError(f"{final} already exists; refusing to overwrite it. Resume from it (rerun the same "
                              f"command) or use a new run directory")
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


def complete_checkpoints(run_dir: str | Path) -> list[Path]:
    """Every published checkpoint of a run, oldest first (renamed from its tmp folder, so complete unless
    damaged afterwards: load_checkpoint checks every file)."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("step_") and ".tmp" not in p.name
                  and (p / "meta.json").is_file())


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest complete checkpoint, found by scanning (the `latest` pointer is only a hint for people and
    tools: a deleted, stale or dangling pointer changes nothing)."""
    found = complete_checkpoints(run_dir)
    return found[-1] if found else None


def previous_checkpoint(path: str | Path) -> Path | None:
    """The newest complete checkpoint older than `path` in the same run, or None."""
    path = Path(path)
    older = [p for p in complete_checkpoints(path.parent.parent) if p.name < path.name]
    return older[-1] if older else None


def _bad(path: Path, f: Path, why: str) -> CheckpointError:
    prev = previous_checkpoint(path)
    todo = (f"move {path} out of {path.parent} to resume from the previous complete checkpoint {prev}" if prev else
            f"no earlier checkpoint exists: move {path} away to start this phase from scratch")
    return CheckpointError(f"cannot load checkpoint file {f}: {why}; {todo}")


def load_checkpoint(path: str | Path, modules: dict[str, nn.Module],
                    optimizers: dict[str, torch.optim.Optimizer], strict_meta: dict[str, Any] | None = None) -> dict:
    """Load weights and optimizer states in place; returns meta. Checks every expected file exists and
    every tensor matches (shape and name) before anything is modified, so a bad checkpoint changes nothing."""
    path = Path(path)
    meta_file = path / "meta.json"
    if not meta_file.is_file():
        raise CheckpointError(f"not a checkpoint (no meta.json): {path}")
    try:
        meta = json.loads(meta_file.read_text())
        if not isinstance(meta, dict) or not isinstance(meta.get("step"), int):
            raise ValueError("no integer 'step'")
    except ValueError as e:
        raise _bad(path, meta_file, f"bad meta.json ({e})") from None
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
        except Exception as e:  # truncated or corrupt file
            raise _bad(path, f, f"unreadable safetensors ({e})") from None
        own = module.state_dict()
        missing, extra = set(own) - set(sd), set(sd) - set(own)
        bad = [n for n in set(own) & set(sd) if own[n].shape != sd[n].shape]
        if missing or extra or bad:
            raise CheckpointError(  # a different model, not damage: the config changedf"{f} does not match {key!r}: missing {sorted(missing)[:5]}, "
                                  f"unexpected {sorted(extra)[:5]}, shape mismatch {sorted(bad)[:5]}")
        states[key] = sd
    opt_states = {}
    for key in optimizers:
        f = path / f"{key}.pt"
        if not f.is_file():
            raise CheckpointError(f"checkpoint {path} has no optimizer state for {key!r}")
        try:
            opt_states[key] = torch.load(f, weights_only=True, map_location="cpu")
            if not isinstance(opt_states[key], dict) or "state" not in opt_states[key]:
                raise ValueError("not an optimizer state dict")
        except Exception as e:
            raise _bad(path, f, f"unreadable optimizer state ({type(e).__name__}: {str(e)[:200]})") from None
    rng_file, rng = path / "rng.pt", None
    if rng_file.is_file():
        try:
            rng = torch.load(rng_file, weights_only=True)["torch"]
            if not (isinstance(rng, torch.Tensor) and rng.dtype == torch.uint8):
                raise ValueError("not a torch RNG state")
            torch.Generator().set_state(rng)  # validates it without touching the global generator
        except Exception as e:
            raise _bad(path, rng_file, f"unreadable RNG state ({type(e).__name__}: {str(e)[:200]})") from None
    for key, module in modules.items():
        module.load_state_dict(states[key])
    for key, opt in optimizers.items():
        opt.load_state_dict(opt_states[key])
    if rng is not None:
        torch.set_rng_state(rng)
    return meta
