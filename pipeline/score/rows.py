"""Read cache rows for scoring: presence flags, raw clip embeddings, or a head's embeddings in batches."""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

# modality -> (clip embedding array, presence flag)
CACHE_ARRAYS = {"A": ("audio/clip", "has_audio"), "V": ("face/clip", "has_face")}


def read_rows(cache, name: str, rows: np.ndarray, dtype=np.float32) -> np.ndarray:
    """``cache.to_numpy(name, rows)``: rows in any order (each shard touched is read once)."""
    return np.asarray(cache.to_numpy(name, np.asarray(rows, dtype=np.int64), dtype=dtype))


def present_rows(cache, rows: np.ndarray, use: Sequence[str]) -> np.ndarray:
    """bool per row: at least one modality of ``use`` is present (``has_audio``/``has_face``)."""
    ok = np.zeros(len(rows), dtype=bool)
    for m in use:
        name, flag = CACHE_ARRAYS[m]
        if cache.has(name) and cache.has(flag):
            ok |= read_rows(cache, flag, rows, dtype=bool).astype(bool)
    return ok


def embed_rows(cache, rows: np.ndarray, head, use: Sequence[str], *, batch_size: int = 4096,
               progress: Callable | None = None) -> np.ndarray:
    """``head.embed(batch, use)`` of cache rows (any order), in batches, as float32 numpy."""
    import torch

    from pipeline.train.data import batch_from_cache

    rows = np.asarray(rows, dtype=np.int64)
    order = np.argsort(rows, kind="stable")
    parts = []
    with torch.no_grad():
        for a in range(0, len(rows), batch_size):
            r = rows[order[a:a + batch_size]]
            batch = batch_from_cache(cache, r, bool(getattr(head, "needs_sequences", False)))
            parts.append(head.embed(batch, use=tuple(use)).float().cpu().numpy())
            if progress is not None:
                progress(len(r))
    if not parts:
        return np.zeros((0, int(getattr(head, "embedding_dim", 0))), dtype=np.float32)
    data = np.concatenate(parts)
    out = np.empty_like(data)
    out[order] = data
    return out
