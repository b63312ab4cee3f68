"""Config dataclasses that round-trip to JSON, and their fingerprints.

Every artefact (cache, head checkpoint, scores) records the config that made it
and a short fingerprint of it, so that mismatches are caught, not guessed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

from pipeline.core.errors import ConfigError

T = TypeVar("T")


def to_dict(obj: Any) -> Any:
    """A dataclass (nested ones too) as plain JSON-able data."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(x) for x in obj]
    if isinstance(obj, dict):
        return {str(k): to_dict(v) for k, v in obj.items()}
    if isinstance(obj, Path):
        return str(obj)
    return obj


def from_dict(cls: type[T], data: dict) -> T:
    """Build dataclass ``cls`` from ``data``; unknown keys are a ``ConfigError``."""
    if not isinstance(data, dict):
        raise ConfigError(f"expected a JSON object for {cls.__name__}, got {type(data).__name__}")
    names = {f.name: f for f in dataclasses.fields(cls)}
    try:
        hints = typing.get_type_hints(cls)
    except Exception:  # unresolvable forward refs: fall back to the raw annotations
        hints = {n: f.type for n, f in names.items()}
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise ConfigError(f"unknown {cls.__name__} field(s): {', '.join(unknown)}",
                          hint=f"known fields: {', '.join(names)}")
    kwargs = {}
    for k, v in data.items():
        ftype = hints.get(k, names[k].type)
        sub = _dataclass_type(ftype)
        if sub is None and not _fits(v, ftype):
            raise ConfigError(f"{cls.__name__} field {k!r} must be {_type_name(ftype)}, got {v!r}",
                              hint="fix the value in the config file")
        kwargs[k] = from_dict(sub, v) if sub is not None and isinstance(v, dict) else v
    return cls(**kwargs)


_SCALARS = (bool, int, float, str, dict, list)


def _fits(v: Any, ftype: Any) -> bool:
    """Whether JSON value ``v`` fits a plain field type (bool/int/float/str/dict/list, optionally
    ``| None``); other annotations are not checked."""
    args = typing.get_args(ftype) if typing.get_origin(ftype) in (typing.Union, types.UnionType) else ()
    options = args or (ftype,)
    plain = [typing.get_origin(t) or t for t in options]
    if not all(t in _SCALARS or t is type(None) for t in plain):
        return True
    for t in plain:
        if t is type(None) and v is None:
            return True
        if t is bool and isinstance(v, bool):
            return True
        if t is int and isinstance(v, int) and not isinstance(v, bool):
            return True
        if t is float and isinstance(v, (int, float)) and not isinstance(v, bool):
            return True
        if t in (str, dict, list) and isinstance(v, t):
            return True
    return False


def _type_name(ftype: Any) -> str:
    return str(ftype).replace("typing.", "").replace("<class '", "").replace("'>", "")


def _dataclass_type(ftype: Any) -> type | None:
    if isinstance(ftype, type) and dataclasses.is_dataclass(ftype):
        return ftype
    return None


def canonical_json(obj: Any) -> str:
    return json.dumps(to_dict(obj), sort_keys=True, separators=(",", ":"), default=str)


def fingerprint(obj: Any, length: int = 16) -> str:
    """Short sha256 of the canonical JSON of ``obj`` (dataclass, dict, list...)."""
    return hashlib.sha256(canonical_json(obj).encode()).hexdigest()[:length]


