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

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from pipeline.config import atomic_write_json, atomic_write_text
from pipeline.errors import ScoringError

# mode -> (enrol side modalities, test side modalities)
MODES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "AxA": (("A",), ("A",)),
    "VxV": (("V",), ("V",)),
    "AVxAV": (("A", "V"), ("A", "V")),
    "AVxA": (("A", "V"), ("A",)),
    "AVxV": (("A", "V"), ("V",)),
}
# mode -> channels scored without a head (same-modality comparisons only)
NO_HEAD_CHANNELS: dict[str, tuple[str, ...]] = {
    "AxA": ("A",), "VxV": ("V",), "AVxAV": ("A", "V"), "AVxA": ("A",), "AVxV": ("V",),
}
CACHE_ARRAYS = {"A": ("audio/clip", "has_audio"), "V": ("face/clip", "has_face")}
DEFAULT_CHUNK = 8192
HEADER = "label\tenrol\ttest\tscore"


def parse_mode(mode: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """``(enrol_use, test_use)`` of a mode name; unknown -> ``ScoringError``."""
    if mode not in MODES:
        raise ScoringError(f"unknown mode {mode!r}", hint=f"use one of {', '.join(MODES)}")
    return MODES[mode]


def l2_normalize(x: np.ndarray, eps: float = 1e-12, *, inplace: bool = False) -> np.ndarray:
    """Rows divided by their L2 norm (float32); all-zero rows stay zero. ``inplace``: divide
    ``x`` itself when it is a writeable float32 array (no second table in memory)."""
    x = np.asarray(x, dtype=np.float32)
    n = np.sqrt(np.einsum("ij,ij->i", x, x))[:, None]
    np.maximum(n, eps, out=n)
    if inplace and x.flags.writeable:
        return np.divide(x, n, out=x)
    return x / n


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
            from pipeline.norm import apply_stats
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


# ---------------------------------------------------------------- scores files
@dataclass
class Scores:
    """Scored trials in trial-list order. ``labels`` int8 (1/0, -1 unlabeled)."""

    labels: np.ndarray
    enrol: np.ndarray
    test: np.ndarray
    scores: np.ndarray
    path: str | None = None
    info: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.scores)

    @property
    def labeled(self) -> bool:
        return bool(len(self.labels)) and bool((self.labels >= 0).all())


def sidecar_path(out: str | Path) -> Path:
    """``<out>.json``: e.g. ``scores.tsv`` -> ``scores.tsv.json``."""
    return Path(str(out) + ".json")


def write_scores(path: str | Path, scores: Scores, sidecar: dict | None = None) -> None:
    """Write the TSV (atomically) and, if given, its ``<path>.json`` sidecar."""
    labels = np.where(scores.labels < 0, "NA", scores.labels.astype(str))
    lines = map("{}\t{}\t{}\t{:.9g}".format, labels.tolist(), scores.enrol.tolist(),
                scores.test.tolist(), scores.scores.astype(np.float32).tolist())
    body = "\n".join(lines)
    atomic_write_text(path, HEADER + "\n" + body + ("\n" if len(scores) else ""))
    if sidecar is not None:
        atomic_write_json(sidecar_path(path), sidecar)


def read_scores(path: str | Path) -> Scores:
    """Read a scores TSV (header line optional; ``NA`` labels become -1).

    Malformed lines raise ``ScoringError`` naming the line; the sidecar, if present,
    is loaded into ``Scores.info``.
    """
    path = Path(path)
    if not path.is_file():
        raise ScoringError("scores file not found", path=path,
                           hint="write one with `avfuse score ... --out scores.tsv`")
    data = path.read_bytes()
    first = 1
    if data.startswith(b"label"):
        nl = data.find(b"\n")
        data = b"" if nl < 0 else data[nl + 1:]
        first = 2
    lines = data.splitlines()
    toks = data.split()
    n = len(lines)
    ok = len(toks) == 4 * n
    if ok and n:
        lab = np.array(toks[0::4], dtype=object)
        is1, is0 = lab == b"1", lab == b"0"
        ok = bool((is1 | is0 | (lab == b"NA")).all())
        try:
            scores = np.array(toks[3::4]).astype(np.float64).astype(np.float32)
        except ValueError:
            ok = False
    if not ok:
        _find_bad_line(lines, path, first)
    if n == 0:
        raise ScoringError("scores file has no trials", path=path)
    labels = np.full(n, -1, dtype=np.int8)
    labels[is1] = 1
    labels[is0] = 0
    out = Scores(labels=labels, enrol=np.array(toks[1::4]).astype(str),
                 test=np.array(toks[2::4]).astype(str), scores=scores, path=str(path))
    side = sidecar_path(path)
    if side.is_file():
        try:
            out.info = json.loads(side.read_text())
        except ValueError:
            out.info = {}
    return out


