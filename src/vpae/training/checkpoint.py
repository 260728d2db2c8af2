"""Atomic, resumable, sharded checkpoints with PyTorch Distributed Checkpoint (DCP).

One checkpoint holds everything a phase needs to continue exactly: every module of the step (generator, fake
LoRA, EMA, heads, ...), every optimizer (FQN-keyed, so it reshards), each rank's RNG state, the step (which is
also the data position: batches are pure functions of the step) and the phase. Under torchrun every rank writes
its own shards (a 14B model is never gathered); on one process the same code writes one shard.

Layout of a run directory:
    checkpoints/step_000100/{.metadata, __<rank>_0.distcp, rng_rank<r>.pt, meta.json}
    checkpoints/latest            (text: the name of the newest complete checkpoint)
A checkpoint is written to `step_X.tmp-<pid>`, meta.json last, and renamed only when every rank has finished,
then `latest` is replaced atomically: a crash (or SIGKILL) at any point leaves the last good checkpoint intact.
Resume does not trust `latest` alone: it scans for the newest complete checkpoint, and an existing checkpoint
is never overwritten. A checkpoint that cannot be read stops the run with a message that names the bad file and
the previous complete checkpoint, before anything in memory is changed.

Nothing pickles code: DCP's metadata is read by an unpickler that admits only DCP's own metadata classes, its
non-tensor items with torch.load(weights_only=True), the RNG files likewise.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import shutil
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint import FileSystemReader, FileSystemWriter
from torch.distributed.checkpoint._traverse import set_element
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict, set_optimizer_state_dict

from vpae.errors import VpaeError
from vpae.training.parallel import current_world


class CheckpointError(VpaeError, RuntimeError):
    pass


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + f".tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


# -- reading DCP files without running pickled code ----------------------------------------------

class _MetadataUnpickler(pickle.Unpickler):
    """Admits only what DCP's .metadata holds: its metadata dataclasses, torch.Size, dtypes and layouts."""

    def find_class(self, module: str, name: str):
        ok = (module.startswith("torch.distributed.checkpoint.")
              or (module == "torch" and (name == "Size" or isinstance(getattr(torch, name, None), torch.dtype)))
              or (module == "torch.serialization" and name == "_get_layout")
              or (module == "pathlib" and name in ("PosixPath", "WindowsPath", "Path"))
              or (module == "collections" and name == "OrderedDict"))
        if not ok:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a checkpoint's .metadata")
        return super().find_class(module, name)


class _SafeReader(FileSystemReader):
    def read_metadata(self, *args, **kwargs):
        path = self._get_metadata_path(kwargs.get("rank"))
        with self.fs.create_stream(path, "rb") as f:
            metadata = _MetadataUnpickler(f).load()
        from torch.distributed.checkpoint.metadata import StorageMeta
        if getattr(metadata, "storage_meta", None) is None:
            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata


class _SafeLoadPlanner(DefaultLoadPlanner):
    def load_bytes(self, read_item, value: io.BytesIO) -> None:
        """DefaultLoadPlanner.load_bytes with torch.load(weights_only=True)."""
        obj = torch.load(value, weights_only=True)
        if self.flatten_state_dict:
            set_element(self.original_state_dict, self.mappings[read_item.dest_index.fqn], obj)
        else:
            self.state_dict[read_item.dest_index.fqn] = obj


# -- what a checkpoint holds ---------------------------------------------------------------------

def _param_owner(modules: dict[str, nn.Module]) -> nn.Module:
    """One module under which every optimizer's parameters have a name (FQN): the step's modules, with an
    adapter view replaced by the backbone that carries the adapter."""
    return nn.ModuleDict({k: getattr(m, "_backbone", [m])[0] for k, m in modules.items()})


def _optimizer_state(owner: nn.Module, opt: torch.optim.Optimizer, key: str) -> dict:
    names = {id(p) for p in owner.parameters()}
    if any(id(p) not in names for g in opt.param_groups for p in g["params"]):
        raise CheckpointError(f"optimizer {key!r} updates parameters of no module the checkpoint holds")
    # FQN-keyed (reshardable); a fresh optimizer's state is initialised by torch with a zero-lr step
    return get_optimizer_state_dict(owner, opt)


