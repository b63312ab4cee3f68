"""VoxCeleb-format trial lists: parse, normalise ids, index, write.

Formats (one trial per line, fields separated by spaces or tabs; blank lines skipped):

* labeled   ``label enrol test`` with ``label`` 1 (target, same identity) or 0 (non-target),
  the format of the VoxCeleb1 lists (``veri_test2.txt``, ``list_test_all2.txt`` ...);
* unlabeled ``enrol test`` for blind scoring.

A file is one or the other; a mix is an error. ``.gz`` files are read and written gzipped.
Ids are normalised to clip ids by ``normalize_id`` ("spk/video/utt.wav" -> "spk/video/utt").

Parsing works on the whole file at once, with no Python loop over lines or tokens for a
clean ASCII file (``_vector_parse``): one byte compare finds every separator, the field
pattern is checked on those positions, the id tokens are copied into fixed-width rows and
factorised by a 64-bit hash (then compared byte for byte with their group's
representative, so a collision cannot merge two ids), and ``normalize_id`` is applied,
vectorised, to the distinct tokens only. Any other file
(non-ASCII, tabs, CRLF, blank lines, bad lines ...) is parsed line by line
(``_slow_parse``, the definition), which either parses it or raises ``TrialListError``
naming the first bad line. See ``benchmarks/score_speed.py`` for timings on the
581,480-line VoxCeleb1-E list.
"""

from __future__ import annotations

import codecs
import gzip
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from pipeline.config import atomic_write_bytes
from pipeline.errors import TrialListError

MEDIA_EXTENSIONS = (".wav", ".flac", ".m4a", ".aac", ".mp4", ".ogg", ".opus")


def normalize_id(s: str) -> str:
    """The clip id of a trial-list token.

    Surrounding whitespace is stripped, backslashes become ``/``, a leading ``./`` is
    dropped and one media extension (``.wav .flac .m4a .aac .mp4 .ogg .opus``, any case)
    is removed: ``"id10270/x6uYqmx31kE/00001.wav" -> "id10270/x6uYqmx31kE/00001"``.
    """
    s = s.strip().replace("\\", "/")
    while s.startswith("./"):
        s = s[2:]
    dot = s.rfind(".")
    if dot > s.rfind("/") and s[dot:].lower() in MEDIA_EXTENSIONS:
        s = s[:dot]
    return s


def speaker_of(clip_id: str) -> str:
    """The speaker part of a clip id: everything before the first ``/``."""
    return clip_id.split("/", 1)[0]