def _find_bad_line(lines: list[bytes], path: Path, first: int) -> None:
    for i, raw in enumerate(lines, start=first):
        parts = raw.split()
        if len(parts) != 4:
            raise ScoringError(f"expected 4 fields 'label enrol test score', got {len(parts)}",
                               path=path, line=i, hint="fix or remove the line")
        if parts[0] not in (b"0", b"1", b"NA"):
            raise ScoringError(f"label must be 1, 0 or NA, got {parts[0][:20].decode(errors='replace')!r}",
                               path=path, line=i)
        try:
            float(parts[3])
        except ValueError:
            raise ScoringError(f"score is not a number: {parts[3][:30].decode(errors='replace')!r}",
                               path=path, line=i) from None
    raise ScoringError("malformed scores file", path=path)


# ---------------------------------------------------------------- from the cache
def progress_bar(desc: str, total: int, enabled: bool):
    """A tqdm bar on stderr (None when disabled); tqdm also hides it when not a TTY."""
    if not enabled:
        return None
    from tqdm import tqdm
    return tqdm(total=total, desc=desc, unit="it", unit_scale=True, leave=False, disable=None)


def read_rows(cache, name: str, rows: np.ndarray, dtype=np.float32) -> np.ndarray:
    """``cache.to_numpy(name, rows)``: rows in any order (each shard touched is read once)."""
    return np.asarray(cache.to_numpy(name, np.asarray(rows, dtype=np.int64), dtype=dtype))


def present_rows(cache, rows: np.ndarray, use: Sequence[str]) -> np.ndarray:
    """bool per row: at least one modality of ``use`` is present (``has_audio``/``has_face``)."""
    ok = np.zeros(len(rows), dtype=bool)
    for m in use:
        name, flag = CACHE_ARRAYS[m]
        if cache.has(name) and cache.has(flag):
            ok |= read_rows(cache, flag, rows, dtype=bool).astype(bool)
    return ok


def embed_rows(cache, rows: np.ndarray, head, use: Sequence[str], *, batch_size: int = 4096,
               progress: Callable | None = None) -> np.ndarray:
    """``head.embed(batch, use)`` of cache rows (any order), in batches, as float32 numpy."""
    import torch
    from fusion.data import batch_from_cache

    rows = np.asarray(rows, dtype=np.int64)
    order = np.argsort(rows, kind="stable")
    parts = []
    with torch.no_grad():
        for a in range(0, len(rows), batch_size):
            r = rows[order[a:a + batch_size]]
            batch = batch_from_cache(cache, r, bool(getattr(head, "needs_sequences", False)))
            parts.append(head.embed(batch, use=tuple(use)).float().cpu().numpy())
            if progress is not None:
                progress(len(r))
    if not parts:
        return np.zeros((0, int(getattr(head, "embedding_dim", 0))), dtype=np.float32)
    data = np.concatenate(parts)
    out = np.empty_like(data)
    out[order] = data
    return out


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
                   head=None, batch_size: int = 4096, progress: bool = False) -> list[Channel]:
    """Channels over cache rows: ``rows_e`` for the enrol table and ``rows_t`` for the test
    table (``None``: the test side shares the enrol table)."""
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
                emb = l2_normalize(read_rows(cache, name, r), inplace=True)  # a fresh table
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
        if kind == "cosine":
            emb = l2_normalize(emb)
        tables.append((emb, present_rows(cache, r, use)))
    (e, ev), (t, tv) = tables[0], tables[-1]
    return [Channel("head", e, t, ev, tv, kind=kind)]


