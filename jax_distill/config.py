"""Typed configuration: dataclasses, YAML files and dotted command-line overrides.

Every config in the project is a (nested) dataclass. ``load_config(RunConfig, "configs/x.yaml", ["train.steps=5"])``
reads the YAML, applies overrides, and builds the dataclass strictly: an unknown key, a wrong type or a bad value
raises ``ConfigError`` naming the file and the dotted field.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_origin

import yaml

from jax_distill.paths import as_path

T = TypeVar("T")


class ConfigError(ValueError):
    """A config file or override that does not fit the schema; the message names the source and the field."""


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _convert(value: Any, tp: Any, where: str) -> Any:
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, where)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(f"{where}: {value!r} does not match {_type_name(tp)}")
    if origin is Literal:
        if value not in get_args(tp):
            raise ConfigError(f"{where}: {value!r} is not one of {list(get_args(tp))}")
        return value
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping for {tp.__name__}, got {type(value).__name__}")
        return from_dict(tp, value, where)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {type(value).__name__} {value!r}")
        args = get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise ConfigError(f"{where}: expected {len(args)} items, got {len(value)}")
            return tuple(_convert(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        item = args[0] if args else Any
        out = [_convert(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(out) if origin is tuple else out
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__}")
        kt, vt = get_args(tp) or (Any, Any)
        return {_convert(k, kt, where): _convert(v, vt, f"{where}.{k}") for k, v in value.items()}
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            if isinstance(value, str):
                try:
                    return float(value)
                except ValueError:
                    pass
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return str(value)
    if isinstance(tp, type) and not isinstance(value, tp):
        raise ConfigError(f"{where}: expected {tp.__name__}, got {type(value).__name__} {value!r}")
    return value


def from_dict(cls: type[T], data: dict[str, Any], where: str = "config") -> T:
    """Build dataclass ``cls`` from a plain mapping, strictly (unknown keys and bad types raise ConfigError)."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {unknown}; {cls.__name__} has {sorted(fields)}")
    kwargs = {name: _convert(value, hints[name], f"{where}.{name}") for name, value in data.items()}
    try:
        obj = cls(**kwargs)
    except TypeError as err:  # a required field is missing
        raise ConfigError(f"{where}: {err}") from None
    validate = getattr(obj, "validate", None)
    if callable(validate):
        try:
            validate()
        except (ValueError, AssertionError) as err:
            raise ConfigError(f"{where}: {err}") from None
    return obj


def to_dict(obj: Any) -> Any:
    """A dataclass (tree) as plain YAML/JSON-able data."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def set_dotted(data: dict[str, Any], key: str, value: Any, what: str | None = None) -> None:
    """Set ``a.b.c`` (list items by index: ``stages.1.steps``) in nested config data to ``value``, creating absent or
    null sections. ``what``: the user's text, for error messages (default: the key)."""
    what = what or key
    parts = key.strip().split(".")
    if not all(parts):
        raise ConfigError(f"override {what!r}: empty key segment")
    node: Any = data
    for depth, part in enumerate(parts):
        where = ".".join(parts[:depth]) or "the config"
        if isinstance(node, list):  # list items by index: stages.1.steps=5
            if not part.isdigit() or int(part) >= len(node):
                raise ConfigError(f"override {what!r}: {where} is a list of {len(node)} item(s); "
                                  f"{part!r} is not an index into it")
            k: Any = int(part)
        elif isinstance(node, dict):
            k = part
        else:
            raise ConfigError(f"override {what!r}: {where} is a value, not a section")
        if depth == len(parts) - 1:
            node[k] = value
        else:
            if isinstance(node, dict) and node.get(k) is None:
                node[k] = {}
            node = node[k]


def apply_overrides(data: dict[str, Any], overrides: typing.Iterable[str]) -> dict[str, Any]:
    """Apply ``a.b.c=value`` overrides in place; values are parsed as YAML scalars/lists (``x=[1,2]``, ``y=null``)."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected dotted.key=value")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError as err:
            raise ConfigError(f"override {item!r}: cannot parse value: {err}") from None
        set_dotted(data, key, value, item)
    return data


def load_config(cls: type[T], path: str | Path | None = None, overrides: typing.Iterable[str] = ()) -> T:
    """Read ``path`` (YAML; None = the dataclass defaults), apply dotted overrides, build ``cls`` strictly."""
    data: dict[str, Any] = {}
    where = "config"
    if path is not None:
        where = str(path)
        try:
            text = as_path(path).read_text()  # local or gs:// (a pod's workers read one shared copy)
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {path}") from None
        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: invalid YAML: {err}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: top level must be a mapping")
    overrides = list(overrides)
    apply_overrides(data, overrides)
    if overrides:
        where += f" (with overrides {overrides})"
    return from_dict(cls, data, where)
