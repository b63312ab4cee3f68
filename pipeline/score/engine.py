"""Trial scoring: embed each unique utterance once, then score all trials vectorised.

Modes (enrol x test) and what is compared
-----------------------------------------
A score is built from one or more *channels*; a channel is a pair of embedding
tables (enrol side, test side) compared by a row-wise dot product.

Without a fusion head (backbone embeddings, each L2-normalised, cosine scores):

======  ====================================================================
AxA     one channel: audio clip embedding (``audio/clip``) vs audio
VxV     one channel: face clip embedding (``face/clip``, the mean of the
        valid frames) vs face
AVxAV   two channels, A and V; the score is the equal-weight mean of the two
        cosine scores (score averaging)
AVxA    one channel, A: the enrolment's audio vs the test's audio
AVxV    one channel, V: the enrolment's face vs the test's face
======  ====================================================================

Without a head only same-modality comparisons are possible, so AVxA scores the
same numbers as AxA (and AVxV as VxV): the enrolment's other modality has no
common space with the test side. A channel is usable for a trial only when the
modality is present (``has_audio`` / ``has_face``) on both sides. In AVxAV a
trial whose enrolment or test lacks one modality falls back to the other
modality's score alone. A trial with no usable channel is *unscorable*.

With a head (``--head``): one channel; the enrolment side is embedded with
``head.embed(batch, use=enrol_use)`` and the test side with ``use=test_use``,
where ``(enrol_use, test_use)`` = ``MODES[mode]`` (AVxA: ``("A","V")`` /
``("A",)``). ``score_kind == "cosine"``: L2-normalise, then dot;
``"dot"``: raw dot. A side is usable when at least one modality it may use is
present; otherwise the trial is unscorable.

Scores file
-----------
TSV with a header line ``label<TAB>enrol<TAB>test<TAB>score``, one line per
scored trial in the trial list's order; ``label`` is 1/0 or ``NA`` for unlabeled
lists; scores are float32 written with 9 significant digits (exact round trip).
A sidecar ``<scores>.json`` holds the provenance (see ``score_cli``).
"""

from __future__ import annotations

import time
from typing import Sequence

import numpy as np

from pipeline.core.errors import ScoringError
from pipeline.core.linalg import l2_normalize
from pipeline.core.modes import parse_mode
from pipeline.core.progress import progress_bar
from pipeline.score.centering import space_name
from pipeline.score.channels import DEFAULT_CHUNK, NO_HEAD_CHANNELS, Channel, score_channels
from pipeline.score.files import Scores
from pipeline.score.rows import CACHE_ARRAYS, embed_rows, present_rows, read_rows


def _preview(ids: Sequence[str], n: int = 5, width: int = 80) -> str:
    ids = [i if len(i) <= width else i[:width] + "..." for i in list(ids)[:n]] + list(ids)[n:]
    more = f" ... (+{len(ids) - n} more)" if len(ids) > n else ""
    return ", ".join(ids[:n]) + more


def check_missing(cache, trials, *, skip_missing: bool) -> tuple[np.ndarray, np.ndarray]:
    """``(rows per unique utterance (-1 missing), keep mask per trial)``.

    Missing utterances raise ``ScoringError`` with the counts and the first ids, unless
    ``skip_missing`` (then the trials naming them are dropped).
    """
    utts, ei, ti = trials.index()
    rows = np.asarray(cache.rows(utts, missing="mask"), dtype=np.int64)
    missing = rows < 0
    bad = missing[ei] | missing[ti]
    if bad.any() and not skip_missing:
        raise ScoringError(
            f"{int(bad.sum())} of {len(bad)} trials name {int(missing.sum())} utterance(s) missing "
            f"from the cache {cache.path}: {_preview(utts[missing].tolist())}",
            path=trials.path,
            hint="extract those clips into the cache, or pass --skip-missing to score the other trials")
    return rows, ~bad


