"""Batching helpers of extraction: the segment plan of an utterance, length bucketing and
padding. Pure numpy, no torch.

Segment rule (``segment_plan``)
-------------------------------
An utterance of ``T`` samples gets ``S`` segment slots; ``m`` is the backbone's minimum
segment length in samples.

* ``T < m`` (shorter than one segment): the waveform is first repeat-tiled to ``m``
  samples (the clip embedding uses this tiled wave too). It forms one part; every slot
  holds it and *all* slots are flagged invalid.
* otherwise ``n = min(S, T // m)`` equal parts are cut: part ``p`` is
  ``[floor(p*T/n), floor((p+1)*T/n))``. Slot ``s`` holds part ``s mod n`` (repeat
  padding); slots ``s >= n`` are flagged invalid. With ``T >= S*m`` all S slots are
  distinct, equal parts and valid.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np


@dataclass(frozen=True)
class SegmentPlan:
    """``parts``: (start, end) sample ranges into the (possibly tiled) wave; ``slot_part``:
    (S,) index of the part each slot holds; ``valid``: (S,) bool; ``tiled_length``: the
    length the wave was repeat-tiled to (0: not tiled)."""

    parts: tuple[tuple[int, int], ...]
    slot_part: np.ndarray
    valid: np.ndarray
    tiled_length: int


def tile_to_length(wave: np.ndarray, n: int) -> np.ndarray:
    """``wave`` repeated (cyclically) to exactly ``n`` samples (``n >= 1``, wave non-empty)."""
    if len(wave) >= n:
        return wave
    reps = -(-n // len(wave))
    return np.tile(wave, reps)[:n]


def segment_plan(n_samples: int, segments: int, min_samples: int) -> SegmentPlan:
    """The segment plan of an utterance of ``n_samples`` samples (see module docstring)."""
    if segments < 1 or min_samples < 1 or n_samples < 1:
        raise ValueError("segments, min_samples and n_samples must be >= 1")
    tiled = 0
    t = n_samples
    if t < min_samples:
        tiled = t = min_samples
    n = max(1, min(segments, t // min_samples))
    bounds = [(p * t) // n for p in range(n + 1)]
    parts = tuple((bounds[p], bounds[p + 1]) for p in range(n))
    slot_part = np.arange(segments) % n
    valid = np.arange(segments) < n
    if tiled:
        valid[:] = False
    return SegmentPlan(parts=parts, slot_part=slot_part, valid=valid, tiled_length=tiled)


def length_batches(lengths: Sequence[int], max_items: int, max_samples: int | None = None) -> list[np.ndarray]:
    """Indices grouped into batches of similar length (longest first, ties by index).

    A batch holds at most ``max_items`` items and, when ``max_samples`` is given, at most
    ``max_samples`` padded samples (``len(batch) * longest``), but always at least one.
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    order = np.lexsort((np.arange(len(lengths)), -lengths))
    batches: list[np.ndarray] = []
    cur: list[int] = []
    for i in order:
        longest = int(lengths[cur[0]]) if cur else int(lengths[i])
        if cur and (len(cur) >= max_items or
                    (max_samples is not None and (len(cur) + 1) * longest > max_samples)):
            batches.append(np.asarray(cur, dtype=np.int64))
            cur = []
        cur.append(int(i))
    if cur:
        batches.append(np.asarray(cur, dtype=np.int64))
    return batches


def pad_stack(waves: Sequence[np.ndarray], out: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Zero-pad 1-D float32 waves to a ``(B, T_max)`` array; returns it and the int64 lengths.
    ``out`` (e.g. a pinned buffer's numpy view, at least that big; its content need not be zero)
    is filled when given."""
    lengths = np.asarray([len(w) for w in waves], dtype=np.int64)
    tmax = int(lengths.max()) if len(lengths) else 0
    if out is None:
        out = np.zeros((len(waves), tmax), dtype=np.float32)
    else:                       # each element written once: the wave, then zeros after it
        out = out[: len(waves), :tmax]
        for i, w in enumerate(waves):
            out[i, len(w):] = 0.0
    for i, w in enumerate(waves):
        out[i, : len(w)] = w
    return out, lengths
