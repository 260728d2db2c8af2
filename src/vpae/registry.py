"""Names -> the pluggable parts of vpae: data sources, model families (condition stacks) and training methods.

Each part registers itself where it is defined (`@register_data_source("toy")` on the class), so nothing in the
core imports a concrete data source, family or method by name: the core asks the registry, and the registry
imports the packages that provide the built-in parts on first use (`BUILTIN_PLUGINS`) plus any package that
declares the entry-point group `vpae.plugins` in its own pyproject (third-party sources, families, methods).

    data source    data.kind -> a class built as cls(cfg, device) (vpae.data.source.DataSource); it may carry
                   `config_class`, the dataclass of its own config section data.<kind> (validated by that class)
    model family   a name -> a ModelFamily-like object: `matches(meta)`, `condition_stack(...)` (vpae.generate)
    method         cfg.method -> a training method class (vpae.training.methods)
"""

from __future__ import annotations

import importlib
from importlib import metadata
from typing import Any, Callable

BUILTIN_PLUGINS = ("vpae.data.cache", "vpae.data.wan_stack", "vpae.training.methods", "vpae.toy")
"""Modules whose import registers the built-in parts (imported by name, on first lookup)."""

ENTRY_POINT_GROUP = "vpae.plugins"

_REGISTRIES: dict[str, dict[str, Any]] = {"data source": {}, "model family": {}, "method": {}}
_loaded = False


class UnknownName(KeyError):
    def __str__(self) -> str:
        return str(self.args[0])


def load_plugins() -> None:
    """Import the built-in plugin modules and every `vpae.plugins` entry point (once)."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    for module in BUILTIN_PLUGINS:
        importlib.import_module(module)
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        ep.load()


def _register(kind: str, name: str) -> Callable[[Any], Any]:
    def add(obj: Any) -> Any:
        table = _REGISTRIES[kind]
        if name in table and table[name] is not obj:
            raise ValueError(f"{kind} {name!r} is registered twice ({table[name]!r} and {obj!r})")
        table[name] = obj
        return obj
    return add


def _get(kind: str, name: str) -> Any:
    load_plugins()
    table = _REGISTRIES[kind]
    if name not in table:
        raise UnknownName(f"unknown {kind} {name!r}; choose one of {sorted(table)}")
    return table[name]


def _names(kind: str) -> list[str]:
    load_plugins()
    return sorted(_REGISTRIES[kind])


def register_data_source(name: str):
    """Class decorator: `data.kind: <name>` builds this class as cls(cfg, device)."""
    return _register("data source", name)


def register_model_family(name: str):
    return _register("model family", name)


def register_method(name: str):
    """Class decorator: `method: <name>` trains with this class (vpae.training.methods.base.Method)."""
    return _register("method", name)


def data_source(name: str):
    return _get("data source", name)


def model_family(name: str):
    return _get("model family", name)


def method(name: str):
    return _get("method", name)


def data_source_names() -> list[str]:
    return _names("data source")


def model_family_names() -> list[str]:
    return _names("model family")


def method_names() -> list[str]:
    return _names("method")


def model_families() -> list[Any]:
    load_plugins()
    return list(_REGISTRIES["model family"].values())
