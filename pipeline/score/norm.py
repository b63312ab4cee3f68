"""Score normalisation: S-norm and adaptive S-norm (AS-norm) against a speaker cohort.

Definitions
-----------
Let ``C`` be the cohort: one embedding per cohort speaker (the mean of that
speaker's clip embeddings in a cache split, each clip L2-normalised first and the
mean L2-normalised again for cosine scoring; the plain mean for ``dot`` heads).
For an utterance embedding ``x`` let ``c(x) = {score(x, C_j)}`` be its cohort
scores and ``T_k(x)`` the ``k`` largest of them (all of them when ``k`` is None or
``k >= |C|``). Then::

    mu(x) = mean(T_k(x)),   sd(x) = sqrt(mean((T_k(x) - mu(x))**2))   (population std)
    snorm(s; e, t) = 0.5 * ((s - mu(e)) / sd(e) + (s - mu(t)) / sd(t))

S-norm uses all cohort scores; AS-norm the top ``k`` (k = 300 by default), chosen
per utterance (``torch.topk``). ``sd`` is floored at ``1e-6``. ``e`` and ``t`` are
each compared with the cohort embedded in their own side's space (with a head:
the cohort clips go through the head with the same ``use`` as that side).

Memory: the cohort scores are computed for ``chunk`` utterances at a time
(``chunk x |C|`` floats), so the peak does not grow with the trial list. Cohort
speaker means are accumulated window by window from the cache's dask view.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from pipeline.core.errors import ScoringError

NORMS = ("none", "snorm", "asnorm")
SD_FLOOR = 1e-6


def cohort_stats(emb: np.ndarray, cohort: np.ndarray, top_k: int | None = None, *,
                 chunk: int = 4096, progress: Callable[[int], None] | None = None
                 ) -> tuple[np.ndarray, np.ndarray]:
    """``(mu, sd)`` float32 per row of ``emb``: mean and population std of its top-``k``
    cohort scores ``emb @ cohort.T`` (all scores when ``top_k`` is None or >= ``len(cohort)``)."""
    import torch

    emb = np.ascontiguousarray(emb, dtype=np.float32)
    cohort_t = torch.from_numpy(np.ascontiguousarray(cohort, dtype=np.float32))
    n_c = cohort_t.shape[0]
    if n_c == 0:
        raise ScoringError("the cohort is empty", hint="pick a cohort split with speakers")
    k = n_c if top_k is None or top_k >= n_c else int(top_k)
    if k < 1:
        raise ScoringError(f"top-k must be >= 1, got {top_k}")
    mu = np.empty(len(emb), dtype=np.float32)
    sd = np.empty(len(emb), dtype=np.float32)
    with torch.no_grad():
        for a in range(0, len(emb), chunk):
            b = min(a + chunk, len(emb))
            s = torch.from_numpy(emb[a:b]) @ cohort_t.T
            if k < n_c:
                s = torch.topk(s, k, dim=1, largest=True, sorted=False).values
            m = s.mean(dim=1)
            v = ((s - m[:, None]) ** 2).mean(dim=1)
            mu[a:b] = m.numpy()
            sd[a:b] = v.sqrt().clamp_min(SD_FLOOR).numpy()
            if progress is not None:
                progress(b - a)
    return mu, sd


def apply_stats(scores: np.ndarray, enrol_idx: np.ndarray, test_idx: np.ndarray,
                mu_e: np.ndarray, sd_e: np.ndarray, mu_t: np.ndarray, sd_t: np.ndarray) -> np.ndarray:
    """``0.5 * ((s - mu_e[e]) / sd_e[e] + (s - mu_t[t]) / sd_t[t])`` as float32."""
    s = np.asarray(scores, dtype=np.float64)
    z = 0.5 * ((s - mu_e[enrol_idx]) / sd_e[enrol_idx] + (s - mu_t[test_idx]) / sd_t[test_idx])
    return z.astype(np.float32)


def normalize_channel(channel, cohort_enrol: np.ndarray, cohort_test: np.ndarray | None = None,
                      top_k: int | None = None, *, chunk: int = 4096,
                      progress: Callable[[int], None] | None = None) -> None:
    """Set ``channel.stats`` (a ``pipeline.score.Channel``) from the cohorts of its sides.

    ``cohort_test`` None: the test side uses ``cohort_enrol`` too. When both sides share
    one table and one cohort, the statistics are computed once.
    """
    if cohort_test is None:
        cohort_test = cohort_enrol
    mu_e, sd_e = cohort_stats(channel.enrol, cohort_enrol, top_k, chunk=chunk, progress=progress)
    if channel.test is channel.enrol and cohort_test is cohort_enrol:
        mu_t, sd_t = mu_e, sd_e
    else:
        mu_t, sd_t = cohort_stats(channel.test, cohort_test, top_k, chunk=chunk, progress=progress)
    channel.stats = (mu_e, sd_e, mu_t, sd_t)


# ---------------------------------------------------------------- cohort embeddings
def speaker_means(emb: np.ndarray, speaker_idx: np.ndarray, n_speakers: int, *,
                  normalize: bool = True) -> np.ndarray:
    """Mean embedding per speaker (``speaker_idx`` in ``[0, n_speakers)``).

    ``normalize``: rows are L2-normalised before averaging and the means after.
    Speakers without rows get a zero row.
    """
    sums, counts = _accumulate(None, None, emb, speaker_idx, n_speakers, normalize)
    return _finish(sums, counts, normalize)


def _accumulate(sums, counts, emb, speaker_idx, n_speakers, normalize):
    """Add rows of ``emb`` (L2-normalised first if ``normalize``) to their speakers' sums:
    one sparse (speakers x rows) indicator product per window, accumulated in float64."""
    import scipy.sparse as sp

    x = np.ascontiguousarray(emb, dtype=np.float32)
    if normalize:
        x = x / np.maximum(np.sqrt(np.einsum("ij,ij->i", x, x)), 1e-12)[:, None]
    idx = np.ascontiguousarray(speaker_idx, dtype=np.int64)
    if sums is None:
        sums = np.zeros((n_speakers, x.shape[1]), dtype=np.float64)
        counts = np.zeros(n_speakers, dtype=np.int64)
    ind = sp.csr_matrix((np.ones(len(idx), dtype=np.float32), (idx, np.arange(len(idx)))),
                        shape=(n_speakers, len(idx)))
    sums += ind @ x
    counts += np.bincount(idx, minlength=n_speakers)
    return sums, counts


def _finish(sums, counts, normalize) -> np.ndarray:
    if sums is None:
        raise ScoringError("the cohort has no usable clips")
    m = sums / np.maximum(counts, 1)[:, None]
    if normalize:
        m = m / np.maximum(np.linalg.norm(m, axis=1, keepdims=True), 1e-12)
    return m.astype(np.float32)


@dataclass
class CohortSource:
    """Where the cohort comes from: ``cache`` (an ``EmbeddingCache``) and its ``rows``."""

    cache: object
    rows: np.ndarray
    spec: str
    split: str | None


def resolve_cohort(spec: str, cache, what: str = "cohort") -> CohortSource:
    """Parse ``--cohort``: ``SPLIT`` (of the scored cache), ``PATH`` (all rows of another
    cache) or ``PATH:SPLIT`` (a split of another cache). ``what`` names the option in errors."""
    from pipeline.cache.reader import open_cache

    other, split = None, spec
    if ":" in spec:
        head, tail = spec.rsplit(":", 1)
        if Path(head).exists():
            other, split = head, tail
    if other is None and (Path(spec).exists() and ("/" in spec or Path(spec).suffix)):
        other, split = spec, None
    looks = spec.rsplit(":", 1)[0] if ":" in spec else spec
    if other is None and ("/" in looks or looks.lower().endswith((".zarr", ".h5", ".hdf5"))):
        raise ScoringError(f"{what} cache not found", path=looks,
                           hint="give an existing cache (PATH or PATH:SPLIT), or a split name of the "
                                "scored cache such as 'train'")
    c = open_cache(other) if other is not None else cache
    if split is None:
        rows = np.arange(c.n_rows, dtype=np.int64)
    else:
        rows = np.asarray(c.split_rows(split), dtype=np.int64)
        if len(rows) == 0:
            known = sorted(set(np.asarray(c.splits).tolist()))
            raise ScoringError(f"{what} split {split!r} has no rows in {c.path}",
                               hint=f"splits in this cache: {', '.join(map(str, known)) or '(none)'}; "
                                    "or pass PATH:SPLIT for another cache")
    return CohortSource(cache=c, rows=np.sort(rows), spec=spec, split=split)


def _windows(rows: np.ndarray, size: int):
    for a in range(0, len(rows), size):
        yield rows[a:a + size]


def _spans(rows: np.ndarray, span: int):
    """``(start, stop, i, j)`` windows over sorted ``rows``: ``rows[i:j]`` all lie in
    ``[start, stop)`` and ``stop - start <= span`` (bounded memory per window)."""
    i = 0
    while i < len(rows):
        start = int(rows[i])
        j = int(np.searchsorted(rows, start + span, side="left"))
        yield start, int(rows[j - 1]) + 1, i, j
        i = j


def modality_rows(src: CohortSource, modality: str, what: str) -> tuple[str, np.ndarray]:
    """``(array name, rows)``: the clip-embedding array of ``modality`` (``"A"``/``"V"``) and the
    rows of ``src`` where it is present. Typed errors name ``what`` (``"cohort"``, ``"--mean-sub"``)."""
    from pipeline.score.rows import CACHE_ARRAYS

    cache = src.cache
    name, flag = CACHE_ARRAYS[modality]
    if not cache.has(name):
        raise ScoringError(f"the {what} cache has no {name} embeddings", path=cache.path,
                           hint="pick a cache extracted with that modality's backbone")
    rows = src.rows[np.asarray(cache.to_numpy(flag, src.rows, dtype=bool), dtype=bool)]
    if len(rows) == 0:
        raise ScoringError(f"no {what} clip has {'audio' if modality == 'A' else 'a face'}", path=cache.path,
                           hint="pick a split or cache with that modality")
    return name, rows


def cohort_from_cache(src: CohortSource, modality: str, *, window: int = 65536,
                      progress: Callable[[int], None] | None = None,
                      center: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(means (S, D) float32, speakers (S,))``: per-speaker mean backbone embeddings of
    one modality (``"A"``: ``audio/clip``, ``"V"``: ``face/clip``) over the cohort rows
    where that modality is present, read through ``cache.to_dask`` one slice of at most
    ``window`` rows at a time (only slices holding cohort rows are read). ``center`` (``--mean-sub``):
    subtracted from every clip embedding before it is L2-normalised."""
    cache = src.cache
    name, rows = modality_rows(src, modality, "cohort")
    spk_of_row = np.asarray(cache.speakers)[rows]
    speakers, spk_idx = np.unique(spk_of_row, return_inverse=True)
    d = cache.to_dask(name)
    sums = counts = None
    for start, stop, i, j in _spans(rows, window):
        # a contiguous slice of the dask view (whole shards, read in parallel), then the rows
        x = np.asarray(d[start:stop].compute(), dtype=np.float32)[rows[i:j] - start]
        if center is not None:
            x -= center
        sums, counts = _accumulate(sums, counts, x, spk_idx[i:j], len(speakers), True)
        if progress is not None:
            progress(j - i)
    return _finish(sums, counts, True), speakers


