"""Names -> the pluggable parts of vpae: data sources, model families (condition stacks) and training methods.

Each part registers itself where it is defined (`@register_data_source("toy")` on the class), so nothing in the
core imports a concrete data source, family or method by name: the core asks the registry, and the registry
imports the modules that provide the built-in parts of a kind on the first lookup of that kind
(`PLUGINS_BY_KIND`), plus every module that a package declares under the entry-point group `vpae.plugins` in its
own pyproject (third-party sources, families, methods).

    data source    data.kind -> a class built as cls(cfg, device) (vpae.data.source.DataSource). Optional class
                   attributes: `config_class`, the dataclass of its section data.<kind> (it validates its own
                   values); `check_data(data_cfg)`, checks of the whole data section (raise ConfigError);
                   `model_family`, the family whose condition stack encodes its videos (vpae data prepare).
    model family   a name -> an object with (ModelFamily below)
                   `matches(meta, folder) -> bool`        whether a model folder (its vpae.json `meta`) is one of its
                   `model_stack(backbone, meta, folder)`  the condition stack of such a model (vpae generate)
                   `config_stack(cfg, base)`              the condition stack for a config (vpae data prepare /
                                                          synthesize; base: a local pipeline folder or None)
                   and optionally `builtin_model` (the folder `builtin:<name>` names) and
                   `check_teacher(cfg, meta) -> list[str]` (warnings when a teacher of the family is used).
                   The stacks are vpae.data.prepare.EncoderStack.
    method         cfg.method -> a training method class (vpae.training.methods)
"""

from __future__ import annotations

import importlib
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Protocol

PLUGINS_BY_KIND: dict[str, tuple[str, ...]] = {
    "data source": ("vpae.data.cache", "vpae.toy.data"),
    "model family": ("vpae.data.wan_stack", "vpae.toy.family"),
    "method": ("vpae.training.methods",),
}
"""Modules whose import registers the built-in parts of each kind (imported by name, on the first lookup of the
kind: loading a config imports the data sources only, not the training methods)."""

BUILTIN_PLUGINS = tuple(m for modules in PLUGINS_BY_KIND.values() for m in modules)
"""Every built-in plugin module (load_plugins imports them all)."""

ENTRY_POINT_GROUP = "vpae.plugins"

_REGISTRIES: dict[str, dict[str, Any]] = {kind: {} for kind in PLUGINS_BY_KIND}
_loaded: set[str] = set()
_entry_points_loaded = False


class UnknownName(KeyError):
    def __str__(self) -> str:
        return str(self.args[0])


class ModelFamily(Protocol):
    """What a registered model family provides (see the module docstring)."""

    def matches(self, meta: dict, folder: Path | None) -> bool: ...

    def model_stack(self, backbone, meta: dict, folder: Path | None): ...

    def config_stack(self, cfg, base: Path | None): ...


def _load(kind: str) -> None:
    global _entry_points_loaded
    if kind not in _loaded:
        _loaded.add(kind)
        for module in PLUGINS_BY_KIND[kind]:
            importlib.import_module(module)
    if not _entry_points_loaded:
        _entry_points_loaded = True
        for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
            ep.load()


def load_plugins() -> None:
    """Import every built-in plugin module and every `vpae.plugins` entry point (once)."""
    for kind in PLUGINS_BY_KIND:
        _load(kind)


def _register(kind: str, name: str) -> Callable[[Any], Any]:
    def add(obj: Any) -> Any:
        table = _REGISTRIES[kind]
        if name in table and table[name] is not obj:
            raise ValueError(f"{kind} {name!r} is registered twice ({table[name]!r} and {obj!r})")
        table[name] = obj
        return obj
    return add


def _get(kind: str, name: str) -> Any:
    _load(kind)
    table = _REGISTRIES[kind]
    if name not in table:
        raise UnknownName(f"unknown {kind} {name!r}; choose one of {sorted(table)}")
    return table[name]


def _names(kind: str) -> list[str]:
    _load(kind)
    return sorted(_REGISTRIES[kind])


def register_data_source(name: str):
    """Class decorator: `data.kind: <name>` builds this class as cls(cfg, device)."""
    return _register("data source", name)


def register_model_family(name: str):
    """Decorator for a ModelFamily object (or class): `registry.model_family(<name>)` returns it."""
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
    """Every registered model family, in registration order."""
    _load("model family")
    return list(_REGISTRIES["model family"].values())


def family_of(meta: dict, folder: Path | None = None):
    """The first registered model family whose `matches(meta, folder)` is true, else None."""
    return next((f for f in model_families() if f.matches(meta, folder)), None)
