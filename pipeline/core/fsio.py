"""File-system I/O: atomic writes (mode, temp names, one-line write errors), fsync, sha256,
temp-file sweeping, process liveness (one of each)."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import socket
import tempfile
from pathlib import Path
from typing import Any

from pipeline.core.config import to_dict
from pipeline.core.errors import OutputError


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

    The temp file is named ``.NAME.HOST-PID.XXXX.tmp`` (NAME shortened to ``STEM~HASH``
    when the whole would pass the 255-byte file-name limit); a writer killed mid-write
    leaves it behind (never read), and the next successful write of ``path`` on the same
    host removes the ones whose process is gone. The file gets the mode of the file it
    replaces, else ``0666 & ~umask`` (not ``mkstemp``'s 0600). An ``OSError`` (read-only
    or full file system, a folder at ``path``, a name too long) is an ``OutputError``
    naming ``path``.
    """
    path = Path(path)
    prefix = temp_prefix(path)
    tmp = None
    try:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except FileExistsError:  # a parent is a file
            raise NotADirectoryError(errno.ENOTDIR, "a parent is not a folder", str(path)) from None
        mode = output_mode(path)
        fd, tmp = tempfile.mkstemp(prefix=f"{prefix}{writer_tag()}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fchmod(f.fileno(), mode)
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        _unlink_quiet(tmp)
        raise output_error(e, path) from None
    except BaseException:
        _unlink_quiet(tmp)
        raise
    sweep_dead_temps(path.parent, prefix)


def _unlink_quiet(tmp) -> None:
    if tmp is not None:
        try:
            os.unlink(tmp)
        except OSError:
            pass


NAME_MAX = 255
_TEMP_EXTRA = 1 + 1 + 40 + 1 + 10 + 1 + 8 + 4   # "." NAME "." HOST(<=40) "-" PID(<=10) "." XXXXXXXX ".tmp"


def temp_prefix(path: Path) -> str:
    """``.NAME.`` for ``path``'s temp files, or ``.STEM~HASH.`` when a temp name built on
    NAME would pass ``NAME_MAX`` bytes (sweeps use the same prefix, so they still work)."""
    name = Path(path).name
    raw = name.encode("utf-8", "surrogateescape")
    if len(raw) + _TEMP_EXTRA <= NAME_MAX:
        return f".{name}."
    digest = hashlib.sha256(raw).hexdigest()[:8]
    stem = raw[: NAME_MAX - _TEMP_EXTRA - 9].decode("utf-8", "ignore")
    return f".{stem}~{digest}."


def output_mode(path: Path) -> int:
    """The mode a new output at ``path`` gets: the replaced file's, else 0666 minus the umask."""
    try:
        return os.stat(path).st_mode & 0o7777
    except OSError:
        return 0o666 & ~_umask()


def _umask() -> int:
    """This process's umask, read without changing it (Linux ``/proc``), else by setting and
    restoring it (a moment in which other threads would create files with umask 0)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    umask = os.umask(0o077)
    os.umask(umask)
    return umask


def output_error(e: OSError, path: str | Path) -> OutputError:
    """One ``OutputError`` line for an ``OSError`` met while writing ``path``."""
    why = {errno.ENOSPC: "no space left on the device", errno.EFBIG: "file too large for the device "
           "or the file-size limit", errno.EROFS: "read-only file system", errno.EACCES: "permission denied",
           errno.EPERM: "operation not permitted", errno.ENAMETOOLONG: "file name too long",
           errno.EISDIR: "is a folder", errno.ENOTDIR: "a parent is not a folder",
           errno.EDQUOT: "disk quota exceeded"}.get(e.errno, e.strerror or str(e))
    hints = {errno.ENOSPC: "free disk space and rerun", errno.EDQUOT: "free disk space and rerun",
             errno.EFBIG: "free disk space (or raise the file-size limit) and rerun",
             errno.ENAMETOOLONG: "use a file name of at most 255 bytes"}
    return OutputError(f"cannot write output: {why}", path=path,
                       hint=hints.get(e.errno, "write it to another place"))


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
    return f"{temp_prefix(path)}{_host()}-"


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
