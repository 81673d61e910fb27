"""Typed configuration: nested dataclasses loaded from YAML plus dotted command-line overrides.

    cfg = load_config(TrainConfig, "configs/tiny.yaml", ["trainer.lr=0.01", "model.arch=cost_b"])

Every key is checked against the dataclass it lands in: an unknown key, a value of the wrong
type and a missing required field (a field with no default) are each a ``ConfigError`` that
names the dotted key. Overrides are YAML scalars (``0.01``, ``true``, ``null``, ``[1, 2]``);
a string field keeps the text as given. ``to_dict`` / ``to_yaml`` / ``flatten`` dump a config
back, for logging with a run.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A config problem; the message names the dotted key and what was expected."""


def load_config(cls: type[T], path: str | Path | None = None, overrides: Iterable[str] = ()) -> T:
    """Build ``cls`` from a YAML file (optional) with ``key.sub=value`` overrides applied on top."""
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        try:
            loaded = yaml.safe_load(path.read_text())
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {path} is not valid YAML: {e}") from e
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"config file {path} must hold a mapping at the top, "
                              f"got {type(loaded).__name__}")
        data = loaded or {}
    for item in overrides:
        apply_override(cls, data, item)
    return from_dict(cls, data)


def apply_override(cls: type, data: dict[str, Any], item: str) -> None:
    """Set ``key.sub=value`` in the raw mapping ``data``, typed by the field it names in ``cls``."""
    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"override {item!r} must look like key.sub=value")
    hint: Any = cls
    node = data
    parts = key.split(".")
    for depth, part in enumerate(parts):
        fields = _fields(hint)
        if fields is None:
            raise ConfigError(f"config key '{'.'.join(parts[:depth])}' is a value, not a section "
                              f"(override {item!r})")
        if part not in fields:
            raise ConfigError(_unknown(".".join(parts[:depth]), part, fields))
        hint = fields[part]
        if depth < len(parts) - 1:
            child = node.get(part)
            if not isinstance(child, dict):
                child = {}
                node[part] = child
            node = child
    node[parts[-1]] = raw if _is_str(hint) and raw.strip() != "null" else _parse_scalar(raw, key)


def from_dict(cls: type[T], data: Mapping[str, Any], prefix: str = "") -> T:
    """Check ``data`` against dataclass ``cls`` and build it; errors name the dotted key."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"config key '{prefix or '<root>'}' must be a mapping, got {type(data).__name__}")
    fields = _fields(cls)
    assert fields is not None, f"{cls} is not a dataclass"
    for key in data:
        if key not in fields:
            raise ConfigError(_unknown(prefix, key, fields))
    kwargs = {}
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        dotted = f"{prefix}.{f.name}" if prefix else f.name
        if f.name in data:
            kwargs[f.name] = _coerce(data[f.name], fields[f.name], dotted)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"config key '{dotted}' is required but missing")
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        if isinstance(e, ConfigError):
            raise
        raise ConfigError(f"config section '{prefix or '<root>'}': {e}") from e


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain nested dict (tuples as lists) that ``from_dict`` accepts back."""
    def plain(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v
    return plain(cfg)


def to_yaml(cfg: Any) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def flatten(cfg: Any) -> dict[str, Any]:
    """``{"trainer.lr": 0.005, ...}``: one entry per leaf, e.g. for MLflow params."""
    out: dict[str, Any] = {}

    def walk(prefix: str, v: Any) -> None:
        if isinstance(v, dict):
            for k, x in v.items():
                walk(f"{prefix}.{k}" if prefix else k, x)
        else:
            out[prefix] = v
    walk("", to_dict(cfg))
    return out


# ---------------------------------------------------------------- type checking

def _fields(cls: Any) -> dict[str, Any] | None:
    if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
        return None
    hints = get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.init}


def _unknown(prefix: str, key: str, fields: Mapping[str, Any]) -> str:
    dotted = f"{prefix}.{key}" if prefix else key
    close = difflib.get_close_matches(key, list(fields), n=1)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    return f"unknown config key '{dotted}'{hint} (known: {', '.join(fields)})"


def _is_str(hint: Any) -> bool:
    if hint is str:
        return True
    if _is_union(hint):
        return any(a is str for a in get_args(hint))
    return False


def _is_union(hint: Any) -> bool:
    return get_origin(hint) in (Union, types.UnionType)


def _parse_scalar(raw: str, key: str) -> Any:
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError as e:
        raise ConfigError(f"config key '{key}': cannot parse {raw!r}: {e}") from e


def _type_name(hint: Any) -> str:
    if isinstance(hint, type):
        return hint.__name__
    return str(hint).replace("typing.", "")


def _coerce(value: Any, hint: Any, key: str) -> Any:
    """Return ``value`` as type ``hint`` or raise a ConfigError naming ``key``."""
    def fail() -> typing.NoReturn:
        raise ConfigError(f"config key '{key}': expected {_type_name(hint)}, got "
                          f"{type(value).__name__} {value!r}")

    if hint is Any:
        return value
    if _fields(hint) is not None:
        return from_dict(hint, value, key) if isinstance(value, Mapping) else fail()
    origin, args = get_origin(hint), get_args(hint)
    if _is_union(hint):
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError:
                pass
        fail()
    if origin is Literal:
        return value if value in args else fail()
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            fail()
        if origin is list:
            return [_coerce(v, args[0] if args else Any, f"{key}[{i}]") for i, v in enumerate(value)]
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value))
        if args and len(args) != len(value):
            raise ConfigError(f"config key '{key}': expected {len(args)} items, got {len(value)}")
        return tuple(_coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args, strict=True)))
    if origin is dict:
        if not isinstance(value, Mapping):
            fail()
        return {k: _coerce(v, args[1] if args else Any, f"{key}.{k}") for k, v in value.items()}
    if hint is bool:
        return value if isinstance(value, bool) else fail()
    if hint is int:
        return value if isinstance(value, int) and not isinstance(value, bool) else fail()
    if hint is float:
        return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else fail()
    if hint is str:
        return value if isinstance(value, str) else fail()
    if isinstance(hint, type):
        return value if isinstance(value, hint) else fail()
    raise ConfigError(f"config key '{key}': unsupported type {hint!r}")
