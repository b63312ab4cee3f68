"""Mean subtraction before cosine scoring (``avfuse score --mean-sub``), as WeSpeaker does it.

WeSpeaker's VoxCeleb recipe subtracts the mean *raw* (not L2-normalised) embedding of a
training set (vox2_dev) from every evaluation embedding before cosine scoring
(``wespeaker/bin/score.py``, ``--cal_mean True``) and from every embedding before the
cohort scores of S-norm / AS-norm (``wespeaker/bin/score_norm.py``, ``split_embedding``),
cohort speaker embeddings included.

Here, for each *embedding space* that is cosine-scored:

* without a head: one space per modality, ``"A"`` (``audio/clip``) and ``"V"``
  (``face/clip``); the mean is over the rows of the source where the modality is present
  (``has_audio`` / ``has_face``), of the embeddings as stored;
* with a head: one space per side's ``use`` (``"AV"``, ``"A"``, ``"V"``; one space when both
  sides use the same modalities); the mean is of the head's raw output
  (``head.embed(batch, use)``, before L2 normalisation) over the source rows with a
  modality of ``use``.

``mu`` is then subtracted from every embedding of that space before it is L2-normalised:
both sides of every trial and each cohort clip (before the per-speaker means of
``pipeline.score.norm``). Heads scored by a plain dot product (``score_kind == "dot"``,
``score_avg``) have no cosine space to centre: ``ScoringError``.

The source has ``--cohort``'s syntax (``SPLIT`` of the scored cache, ``CACHE`` or
``CACHE:SPLIT``); sums are accumulated in float64, one dask window or head batch at a time.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from pipeline.core.errors import ScoringError


def space_name(use) -> str:
    """The key of an embedding space: a modality (``"A"``) or a head side's ``use`` (``"AV"``)."""
    return "".join(use)


def mean_from_cache(src, modality: str, *, window: int = 65536,
                    progress: Callable[[int], None] | None = None) -> tuple[np.ndarray, int]:
    """``(mean (D,) float32, number of rows averaged)``: the mean stored clip embedding of one
    modality over the rows of ``src`` (a ``pipeline.score.norm.CohortSource``) where it is present."""
    from pipeline.score.norm import _spans, modality_rows

    name, rows = modality_rows(src, modality, "--mean-sub")
    d = src.cache.to_dask(name)
    total = np.zeros(d.shape[1], dtype=np.float64)
    for start, stop, i, j in _spans(rows, window):
        x = np.asarray(d[start:stop].compute(), dtype=np.float32)[rows[i:j] - start]
        total += x.sum(axis=0, dtype=np.float64)
        if progress is not None:
            progress(j - i)
    return (total / len(rows)).astype(np.float32), len(rows)


def mean_from_head(src, head, use: tuple[str, ...], *, batch_size: int = 4096,
                   progress: Callable[[int], None] | None = None) -> tuple[np.ndarray, int]:
    """``(mean (D,) float32, rows)``: the mean raw head embedding (``head.embed(batch, use)``)
    over the rows of ``src`` that have a modality of ``use``."""
    from pipeline.score.rows import embed_rows, present_rows

    rows = src.rows[present_rows(src.cache, src.rows, use)]
    if len(rows) == 0:
        raise ScoringError(f"no --mean-sub clip has any of the modalities {use}", path=src.cache.path)
    total = None
    for a in range(0, len(rows), batch_size):
        x = embed_rows(src.cache, rows[a:a + batch_size], head, use, batch_size=batch_size)
        s = x.sum(axis=0, dtype=np.float64)
        total = s if total is None else total + s
        if progress is not None:
            progress(len(x))
    return (total / len(rows)).astype(np.float32), len(rows)


def embedding_means(src, mode: str, *, head=None, batch_size: int = 4096,
                    progress: bool = False) -> tuple[dict[str, np.ndarray], dict]:
    """``({space: mean}, info)`` over ``src`` (``resolve_cohort(spec, cache, what="--mean-sub")``)
    for the spaces scored in ``mode`` (with ``head``).

    ``info`` (the sidecar's ``"mean_sub"``): the source spec, cache path, fingerprint and split,
    and per space the number of clips averaged and the mean's L2 norm.
    """
    from pipeline.core.modes import parse_mode
    from pipeline.core.progress import progress_bar
    from pipeline.score.channels import NO_HEAD_CHANNELS

    if head is not None and getattr(head, "score_kind", "cosine") != "cosine":
        raise ScoringError(f"--mean-sub centres cosine-scored embeddings; head '{getattr(head, 'name', '?')}' "
                           f"scores by a plain dot product", hint="drop --mean-sub for this head")
    means: dict[str, np.ndarray] = {}
    clips: dict[str, int] = {}
    if head is None:
        spaces = [(m, (m,)) for m in NO_HEAD_CHANNELS[mode]]
    else:
        spaces = [(space_name(u), u) for u in dict.fromkeys(parse_mode(mode))]
    for key, use in spaces:
        bar = progress_bar(f"mean {key}", len(src.rows), progress)
        cb = bar.update if bar else None
        if head is None:
            means[key], clips[key] = mean_from_cache(src, key, progress=cb)
        else:
            means[key], clips[key] = mean_from_head(src, head, use, batch_size=batch_size, progress=cb)
        if bar:
            bar.close()
    info = {"source": src.spec, "cache": str(src.cache.path), "cache_fingerprint": src.cache.fingerprint,
            "split": src.split, "clips": clips,
            "mean_norm": {k: round(float(np.linalg.norm(v)), 6) for k, v in means.items()}}
    return means, info