def score_from_cache(cache, trials, mode: str, *, head=None, head_meta: dict | None = None,
                     norm: str = "none", cohort: str | None = None, top_k: int = 300, skip_missing: bool = False,
                     force: bool = False, chunk: int = DEFAULT_CHUNK, batch_size: int = 4096,
                     progress: bool = False) -> Scores:
    """Score ``trials`` (a ``TrialList``) from ``cache`` in ``mode`` (see the module docstring).

    Each utterance is read / embedded once per side table (once in total when both
    sides use the same modalities), then trials are scored with ``score_channels``.
    ``norm`` is ``none``, ``snorm`` or ``asnorm`` with ``cohort`` a
    ``pipeline.norm.resolve_cohort`` spec. Missing utterances and unscorable trials
    raise ``ScoringError`` unless ``skip_missing``. ``head_meta`` (from ``load_head``):
    a head trained on a cache with another fingerprint raises ``HeadError`` unless
    ``force``. ``Scores.info`` has the counts and phase timings.
    """
    from pipeline import norm as normmod

    enrol_use, test_use = parse_mode(mode)
    if head is not None and head_meta is not None:
        from fusion.registry import check_provenance
        check_provenance(head_meta, cache, force=force)
    if norm not in normmod.NORMS:
        raise ScoringError(f"unknown normalisation {norm!r}", hint=f"use one of {', '.join(normmod.NORMS)}")
    if norm != "none" and not cohort:
        raise ScoringError(f"--norm {norm} needs a cohort", hint="e.g. --cohort train (a split of this cache)")
    times = {"read_or_embed": 0.0, "cohort": 0.0, "norm_stats": 0.0, "score": 0.0}
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
                              progress=progress)
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
            if head is None:
                ce, speakers = normmod.cohort_from_cache(src, ch.name, progress=cb)
                ct = ce
            else:
                ce, speakers = normmod.cohort_from_head(src, head, enrol_use, batch_size=batch_size, progress=cb)
                ct = ce if enrol_use == test_use else \
                    normmod.cohort_from_head(src, head, test_use, batch_size=batch_size, progress=cb)[0]
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
            norm_info.setdefault("cohort_speakers", {})[ch.name] = int(len(speakers))
        norm_info.update(cohort=cohort, cohort_cache=str(src.cache.path), cohort_clips=int(len(src.rows)),
                         cohort_cache_fingerprint=src.cache.fingerprint, cohort_split=src.split,
                         top_k=k)
    t0 = time.perf_counter()
    bar = progress_bar(f"score {mode}", len(e_loc) * len(channels), progress)
    scores, scorable = score_channels(channels, e_loc, t_loc, chunk=chunk,
                                      progress=bar.update if bar else None)
    if bar:
        bar.close()
    times["score"] = time.perf_counter() - t0
    n_unscorable = int((~scorable).sum())
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
        "mode": mode, "norm": norm_info, "channels": [c.name for c in channels],
        "score_kind": channels[0].kind, "timings_s": {k: round(v, 3) for k, v in times.items()},
        "counts": {"n_trials_in_list": int(len(ei)), "n_scored": int(len(idx)),
                   "n_skipped_missing": n_missing, "n_skipped_unscorable": n_unscorable,
                   "n_skipped": n_missing + n_unscorable,
                   "n_utterances_missing": int((rows < 0).sum()),
                   "n_embedded": int(len(rows_e) + (0 if rows_t is None else len(rows_t))),
                   "n_target": int((out.labels == 1).sum()), "n_nontarget": int((out.labels == 0).sum())},
    }
    return out


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


def check_cohort_cache(cohort_cache, cache, *, force: bool = False) -> None:
    """A cohort from another cache must come from the same backbones (else ``ScoringError``
    unless ``force``): its embeddings must live in the same space."""
    if force:
        return
    a, b = cohort_cache.provenance or {}, cache.provenance or {}
    diffs = [k for k in ("audio_backbone", "face_backbone") if a.get(k) != b.get(k)]
    if diffs:
        raise ScoringError(f"cohort cache {cohort_cache.path} was extracted with other backbones "
                           f"({', '.join(diffs)} differ) than {cache.path}",
                           hint="use a cohort extracted with the same backbones, or --force")