def _flat_tensors(tree, prefix: str = "") -> dict[str, torch.Tensor]:
    out = {}
    if isinstance(tree, dict):
        for k, v in tree.items():
            out.update(_flat_tensors(v, f"{prefix}{k}."))
    elif isinstance(tree, torch.Tensor):
        out[prefix[:-1]] = tree
    return out


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
    """Write checkpoint `step` (collective under torchrun: every rank calls it) and publish it atomically;
    keep the newest `keep`. Refuses to overwrite an existing checkpoint."""
    root = Path(run_dir) / "checkpoints"
    name = f"step_{step:07d}"
    final = root / name
    if final.exists():  # never replace a checkpoint silently (resume always starts after the newest one)
        raise CheckpointError(f"{final} already exists; refusing to overwrite it. Resume from it (rerun the same "
                              f"command) or use a new run directory")
    world = current_world()
    tmp = root / f"{name}.tmp-{world.broadcast(os.getpid())}"
    if world.main:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    world.barrier()
    owner = _param_owner(modules)
    state = {"model": {k: m.state_dict() for k, m in modules.items()},
             "optim": {k: _optimizer_state(owner, o, k) for k, o in optimizers.items()}}
    failure = None
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*single process.*")
            dcp.save(state, storage_writer=FileSystemWriter(tmp), no_dist=not world.distributed)
        rng = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            rng["cuda"] = torch.cuda.get_rng_state()
        torch.save(rng, tmp / f"rng_rank{world.rank}.pt")
    except (OSError, RuntimeError, CheckpointException) as e:  # DCP reports a full disk as a RuntimeError
        failure = f"{type(e).__name__}: {str(e).strip().splitlines()[-1][:300] if str(e).strip() else ''}"
    failure = world.first(failure)  # every rank stops together, none waits at a barrier for a failed one
    if failure is None and world.main:
        try:
            (tmp / "meta.json").write_text(json.dumps({**meta, "step": step, "data_position": step,
                                                       "world_size": world.size, "modules": sorted(modules),
                                                       "optimizers": sorted(optimizers)}, indent=1))
        except OSError as e:
            failure = f"{type(e).__name__}: {e}"
    failure = world.broadcast(failure)
    if failure is not None:
        raise _save_failed(final, tmp, failure, _state_bytes(state), world)
    if world.main:
        os.replace(tmp, final)
        _atomic_write_text(root / "latest", name)
        # Prune older complete checkpoints, keeping `keep` including the one just written. Only names before
        # it are candidates: a stale newer-named directory (left by a crash or an earlier, longer run) must not
        # push the new checkpoint out of the window and leave `latest` dangling.
        older = sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("step_") and ".tmp" not in p.name
                       and p.name < name)
        for old in older[:max(0, len(older) - (keep - 1))] if keep > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    world.barrier()
    return final


def _state_bytes(state) -> int:
    """Bytes of the tensors this rank writes (about its share of the checkpoint)."""
    if isinstance(state, torch.Tensor):
        return state.numel() * state.element_size()
    if isinstance(state, dict):
        return sum(_state_bytes(v) for v in state.values())
    if isinstance(state, (list, tuple)):
        return sum(_state_bytes(v) for v in state)
    return 0


def _save_failed(final: Path, tmp: Path, failure: str, need: int, world) -> CheckpointError:
    """The error of a failed save, after removing its incomplete folder: says when the disk is full (DCP's own
    error for that is "unexpected pos"), and that the previous checkpoint is intact."""
    free = shutil.disk_usage(tmp.parent if tmp.parent.exists() else final.parent.parent).free
    world.barrier()
    if world.main:
        shutil.rmtree(tmp, ignore_errors=True)
    world.barrier()
    mib = 2 ** 20
    prev = latest_checkpoint(final.parent.parent)
    kept = (f"the previous checkpoint {prev} is intact" if prev else "no earlier checkpoint of this phase exists")
    if free < need or "No space left" in failure:
        why = (f"the disk holding {final.parent} is full ({free / mib:.0f} MiB free; this checkpoint needs about "
               f"{need / mib:.0f} MiB per rank)")
        fix = "free space (or lower train.keep_checkpoints, or use --out on a larger disk)"
    else:
        why, fix = f"writing it failed ({failure})", "fix the cause"
    return CheckpointError(f"saving checkpoint {final.name} failed: {why}. The incomplete checkpoint was removed and "
                           f"{kept}; {fix}, then rerun the same command to resume")


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


def _stored_metadata(path: Path) -> dict:
    """The checkpoint's DCP metadata (name -> size and dtype of every stored item), read safely."""
    try:
        return _SafeReader(path).read_metadata().state_dict_metadata
    except Exception as e:  # missing, truncated or foreign .metadata
        raise _bad(path, path / ".metadata", f"unreadable DCP metadata ({type(e).__name__}: {str(e)[:200]})") from None


