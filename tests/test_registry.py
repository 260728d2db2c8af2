"""vpae.registry: data sources and model families register themselves, and the core reaches the toy world only
through the registry (no module of the core imports vpae.toy)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from vpae import registry

SRC = Path(__file__).resolve().parents[1] / "src" / "vpae"
CORE = ["config", "models.py", "generate.py", "cli.py", "codecs.py", "conditioning.py", "data", "registry.py"]
"""Modules that must not import vpae.toy (cli.py: except inside the toy-only commands below)."""
TOY_COMMANDS = {"demo", "ablate", "caption_bank"}


def _toy_imports(path: Path) -> list[str]:
    """'line: function' of every import of vpae.toy in a file, outside the toy-only CLI commands."""
    tree = ast.parse(path.read_text())
    out = []

    def visit(node, function=None):
        for child in ast.iter_child_nodes(node):
            inner = child.name if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)) else function
            names = []
            if isinstance(child, ast.Import):
                names = [a.name for a in child.names]
            elif isinstance(child, ast.ImportFrom) and child.module:
                names = [child.module] + [f"{child.module}.{a.name}" for a in child.names]
            if any(n == "vpae.toy" or n.startswith("vpae.toy.") for n in names):
                if not (path.name == "cli.py" and function in TOY_COMMANDS):
                    out.append(f"{child.lineno}: {function}")
            visit(child, inner)
    visit(tree)
    return out


@pytest.mark.parametrize("name", CORE)
def test_the_core_does_not_import_the_toy_package(name):
    target = SRC / name
    files = sorted(target.rglob("*.py")) if target.is_dir() else [target]
    found = {str(f.relative_to(SRC)): _toy_imports(f) for f in files}
    assert not {f: v for f, v in found.items() if v}


def test_built_in_data_sources_and_families_are_registered():
    from vpae.data.cache import CacheSource
    from vpae.toy.data import ToyData
    from vpae.toy.world import ToyDataConfig
    assert registry.data_source("toy") is ToyData and registry.data_source("cache") is CacheSource
    assert {"cache", "toy"} <= set(registry.data_source_names())
    assert ToyData.config_class is ToyDataConfig and ToyData.model_family == "toy"
    assert {"toy", "wan"} <= set(registry.model_family_names())
    assert [f.name for f in registry.model_families()][:2] == ["wan", "toy"]
    with pytest.raises(registry.UnknownName, match="unknown model family 'hunyuan'; choose one of"):
        registry.model_family("hunyuan")


def test_families_recognise_their_models(tmp_path):
    from vpae.toy.family import BUILTIN_TEACHER
    toy_meta = {"data": {"kind": "toy"}}
    assert registry.family_of(toy_meta).name == "toy"
    assert registry.family_of({"data": {"kind": "cache"}}) is None and registry.family_of({}) is None
    # a transformer/ folder of a diffusers pipeline folder is the Wan family's, whatever its vpae.json says
    (tmp_path / "transformer").mkdir()
    (tmp_path / "transformer" / "config.json").write_text("{}")
    (tmp_path / "model_index.json").write_text("{}")
    assert registry.family_of({}, tmp_path / "transformer").name == "wan"
    assert registry.model_family("toy").builtin_model == BUILTIN_TEACHER


def test_builtin_models_are_the_families_own():
    from vpae.models import ModelLoadError, resolve_model_path
    from vpae.toy.family import BUILTIN_TEACHER
    assert resolve_model_path("builtin:toy") == BUILTIN_TEACHER == resolve_model_path("toy")
    assert resolve_model_path("runs/wan") == Path("runs/wan") and resolve_model_path("wan") == Path("wan")
    with pytest.raises(ModelLoadError, match="no built-in model 'builtin:wan'; the built-in models are builtin:toy"):
        resolve_model_path("builtin:wan")


def test_the_toy_familys_config_stack_matches_the_toy_data_source():
    """`vpae data prepare` with a toy config encodes with the family's stack: the same sizes as ToyData."""
    from vpae.config import load_config
    from vpae.toy.data import ToyData
    cfg = load_config("configs/toy/demo.yaml")
    stack = registry.model_family("toy").config_stack(cfg, None)
    assert stack.sizes == ToyData(cfg).sizes
    assert stack.image_encoder.patch_size == cfg.data.toy.image_patch
