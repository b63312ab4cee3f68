"""File-system I/O: atomic writes, fsync, sha256, temp-file sweeping, process liveness (one of each)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import socket
import tempfile
from pathlib import Path
from typing import Any

from pipeline.core.config import to_dict


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
    return not pid_alive(int(m.group(2)))


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


def fsync_file(path: str | Path) -> None:
    """fsync a file (or folder) by path: its data, or a folder's entries, reach the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: str | Path) -> None:
    """fsync a folder, so that renames and new entries in it survive a crash."""
    fsync_file(path)


def pid_alive(pid: int, start: str | None = None) -> bool:
    """Whether ``pid`` runs on this host (and, if ``start`` is given, is the same process)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return start is None or proc_start(pid) in (None, start)


def proc_start(pid: int) -> str | None:
    """The process start time (clock ticks since boot, /proc/PID/stat field 22), if known."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def tree_bytes(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            with contextlib.suppress(OSError):
                total += os.stat(os.path.join(root, f)).st_size
    return total
