"""Config dataclasses that round-trip to JSON, and their fingerprints.

Every artefact (cache, head checkpoint, scores) records the config that made it
and a short fingerprint of it, so that mismatches are caught, not guessed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
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
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{writer_tag()}.", suffix=".tmp", dir=path.parent)
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
    sweep_dead_temps(path.parent, f".{path.name}.")


def _host() -> str:
    return "".join(c if c.isalnum() else "_" for c in socket.gethostname())[:40] or "host"


def writer_tag() -> str:
    """``HOST-PID`` of this process, for temp-file names that ``is_dead_local_writer`` can judge."""
    return f"{_host()}-{os.getpid()}"


def is_dead_local_writer(text: str) -> bool:
    """True when ``text`` starts with a ``writer_tag`` of this host whose process is gone.

    Another host's tag, a live (or reused) pid, or this process: False, so a sweep never
    removes the temp file of a writer that may still rename it.
    """
    m = re.match(r"([A-Za-z0-9_]+)-(\d+)(?!\d)", text)
    if not m or m.group(1) != _host() or int(m.group(2)) == os.getpid():
        return False
    try:
        os.kill(int(m.group(2)), 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False            # e.g. EPERM: some other user's live process
    return False


def sweep_dead_temps(folder: Path, prefix: str, suffix: str = ".tmp") -> None:
    """Remove ``folder/PREFIX<writer_tag>...SUFFIX`` files whose writer (on this host) is gone."""
    try:
        names = [n for n in os.listdir(folder) if n.startswith(prefix) and n.endswith(suffix)]
    except OSError:
        return
    for name in names:
        if is_dead_local_writer(name[len(prefix):]):
            try:
                os.unlink(Path(folder) / name)
            except OSError:
                pass


def _temp_stem(path: Path) -> str:
    """The start of ``atomic_write_bytes``'s temp names for ``path``: ``.NAME.HOST-``."""
    return f".{path.name}.{_host()}-"


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(to_dict(obj), indent=2, sort_keys=True) + "\n")
