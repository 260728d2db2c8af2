"""Strict loading: a YAML file plus `section.key=value` overrides -> VPAEConfig. A key the schema does not have,
or a value of the wrong type, is a ConfigError that names it; keys the file does not give take their defaults."""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
from typing import Any

import yaml

from vpae.config.schema import ConfigError, VPAEConfig


def _coerce(value: Any, tp: Any, where: str) -> Any:
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__}")
        return build(tp, value, where)
    origin = typing.get_origin(tp)
    if tp is tuple or origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return tuple(value)
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):  # YAML 1.1 reads "7e-4" (no dot) as a string
        try:
            return float(value)
        except ValueError:
            raise ConfigError(f"{where}: expected a number, got {value!r}") from None
    if tp is float:  # bool, None, lists...: not a number
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if tp is int and isinstance(value, bool) or tp in (int, str, bool, dict) and not isinstance(value, tp):
        raise ConfigError(f"{where}: expected {tp.__name__}, got {value!r}")
    return value


def _field_types(cls) -> dict[str, Any]:
    """Each field's type; a data-source section (DataConfig.toy) has the dataclass its source registers."""
    hints = typing.get_type_hints(cls)
    return {f.name: f.metadata["section_class"]() if "section_class" in f.metadata else hints[f.name]
            for f in dataclasses.fields(cls)}


def _moved_keys(types: dict[str, Any], unknown: set[str], where: str) -> list[str]:
    """Where unknown keys live one level down (data.bounce -> data.toy.bounce), to say so in the error."""
    out = []
    for name, tp in types.items():
        if dataclasses.is_dataclass(tp):
            sub = {f.name for f in dataclasses.fields(tp)}
            out += [f"{where}.{name}.{k}".lstrip(".") for k in sorted(unknown & sub)]
    return out


def build(cls, data: dict, where: str = ""):
    """cls(**data) with every value type-checked against the schema; unknown keys are a ConfigError."""
    types = _field_types(cls)
    unknown = set(data) - set(types)
    if unknown:
        moved = _moved_keys(types, unknown, where)
        raise ConfigError(f"unknown config key(s) {sorted(unknown)} in {where or 'top level'}; valid keys: "
                          f"{sorted(types)}" + (f"; did you mean {', '.join(moved)}?" if moved else ""))
    kwargs = {k: _coerce(v, types[k], f"{where}.{k}".lstrip(".")) for k, v in data.items()}
    return cls(**kwargs)


def _set_path(data: dict, dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = data
    for k in keys[:-1]:
        node = node.setdefault(k, {})
    node[keys[-1]] = value


PACKAGE = Path(__file__).resolve().parents[1]


def find_config(path: str | Path) -> Path:
    """A config file: the path as given (relative to the working directory), else the copy shipped in the package
    (`configs/toy/demo.yaml` works from any folder, and after `pip install vpae`)."""
    path = Path(path)
    if path.is_file():
        return path
    shipped = PACKAGE / path
    if not path.is_absolute() and path.parts[:1] == ("configs",) and shipped.is_file():
        return shipped
    raise ConfigError(f"config file not found: {path}" + ("" if path.is_absolute() else
                      f" (nor among the shipped configs in {PACKAGE / 'configs'})"))


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> VPAEConfig:
    """Load a YAML config (missing keys take defaults) and apply `a.b=value` overrides (YAML values)."""
    data: dict = {}
    if path is not None:
        path = find_config(path)
        data = yaml.safe_load(path.read_text()) or {}
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: top level must be a mapping")
    for ov in overrides or []:
        if "=" not in ov:
            raise ConfigError(f"override {ov!r} must look like section.key=value")
        key, val = ov.split("=", 1)
        _set_path(data, key.strip(), yaml.safe_load(val))
    return build(VPAEConfig, data)


def to_dict(cfg) -> dict:
    """A config (or one section) as plain YAML/JSON values: nested dicts, lists for tuples."""
    def conv(x):
        if isinstance(x, tuple):
            return [conv(v) for v in x]
        if isinstance(x, dict):
            return {k: conv(v) for k, v in x.items()}
        return x
    return conv(dataclasses.asdict(cfg))


def save_config(cfg: VPAEConfig, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))


def nest_data_sections(data: dict) -> dict:
    """A recorded `data` mapping (a run's config.yaml, a model's vpae.json) in the current layout: keys of a
    data-source section recorded flat in `data` (the layout before sections, e.g. data.bounce) move into their
    section (data.toy.bounce). Returns a new dict; the current layout comes back unchanged."""
    from vpae.config.schema import DataConfig, section_classes
    out = dict(data)
    core = {f.name for f in dataclasses.fields(DataConfig)}
    for name, cls in section_classes(DataConfig).items():
        moved = {k: out.pop(k) for k in [f.name for f in dataclasses.fields(cls)] if k in out and k not in core}
        if moved:
            out[name] = {**moved, **(out.get(name) or {})}
    return out
