"""Cache -> in-memory ``EmbeddingBatch``: loaded once, then indexed (no per-item Dataset).

``load_split`` reads one split of an embedding cache (through ``open_cache``'s
``EmbeddingCache`` only) into tensors, keeping the cache's float dtype (float16 by
default: half the memory; the trainer casts each mini-batch to float32), on the GPU
when there is one. ``batch_from_cache`` reads arbitrary rows for scoring.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from fusion.batch import EmbeddingBatch, resolve_device
from fusion.evaluation import DevSet
from pipeline.core.errors import HeadError, TrainingError

CLIP_ARRAYS = {"audio_clip": "audio/clip", "face_clip": "face/clip"}
SEQ_ARRAYS = {"audio_seq": "audio/segments", "audio_seq_valid": "audio/segment_valid",
              "face_seq": "face/frames", "face_seq_valid": "face/frame_valid"}


def _store_dtype(cache) -> np.dtype:
    dt = str(getattr(getattr(cache, "layout", None), "dtype", "float32"))
    return np.dtype(np.float16) if dt == "float16" else np.dtype(np.float32)


def check_arrays(cache, need_sequences: bool) -> None:
    """Both modalities must be in the cache; sequence heads also need the per-step arrays."""
    missing_mod = [m for m, name in (("audio", "audio/clip"), ("face", "face/clip")) if not cache.has(name)]
    if missing_mod:
        raise TrainingError(f"this cache has no {' and no '.join(missing_mod)} embeddings; fusion heads "
                            "need both modalities", path=cache.path,
                            hint="extract with both an audio and a face backbone (`avfuse extract --help`)")
    if need_sequences:
        check_sequences(cache)


def check_sequences(cache) -> None:
    """A sequence head needs the per-step arrays: else ``HeadError`` saying to re-extract."""
    absent = [name for name in SEQ_ARRAYS.values() if not cache.has(name)]
    if absent:
        raise HeadError(f"this head needs per-segment/per-frame sequences, but the cache lacks "
                        f"{', '.join(absent)}", path=cache.path,
                        hint="re-extract with --segments/--frames (e.g. `avfuse extract ... --segments 8 "
                             "--frames 8`), or pick a clip-level head (mean, mlp, multiview, score_avg)")


def _read_rows(cache, rows: np.ndarray | None, need_sequences: bool, float_dtype: np.dtype,
               ) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    arrays = dict(CLIP_ARRAYS, **(SEQ_ARRAYS if need_sequences else {}))
    for field, name in arrays.items():
        if not cache.has(name):
            continue
        dtype = np.bool_ if name.endswith("_valid") else float_dtype
        out[field] = np.asarray(cache.to_numpy(name, rows, dtype=dtype))
    for field in ("has_audio", "has_face"):
        if cache.has(field):
            out[field] = np.asarray(cache.to_numpy(field, rows, dtype=np.bool_)).astype(bool)
        else:  # no backbone for this modality: absent everywhere
            n = cache.n_rows if rows is None else len(rows)
            out[field] = np.zeros(n, dtype=bool)
    return out


def _to_batch(arrays: dict[str, np.ndarray], device: torch.device) -> EmbeddingBatch:
    return EmbeddingBatch(**{k: torch.from_numpy(np.ascontiguousarray(v)).to(device) for k, v in arrays.items()})


def batch_from_cache(cache, rows: Sequence[int] | np.ndarray | None, need_sequences: bool = False, *,
                     device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> EmbeddingBatch:
    """The cached embeddings of ``rows`` (any order, repeats allowed; None: all rows).

    Sequence heads (``need_sequences``) on a cache without per-step arrays ->
    ``HeadError`` saying to re-extract with --segments/--frames.
    """
    if need_sequences:
        check_sequences(cache)
    if rows is None:
        arrays = _read_rows(cache, None, need_sequences, np.dtype(np.float32))
    else:
        rows = np.asarray(rows, dtype=np.int64)
        uniq, inverse = np.unique(rows, return_inverse=True)   # read each row once, in order
        arrays = {k: v[inverse] for k, v in
                  _read_rows(cache, uniq, need_sequences, np.dtype(np.float32)).items()}
    return _to_batch(arrays, resolve_device(device)).to(dtype=dtype)


def find_bad_rows(arrays: dict[str, np.ndarray], chunk: int = 65536) -> np.ndarray:
    """Bool (N,) mask of rows with a NaN/inf in any float array (checked in chunks)."""
    n = len(arrays["has_audio"])
    bad = np.zeros(n, dtype=bool)
    for field, arr in arrays.items():
        if arr.dtype.kind != "f":
            continue
        for s in range(0, n, chunk):
            part = arr[s:s + chunk].reshape(min(chunk, n - s), -1)
            bad[s:s + chunk] |= ~np.isfinite(part).all(axis=1)
    return bad


def load_split(cache, split: str = "train", need_sequences: bool = False, *,
               device: str | torch.device | None = None, drop_bad_rows: bool = False,
               ) -> tuple[EmbeddingBatch, torch.Tensor, np.ndarray]:
    """``(batch, labels, ids)`` of every row of ``split``, loaded into memory once.

    * ``batch``: float fields in the cache's dtype (float16 by default), on ``device``
      (``None``: the GPU when available).
    * ``labels``: int64 identity index per row, ``0..C-1`` over the sorted unique speakers.
    * ``ids``: the rows' clip ids (np str array).

    Rows with NaN/inf embeddings -> ``TrainingError`` naming how many and the first
    ids (``drop_bad_rows=True`` drops them with a warning instead). Rows with neither
    modality are dropped (nothing to train on). Fewer than 2 identities ->
    ``TrainingError``. A sequence head on a cache without per-step arrays -> ``HeadError``.
    """
    check_arrays(cache, need_sequences)
    rows = np.asarray(cache.split_rows(split), dtype=np.int64)
    if rows.size == 0:
        splits = sorted(set(np.asarray(cache.splits).tolist())) if getattr(cache, "splits", None) is not None else []
        raise TrainingError(f"split '{split}' has no rows in this cache", path=cache.path,
                            hint=f"splits in this cache: {', '.join(map(str, splits)) or '(none)'}; "
                                 "pick one with --split")
    read_rows = None if (rows.size == cache.n_rows and np.array_equal(rows, np.arange(cache.n_rows))) else rows
    arrays = _read_rows(cache, read_rows, need_sequences, _store_dtype(cache))
    ids = np.asarray(cache.ids)[rows]
    speakers = np.asarray(cache.speakers)[rows]

    keep = np.ones(rows.size, dtype=bool)
    bad = find_bad_rows(arrays)
    if bad.any():
        first = ", ".join(map(str, ids[bad][:3]))
        msg = f"{int(bad.sum())} of {rows.size} rows in split '{split}' have NaN/inf embeddings (first: {first})"
        if not drop_bad_rows:
            raise TrainingError(msg, path=cache.path,
                                hint="re-extract those clips, or pass --drop-bad-rows to train without them")
        warnings.warn(msg + "; dropped (--drop-bad-rows)", stacklevel=2)
        keep &= ~bad
    empty = ~(arrays["has_audio"] | arrays["has_face"])
    if (empty & keep).any():
        warnings.warn(f"{int((empty & keep).sum())} rows in split '{split}' have neither audio nor face; "
                      "dropped", stacklevel=2)
        keep &= ~empty
    if not keep.all():
        arrays = {k: v[keep] for k, v in arrays.items()}
        ids, speakers = ids[keep], speakers[keep]

    classes, labels = np.unique(speakers, return_inverse=True)
    if classes.size < 2:
        raise TrainingError(f"split '{split}' has {classes.size} identit{'y' if classes.size == 1 else 'ies'} "
                            f"({rows.size} rows); training needs at least 2", path=cache.path,
                            hint="train on a split with more speakers (--split), or extract more of the corpus")
    dev = resolve_device(device)
    batch = _to_batch(arrays, dev)
    return batch, torch.from_numpy(labels.astype(np.int64)).to(dev), ids


def dev_set_from_trials(cache, trials, need_sequences: bool, device="cpu") -> DevSet:
    """A ``DevSet`` from a trial list (path or ``data_manifests.trials.TrialList``) on ``cache``.

    The list must be labelled; utterances missing from the cache -> ``CacheError``
    (from ``cache.rows``).
    """
    from pipeline.train.data import batch_from_cache

    if isinstance(trials, (str, Path)):
        from data_manifests.trials import read_trials
        trials = read_trials(trials)
    if not getattr(trials, "labeled", True) or (np.asarray(trials.labels) < 0).any():
        raise TrainingError("the dev trial list must be labelled ('label enrol test' lines)",
                            path=getattr(trials, "path", None),
                            hint="pass a labelled list with --dev-trials, or omit it")
    utts, enrol_idx, test_idx = trials.index()
    rows = cache.rows(utts, missing="raise")
    batch = batch_from_cache(cache, rows, need_sequences, device=device)
    return DevSet(batch, torch.as_tensor(np.asarray(enrol_idx), dtype=torch.long, device=device),
                  torch.as_tensor(np.asarray(test_idx), dtype=torch.long, device=device),
                  torch.as_tensor(np.asarray(trials.labels).astype(np.int64), device=device),
                  np.asarray(utts))
