"""``CacheView``: a cache's arrays held in memory, the form ablations degrade and score."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import numpy as np

from pipeline.core.errors import CacheError

MOD_ARRAYS = {
    "audio": {"clip": "audio/clip", "seq": "audio/segments", "valid": "audio/segment_valid", "has": "has_audio"},
    "face": {"clip": "face/clip", "seq": "face/frames", "valid": "face/frame_valid", "has": "has_face"},
}


CLIP_ARRAYS = ("audio/clip", "face/clip", "has_audio", "has_face", "duration")


DATA_ARRAYS = ("audio/clip", "audio/segments", "audio/segment_valid", "face/frames", "face/frame_valid",
               "face/clip", "has_audio", "has_face", "duration")


class CacheView:
    """Rows of a cache in memory, readable like an ``EmbeddingCache`` (see the module docstring).

    ``source_rows[i]`` is the row of the source cache that view row ``i`` holds; rows keep
    the source order, so a sorted read of view rows reads the same rows in the same order.
    """

    backend = "memory"

    def __init__(self, source, source_rows: np.ndarray, arrays: dict[str, np.ndarray]):
        self.source = source
        self.source_rows = np.asarray(source_rows, dtype=np.int64)
        self._arrays = dict(arrays)
        self.path = Path(source.path)
        self.layout = source.layout
        self.provenance = source.provenance
        self.fingerprint = source.fingerprint
        self.n_rows = int(len(self.source_rows))
        self.shard_size = getattr(source, "shard_size", max(1, self.n_rows))
        self.ids = np.asarray(source.ids)[self.source_rows]
        self.speakers = np.asarray(source.speakers)[self.source_rows]
        self.splits = np.asarray(source.splits)[self.source_rows]
        self._index: dict[str, int] | None = None

    # ------------------------------------------------------------ creation
    @classmethod
    def load(cls, cache, rows: Iterable[int] | None = None, names: Iterable[str] | None = None) -> "CacheView":
        """Read ``rows`` (default: all; sorted and de-duplicated) of ``names`` (default: every
        data array the cache has) into memory, in the stored dtype."""
        rows = np.arange(cache.n_rows) if rows is None else np.unique(np.asarray(list(rows), dtype=np.int64))
        if rows.size and rows.min() < 0:
            raise CacheError("CacheView.load got a negative row (an id missing from the cache?)", path=cache.path)
        names = [n for n in (names or DATA_ARRAYS) if cache.has(n)]
        arrays = {n: np.asarray(cache.to_numpy(n, rows, dtype=None)) for n in names}
        return cls(cache, rows, arrays)

    def with_arrays(self, arrays: dict[str, np.ndarray]) -> "CacheView":
        """A view of the same rows with some arrays replaced (others shared, not copied)."""
        for name, arr in arrays.items():
            if name not in self._arrays:
                raise CacheError(f"no array {name!r} in this view", path=self.path)
            if arr.shape != self._arrays[name].shape:
                raise ValueError(f"{name}: shape {arr.shape} != {self._arrays[name].shape}")
        new = CacheView.__new__(CacheView)
        new.__dict__.update(self.__dict__)
        new._arrays = {**self._arrays, **arrays}
        return new

    # ------------------------------------------------------------ reading
    @property
    def names(self) -> list[str]:
        return list(self._arrays)

    def has(self, name: str) -> bool:
        return name in self._arrays

    def array_data(self, name: str) -> np.ndarray:
        """The held array itself (read-only use)."""
        return self._arrays[name]

    def rows(self, ids, missing: str = "raise") -> np.ndarray:
        """View row of each id; ``missing="mask"``: -1 for unknown ids, ``"raise"``: ``CacheError``."""
        if self._index is None:
            self._index = {s: i for i, s in enumerate(self.ids.tolist())}
        ids = [ids] if isinstance(ids, str) else list(ids)
        out = np.fromiter((self._index.get(str(s), -1) for s in ids), dtype=np.int64, count=len(ids))
        if missing == "raise" and (out < 0).any():
            bad = [str(ids[i]) for i in np.flatnonzero(out < 0)[:5]]
            raise CacheError(f"{int((out < 0).sum())} of {len(ids)} ids are not in this view of the cache "
                             f"(first: {', '.join(bad)})", path=self.path)
        return out

    def split_rows(self, split: str) -> np.ndarray:
        return np.flatnonzero(self.splits == split).astype(np.int64)

    def to_numpy(self, name: str, rows=None, dtype=np.float32, **_ignored) -> np.ndarray:
        """Rows (view indices, any order) of ``name``: floats cast to ``dtype`` (None: as held),
        bools as bool. Always a new array."""
        if name not in self._arrays:
            raise CacheError(f"no array {name!r} in this cache (has: {', '.join(self._arrays)})", path=self.path)
        arr = self._arrays[name]
        out = arr.copy() if rows is None else arr[np.asarray(rows, dtype=np.int64).reshape(-1)]
        if arr.dtype.kind == "f" and dtype is not None:
            out = out.astype(dtype, copy=False)
        return out

    def __repr__(self) -> str:
        return f"<CacheView of {self.path} rows={self.n_rows} arrays={len(self._arrays)}>"
