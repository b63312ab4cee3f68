"""Config dataclasses that round-trip to JSON, and their fingerprints.

Every artefact (cache, head checkpoint, scores) records the config that made it
and a short fingerprint of it, so that mismatches are caught, not guessed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
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
        kwargs[k] = from_dict(sub, v) if sub is not None and isinstance(v, dict) else v
    return cls(**kwargs)


def _dataclass_type(ftype: Any) -> type | None:
    if isinstance(ftype, type) and dataclasses.is_dataclass(ftype):
        return ftype
    return None


def canonical_json(obj: Any) -> str:
    return json.dumps(to_dict(obj), sort_keys=True, separators=(",", ":"), default=str)


def fingerprint(obj: Any, length: int = 16) -> str:
    """Short sha256 of the canonical JSON of ``obj`` (dataclass, dict, list...)."""
    return hashlib.sha256(canonical_json(obj).encode()).hexdigest()[:length]


