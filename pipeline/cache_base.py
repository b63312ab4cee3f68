"""Shared parts of the embedding cache: array specs, the backend interface, the
writer lock, the lazy array view and small helpers (used by ``pipeline/cache.py``).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import hashlib
import json
import os
import socket
import time
import warnings
import zlib
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline.errors import CacheError

if TYPE_CHECKING:  # pragma: no cover
    from pipeline.cache import CacheLayout, EmbeddingCache

ROW_META = ("ids", "speakers", "splits")


@dataclass(frozen=True)
class ArraySpec:
    """Full shape, storage dtype (numpy name) and chunk shape (one shard of rows)."""
    shape: tuple[int, ...]
    dtype: str
    chunks: tuple[int, ...]


def array_specs(layout: "CacheLayout", n_rows: int) -> dict[str, ArraySpec]:
    """The arrays of a cache with ``layout`` and ``n_rows`` rows, in design-table order."""
    ss, f = layout.shard_size, layout.dtype
    out: dict[str, tuple[tuple[int, ...], str]] = {}
    if layout.audio_dim is not None:
        da, s = int(layout.audio_dim), int(layout.segments)
        out["audio/clip"] = ((da,), f)
        out["audio/segments"] = ((s, da), f)
        out["audio/segment_valid"] = ((s,), "bool")
    if layout.face_dim is not None:
        dv, fr = int(layout.face_dim), int(layout.frames)
        out["face/frames"] = ((fr, dv), f)
        out["face/frame_valid"] = ((fr,), "bool")
        out["face/clip"] = ((dv,), f)
    out["has_audio"] = ((), "bool")
    out["has_face"] = ((), "bool")
    out["duration"] = ((), "float32")
    return {k: ArraySpec((n_rows, *tail), dt, (ss, *tail)) for k, (tail, dt) in out.items()}


def crc32(arr: np.ndarray) -> str:
    """``"crc32:xxxxxxxx"`` of the C-contiguous bytes of ``arr``."""
    return "crc32:%08x" % (zlib.crc32(memoryview(np.ascontiguousarray(arr)).cast("B")) & 0xFFFFFFFF)


def rows_fingerprint(rows: dict[str, list[str]]) -> str:
    """16 hex chars of sha256 over the ids, speakers and splits lists."""
    h = hashlib.sha256()
    for key in ROW_META:
        h.update(json.dumps(list(rows[key]), ensure_ascii=False).encode())
    return h.hexdigest()[:16]


def _short(v: Any, n: int = 48) -> str:
    s = json.dumps(v, sort_keys=True, default=str)
    return s if len(s) <= n else s[: n - 3] + "..."


def dict_diff(old: Any, new: Any, prefix: str = "") -> list[str]:
    """``"key.sub: old (cache) != new (requested)"`` for every leaf that differs."""
    if isinstance(old, dict) and isinstance(new, dict):
        out: list[str] = []
        for k in sorted(set(old) | set(new), key=str):
            key = f"{prefix}.{k}" if prefix else str(k)
            if k not in old:
                out.append(f"{key}: missing (cache) != {_short(new[k])} (requested)")
            elif k not in new:
                out.append(f"{key}: {_short(old[k])} (cache) != missing (requested)")
            else:
                out.extend(dict_diff(old[k], new[k], key))
        return out
    if json.dumps(old, sort_keys=True, default=str) == json.dumps(new, sort_keys=True, default=str):
        return []
    return [f"{prefix or 'value'}: {_short(old)} (cache) != {_short(new)} (requested)"]


def lock_path(store: Path) -> Path:
    return store.with_name(store.name + ".lock")


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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


class CacheLock:
    """``<store>.lock`` created with O_CREAT|O_EXCL holding ``{"pid", "host", "since", "start"}``.

    Re-entrant for the object holding it. A lock whose pid is dead on this host
    (or was reused by another process) is stale and taken over with a warning;
    a live one (or one from another host) raises CacheError.
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        self._depth = 0
        self._mine: dict | None = None

    def holder(self) -> dict | None:
        try:
            return json.loads(self.path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {}

    def _stale(self, info: dict | None) -> bool:
        if info is None:
            return False
        if not info:  # unparsable: a writer died between create and write, or is writing now
            try:
                return time.time() - self.path.stat().st_mtime > 5
            except FileNotFoundError:
                return False
        return info.get("host") == socket.gethostname() and not pid_alive(int(info["pid"]), info.get("start"))

    def _locked_error(self, info: dict) -> CacheError:
        return CacheError(f"cache is locked by pid {info.get('pid', '?')} on {info.get('host', '?')} "
                          f"since {info.get('since', '?')}", path=self.path.with_suffix(""),
                          hint=f"wait for that run to finish; if that process is gone, remove {self.path}")

    def check_not_held(self) -> None:
        info = self.holder()
        if info is not None and not self._stale(info) and self._depth == 0:
            raise self._locked_error(info)

    def acquire(self) -> None:
        if self._depth:
            self._depth += 1
            return
        me = {"pid": os.getpid(), "host": socket.gethostname(), "start": proc_start(os.getpid()),
              "since": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
        for _ in range(5):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                info = self.holder()
                if not self._stale(info):
                    if info == {}:
                        time.sleep(0.2)
                        continue
                    if info is None:
                        continue
                    raise self._locked_error(info)
                self._take_over(info)
                continue
            with os.fdopen(fd, "w") as f:
                f.write(json.dumps(me))
                f.flush()
                os.fsync(f.fileno())
            self._mine, self._depth = me, 1
            return
        raise CacheError("could not take the cache lock (it keeps changing hands)", path=self.path,
                         hint="another writer is starting; try again")

    def _take_over(self, info: dict) -> None:
        """Remove a stale lock; serialised by flock on the folder so two takers cannot race."""
        fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            if self.holder() == info:
                self.path.unlink(missing_ok=True)
                who = f"pid {info.get('pid')} on {info.get('host')}" if info else "an unreadable lock"
                warnings.warn(f"{self.path}: taking over a stale cache lock of {who} (process is gone)",
                              stacklevel=4)
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def release(self) -> None:
        if self._depth == 0:
            return
        self._depth -= 1
        if self._depth == 0:
            if self.holder() == self._mine:
                self.path.unlink(missing_ok=True)
            self._mine = None

    def __enter__(self) -> "CacheLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


class CacheBackend(ABC):
    """Moves bytes for one storage format; ``EmbeddingCache`` enforces the contract."""

    kind: str = "?"

    def __init__(self, path: Path):
        self.path = Path(path)
        self.specs: dict[str, ArraySpec] = {}
        self.shard_size = 0
        self.n_shards = 0

    def configure(self, specs: dict[str, ArraySpec], shard_size: int, n_shards: int) -> None:
        self.specs, self.shard_size, self.n_shards = specs, shard_size, n_shards

    @classmethod
    @abstractmethod
    def create(cls, path: Path, header: dict, rows: dict[str, np.ndarray],
               specs: dict[str, ArraySpec], shard_size: int) -> bool:
        """Create the store atomically (nothing appears at ``path`` until complete).
        False when another process created ``path`` first."""

    @classmethod
    @abstractmethod
    def remove_store(cls, path: Path) -> None:
        """Remove the store and its backend sidecars."""

    @abstractmethod
    def read_header(self) -> dict: ...

    @abstractmethod
    def read_rows(self) -> dict[str, np.ndarray]:
        """``ids``/``speakers``/``splits`` as numpy str arrays."""

    @abstractmethod
    def done_shards(self) -> set[int]: ...

    @abstractmethod
    def read_markers(self, ks: list[int]) -> dict[int, dict]:
        """Markers of shards ``ks``; unreadable markers are left out."""

    @abstractmethod
    def write_shard(self, k: int, start: int, stop: int, arrays: dict[str, np.ndarray],
                    marker: dict) -> None:
        """Drop any old marker, write the data durably, then write the marker atomically."""

    @abstractmethod
    def remove_marker(self, k: int) -> None: ...

    @abstractmethod
    def read(self, name: str, start: int, stop: int) -> np.ndarray:
        """Rows ``[start, stop)`` (within one shard) of ``name``, stored dtype."""

    def read_shards(self, name: str, k0: int, k1: int) -> np.ndarray:
        """All rows of shards ``k0 .. k1-1`` of ``name`` (stored dtype) in one array.

        Default: one ``read`` per shard; a backend that can read a run of chunks in one
        call (Zarr) overrides it."""
        ss, n = self.shard_size, self.specs[name].shape[0]
        parts = [self.read(name, k * ss, min((k + 1) * ss, n)) for k in range(k0, k1)]
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def read_row_meta(self, key: str) -> np.ndarray:
        """One of ``ids``/``speakers``/``splits`` as a numpy str array.

        Default: via ``read_rows`` (all three read once, kept); a backend that can read
        one alone overrides it, so that ``cache.ids`` does not decode the others."""
        cached = getattr(self, "_row_meta_cache", None)
        if cached is None:
            cached = self._row_meta_cache = self.read_rows()
        return cached[key]

    def finalize(self) -> None:
        """Bring the main store up to date (HDF5 merges staged shards)."""

    def shard_problems(self, k: int) -> list[str]:
        """Storage-level problems of done shard ``k`` (e.g. missing chunk files)."""
        return []

    @abstractmethod
    def array_info(self) -> dict[str, dict]:
        """name -> {"shape", "dtype", "chunks", "bytes_on_disk"}."""

    @abstractmethod
    def disk_bytes(self) -> int:
        """Bytes on disk of the whole store including sidecars."""

    def close(self) -> None:
        pass


def tree_bytes(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            with contextlib.suppress(OSError):
                total += os.stat(os.path.join(root, f)).st_size
    return total


_OPEN: dict[str, "EmbeddingCache"] = {}


def _reopen_array(path: str, name: str, dtype: str | None) -> "CacheArray":
    """Unpickle a CacheArray in another process (a Dask worker): reuse one open cache per path."""
    from pipeline.cache import open_cache
    cache = _OPEN.get(path)
    if cache is None:
        cache = _OPEN[path] = open_cache(path)
    else:
        cache.refresh()
    return CacheArray(cache, name, dtype)


class CacheArray:
    """Lazy view of one cache array: ``a[i]``, ``a[i:j]``, ``a[[rows]]``, ``a[rows, ...]``.

    Only the shards covered are read; a whole shard read is crc-checked, a partial
    one is not. Rows of a not-done shard raise CacheError. Floats come back as
    ``dtype`` (None: as stored); bool arrays stay bool.
    """

    def __init__(self, cache: "EmbeddingCache", name: str, dtype: Any = None):
        self._cache, self.name = cache, name
        spec = cache.specs[name]
        self.shape = spec.shape
        self.ndim = len(spec.shape)
        self._dtype_arg = None if dtype is None else np.dtype(dtype).name
        self.dtype = np.dtype(spec.dtype if dtype is None or spec.dtype == "bool" else dtype)

    def __len__(self) -> int:
        return self.shape[0]

    def _range(self, start: int, stop: int) -> np.ndarray:
        """Rows ``[start, stop)``: whole shards through ``cache.read_shards`` (runs of shards
        in one backend call, crc-checked), partly covered edge shards read unchecked."""
        c = self._cache
        out = np.zeros((max(stop - start, 0), *self.shape[1:]), dtype=self.dtype)
        if stop <= start:
            return out
        ss = c.shard_size
        k0, k1 = start // ss, -(-stop // ss)
        for k in range(k0, k1):
            if k not in c._done:
                raise c._not_done(k)
        full0 = k0 if start == k0 * ss else k0 + 1                       # first whole shard
        full1 = k1 if stop == min(k1 * ss, c.n_rows) else k1 - 1         # end of whole shards
        for k in {k0, k1 - 1} - set(range(full0, full1)):
            s = c.shard_slice(k)
            lo, hi = max(start, s.start), min(stop, s.stop)
            out[lo - start:hi - start] = c._backend.read(self.name, lo, hi)
        for a, b, block in c.read_shards(self.name, full0, full1):
            out[a - start:b - start] = block
        return out

    def __getitem__(self, key: Any) -> np.ndarray:
        key = key if isinstance(key, tuple) else (key,)
        first, rest = (key[0], key[1:]) if key else (slice(None), ())
        n = self.shape[0]
        if first is Ellipsis:
            return self._range(0, n)[key]
        if isinstance(first, (int, np.integer)):
            i = int(first) + (n if first < 0 else 0)
            if not 0 <= i < n:
                raise IndexError(f"row {first} out of range for {n} rows")
            data = self._range(i, i + 1)[0]
            return data[rest] if rest else data
        if isinstance(first, slice):
            start, stop, step = first.indices(n)
            if step == 1:
                data = self._range(start, max(start, stop))
            else:
                data = self._cache.to_numpy(self.name, np.arange(start, stop, step), self._dtype_arg)
        else:
            rows = np.asarray(first)
            if rows.dtype == bool:
                rows = np.flatnonzero(rows)
            rows = np.where(rows < 0, rows + n, rows)
            data = self._cache.to_numpy(self.name, rows, self._dtype_arg)
        return data[(slice(None), *rest)] if rest else data

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        a = self._range(0, self.shape[0])
        return a if dtype is None else a.astype(dtype)

    def __reduce__(self):
        return (_reopen_array, (str(self._cache.path), self.name, self._dtype_arg))

    def __repr__(self) -> str:
        return f"<CacheArray {self.name} shape={self.shape} dtype={self.dtype}>"
