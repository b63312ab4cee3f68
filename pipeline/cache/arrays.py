"""``CacheArray``: a lazy, picklable view of one array of an open cache."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from pipeline.cache.reader import EmbeddingCache

_OPEN: dict[str, "EmbeddingCache"] = {}


def _reopen_array(cache_cls: type, path: str, name: str, dtype: str | None) -> "CacheArray":
    """Unpickle a CacheArray in another process (a Dask worker): reuse one open cache per path."""
    cache = _OPEN.get(path)
    if cache is None:
        cache = _OPEN[path] = cache_cls(path)
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
        return (_reopen_array, (type(self._cache), str(self._cache.path), self.name, self._dtype_arg))

    def __repr__(self) -> str:
        return f"<CacheArray {self.name} shape={self.shape} dtype={self.dtype}>"
