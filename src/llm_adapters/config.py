"""Configs are data: one dataclass per command, filled from YAML, flags or JSON, validated when built.

The one copy of: dataclass field -> command-line flag (`cutoff_len` -> `--cutoff-len`, booleans also `--no-...`),
string or YAML value -> the field's type (PyYAML reads `3e-4` as a string; flags are all strings), unknown keys
(named, with the closest accepted ones), and every problem of a config reported in one error. The dataclasses
check their own values in `__post_init__` and raise one error listing each problem; `build` adds the problems it
finds first (unknown keys, values of the wrong type) and says where the values came from.

Example:
    >>> build(FinetuneConfig, {"data": "d.json", "output_dir": "o", "learning_rate": "3e-4"}).learning_rate
    0.0003
"""
from __future__ import annotations

import argparse
import dataclasses
import difflib
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, Union

import yaml

from llm_adapters.errors import MissingInputError, UserError

T = TypeVar("T")


def read_yaml(path: str | Path) -> dict[str, Any]:
    """A YAML file that holds one mapping (empty file: {}).

    Raises:
        MissingInputError: no such file.
        UserError: not valid YAML, or not a mapping.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingInputError(f"no such config file: {path}")
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise UserError(f"{path}: not valid YAML: {error}") from error
    if loaded is not None and not isinstance(loaded, dict):
        raise UserError(f"{path}: expected a mapping of settings, got {type(loaded).__name__}")
    return loaded or {}


def fields(cls: type) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cls)}


def _kind(cls: type, name: str) -> tuple[str, Any, bool]:
    """(kind, element type, optional) of a field: kind is bool, int, float, str, tuple, number|str, str|list,
    str|mapping or mapping."""
    hint = typing.get_type_hints(cls)[name]
    args = typing.get_args(hint)
    union = typing.get_origin(hint) in (Union, types.UnionType)
    optional = union and type(None) in args
    members = [a for a in args if a is not type(None)] if union else [hint]
    if len(members) == 1:
        hint = members[0]
        origin = typing.get_origin(hint)
        if origin is tuple or origin is list:
            return "tuple", typing.get_args(hint)[0], optional
        if origin is Literal:
            return "str", None, optional
        for kind in (bool, int, float, str, dict):
            if hint is kind:
                return {dict: "mapping"}.get(kind, kind.__name__), None, optional
        return "str", None, optional
    plain = {typing.get_origin(m) or m for m in members}
    if plain == {float, str}:
        return "number|str", None, optional
    if dict in plain:
        return "str|mapping", None, optional
    return "str|list", None, optional


def _parse(value: str, kind: type, name: str) -> Any:
    try:
        return kind(value)
    except ValueError as error:
        raise UserError(f"{name} must be {'an integer' if kind is int else 'a number'}, got {value!r}") from error


def coerce(cls: type, name: str, value: Any) -> Any:
    """Bring a YAML or flag value to field `name`'s type (the dataclass checks the value itself)."""
    kind, element, optional = _kind(cls, name)
    if isinstance(value, str) and optional and value.strip().lower() in ("null", "none"):
        return None
    if kind == "tuple":
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)):
            return value
        items = [item.strip() if isinstance(item, str) else item for item in items]
        return tuple(coerce_scalar(element, name, item) for item in items if item != "")
    return coerce_scalar({"bool": bool, "int": int, "float": float}.get(kind, kind), name, value)


