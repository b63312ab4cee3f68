"""Fixed-length pieces of clips built from cached segment embeddings (``avfuse analyze
--clip-seconds L``), as 2311.05071 analyses 3-second pieces.

A clip of duration ``d`` (the cache's ``duration``) gives ``floor(d / L)`` pieces;
piece ``j`` covers ``[j L, (j + 1) L)`` seconds; clips shorter than ``L`` give none.
Times of the cached steps (see ``extractors.batching`` and ``extractors.media.decode``):

* audio: the ``n`` valid segments (``audio/segment_valid``; ``n = 1`` when none is
  valid, a clip shorter than one segment) are ``n`` equal parts of the clip: part ``p``
  covers ``[p d / n, (p + 1) d / n)``;
* face: frame slot ``f`` of ``F`` is the centre frame of the ``f``-th of ``F`` equal
  spans, at about ``(f + 0.5) d / F``; slots flagged invalid (repeats) are left out.

A step belongs to the piece its centre falls in; a piece that holds no step of a
modality (steps longer than ``L``) takes the step that covers the piece's centre. The
piece's clip embeddings are the float32 means of its steps (``audio/clip``: the mean of
its segment embeddings, in float32, *not* the backbone run on the piece's audio, which the cache does
not hold); its sequences hold its steps cyclically repeated into the S / F slots, the
repeats flagged invalid, as extraction pads short clips. Piece ids are
``<clip id>#<j>``; speaker and split are the clip's. Vectorised over clips (no loop per clip).
"""

from __future__ import annotations

import numpy as np

from pipeline.cache.view import CacheView
from pipeline.core.errors import ConfigError


def _membership(centres: np.ndarray, valid: np.ndarray, step: np.ndarray, piece_clip: np.ndarray,
                piece_j: np.ndarray, length: float) -> np.ndarray:
    """(P, K) bool: which of the K steps of each piece's clip belong to the piece."""
    c = centres[piece_clip]                                     # (P, K)
    j = piece_j[:, None].astype(np.float64)
    inside = valid[piece_clip] & (c >= j * length) & (c < (j + 1) * length)
    mid = (piece_j + 0.5) * length                              # piece centre, s
    half = step[piece_clip] / 2
    dist = np.where(valid[piece_clip], np.abs(c - mid[:, None]) - half[:, None], np.inf)
    nearest = np.argmin(dist, axis=1)
    empty = ~inside.any(axis=1)
    inside[np.flatnonzero(empty), nearest[empty]] = True
    return inside


def _gather(seq: np.ndarray, member: np.ndarray, piece_clip: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Piece means (P, D) float32, sequences (P, K, D) (members repeated cyclically) and slot validity (P, K)."""
    k = member.shape[1]
    count = member.sum(axis=1)
    order = np.argsort(~member, axis=1, kind="stable")          # members first, in time order
    slot = order[np.arange(len(member))[:, None], np.arange(k)[None, :] % np.maximum(count, 1)[:, None]]
    steps = seq[piece_clip[:, None], slot]                      # (P, K, D)
    valid = np.arange(k)[None, :] < count[:, None]
    mean = (steps.astype(np.float32) * valid[..., None]).sum(axis=1) / np.maximum(count, 1)[:, None]
    return mean, steps, valid


def piece_view(view: CacheView, rows: np.ndarray, length: float) -> tuple[CacheView, np.ndarray]:
    """``(view of the pieces of view rows `rows`, its row indices)`` (module doc)."""
    if not length > 0:
        raise ConfigError(f"--clip-seconds must be > 0, got {length}", hint="e.g. --clip-seconds 3")
    rows = np.asarray(rows, dtype=np.int64)
    dur = view.to_numpy("duration", rows).astype(np.float64) if view.has("duration") else np.zeros(len(rows))
    n_pieces = np.floor(dur / length + 1e-9).astype(np.int64)
    if n_pieces.sum() == 0:
        raise ConfigError(f"no clip of the analysed split is at least {length:g} s long (longest: "
                          f"{dur.max() if len(dur) else 0:.2f} s)", path=view.path,
                          hint="use a shorter --clip-seconds, or leave it out to analyse whole clips")
    piece_clip = np.repeat(np.arange(len(rows)), n_pieces)      # index into `rows`
    piece_j = np.arange(len(piece_clip)) - np.repeat(np.cumsum(n_pieces) - n_pieces, n_pieces)
    src = rows[piece_clip]
    arrays: dict[str, np.ndarray] = {"duration": np.full(len(src), length, np.float32)}
    for key in ("has_audio", "has_face"):
        if view.has(key):
            arrays[key] = view.to_numpy(key, src)
    if view.has("audio/segments"):
        sv = view.to_numpy("audio/segment_valid", rows).astype(bool)
        n = np.maximum(sv.sum(axis=1), 1)
        s = sv.shape[1]
        first = np.arange(s)[None, :] < n[:, None]              # the n distinct parts sit in the first n slots
        step = dur / n
        centres = (np.arange(s)[None, :] + 0.5) * step[:, None]
        member = _membership(centres, first, step, piece_clip, piece_j, length)
        seq = view.to_numpy("audio/segments", rows, dtype=None)
        mean, steps, valid = _gather(seq, member, piece_clip)
        arrays.update({"audio/clip": mean, "audio/segments": steps, "audio/segment_valid": valid})
    if view.has("face/frames"):
        fv = view.to_numpy("face/frame_valid", rows).astype(bool)
        f = fv.shape[1]
        step = dur / f
        centres = (np.arange(f)[None, :] + 0.5) * step[:, None]
        member = _membership(centres, fv | ~fv.any(axis=1, keepdims=True), step, piece_clip, piece_j, length)
        seq = view.to_numpy("face/frames", rows, dtype=None)
        mean, steps, valid = _gather(seq, member, piece_clip)
        arrays.update({"face/clip": mean, "face/frames": steps, "face/frame_valid": valid})
    out = CacheView.__new__(CacheView)
    out.__dict__.update(view.__dict__)
    out.source_rows = view.source_rows[src]
    out._arrays = arrays
    out.n_rows = int(len(src))
    out.ids = np.char.add(np.char.add(np.asarray(view.ids)[src].astype(str), "#"), piece_j.astype(str))
    out.speakers = np.asarray(view.speakers)[src]
    out.splits = np.asarray(view.splits)[src]
    out._index = None
    return out, np.arange(out.n_rows, dtype=np.int64)


__all__ = ["piece_view"]