def build_channels(cache, rows_e: np.ndarray, rows_t: np.ndarray | None, mode: str, *,
                   head=None, batch_size: int = 4096, progress: bool = False,
                   means: dict | None = None) -> list[Channel]:
    """Channels over cache rows: ``rows_e`` for the enrol table and ``rows_t`` for the test
    table (``None``: the test side shares the enrol table). ``means`` (``--mean-sub``,
    ``pipeline.score.centering``): per embedding space, subtracted before L2 normalisation."""
    enrol_use, test_use = parse_mode(mode)
    shared = rows_t is None
    if head is None:
        channels = []
        for m in NO_HEAD_CHANNELS[mode]:
            name, flag = CACHE_ARRAYS[m]
            if not cache.has(name):
                raise ScoringError(f"mode {mode} needs {name} embeddings, which this cache lacks",
                                   path=cache.path, hint="score a mode of the modalities it has")
            tabs = []
            for r in ([rows_e] if shared else [rows_e, rows_t]):
                emb = read_rows(cache, name, r)  # a fresh table
                if means:
                    emb -= means[m]
                emb = l2_normalize(emb, inplace=True)
                ok = read_rows(cache, flag, r, dtype=bool).astype(bool) if cache.has(flag) \
                    else np.ones(len(r), dtype=bool)
                tabs.append((emb, ok))
            (e, ev), (t, tv) = tabs[0], tabs[-1]
            channels.append(Channel(m, e, t, ev, tv, kind="cosine"))
        return channels
    kind = getattr(head, "score_kind", "cosine")
    if kind not in ("cosine", "dot"):
        raise ScoringError(f"head has unknown score_kind {kind!r}")
    tables = []
    sides = [(rows_e, enrol_use)] if shared else [(rows_e, enrol_use), (rows_t, test_use)]
    for r, use in sides:
        bar = progress_bar(f"embed {''.join(use)}", len(r), progress)
        emb = embed_rows(cache, r, head, use, batch_size=batch_size,
                         progress=bar.update if bar else None)
        if bar:
            bar.close()
        if means:
            emb -= means[space_name(use)]
        if kind == "cosine":
            emb = l2_normalize(emb)
        tables.append((emb, present_rows(cache, r, use)))
    (e, ev), (t, tv) = tables[0], tables[-1]
    return [Channel("head", e, t, ev, tv, kind=kind)]