@dataclass
class TrialList:
    """A parsed trial list.

    ``labels`` int8 (1 target, 0 non-target, -1 unlabeled); ``enrol``/``test`` numpy
    ``<U`` arrays of normalised clip ids, one entry per trial in file order.
    """

    path: str
    labels: np.ndarray
    enrol: np.ndarray
    test: np.ndarray
    labeled: bool
    _index: tuple[np.ndarray, np.ndarray, np.ndarray] | None = field(
        default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.labels = np.asarray(self.labels, dtype=np.int8)
        self.enrol = np.asarray(self.enrol, dtype=str)
        self.test = np.asarray(self.test, dtype=str)
        if not (len(self.labels) == len(self.enrol) == len(self.test)):
            raise TrialListError(f"labels/enrol/test lengths differ: {len(self.labels)}, "
                                 f"{len(self.enrol)}, {len(self.test)}", path=self.path)

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def n_trials(self) -> int:
        return len(self.labels)

    @property
    def n_target(self) -> int | None:
        """Number of label-1 trials (None for an unlabeled list)."""
        return int(np.count_nonzero(self.labels == 1)) if self.labeled else None

    @property
    def n_nontarget(self) -> int | None:
        """Number of label-0 trials (None for an unlabeled list)."""
        return int(np.count_nonzero(self.labels == 0)) if self.labeled else None

    def index(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(utts, enrol_idx, test_idx)``: the sorted unique clip ids of both sides and
        int64 indices into them, so that ``utts[enrol_idx] == enrol``. Cached."""
        if self._index is None:
            self._index = _factorize(self.enrol, self.test)
        return self._index

    def utterances(self) -> np.ndarray:
        """Sorted unique clip ids appearing on either side."""
        return self.index()[0]

    def speakers(self) -> np.ndarray:
        """Sorted unique speaker ids (``speaker_of`` of each utterance)."""
        return np.unique(np.array([speaker_of(u) for u in self.utterances().tolist()], dtype=str))

    def summary(self) -> dict:
        """The counts printed by ``avfuse trials info``."""
        return {
            "path": self.path,
            "labeled": self.labeled,
            "n_trials": self.n_trials,
            "n_target": self.n_target,
            "n_nontarget": self.n_nontarget,
            "n_utterances": int(len(self.utterances())),
            "n_speakers": int(len(self.speakers())),
        }


def _factorize(enrol: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    table: dict[str, int] = {}
    sd = table.setdefault
    ei = np.array([sd(x, len(table)) for x in enrol.tolist()], dtype=np.int64)
    ti = np.array([sd(x, len(table)) for x in test.tolist()], dtype=np.int64)
    keys = np.array(list(table), dtype=str) if table else np.array([], dtype=str)
    return _sorted_index(keys, ei, ti)


def _sorted_index(keys: np.ndarray, ei: np.ndarray, ti: np.ndarray):
    """Re-map first-seen indices onto sorted unique keys (keys may repeat)."""
    utts, inv = np.unique(keys, return_inverse=True)
    inv = inv.reshape(-1).astype(np.int64)
    return utts, inv[ei], inv[ti]


def _read_bytes(path: Path) -> bytes:
    if not path.exists():
        raise TrialListError("trial list not found", path=path, hint="check the path")
    if path.is_dir():
        raise TrialListError("is a folder, not a trial list", path=path)
    try:
        data = path.read_bytes()
        if path.suffix == ".gz":
            data = _gunzip(data)
    except (OSError, EOFError, zlib.error) as e:
        raise TrialListError(f"cannot read ({e})", path=path, hint="is it a complete .txt or .txt.gz file?") from None
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8):]
    return data


def _gunzip(raw: bytes) -> bytes:
    """All members of a gzip stream (zero padding between members allowed, as ``gzip``
    does), each inflated by one ``zlib`` call; a truncated stream raises ``EOFError``."""
    parts = []
    while True:
        d = zlib.decompressobj(wbits=31)
        parts.append(d.decompress(raw))
        if not d.eof:
            raise EOFError("compressed file ended before the end-of-stream marker was reached")
        raw = d.unused_data.lstrip(b"\0")
        if not raw:
            return parts[0] if len(parts) == 1 else b"".join(parts)


def read_trials(path: str | Path) -> TrialList:
    """Parse a ``.txt`` / ``.txt.gz`` trial list (see the module docstring for the formats).

    Raises ``TrialListError`` with the file and the first bad line for: a wrong number of
    fields, a label other than 0/1, a mix of labeled and unlabeled lines, non-UTF-8 text,
    or an empty list.
    """
    path = Path(path)
    data = _read_bytes(path)
    fast = _vector_parse(data)
    if fast is not None:
        labels, utts, ei, ti, labeled = fast
    else:  # anything unusual: the line-by-line definition (and its error messages)
        labels, keys, ei, ti, labeled = _slow_parse(data, path)
        norm = np.array([normalize_id(k) for k in keys], dtype=str)
        utts, ei, ti = _sorted_index(norm, ei, ti)
    tl = TrialList(path=str(path), labels=labels, enrol=utts[ei], test=utts[ti], labeled=labeled)
    tl._index = (utts, ei, ti)
    return tl


# ------------------------------------------------------------------ vectorised parse
_KEEP_BYTES = 256 << 20     # id-token rows kept in memory up to this size (else gathered twice)
_HASH_MUL = np.uint64(0x9E3779B97F4A7C15)


def _vector_parse(data: bytes):
    """Whole-file parse of a clean list; None unless the file is clean.

    Clean = ASCII, fields separated by single spaces, lines ended by ``\\n`` (last one
    optional), no blank lines, every line with the same 2 or 3 fields, labels 0/1.
    Returns ``(labels, utts, enrol_idx, test_idx, labeled)`` with ``utts`` the sorted
    unique normalised ids; the result equals ``_slow_parse`` + ``normalize_id`` on such a
    file. No Python loop over lines or tokens: the separator positions come from one byte
    compare, and the field count and separator pattern are checked on them.
    """
    b = np.frombuffer(data, dtype=np.uint8)
    if not b.size or b.max() >= 128:
        return None  # empty, or non-ASCII text (str.split / str.strip rules) -> slow path
    if b[-1] != 10:
        b = np.append(b, np.uint8(10))
    sep = np.flatnonzero(b <= 32)
    if sep[0] == 0 or (np.diff(sep) < 2).any():
        return None  # leading whitespace, blank lines, double separators, CRLF ...
    seps = b[sep]
    nf = int(np.argmax(seps == 10)) + 1  # fields of the first line
    if nf not in (2, 3) or len(sep) % nf:
        return None
    pattern = np.full(nf, 32, dtype=np.uint8)
    pattern[-1] = 10
    if not (seps.reshape(-1, nf) == pattern).all():
        return None  # tabs, other control bytes, or lines with another field count
    n = len(sep) // nf
    sep = sep.reshape(n, nf)
    line_start = np.empty(n, dtype=sep.dtype)
    line_start[0] = 0
    line_start[1:] = sep[:-1, -1] + 1
    labeled = nf == 3
    if labeled:
        lab = b[line_start]
        if not ((sep[:, 0] == line_start + 1) & ((lab == 48) | (lab == 49))).all():
            return None  # the slow path names the line
        labels = (lab - 48).astype(np.int8)
    else:
        labels = np.full(n, -1, dtype=np.int8)
    enrol_start = sep[:, 0] + 1 if labeled else line_start
    tok_start = np.concatenate([enrol_start, sep[:, -2] + 1])                 # enrol, then test
    tok_len = np.concatenate([sep[:, -2], sep[:, -1]]) - tok_start
    tok = _factorize_tokens(b, tok_start, tok_len)
    if tok is None:
        return None
    utts, idx = tok
    return labels, utts, idx[:n], idx[n:], labeled


def _factorize_tokens(b: np.ndarray, start: np.ndarray, length: np.ndarray):
    """``(utts, idx)``: sorted unique ``normalize_id`` of the tokens ``b[start:start+length]``
    (ASCII, non-empty) and each token's index into ``utts``; None on a hash collision.

    Each token is copied into a zero-padded row of ``width`` bytes (a strided view of the
    text), the rows are grouped by a 64-bit hash of their 8-byte words (one sort of the
    hashes, runs of equal neighbours collapsed first), every
    row is compared byte for byte with its group's representative (so a collision cannot
    merge two ids: it returns None and the caller takes the slow path), and only the
    distinct tokens are normalised (``_normalize_rows``) and sorted.
    """
    m = len(start)
    longest = int(length.max())
    width = -(-longest // 8) * 8
    uniform = bool((length == longest).all())
    padded = np.zeros(len(b) + width, dtype=np.uint8)
    padded[:len(b)] = b
    view = np.lib.stride_tricks.as_strided(padded, shape=(len(b), width), strides=(1, 1),
                                           writeable=False)

    def rows(sel) -> np.ndarray:
        r = view[start[sel]]
        if uniform:
            r[:, longest:] = 0
        else:
            r *= np.arange(width)[None, :] < length[sel, None]
        return r

    keep = m * width <= _KEEP_BYTES
    step = m if keep else max(1, _KEEP_BYTES // (4 * width))
    h = np.empty(m, dtype=np.uint64)
    kept = None
    for a in range(0, m, step):
        r = rows(slice(a, a + step))
        w = r.view(np.uint64)
        x = w[:, 0].copy()
        for j in range(1, w.shape[1]):
            x ^= x >> np.uint64(29)
            x *= _HASH_MUL
            x ^= w[:, j]
        h[a:a + step] = x
        if keep:
            kept = r
    # runs of equal neighbours (an enrolment utterance's trials are usually consecutive)
    # are collapsed before the one sort; any member of a group may represent it
    head = np.empty(m, dtype=bool)
    head[0] = True
    np.not_equal(h[1:], h[:-1], out=head[1:])
    heads = np.flatnonzero(head)
    order = np.argsort(h[heads])
    hs = h[heads][order]
    new = np.empty(len(heads), dtype=bool)
    new[0] = True
    np.not_equal(hs[1:], hs[:-1], out=new[1:])
    group = np.empty(len(heads), dtype=np.int64)
    group[order] = np.cumsum(new) - 1
    inv = group[np.cumsum(head) - 1]
    first = heads[order[new]]
    rep = kept[first] if keep else rows(first)
    rep64 = rep.view(np.uint64)
    for a in range(0, m, step):
        r = kept if keep else rows(slice(a, a + step))
        if not (r.view(np.uint64) == rep64[inv[a:a + step]]).all():
            return None
    keys, key_len = _normalize_rows(rep, length[first])
    utts_b, where = np.unique(keys.view(f"S{width}").reshape(-1), return_inverse=True)
    utts = utts_b.astype(f"U{max(int(key_len.max()), 1)}")
    return utts, where.reshape(-1).astype(np.int64)[inv]


def _normalize_rows(rows: np.ndarray, lens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``normalize_id`` of ASCII tokens held as zero-padded uint8 rows: ``(rows, lens)``.

    Tokens with a backslash or a leading ``./`` (rare) go through ``normalize_id`` itself.
    For the others (no whitespace: they are tokens) the rule reduces to: drop the last
    ``len(ext)`` bytes when the token ends, case-insensitively, with one of
    ``MEDIA_EXTENSIONS`` (an extension holds no ``/``, so its dot is then the last dot
    and comes after the last ``/``).
    """
    rows = rows.copy()
    n, width = rows.shape
    special = (rows == 92).any(axis=1) | ((rows[:, 0] == 46) & (rows[:, min(1, width - 1)] == 47))
    tail_n = max(len(e) for e in MEDIA_EXTENSIONS)
    cols = lens[:, None] - tail_n + np.arange(tail_n)[None, :]
    tail = rows[np.arange(n)[:, None], np.maximum(cols, 0)]
    tail[cols < 0] = 0
    tail |= ((tail >= 65) & (tail <= 90)).astype(np.uint8) << 5  # ASCII lower case
    new_len = lens.copy()
    for ext in MEDIA_EXTENSIONS:
        e = np.frombuffer(ext.encode(), dtype=np.uint8)
        hit = (tail[:, tail_n - len(e):] == e).all(axis=1) & ~special
        new_len[hit] = lens[hit] - len(e)
    rows *= np.arange(width)[None, :] < new_len[:, None]
    for i in np.flatnonzero(special).tolist():
        s = normalize_id(rows[i, :lens[i]].tobytes().decode("ascii")).encode("ascii")
        rows[i] = 0
        rows[i, :len(s)] = np.frombuffer(s, dtype=np.uint8)
        new_len[i] = len(s)
    return rows, new_len


def _slow_parse(data: bytes, path: Path):
    """Line-by-line parse: tolerant of whitespace, exact about errors (names the line)."""
    labels: list[int] = []
    en: list[str] = []
    te: list[str] = []
    nf = None
    first_line = None
    for i, raw in enumerate(data.split(b"\n"), start=1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise TrialListError(f"not UTF-8 text ({e.reason} at byte {e.start})", path=path, line=i) from None
        parts = line.split()
        if not parts:
            continue
        if nf is None:
            if len(parts) not in (2, 3):
                raise TrialListError(f"expected 'label enrol test' (3 fields) or 'enrol test' (2 fields), "
                                     f"got {len(parts)}", path=path, line=i,
                                     hint="fix or remove the line")
            nf, first_line = len(parts), i
        elif len(parts) != nf:
            what = "labeled ('label enrol test')" if nf == 3 else "unlabeled ('enrol test')"
            raise TrialListError(f"got {len(parts)} fields, but the list is {what} from line {first_line}",
                                 path=path, line=i,
                                 hint="a list is either all labeled or all unlabeled; fix or remove the line")
        if nf == 3:
            if parts[0] not in ("0", "1"):
                raise TrialListError(f"label must be 0 or 1, got {parts[0]!r}", path=path, line=i,
                                     hint="format is 'label enrol test' with label 1 = target, 0 = non-target")
            labels.append(int(parts[0]))
            en.append(parts[1])
            te.append(parts[2])
        else:
            labels.append(-1)
            en.append(parts[0])
            te.append(parts[1])
    if nf is None:
        raise TrialListError("empty trial list", path=path, hint="expected 'label enrol test' lines")
    table: dict[str, int] = {}
    sd = table.setdefault
    ei = np.array([sd(x, len(table)) for x in en], dtype=np.int64)
    ti = np.array([sd(x, len(table)) for x in te], dtype=np.int64)
    return np.asarray(labels, dtype=np.int8), list(table), ei, ti, nf == 3


def write_trials(path: str | Path, labels: Sequence[int] | np.ndarray | None,
                 enrol: Sequence[str] | np.ndarray, test: Sequence[str] | np.ndarray,
                 *, ext: str = "") -> int:
    """Write a trial list atomically (gzipped if ``path`` ends in ``.gz``). Returns the count.

    ``labels`` None (or all -1) writes an unlabeled ``enrol test`` list, else every label
    must be 0 or 1. ``ext`` (e.g. ``".wav"``) is appended to each id, as the VoxCeleb
    lists do; ``read_trials`` strips it again.
    """
    path = Path(path)
    enrol = [str(x) for x in np.asarray(enrol).tolist()]
    test = [str(x) for x in np.asarray(test).tolist()]
    if len(enrol) != len(test):
        raise TrialListError(f"enrol and test lengths differ: {len(enrol)} vs {len(test)}", path=path)
    for side in (enrol, test):
        bad = next((x for x in side if not x or any(c.isspace() for c in x)), None)
        if bad is not None:
            raise TrialListError(f"clip id {bad!r} is empty or contains whitespace", path=path)
    lab = None if labels is None else np.asarray(labels).astype(np.int64)
    if lab is not None and len(lab) != len(enrol):
        raise TrialListError(f"labels ({len(lab)}) and trials ({len(enrol)}) differ in length", path=path)
    if lab is not None and len(lab) and (lab == -1).all():
        lab = None
    if lab is not None and not np.isin(lab, (0, 1)).all():
        raise TrialListError("labels must all be 0 or 1 (or all -1 / None for an unlabeled list)", path=path)
    if lab is None:
        lines = [f"{e}{ext} {t}{ext}" for e, t in zip(enrol, test)]
    else:
        lines = [f"{l} {e}{ext} {t}{ext}" for l, e, t in zip(lab.tolist(), enrol, test)]
    data = ("\n".join(lines) + ("\n" if lines else "")).encode("utf-8")
    if path.suffix == ".gz":
        data = gzip.compress(data, compresslevel=6, mtime=0)
    atomic_write_bytes(path, data)
    return len(lines)
