"""The DCA authors' audio windows (``--segment-windows centre``): S windows of 1.015 s at
the centres of S equal spans of the utterance. Pure numpy, no torch.

What the authors' loader does (``praveena2j/DCAforPersonVerification``, ``dataLoader.py``:
training ``load_wav`` lines 61-100, evaluation ``eval_loader.__getitem__`` lines 212-241):
the window is ``frame_len = 100 * 160 + 240`` = 16,240 samples (1.015 s at 16 kHz); an
utterance of at most ``8 * frame_len`` samples is zero-padded *at the front* to exactly that
length (``_utterance[-len(utterance):] = utterance``) and cut into 8 consecutive windows;
a longer one is split into 8 spans of ``floor(T / 8)`` samples and one window is cut from
each span at a *random* start (``random.choice(range(0, span - frame_len))``), at training
and at evaluation alike.

Here (a cache holds one deterministic embedding per slot) the random start is replaced by
its centre: span ``i`` is ``[i L, (i+1) L)`` with ``L = T // S``, its window starts at
``i L + (L - W) // 2``. The front zero padding is the authors'. A window with fewer than
``min_samples`` real (non-padding) samples is flagged invalid in ``audio/segment_valid``
and holds a copy of the first valid window (the nearest one: padding is at the front), so
no embedding of pure silence is stored; when no window has ``min_samples`` real samples
(a clip shorter than the backbone's minimum), every slot holds the last window (the whole
clip, front-padded) and every slot is invalid, as in the equal-parts rule.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

AUTHORS_WINDOW_SECONDS = 1.015     # 100 frames x 10 ms hop + 15 ms (25 ms window - hop), at 16 kHz
WINDOW_MODES = ("equal", "centre")


def window_samples(sample_rate: int, seconds: float = AUTHORS_WINDOW_SECONDS) -> int:
    """Samples in one window at ``sample_rate`` (16,240 at 16 kHz)."""
    return max(1, int(round(seconds * sample_rate)))


@dataclass(frozen=True)
class WindowPlan:
    """Like ``extractors.batching.SegmentPlan``: ``parts`` are (start, end) ranges into the
    wave front-padded with ``pad_front`` zeros; ``slot_part`` (S,) the part each slot holds;
    ``valid`` (S,) bool."""

    parts: tuple[tuple[int, int], ...]
    slot_part: np.ndarray
    valid: np.ndarray
    pad_front: int


def centre_window_plan(n_samples: int, segments: int, window: int, min_samples: int = 1) -> WindowPlan:
    """The window plan of an utterance of ``n_samples`` samples (see the module docstring)."""
    if segments < 1 or window < 1 or n_samples < 1 or min_samples < 1:
        raise ValueError("segments, window, min_samples and n_samples must be >= 1")
    s = np.arange(segments, dtype=np.int64)
    if n_samples <= segments * window:                  # the authors' front zero padding
        pad = segments * window - n_samples
        starts = s * window
    else:
        pad = 0
        span = n_samples // segments
        starts = s * span + (span - window) // 2
    real = np.clip(starts + window - pad, 0, window)   # real samples in each window (padding is in front)
    valid = real >= min(min_samples, window)
    first = int(np.argmax(valid)) if valid.any() else segments - 1
    parts = tuple((int(a), int(a) + window) for a in starts[first:])
    slot_part = np.maximum(s, first) - first
    return WindowPlan(parts=parts, slot_part=slot_part, valid=valid, pad_front=int(pad))


def front_padded(wave: np.ndarray, pad: int) -> np.ndarray:
    """``wave`` with ``pad`` zeros in front (the wave itself when ``pad == 0``)."""
    if pad <= 0:
        return wave
    return np.concatenate([np.zeros(pad, dtype=wave.dtype), wave])
