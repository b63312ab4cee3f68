"""Draw a labelled trial list from a set of clips: the dev list that calibration (``avfuse
calibrate fit``) and head selection need, e.g. from VoxCeleb2 test, whose speakers are in no
VoxCeleb1 list and in no VoxCeleb2-dev training run.

``sample_trials`` is vectorised (no loop over clips or pairs; a few rounds of draws), so it
serves VoxCeleb2 dev's 1.09 M clips as well as a toy split:

* **target** trials: an enrolment clip drawn uniformly among the clips whose speaker has another
  clip (from another video, with ``cross_video``, the default: same-video pairs share the
  session, the room and the microphone, and make verification easy), then a partner drawn
  uniformly among that speaker's other clips;
* **non-target** trials: two clips drawn uniformly, of different speakers;
* every unordered pair at most once; a pair is written with the lower clip id as enrolment, and
  the list is sorted by enrolment, then label (targets first), then test.

Deterministic for a seed and the same clips (in any order). When a split holds fewer distinct
pairs of a kind than asked for, the list holds all that were found after ``MAX_ROUNDS`` rounds of
draws and ``SampledTrials.short`` says so.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from pipeline.core.errors import ConfigError

__all__ = ["SampledTrials", "sample_trials", "video_of"]

#: rounds of draws before a request for more distinct pairs than a split holds gives up
MAX_ROUNDS = 64


@dataclass
class SampledTrials:
    labels: np.ndarray          # int64 (N,), 1 = same speaker
    enrol: np.ndarray           # str (N,)
    test: np.ndarray            # str (N,)
    short: list[str]            # what could not be had in full, in words (empty: all of it)
    cross_video: bool           # whether targets were kept across videos (False: not asked, or no video known)


def video_of(clip_id: str) -> str | None:
    """The video of a VoxCeleb-form id ``SPEAKER/VIDEO/UTT``; None for other forms."""
    parts = clip_id.split("/")
    return parts[1] if len(parts) == 3 else None


def _codes(values: Sequence) -> np.ndarray:
    return np.unique(np.asarray(values, dtype=str), return_inverse=True)[1].astype(np.int64)


def _collect(draw, want: int, rng: np.random.Generator) -> np.ndarray:
    """Distinct unordered pairs ``(k, 2)`` (lower index first) from rounds of ``draw(m, rng)``,
    at most ``want``, in the order first drawn."""
    found = np.empty((0, 2), np.int64)
    for _ in range(MAX_ROUNDS):
        need = want - len(found)
        if need <= 0:
            break
        a, b = draw(max(2 * need, 64), rng)
        pairs = np.sort(np.stack([a, b], 1), axis=1)
        allp = np.concatenate([found, pairs])
        _, first = np.unique(allp, axis=0, return_index=True)
        found = allp[np.sort(first)]
    return found[:want]


def sample_trials(ids: Sequence[str], speakers: Sequence[str], n_target: int, n_nontarget: int | None = None,
                  *, seed: int = 0, videos: Sequence[str | None] | None = None,
                  cross_video: bool = True) -> SampledTrials:
    """A labelled trial list over the clips ``ids`` of ``speakers`` (see the module docstring).
    ``videos``: each clip's video (default: read from VoxCeleb-form ids; with none known,
    ``cross_video`` has nothing to check)."""
    n_nontarget = n_target if n_nontarget is None else n_nontarget
    if n_target < 0 or n_nontarget < 0 or n_target + n_nontarget == 0:
        raise ConfigError(f"ask for some trials (targets {n_target}, non-targets {n_nontarget})")
    ids = np.asarray(ids, dtype=str)
    if len(ids) != len(speakers) or (videos is not None and len(videos) != len(ids)):
        raise ConfigError("ids, speakers and videos must have one entry per clip")
    order = np.argsort(ids, kind="stable")            # the clips' order given must not matter
    ids = ids[order]
    if len(np.unique(ids)) != len(ids):
        raise ConfigError("the clips hold duplicate ids")
    spk = _codes(np.asarray(speakers, dtype=str)[order])
    vids = [video_of(i) for i in ids] if videos is None else list(np.asarray(videos, dtype=object)[order])
    check_video = cross_video and any(v is not None for v in vids)
    vid = _codes([str(v) for v in vids]) if check_video else None

    by_spk = np.argsort(spk, kind="stable")
    counts = np.bincount(spk)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    pos = np.empty(len(ids), np.int64)
    pos[by_spk] = np.arange(len(ids)) - starts[spk[by_spk]]
    if check_video:     # enrolments need a clip of their speaker from another video
        videos_of_spk = np.bincount(np.unique(np.stack([spk, vid], 1), axis=0)[:, 0], minlength=len(counts))
        eligible = np.flatnonzero(videos_of_spk[spk] >= 2)
    else:
        eligible = np.flatnonzero(counts[spk] >= 2)

    def draw_target(m: int, rng: np.random.Generator):
        if not len(eligible):
            return np.empty(0, np.int64), np.empty(0, np.int64)
        a = eligible[rng.integers(len(eligible), size=m)]
        k = (rng.random(m) * (counts[spk[a]] - 1)).astype(np.int64)
        k += k >= pos[a]                                   # skip the enrolment clip itself
        b = by_spk[starts[spk[a]] + k]
        keep = vid[a] != vid[b] if check_video else np.ones(m, bool)
        return a[keep], b[keep]

    def draw_nontarget(m: int, rng: np.random.Generator):
        a, b = rng.integers(len(ids), size=m), rng.integers(len(ids), size=m)
        keep = spk[a] != spk[b]
        return a[keep], b[keep]

    rng = np.random.default_rng(seed)
    tgt = _collect(draw_target, n_target, rng) if n_target else np.empty((0, 2), np.int64)
    non = _collect(draw_nontarget, n_nontarget, rng) if n_nontarget and len(counts) > 1 else np.empty((0, 2), np.int64)
    short = []
    for kind, got, want in (("target", len(tgt), n_target), ("non-target", len(non), n_nontarget)):
        if got < want:
            short.append(f"{got:,} distinct {kind} pairs found of the {want:,} asked for")
    pairs = np.concatenate([tgt, non])
    labels = np.concatenate([np.ones(len(tgt), np.int64), np.zeros(len(non), np.int64)])
    srt = np.lexsort((pairs[:, 1], -labels, pairs[:, 0]))
    pairs, labels = pairs[srt], labels[srt]
    return SampledTrials(labels=labels, enrol=ids[pairs[:, 0]], test=ids[pairs[:, 1]],
                         short=short, cross_video=check_video)