def coerce_scalar(kind: Any, name: str, value: Any) -> Any:
    if not isinstance(value, str):
        return float(value) if kind is float and isinstance(value, int) and not isinstance(value, bool) else value
    if kind is int:
        return _parse(value, int, name)
    if kind is float:
        return _parse(value, float, name)
    if kind is bool:
        if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
            raise UserError(f"{name} must be true or false, got {value!r}")
        return value.lower() in ("true", "1", "yes")
    if kind == "number|str":
        try:
            return float(value)
        except ValueError:
            return value
    if kind in ("str|mapping", "mapping") and value.lstrip().startswith("{"):
        # a flow mapping on the command line: --adapter '{preset: paper-lora, r: 16}'
        try:
            mapping = yaml.safe_load(value)
        except yaml.YAMLError as error:
            problem = str(getattr(error, "problem", None) or error).splitlines()[0]
            raise UserError(f"{name} is not a valid mapping ({problem}): {value!r}; write it as "
                            "'{key: value, key: value}'") from error
        if not isinstance(mapping, dict):
            raise UserError(f"{name} must be a mapping such as '{{key: value}}', got {value!r}")
        return mapping
    return value


def unknown_key_message(cls: type, key: str) -> str:
    names = list(fields(cls))
    close = difflib.get_close_matches(key, names, n=3)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    return f"unknown key {key!r}.{hint} Accepted: {', '.join(names)}"


def build(cls: type[T], values: dict[str, Any], *, label: str | None = None, where: str | Path | None = None) -> T:
    """An instance of the dataclass `cls` from `values` (YAML or flag values), every problem in one UserError.

    Raises:
        UserError: "invalid <label>: <where>: problem; problem; ...".
    """
    known = fields(cls)
    problems = [unknown_key_message(cls, key) for key in values if key not in known]
    coerced: dict[str, Any] = {}
    for key, value in values.items():
        if key in known:
            try:
                coerced[key] = coerce(cls, key, value)
            except UserError as error:
                problems.append(str(error))
    required = [name for name, f in known.items() if f.default is dataclasses.MISSING
                and f.default_factory is dataclasses.MISSING and name not in coerced]
    problems += [f"{name} is required" for name in required]
    instance = None
    if not required:
        try:  # the fields that could be read, so that the dataclass reports its own problems too
            instance = cls(**coerced)
        except (ValueError, TypeError) as error:
            problems.append(str(error))
    if problems or instance is None:
        prefix = f"invalid {label or cls.__name__}: " + (f"{where}: " if where else "")
        raise UserError(prefix + "; ".join(problems))
    return instance


def load(cls: type[T], path: str | Path | None = None, *, label: str | None = None, **overrides: Any) -> T:
    """`build` from a YAML file (optional) with `overrides` on top."""
    values = read_yaml(path) if path is not None else {}
    return build(cls, {**values, **overrides}, label=label, where=path)


def _shown(value: Any) -> str:
    if isinstance(value, (tuple, list)):
        return ",".join(map(str, value))
    return str(value)


def add_flags(parser: argparse.ArgumentParser, cls: type, *, exclude: tuple[str, ...] = (),
              defaults: Any = None) -> None:
    """One flag per field of `cls` (help from the field's metadata); a flag not given leaves the value alone.

    Args:
        defaults: an instance whose values the help shows as defaults (a preset), else the fields' defaults.
    """
    for name, f in fields(cls).items():
        if name in exclude:
            continue
        flag = "--" + name.replace("_", "-")
        default = getattr(defaults, name) if defaults is not None else f.default
        shown = "required" if default is dataclasses.MISSING else _shown(default)
        help = f"{f.metadata.get('help', '')} (default: {shown})".replace("%", "%%")
        if _kind(cls, name)[0] == "bool":
            parser.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS,
                                help=help)
        else:
            parser.add_argument(flag, dest=name, default=argparse.SUPPRESS, metavar=name.upper(), help=help)


def given(args: argparse.Namespace, cls: type) -> dict[str, Any]:
    """The values of `cls`'s flags that were given on the command line."""
    return {name: getattr(args, name) for name in fields(cls) if hasattr(args, name)}


def to_dict(obj: Any) -> dict[str, Any]:
    """A dataclass as JSON-ready data (tuples as lists)."""
    def plain(value: Any) -> Any:
        if isinstance(value, (tuple, list)):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value

    return {name: plain(value) for name, value in dataclasses.asdict(obj).items()}
