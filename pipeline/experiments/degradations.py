"""The test-time degradations of ``avfuse ablate``, applied to in-memory cache views.

``pipeline.cache.view.CacheView`` holds some rows of a cache in memory (each array in its stored dtype)
and answers the read side of ``EmbeddingCache`` (``ids``, ``speakers``, ``splits``,
``has``, ``rows``, ``split_rows``, ``to_numpy``, ``path``, ``layout``,
``provenance``, ``fingerprint``), so ``pipeline.score.score_from_cache`` and
``pipeline.train.batch_from_cache`` run on it unchanged: an ablation cell is scored by
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

import numpy as np

from pipeline.cache.view import MOD_ARRAYS, CacheView
from pipeline.core.errors import ConfigError


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


__all__ = ["both_present", "drop_order", "n_to_drop", "drop_modality",
           "truncate_steps",
           "max_steps"]
