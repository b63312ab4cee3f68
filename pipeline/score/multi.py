"""``avfuse score --trials O --trials E --trials H``: several trial lists in one pass.

The lists are concatenated into one ``TrialList`` and scored once by
``pipeline.score.score_from_cache``, so every utterance (shared by the lists, as
VoxCeleb1-O/E/H share theirs) is read or embedded through the head once, and the cohort
statistics of a normalisation are computed once. The scores are then split back into one
``Scores`` per list, each written with its own sidecar (``trials`` of that list, its own
counts, plus ``"multi"``: every list scored in the same pass and the pass's shared
counts and timings).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from pipeline.core.errors import ConfigError


def merge_trials(lists: Sequence) -> tuple[object, np.ndarray]:
    """``(one TrialList of every trial in order, list index per trial)``."""
    from data_manifests.trials import TrialList

    merged = TrialList(path=" + ".join(t.path for t in lists),
                       labels=np.concatenate([np.asarray(t.labels, dtype=np.int8) for t in lists]),
                       enrol=np.concatenate([t.enrol for t in lists]),
                       test=np.concatenate([t.test for t in lists]),
                       labeled=all(t.labeled for t in lists))
    owner = np.repeat(np.arange(len(lists)), [len(t) for t in lists])
    # the merged index from the lists' own (no factorising of the concatenated ids again)
    parts = [t.index() for t in lists]
    utts = np.unique(np.concatenate([u for u, _, _ in parts]))
    glob = [np.searchsorted(utts, u) for u, _, _ in parts]
    merged._index = (utts, np.concatenate([g[e] for g, (_, e, _) in zip(glob, parts)]),
                     np.concatenate([g[t] for g, (_, _, t) in zip(glob, parts)]))
    return merged, owner


def kept_mask(result, trials) -> np.ndarray:
    """bool per trial of ``trials``: scored in ``result`` (``score_from_cache`` with skipped
    trials). Whether a trial is kept depends only on its (enrol, test) pair, and the result
    holds the kept trials in order, so the kept ones are those whose pair is in the result."""
    if len(result) == len(trials):
        return np.ones(len(trials), dtype=bool)
    utts, ei, ti = trials.index()
    pair = ei * len(utts) + ti
    rows = np.searchsorted(utts, np.concatenate([result.enrol, result.test]))
    kept_pairs = rows[:len(result)] * len(utts) + rows[len(result):]
    return np.isin(pair, kept_pairs)


def split_scores(result, merged, owner: np.ndarray, n_lists: int) -> list:
    """One ``Scores`` per list from the scores of the merged list (``kept_mask``)."""
    from pipeline.score.files import Scores

    keep = kept_mask(result, merged)
    bounds = np.concatenate(([0], np.cumsum(np.bincount(owner[keep], minlength=n_lists))))
    return [Scores(labels=result.labels[a:b], enrol=result.enrol[a:b], test=result.test[a:b],
                   scores=result.scores[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]


def score_lists(cache, trial_paths: Sequence[str], out_paths: Sequence[str], mode: str, *, head=None,
                head_meta=None, head_info=None, norm="none", cohort=None, top_k=300, skip_missing=False,
                force=False, batch_size=4096, progress=False, mean_sub=None) -> list:
    """Score several lists in one pass and write one scores file + sidecar per list; returns
    ``[(trials path, out path, Scores)]``."""
    from data_manifests.trials import read_trials
    from pipeline.core.fsio import sha256_file
    from pipeline.score.engine import check_missing, check_scored, score_from_cache
    from pipeline.score.files import build_sidecar, write_scores

    if len(out_paths) != len(trial_paths):
        raise ConfigError(f"{len(trial_paths)} --trials but {len(out_paths)} --out",
                          hint="give one --out per --trials, in the same order")
    if len(set(map(str, out_paths))) != len(out_paths):
        raise ConfigError("two --out name the same file", hint="give each list its own --out")
    lists = [read_trials(p) for p in trial_paths]
    merged, owner = merge_trials(lists)
    result = score_from_cache(cache, merged, mode, head=head, head_meta=head_meta, norm=norm, cohort=cohort,
                              top_k=top_k, skip_missing=skip_missing, force=force, batch_size=batch_size,
                              progress=progress, mean_sub=mean_sub)
    parts = split_scores(result, merged, owner, len(lists))
    shared = {"lists": [str(Path(p).resolve()) for p in trial_paths], "counts": result.info["counts"],
              "timings_s": result.info["timings_s"]}
    out = []
    for tl, tp, op, sc in zip(lists, trial_paths, out_paths, parts):
        n_missing = int((~check_missing(cache, tl, skip_missing=True)[1]).sum())
        counts = dict(result.info["counts"], n_trials_in_list=len(tl), n_scored=len(sc),
                      n_skipped=len(tl) - len(sc), n_skipped_missing=n_missing,
                      n_skipped_unscorable=len(tl) - len(sc) - n_missing,
                      n_target=int((sc.labels == 1).sum()), n_nontarget=int((sc.labels == 0).sum()))
        sc.info = dict(result.info, counts=counts, timings_s=None)
        check_scored(sc, tl, head is not None)   # every list checked before any file is written
    for tl, tp, op, sc in zip(lists, trial_paths, out_paths, parts):
        sidecar = build_sidecar(cache=cache, trials=tl, trials_sha=sha256_file(tp), mode=mode, result=sc,
                                head_info=head_info, skip_missing=skip_missing, force=force)
        sidecar["multi"] = shared
        write_scores(op, sc, sidecar)
        out.append((tp, op, sc))
    return out