def cohort_from_head(src: CohortSource, head, use: tuple[str, ...], *, batch_size: int = 4096,
                     progress: Callable[[int], None] | None = None,
                     center: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(means, speakers)``: per-speaker means of head embeddings (``head.embed(batch, use)``)
    over the cohort rows that have a modality in ``use``; L2-normalised for cosine heads.
    ``center`` (``--mean-sub``): subtracted from every embedding first."""
    from pipeline.score.rows import embed_rows, present_rows

    cache = src.cache
    ok = present_rows(cache, src.rows, use)
    rows = src.rows[ok]
    if len(rows) == 0:
        raise ScoringError(f"no cohort clip has any of the modalities {use}", path=cache.path)
    speakers, spk_idx = np.unique(np.asarray(cache.speakers)[rows], return_inverse=True)
    cosine = getattr(head, "score_kind", "cosine") == "cosine"
    sums = counts = None
    for w_rows, w_idx in zip(_windows(rows, batch_size), _windows(spk_idx, batch_size)):
        x = embed_rows(cache, w_rows, head, use, batch_size=batch_size)
        if center is not None:
            x -= center
        sums, counts = _accumulate(sums, counts, x, w_idx, len(speakers), cosine)
        if progress is not None:
            progress(len(w_rows))
    return _finish(sums, counts, cosine), speakers