def score_from_cache(cache, trials, mode: str, *, head=None, head_meta: dict | None = None,
                     norm: str = "none", cohort: str | None = None, top_k: int = 300, skip_missing: bool = False,
                     force: bool = False, chunk: int = DEFAULT_CHUNK, batch_size: int = 4096,
                     progress: bool = False, mean_sub: str | None = None) -> Scores:
    """Score ``trials`` (a ``TrialList``) from ``cache`` in ``mode`` (see the module docstring).

    Each utterance is read / embedded once per side table (once in total when both
    sides use the same modalities), then trials are scored with ``score_channels``.
    ``norm`` is ``none``, ``snorm`` or ``asnorm`` with ``cohort`` a
    ``pipeline.score.norm.resolve_cohort`` spec. Missing utterances and unscorable trials
    raise ``ScoringError`` unless ``skip_missing``. ``head_meta`` (from ``load_head``):
    a head trained in another embedding space (``fusion.checkpoint.space_differences``: other
    backbones or segment/frame settings; another manifest is fine) raises ``HeadError`` unless
    ``force``. ``mean_sub`` (a ``resolve_cohort`` spec): subtract the mean embedding of that
    source from every scored and cohort embedding first (``pipeline.score.centering``).
    ``Scores.info`` has the counts and phase timings.
    """
    from pipeline.score import norm as normmod

    enrol_use, test_use = parse_mode(mode)
    if head is not None:
        from fusion.checkpoint import check_dims, check_provenance
        check_dims(head, cache)
        if head_meta is not None:
            check_provenance(head_meta, cache, force=force)
    if norm not in normmod.NORMS:
        raise ScoringError(f"unknown normalisation {norm!r}", hint=f"use one of {', '.join(normmod.NORMS)}")
    if norm != "none" and not cohort:
        raise ScoringError(f"--norm {norm} needs a cohort", hint="e.g. --cohort train (a split of this cache)")
    times = {"read_or_embed": 0.0, "cohort": 0.0, "norm_stats": 0.0, "score": 0.0}
    means, mean_info = None, None
    if mean_sub:
        from pipeline.score.centering import embedding_means
        t0 = time.perf_counter()
        msrc = normmod.resolve_cohort(mean_sub, cache, what="--mean-sub")
        if msrc.cache is not cache:
            check_cohort_cache(msrc.cache, cache, force=force, what="--mean-sub")
        means, mean_info = embedding_means(msrc, mode, head=head, batch_size=batch_size, progress=progress)
        times["mean_sub"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    rows, keep = check_missing(cache, trials, skip_missing=skip_missing)
    utts, ei, ti = trials.index()
    n_missing = int((~keep).sum())
    ei_k, ti_k = ei[keep], ti[keep]
    shared = head is None or enrol_use == test_use
    if shared:
        used, (e_loc, t_loc) = _compact(len(utts), ei_k, ti_k)
        rows_e, rows_t = rows[used], None
    else:
        used_e, (e_loc,) = _compact(len(utts), ei_k)
        used_t, (t_loc,) = _compact(len(utts), ti_k)
        rows_e, rows_t = rows[used_e], rows[used_t]
    channels = build_channels(cache, rows_e, rows_t, mode, head=head, batch_size=batch_size,
                              progress=progress, means=means)
    times["read_or_embed"] = time.perf_counter() - t0
    norm_info: dict = {"method": norm}
    if norm != "none":
        src = normmod.resolve_cohort(cohort, cache)
        if src.cache is not cache:
            check_cohort_cache(src.cache, cache, force=force)
        k = top_k if norm == "asnorm" else None
        for ch in channels:
            t0 = time.perf_counter()
            bar = progress_bar(f"cohort {ch.name}", len(src.rows), progress)
            cb = bar.update if bar else None
            mu = (means or {}).get
            if head is None:
                ce, speakers = normmod.cohort_from_cache(src, ch.name, progress=cb, center=mu(ch.name))
                ct = ce
            else:
                ce, speakers = normmod.cohort_from_head(src, head, enrol_use, batch_size=batch_size, progress=cb,
                                                        center=mu(space_name(enrol_use)))
                ct = ce if enrol_use == test_use else \
                    normmod.cohort_from_head(src, head, test_use, batch_size=batch_size, progress=cb,
                                             center=mu(space_name(test_use)))[0]
            if bar:
                bar.close()
            t1 = time.perf_counter()
            times["cohort"] += t1 - t0
            n_stats = len(ch.enrol) + (0 if ch.test is ch.enrol else len(ch.test))
            bar = progress_bar(f"{norm} {ch.name}", n_stats, progress)
            normmod.normalize_channel(ch, ce, ct, k, progress=bar.update if bar else None)
            if bar:
                bar.close()
            times["norm_stats"] += time.perf_counter() - t1
            if len(speakers) < 2:
                raise ScoringError(f"the cohort has {len(speakers)} speaker(s); S-norm needs at least 2 "
                                   f"(its statistics are a mean and a spread over cohort speakers)",
                                   hint="pick a cohort split or cache with more speakers (hundreds are typical)")
            norm_info.setdefault("cohort_speakers", {})[ch.name] = int(len(speakers))
        norm_info.update(cohort=cohort, cohort_cache=str(src.cache.path), cohort_clips=int(len(src.rows)),
                         cohort_cache_fingerprint=src.cache.fingerprint, cohort_split=src.split,
                         top_k=k)
        if k is not None:      # AS-norm over a cohort of at most k speakers uses them all: S-norm
            norm_info["top_k_effective"] = min(k, *norm_info["cohort_speakers"].values())
    t0 = time.perf_counter()
    bar = progress_bar(f"score {mode}", len(e_loc) * len(channels), progress)
    scores, scorable = score_channels(channels, e_loc, t_loc, chunk=chunk,
                                      progress=bar.update if bar else None)
    if bar:
        bar.close()
    times["score"] = time.perf_counter() - t0
    n_unscorable = int((~scorable).sum())
    n_partial = 0      # scored on fewer channels than the mode compares (AVxAV: a side lacks one modality)
    if len(channels) > 1:
        used = sum((ch.enrol_valid[e_loc] & ch.test_valid[t_loc]).astype(np.int32) for ch in channels)
        n_partial = int(((used > 0) & (used < len(channels))).sum())
    if n_unscorable and not skip_missing:
        bad = np.flatnonzero(~scorable)[:5]
        pairs = [f"{utts[ei_k[i]]} {utts[ti_k[i]]}" for i in bad]
        raise ScoringError(
            f"{n_unscorable} of {len(scorable)} trials cannot be scored in mode {mode}: a side lacks "
            f"every modality the mode compares (has_audio/has_face False), e.g. {'; '.join(pairs)}",
            path=trials.path, hint="pass --skip-missing to score the other trials, or use another mode")
    if n_missing == 0 and n_unscorable == 0:      # the common case: no copies
        idx = np.arange(len(ei))
        out = Scores(labels=np.asarray(trials.labels), enrol=trials.enrol, test=trials.test, scores=scores)
    else:
        idx = np.flatnonzero(keep)[scorable]
        out = Scores(labels=np.asarray(trials.labels)[idx], enrol=np.asarray(trials.enrol)[idx],
                     test=np.asarray(trials.test)[idx], scores=scores[scorable])
    out.info = {
        "mode": mode, "norm": norm_info, "mean_sub": mean_info, "channels": [c.name for c in channels],
        "score_kind": channels[0].kind, "timings_s": {k: round(v, 3) for k, v in times.items()},
        "counts": {"n_trials_in_list": int(len(ei)), "n_scored": int(len(idx)),
                   "n_skipped_missing": n_missing, "n_skipped_unscorable": n_unscorable,
                   "n_skipped": n_missing + n_unscorable, "n_partial": n_partial,
                   "n_utterances_missing": int((rows < 0).sum()),
                   "n_embedded": int(len(rows_e) + (0 if rows_t is None else len(rows_t))),
                   "n_target": int((out.labels == 1).sum()), "n_nontarget": int((out.labels == 0).sum())},
    }
    return out


def check_scored(result: Scores, trials, with_head: bool) -> None:
    """What ``avfuse score`` refuses to write: 0 scored trials (even with --skip-missing), or a
    non-finite score (a NaN head or NaN embeddings) -- a ``ScoringError`` before any file exists."""
    c = result.info["counts"]
    if not c["n_scored"]:
        raise ScoringError(f"0 of {c['n_trials_in_list']} trials could be scored ({c['n_skipped_missing']} name "
                           f"utterances missing from the cache, {c['n_skipped_unscorable']} lack the compared "
                           f"modalities)", path=trials.path,
                           hint="is this the cache of this trial list? `avfuse cache info` lists its splits")
    bad = ~np.isfinite(result.scores)
    if bad.any():
        src = "the head's outputs (are its weights finite?)" if with_head else "the cached embeddings"
        raise ScoringError(f"{int(bad.sum())} of {len(bad)} scores are NaN/inf; they come from {src}",
                           path=trials.path, hint="retrain the head with a lower --lr" if with_head
                           else "run `avfuse cache verify` on the cache")


def _compact(n: int, *idx: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """``(used, remapped)``: the sorted distinct values of the index arrays (all in
    ``[0, n)``) and each array re-indexed into ``used``. O(n + len(idx)), no sort."""
    mask = np.zeros(n, dtype=bool)
    for a in idx:
        mask[a] = True
    if mask.all():  # the common case (every utterance used): nothing to remap
        return np.arange(n), [np.asarray(a, dtype=np.int64) for a in idx]
    used = np.flatnonzero(mask)
    loc = np.cumsum(mask, dtype=np.int64) - 1
    return used, [loc[a] for a in idx]


def check_cohort_cache(cohort_cache, cache, *, force: bool = False, what: str = "cohort") -> None:
    """A cohort from another cache must live in the same embedding space (else ``ScoringError``
    unless ``force``): the same backbones, by checksum, and segment/frame settings
    (``fusion.checkpoint.space_differences``, the rule a head's cache is checked by)."""
    if force:
        return
    from fusion.checkpoint import space_differences
    diffs = space_differences(cohort_cache.provenance or {}, cache.provenance or {})
    if diffs:
        raise ScoringError(f"{what} cache {cohort_cache.path} was extracted with other backbones or settings "
                           f"({', '.join(diffs)} differ) than {cache.path}",
                           hint="use a cohort extracted with the same backbones and settings, or --force")