def _dcp_load(state: dict, path: Path, no_dist: bool) -> None:
    """dcp.load into `state` in place with the safe reader and planner; a damaged data file is named."""
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*single process.*")
            dcp.load(state, storage_reader=_SafeReader(path), planner=_SafeLoadPlanner(), no_dist=no_dist)
    except (Exception, CheckpointException) as e:  # DCP's CheckpointException is a BaseException
        files = sorted(f.name for f in path.glob("*.distcp"))
        last = str(e).strip().splitlines()[-1:] or [""]
        raise _bad(path, path / (files[0] if len(files) == 1 else "*.distcp"),
                   f"unreadable checkpoint data ({type(e).__name__}: {last[0][:300]})") from None


def _clone(tree):
    if isinstance(tree, dict):
        return {k: _clone(v) for k, v in tree.items()}
    if isinstance(tree, list):
        return [_clone(v) for v in tree]
    return tree.detach().clone() if isinstance(tree, torch.Tensor) else tree


def load_checkpoint(path: str | Path, modules: dict[str, nn.Module],
                    optimizers: dict[str, torch.optim.Optimizer], strict_meta: dict[str, Any] | None = None) -> dict:
    """Load weights, optimizer states and this rank's RNG state in place; returns meta. Collective under
    torchrun. Every expected tensor is checked (name and shape) and everything is read into copies before
    anything is modified, so a bad checkpoint changes nothing. A checkpoint written by another number of
    processes loads too (DCP reshards); its RNG state is then not restored (every step reseeds anyway)."""
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
    stored = _stored_metadata(path)
    # Check names and shapes against the checkpoint's metadata before reading any data.
    for key, module in modules.items():
        own = _flat_tensors(module.state_dict())
        theirs = {n[len(f"model.{key}."):]: m for n, m in stored.items() if n.startswith(f"model.{key}.")}
        if not theirs:
            raise CheckpointError(f"checkpoint {path} has no weights for {key!r}")
        missing, extra = set(own) - set(theirs), set(theirs) - set(own)
        bad = [n for n in set(own) & set(theirs) if tuple(own[n].shape) != tuple(getattr(theirs[n], "size", ()))]
        if missing or extra or bad:
            raise CheckpointError(  # a different model, not damage: the config changed
                f"{path} does not match {key!r}: missing {sorted(missing)[:5]}, unexpected {sorted(extra)[:5]}, "
                f"shape mismatch {sorted(bad)[:5]}")
    for key in optimizers:
        if not any(n.startswith(f"optim.{key}.") for n in stored):
            raise CheckpointError(f"checkpoint {path} has no optimizer state for {key!r}")
    world = current_world()
    rng_file, rng = path / f"rng_rank{world.rank}.pt", None
    same_world = meta.get("world_size", 1) == world.size
    if same_world and rng_file.is_file():
        try:
            rng = torch.load(rng_file, weights_only=True)
            if not (isinstance(rng.get("torch"), torch.Tensor) and rng["torch"].dtype == torch.uint8):
                raise ValueError("not a torch RNG state")
            torch.Generator().set_state(rng["torch"])  # validates it without touching the global generator
        except Exception as e:
            raise _bad(path, rng_file, f"unreadable RNG state ({type(e).__name__}: {str(e)[:200]})") from None
    # Read everything into copies; only a complete read touches the modules and optimizers.
    owner = _param_owner(modules)
    state = {"model": {k: _clone(m.state_dict()) for k, m in modules.items()},
             "optim": {k: _clone(_optimizer_state(owner, o, k)) for k, o in optimizers.items()}}
    _dcp_load(state, path, no_dist=not world.distributed)
    for key, module in modules.items():
        module.load_state_dict(state["model"][key])
    for key, opt in optimizers.items():
        set_optimizer_state_dict(owner, opt, state["optim"][key])
    if rng is not None:
        torch.set_rng_state(rng["torch"])
        if "cuda" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state(rng["cuda"])
    return meta


def checkpoint_tensors(path: str | Path, prefix: str = "model.") -> dict[str, torch.Tensor]:
    """Every stored tensor of a checkpoint whose name starts with `prefix` (e.g. "model.generator."), unsharded,
    in one process, whatever number of processes wrote it: the consolidation path (vpae export --checkpoint)."""
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata
    path = Path(path)
    stored = _stored_metadata(path)
    state = {k: torch.empty(tuple(m.size), dtype=m.properties.dtype) for k, m in stored.items()
             if k.startswith(prefix) and isinstance(m, TensorStorageMetadata)}
    if not state:
        raise CheckpointError(f"checkpoint {path} holds no tensors named {prefix}*")
    _dcp_load(state, path, no_dist=True)
    return {k[len(prefix):]: v for k, v in state.items()}
