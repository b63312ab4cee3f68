"""Several scores files of the same trials, read fast and checked to be aligned line by line.

For calibration and late fusion (``pipeline.score.calibrate``): the scores TSV of
``pipeline.score`` (``label enrol test score``, header optional) is split once into
tokens (``bytes.split``: faster here than numpy passes over the bytes); the scores are
converted by numpy, the ids are decoded to ``str`` only when asked (``ids()``), and
trials are compared across files as token lists (a C-level list comparison). A file the
fast path does not accept (a malformed line) goes through ``pipeline.score.read_scores``,
which names the bad line (or reads it).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from pipeline.core.errors import ConfigError, ScoringError


@dataclass
class Columns:
    """One scores file: ``labels`` int8 (1/0, -1 = NA), ``scores`` float32, ``key`` the label,
    enrol and test tokens (three lists of bytes), ``head`` header lines."""

    path: str
    head: int
    labels: np.ndarray
    scores: np.ndarray
    key: tuple
    body: bytes

    def ids(self) -> tuple[np.ndarray, np.ndarray]:
        toks = self.body.split()
        return np.array(toks[1::4]).astype(str), np.array(toks[2::4]).astype(str)

    def trials(self) -> list[tuple[bytes, bytes, bytes]]:
        return list(zip(*self.key))


def _fast(data: bytes) -> tuple[np.ndarray, np.ndarray, tuple] | None:
    """``(labels, scores, key)`` of a well-formed body (4 whitespace-separated fields a line),
    or ``None``. One ``bytes.split`` (faster than numpy passes over the bytes); ``key`` is the
    label, enrol and test token lists."""
    toks = data.split()
    n = data.count(b"\n") + (0 if data.endswith(b"\n") or not data else 1)
    if n == 0 or len(toks) != 4 * n:
        return None
    lab = np.array(toks[0::4])
    is1, is0 = lab == b"1", lab == b"0"
    if not (is1 | is0 | (lab == b"NA")).all():
        return None
    try:
        scores = np.array(toks[3::4]).astype(np.float64).astype(np.float32)
    except ValueError:
        return None
    labels = np.full(n, -1, dtype=np.int8)
    labels[is1] = 1
    labels[is0] = 0
    return labels, scores, (toks[0::4], toks[1::4], toks[2::4])


def read_columns(path: str | Path) -> Columns:
    """One scores file (module docstring); errors as ``read_scores`` raises them."""
    from pipeline.score.files import read_scores

    p = Path(path)
    if not p.is_file():
        read_scores(p)                                   # "scores file not found"
    data = p.read_bytes()
    head = 0
    if data.startswith(b"label"):
        nl = data.find(b"\n")
        data, head = (b"" if nl < 0 else data[nl + 1:]), 1
    fast = _fast(data)
    if fast is None:                                     # read_scores names the bad line, or reads it
        s = read_scores(p)
        lab = np.where(s.labels < 0, "NA", s.labels.astype(str))
        key = tuple([x.encode() for x in col.tolist()] for col in (lab, s.enrol, s.test))
        body = "".join(f"{a}\t{e}\t{t}\t0\n" for a, e, t in zip(lab, s.enrol, s.test)).encode()
        return Columns(str(p), head, s.labels, s.scores, key, body)
    labels, scores, key = fast
    return Columns(str(p), head, labels, scores, key, data)


@dataclass
class Aligned:
    """Trials shared by aligned score files: ``labels`` int8 (-1 = NA) and the scores matrix
    ``X`` (n, K) float64 (the files' float32 values); ``ids()`` decodes enrol/test once."""

    labels: np.ndarray
    X: np.ndarray
    first: Columns
    _ids: tuple | None = None

    def __len__(self) -> int:
        return len(self.labels)

    def ids(self) -> tuple[np.ndarray, np.ndarray]:
        if self._ids is None:
            self._ids = self.first.ids()
        return self._ids


def _mismatch(ref: Columns, other: Columns) -> ScoringError:
    a, b = ref.trials(), other.trials()
    i = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), None)
    if i is None:
        return ScoringError(f"{len(b):,} trials but {len(a):,} in {ref.path}", path=other.path,
                            hint="score every system on the same trial list")
    def d(trial):
        return " ".join(x.decode(errors="replace") for x in trial)
    return ScoringError(f"trial {i + 1} is '{d(b[i])}' but '{d(a[i])}' in {ref.path}", path=other.path,
                        line=i + 1 + other.head,
                        hint="score every system on the same trial list (without --skip-missing "
                             "dropping different trials)")


def load_aligned(paths: Sequence[str | Path], *, need_labels: bool = False) -> Aligned:
    """The trials and scores of ``K`` score files of the same trials in the same order.

    A file whose trials (label, enrol, test) differ raises ``ScoringError`` naming that file,
    the line and both trials. ``need_labels``: unlabeled (``NA``) trials, or a list with one
    class only, raise.
    """
    if not paths:
        raise ConfigError("no --scores given", hint="pass --scores FILE (repeat for late fusion)")
    cols = [read_columns(p) for p in paths]
    ref = cols[0]
    for c in cols[1:]:
        if c.key != ref.key:
            raise _mismatch(ref, c)
    X = np.empty((len(ref.labels), len(cols)), dtype=np.float64)
    for k, c in enumerate(cols):
        X[:, k] = c.scores
        if not np.isfinite(c.scores).all():
            raise ScoringError(f"{int((~np.isfinite(c.scores)).sum())} scores are NaN or infinite", path=c.path)
    labels = ref.labels
    if need_labels:
        n_na = int((labels < 0).sum())
        if n_na:
            raise ScoringError(f"{n_na:,} of {len(labels):,} trials are unlabeled (label NA)", path=ref.path,
                               hint="calibration needs a labeled dev list ('label enrol test')")
        n_tar = int((labels == 1).sum())
        if n_tar == 0 or n_tar == len(labels):
            raise ScoringError(f"dev trials hold only {'non-target' if n_tar == 0 else 'target'} trials "
                               f"({len(labels):,} trials)", path=ref.path,
                               hint="calibrate on a dev list with both target and non-target trials")
    return Aligned(labels=labels, X=X, first=ref)
