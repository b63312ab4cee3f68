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

from data_manifests.ids import normalize_id, speaker_of
from data_manifests.trials_parse import _slow_parse, _vector_parse
from pipeline.core.errors import TrialListError
from pipeline.core.fsio import atomic_write_bytes


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
