"""Trial-list parsing internals: the vectorised byte parser and the line-by-line definition it must equal."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from data_manifests.ids import MEDIA_EXTENSIONS, normalize_id
from pipeline.core.errors import TrialListError

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
