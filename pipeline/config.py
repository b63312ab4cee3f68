"""Config dataclasses that round-trip to JSON, and their fingerprints.

Every artefact (cache, head checkpoint, scores) records the config that made it
and a short fingerprint of it, so that mismatches are caught, not guessed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import socket
import tempfile
import typing
from pathlib import Path
from typing import Any, TypeVar

from pipeline.errors import ConfigError

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


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(chunk)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to a temp file beside ``path``, fsync, then rename over it.

    The temp file is named ``.NAME.HOST-PID.XXXX.tmp``; a writer killed mid-write leaves
    it behind (never read), and the next successful write of ``path`` on the same host
    removes the ones whose process is gone.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f"{_temp_stem(path)}{os.getpid()}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _sweep_dead_temps(path)


def _temp_stem(path: Path) -> str:
    host = "".join(c if c.isalnum() else "_" for c in socket.gethostname())[:40] or "host"
    return f".{path.name}.{host}-"


def _sweep_dead_temps(path: Path) -> None:
    """Remove temp files of ``path`` left by writers on this host whose process no longer exists."""
    stem = _temp_stem(path)
    try:
        names = [n for n in os.listdir(path.parent) if n.startswith(stem) and n.endswith(".tmp")]
    except OSError:
        return
    for name in names:
        pid_text = name[len(stem):].split(".", 1)[0]
        if not pid_text.isdigit() or int(pid_text) == os.getpid():
            continue
        try:
            os.kill(int(pid_text), 0)
            continue                    # the writer is alive (or the pid was reused): leave it
        except ProcessLookupError:
            pass
        except OSError:
            continue                    # e.g. EPERM: some other user's live process
        try:
            os.unlink(path.parent / name)
        except OSError:
            pass


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(to_dict(obj), indent=2, sort_keys=True) + "\n")
