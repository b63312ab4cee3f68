"""A scoring channel (one embedding table per side) and the vectorised chunked row-wise dot over trials."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

# mode -> channels scored without a head (same-modality comparisons only)
NO_HEAD_CHANNELS: dict[str, tuple[str, ...]] = {
    "AxA": ("A",), "VxV": ("V",), "AVxAV": ("A", "V"), "AVxA": ("A",), "AVxV": ("V",),
}


DEFAULT_CHUNK = 8192


def row_dot(enrol: np.ndarray, test: np.ndarray, enrol_idx: np.ndarray, test_idx: np.ndarray,
            *, chunk: int = DEFAULT_CHUNK, progress: Callable | None = None) -> np.ndarray:
    """``out[i] = enrol[enrol_idx[i]] . test[test_idx[i]]`` (float32), gathered in chunks.

    Memory beyond the inputs is two ``chunk x D`` gathers. ``progress(n)`` is called
    after each chunk with the number of trials done in it.
    """
    n = len(enrol_idx)
    if len(test_idx) != n:
        raise ValueError("enrol_idx and test_idx differ in length")
    out = np.empty(n, dtype=np.float32)
    for a in range(0, n, chunk):
        b = min(a + chunk, n)
        out[a:b] = np.einsum("ij,ij->i", enrol[enrol_idx[a:b]], test[test_idx[a:b]])
        if progress is not None:
            progress(b - a)
    return out


@dataclass
class Channel:
    """One comparison space: embedding tables of the unique utterances of each side.

    ``enrol``/``test`` are ``(U, D)`` float32 tables (already L2-normalised for
    ``kind == "cosine"``; they may be the same object); ``*_valid`` say which rows
    hold a usable embedding. ``stats`` (set by normalisation) holds
    ``(mu_enrol, sd_enrol, mu_test, sd_test)`` per table row.
    """

    name: str
    enrol: np.ndarray
    test: np.ndarray
    enrol_valid: np.ndarray
    test_valid: np.ndarray
    kind: str = "cosine"
    stats: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None = None


def score_channels(channels: Sequence[Channel], enrol_idx: np.ndarray, test_idx: np.ndarray,
                   *, chunk: int = DEFAULT_CHUNK, progress: Callable | None = None
                   ) -> tuple[np.ndarray, np.ndarray]:
    """``(scores float32, scorable bool)`` for trials ``(enrol_idx[i], test_idx[i])``.

    Per channel: the row-wise dot, then (if ``channel.stats``) the symmetric
    z-normalisation ``0.5 * ((s - mu_e) / sd_e + (s - mu_t) / sd_t)``. The trial score
    is the mean over the channels usable for it (valid on both sides); unscorable
    trials (no usable channel) get NaN.
    """
    enrol_idx = np.asarray(enrol_idx, dtype=np.int64)
    test_idx = np.asarray(test_idx, dtype=np.int64)
    total = np.zeros(len(enrol_idx), dtype=np.float64)
    count = np.zeros(len(enrol_idx), dtype=np.int32)
    for ch in channels:
        s = row_dot(ch.enrol, ch.test, enrol_idx, test_idx, chunk=chunk, progress=progress)
        if ch.stats is not None:
            from pipeline.score.norm import apply_stats
            s = apply_stats(s, enrol_idx, test_idx, *ch.stats)
        ok = ch.enrol_valid[enrol_idx] & ch.test_valid[test_idx]
        if len(channels) == 1:  # one channel: its scores as they are (the mean of one value)
            s = np.asarray(s, dtype=np.float32)
            s[~ok] = np.nan
            return s, ok
        total[ok] += s[ok]
        count += ok
    scorable = count > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        scores = (total / count).astype(np.float32)
    scores[~scorable] = np.nan
    return scores, scorable
