"""Reading weight files: the missing-file error, TorchScript loading (with its warning) and
tensors-only state dicts (safetensors or `torch.load(weights_only=True)`)."""

from __future__ import annotations

import sys
import zipfile
from pathlib import Path

import torch

from vpae.errors import VpaeError


class MissingWeightsError(VpaeError, FileNotFoundError):
    """A reference-tier model was requested but its weight file is missing or unusable."""


def check_file(path, what: str) -> Path:
    if path is None:
        raise MissingWeightsError(f"{what}: no weight file given (reference tier needs a local file; "
                                  f"see docs/EVALUATION.md for the expected format)")
    p = Path(path).expanduser()
    if not p.is_file():
        raise MissingWeightsError(f"{what}: weight file not found: {p} (nothing is downloaded; "
                                  f"see docs/EVALUATION.md for the expected format)")
    return p


def is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        return any(n.endswith("constants.pkl") or n.endswith("/code/__torch__.py") or "/code/" in n
                   for n in z.namelist())


def torchscript_warning(path, what: str) -> str:
    return (f"warning: {what}: loading TorchScript {path}: it runs the code stored in the file; "
            f"use only files you trust")


def load_torchscript(path: Path, what: str, device) -> torch.jit.ScriptModule:
    """torch.jit.load, which executes the file's code: callers pass only user-chosen files, and we say so."""
    print(torchscript_warning(path, what), file=sys.stderr, flush=True)
    try:
        return torch.jit.load(str(path), map_location=device).eval()
    except Exception as e:  # noqa: BLE001
        raise MissingWeightsError(f"{what}: {path} is not a loadable TorchScript file: {e}") from e


def is_safetensors(path: Path) -> bool:
    return path.suffix.lower() == ".safetensors"


def load_state_dict(path: Path) -> dict:
    """Tensors only: safetensors, or torch.load(weights_only=True) (no pickled code can run)."""
    if is_safetensors(path):
        from safetensors.torch import load_file
        return load_file(str(path), device="cpu")
    return torch.load(str(path), map_location="cpu", weights_only=True)
