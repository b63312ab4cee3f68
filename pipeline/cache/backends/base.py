"""The storage-backend interface of the embedding cache (``CacheBackend``): every
backend moves bytes for one format; ``EmbeddingCache`` and ``CacheWriter`` enforce the
contract (``pipeline.cache.testing``) on top of it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np

from pipeline.cache.layout import ArraySpec


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


