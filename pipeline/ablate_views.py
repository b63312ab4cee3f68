"""In-memory views of an embedding cache, and the test-time degradations of ``avfuse ablate``.

``CacheView`` holds some rows of a cache in memory (each array in its stored dtype)
and answers the read side of ``EmbeddingCache`` (``ids``, ``speakers``, ``splits``,
``has``, ``rows``, ``split_rows``, ``to_numpy``, ``path``, ``layout``,
``provenance``, ``fingerprint``), so ``pipeline.scoring.score_from_cache`` and
``fusion.data.batch_from_cache`` run on it unchanged: an ablation cell is scored by
exactly the code of ``avfuse score``, on a modified copy of the rows. Views share
unmodified arrays; ``with_arrays`` replaces some.

Degradations (applied to both sides of every trial, i.e. to every clip of the view):

* ``drop_modality(view, rows, "face"|"audio")``: those clips lose the modality exactly as
  a clip whose face/audio failed at extraction: ``has_*`` False, its clip and per-step
  vectors zero, its step-valid flags False.
* ``truncate_steps(view, k)``: only the first ``k`` cached audio segments / face frames
  are kept (``min(k, S)`` and ``min(k, F)``). Step-valid flags beyond ``k`` become False
  (what the sequence heads see), and the clip embeddings become the float32 mean of the
  valid steps among the first ``k`` (the mean of the first ``k`` slots when none of them
  is valid, e.g. an utterance shorter than one segment), stored back in the cache dtype.
  Note: at ``k = S`` this *mean of the segment embeddings* is not the cached
  ``audio/clip`` (the backbone on the whole utterance), so a clip-level head or the raw
  backbones score differently at ``k = S`` than on the cached clip embeddings; the face
  side at ``k = F`` equals the cached ``face/clip`` up to float16 rounding (it is the
  mean of the valid frames). For the sequence heads ``k = S = F`` changes nothing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import numpy as np

from pipeline.errors import CacheError, ConfigError

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


# ---------------------------------------------------------------- degradations
def both_present(view: CacheView) -> np.ndarray:
    """View rows that have both modalities (the candidates for dropping one)."""
    a = view.array_data("has_audio") if view.has("has_audio") else np.zeros(view.n_rows, bool)
    v = view.array_data("has_face") if view.has("has_face") else np.zeros(view.n_rows, bool)
    return np.flatnonzero(a.astype(bool) & v.astype(bool))


def drop_order(view: CacheView, seed: int = 0) -> np.ndarray:
    """A seeded random order of the rows with both modalities; dropping share ``p`` takes the
    first ``round(p * n)``, so the rows dropped at 10% are among those dropped at 25%."""
    cand = both_present(view)
    return cand[np.random.default_rng(seed).permutation(len(cand))]


def n_to_drop(share: float, n_candidates: int) -> int:
    return int(round(float(share) * n_candidates))


def drop_modality(view: CacheView, rows: np.ndarray, modality: str) -> CacheView:
    """``rows`` (view indices) lose ``modality`` ("audio"/"face") as a failed extraction would."""
    if modality not in MOD_ARRAYS:
        raise ConfigError(f"unknown modality {modality!r}", hint="use 'audio' or 'face'")
    rows = np.asarray(rows, dtype=np.int64)
    new = {}
    for name in MOD_ARRAYS[modality].values():
        if not view.has(name):
            continue
        arr = view.array_data(name).copy()
        arr[rows] = False if arr.dtype == bool else 0
        new[name] = arr
    return view.with_arrays(new)


def truncate_steps(view: CacheView, k: int, chunk: int = 8192) -> CacheView:
    """Keep the first ``k`` segments / frames (see the module docstring for the exact definition)."""
    if k < 1:
        raise ConfigError(f"clip length must be >= 1 step, got {k}")
    new = {}
    for names in MOD_ARRAYS.values():
        if not (view.has(names["seq"]) and view.has(names["valid"])):
            continue
        seq = view.array_data(names["seq"])
        valid = view.array_data(names["valid"]).astype(bool)
        steps = seq.shape[1]
        first = np.arange(steps) < min(k, steps)
        kept = valid & first[None, :]
        weights = np.where(kept.any(axis=1, keepdims=True), kept, first[None, :]).astype(np.float32)
        mean = np.empty((seq.shape[0], seq.shape[2]), dtype=np.float32)
        for a in range(0, seq.shape[0], chunk):          # float32 copies of one chunk at a time
            w = weights[a:a + chunk]
            part = np.einsum("nsd,ns->nd", seq[a:a + chunk].astype(np.float32), w)
            mean[a:a + chunk] = part / w.sum(1, keepdims=True)
        if view.has(names["has"]):
            mean[~view.array_data(names["has"]).astype(bool)] = 0.0
        new[names["valid"]] = kept
        if view.has(names["clip"]):
            new[names["clip"]] = mean.astype(view.array_data(names["clip"]).dtype)
    return view.with_arrays(new)


def max_steps(view: CacheView) -> int:
    """The larger of the cached segments S and frames F (0 without sequences)."""
    out = 0
    for names in MOD_ARRAYS.values():
        if view.has(names["seq"]):
            out = max(out, int(view.array_data(names["seq"]).shape[1]))
    return out


__all__ = ["CLIP_ARRAYS", "DATA_ARRAYS", "CacheView", "both_present", "drop_order", "n_to_drop", "drop_modality",
           "truncate_steps",
           "max_steps"]
