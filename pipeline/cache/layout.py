"""The cache layout: format constants, the arrays a layout implies, checksums, row fingerprints."""

from __future__ import annotations

import hashlib
import json
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
