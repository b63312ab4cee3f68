"""The cache layout: format constants, the arrays a layout implies, checksums, row fingerprints."""

from __future__ import annotations

import hashlib
import json
import os
import re
import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.core.errors import CacheError
from pipeline.core.modes import MODALITY_NAMES

FORMAT = "avfuse-embedding-cache"
FORMAT_VERSION = 1
STAGES = ("decode", "backbone", "write")
# what a failure record names: one modality (long name), both, or none (the clip as a whole)
FAILURE_MODALITIES = (*MODALITY_NAMES.values(), "both", None)
_MODALITY_ARRAYS = {"audio": ("audio/clip", "audio/segments", "audio/segment_valid"),
                    "face": ("face/frames", "face/frame_valid", "face/clip")}


@dataclass
class CacheLayout:
    """Array dimensions and storage of a cache (see the table in docs/DESIGN.md).

    ``audio_dim``/``face_dim`` None means that modality's arrays are absent;
    ``segments`` = S audio segments per clip, ``frames`` = F face frames;
    ``dtype`` the storage dtype of embeddings ("float16" or "float32");
    ``shard_size`` rows per shard (the unit of writing, resuming and chunking).
    """
    audio_dim: int | None
    face_dim: int | None
    segments: int = 8
    frames: int = 8
    dtype: str = "float16"
    shard_size: int = 256

    def validate(self) -> None:
        if self.audio_dim is None and self.face_dim is None:
            raise CacheError("cache layout has neither audio_dim nor face_dim",
                             hint="use at least one backbone")
        for key in ("audio_dim", "face_dim"):
            v = getattr(self, key)
            if v is not None and (not isinstance(v, (int, np.integer)) or v < 1):
                raise CacheError(f"cache layout {key} must be a positive int, got {v!r}")
        for key in ("segments", "frames", "shard_size"):
            v = getattr(self, key)
            if not isinstance(v, (int, np.integer)) or v < 1:
                raise CacheError(f"cache layout {key} must be a positive int, got {v!r}")
        if self.dtype not in ("float16", "float32"):
            raise CacheError(f"cache dtype must be float16 or float32, got {self.dtype!r}")


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


_JSON_ESCAPED = re.compile(r'["\\\x00-\x1f]')


def rows_fingerprint(rows: dict) -> str:
    """16 hex chars of sha256 over the ids, speakers and splits (lists or str arrays): the
    hash of each one's ``json.dumps(list, ensure_ascii=False)``, built by a join when no
    string needs JSON escaping (the common case; ~1.4x less CPU than json.dumps on a million rows)."""
    h = hashlib.sha256()
    for key in ROW_META:
        v = rows[key]
        items = v.tolist() if isinstance(v, np.ndarray) else [str(x) for x in v]
        if not items or _JSON_ESCAPED.search("".join(items)):
            h.update(json.dumps(items, ensure_ascii=False).encode())
        else:
            h.update(('["' + '", "'.join(items) + '"]').encode())
    return h.hexdigest()[:16]


_ROWS_CHECKED: set[tuple] = set()   # (store, fingerprint, file stamps) whose row metadata hashed right


def _rows_stamp(path) -> tuple:
    """Size, mtime and inode of the files holding a store's row metadata (the whole file for HDF5)."""
    path = os.path.realpath(path)
    if not os.path.isdir(path):
        st = os.stat(path)
        return ((path, st.st_size, st.st_mtime_ns, st.st_ino),)
    out = []
    for key in ROW_META:
        for root, _, files in os.walk(os.path.join(path, key)):
            for f in files:
                st = os.stat(os.path.join(root, f))
                out.append((os.path.join(root, f), st.st_size, st.st_mtime_ns, st.st_ino))
    return tuple(sorted(out))


def check_rows(rows: dict, header: dict, path) -> None:
    """The ``CacheError`` of ``avfuse cache verify`` when the row metadata (ids/speakers/splits)
    does not hash to the fingerprint recorded at creation (swapped, edited or lost ids).
    A store whose row-metadata files are unchanged since they last hashed right in this
    process is not hashed again (the hash costs ~0.5 s CPU per million rows)."""
    try:
        key = (os.path.realpath(path), header.get("rows_fingerprint"), _rows_stamp(path))
    except OSError:
        key = None
    if key is not None and key in _ROWS_CHECKED:
        return
    if rows_fingerprint(rows) == header.get("rows_fingerprint"):
        if key is not None:
            _ROWS_CHECKED.add(key)
        return
    raise CacheError("row metadata (ids/speakers/splits) does not match its recorded fingerprint",
                     path=path, hint="the store was edited or damaged; re-extract into a new cache "
                                     "(`avfuse cache verify` lists its problems)")


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
