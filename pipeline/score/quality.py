"""Quality measures of a trial for calibration (as WeSpeaker's QMF), read from the embedding cache.

Each measure gives two features per trial, symmetric in enrolment and test: the smaller
and the larger of the two sides' values.

``durations``  ``log`` clip duration in seconds (``duration`` array; floored at 1 ms)
``norms``      raw clip-embedding L2 norm, per modality in the cache (audio, then face)
``cohort``     imposter-cohort mean score, per modality in the cache: the mean of the
               ``top_k`` largest cosines between the utterance's L2-normalised clip
               embedding and the cohort (one L2-normalised mean embedding per cohort speaker,
               as ``--norm``'s cohorts: ``pipeline.score.norm``); ``cohort`` is a
               ``resolve_cohort`` spec (``train``, ``other.zarr``, ``other.zarr:train``).

Feature names: ``log_dur_min``, ``log_dur_max``, ``norm_A_min``, ``norm_A_max``, ...,
``cohort_A_min``, ``cohort_A_max``, ... Each utterance's rows are read once.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from pipeline.core.errors import ConfigError, ScoringError

QUALITY_MEASURES = ("durations", "norms", "cohort")
MODALITY_ARRAYS = (("A", "audio/clip"), ("V", "face/clip"))


def _mods(cache) -> list[tuple[str, str]]:
    return [(k, arr) for k, arr in MODALITY_ARRAYS if cache is None or cache.has(arr)]


def quality_names(measures: Sequence[str], cache=None) -> list[str]:
    names: list[str] = []
    for m in measures:
        if m == "durations":
            names += ["log_dur_min", "log_dur_max"]
        else:
            names += [f"{m[:-1] if m == 'norms' else m}_{k}_{e}" for k, _ in _mods(cache) for e in ("min", "max")]
    return names


def parse_quality(text: str | None) -> list[str]:
    """``"durations,norms"`` -> ``["durations", "norms"]`` (unknown names: ``ConfigError``)."""
    items = [t.strip() for t in (text or "").split(",") if t.strip()]
    bad = [t for t in items if t not in QUALITY_MEASURES]
    if bad:
        raise ConfigError(f"unknown quality measure(s) {', '.join(bad)}",
                          hint=f"use a comma list of {', '.join(QUALITY_MEASURES)}")
    return list(dict.fromkeys(items))


def cohort_means(cache, rows: np.ndarray, cohort: str, top_k: int) -> dict[str, np.ndarray]:
    """Per modality of the cache: the imposter-cohort mean score of each row (module docstring)."""
    from pipeline.core.linalg import l2_normalize
    from pipeline.score.norm import cohort_from_cache, cohort_stats, resolve_cohort
    from pipeline.score.rows import read_rows

    src = resolve_cohort(cohort, cache)
    out = {}
    for k, arr in _mods(cache):
        coh, _ = cohort_from_cache(src, k)
        mu, _ = cohort_stats(l2_normalize(read_rows(cache, arr, rows), inplace=True), coh, top_k)
        out[k] = mu.astype(np.float64)
    return out


def quality_features(cache, enrol: np.ndarray, test: np.ndarray, measures: Sequence[str], *,
                     cohort: str | None = None, top_k: int = 300) -> np.ndarray:
    """``(n, Q)`` quality features (module docstring) of trials ``(enrol[i], test[i])``."""
    from pipeline.score.rows import read_rows

    if not measures:
        return np.zeros((len(enrol), 0))
    if cache is None:
        raise ConfigError(f"quality measures {', '.join(measures)} need --cache", hint="pass the embedding cache")
    if "cohort" in measures and not cohort:
        raise ConfigError("quality measure 'cohort' needs --cohort", hint="e.g. --cohort train (a split of the cache)")
    utts, inv = np.unique(np.concatenate([enrol, test]), return_inverse=True)
    ei, ti = inv[:len(enrol)], inv[len(enrol):]
    rows = np.asarray(cache.rows(utts, missing="mask"), dtype=np.int64)
    if (rows < 0).any():
        miss = utts[rows < 0]
        raise ScoringError(f"{len(miss)} utterance(s) of the scores file are missing from the cache: "
                           f"{', '.join(miss[:3].tolist())}", path=cache.path,
                           hint="pass the cache the scores were computed from")
    cols = []

    def both(v):
        cols.extend([np.minimum(v[ei], v[ti]), np.maximum(v[ei], v[ti])])

    for m in measures:
        if m == "durations":
            both(np.log(np.maximum(read_rows(cache, "duration", rows, dtype=np.float64), 1e-3)))
        elif m == "norms":
            for _, arr in _mods(cache):
                e = read_rows(cache, arr, rows)
                both(np.sqrt(np.einsum("ij,ij->i", e, e, dtype=np.float64)))
        elif m == "cohort":
            for v in cohort_means(cache, rows, cohort, top_k).values():
                both(v)
    return np.column_stack(cols)
