"""Scores files: the TSV format (``label enrol test score``) with its provenance sidecar, read and written."""

from __future__ import annotations

import datetime as _dt
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline import __version__
from pipeline.core.errors import ScoringError
from pipeline.core.fsio import atomic_write_json, atomic_write_text

HEADER = "label\tenrol\ttest\tscore"


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
    if data.startswith(b"\xef\xbb\xbf"):  # a UTF-8 BOM, as the trial reader accepts
        data = data[3:]
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


def build_sidecar(*, cache, trials, trials_sha: str, mode: str, result, head_info: dict | None,
                  skip_missing: bool, force: bool) -> dict:
    """The provenance sidecar of a scores file (see the module docstring)."""
    from pipeline.core.config import fingerprint
    from pipeline.core.modes import MODES

    info = result.info
    norm = info["norm"]
    config = {"cache_fingerprint": cache.fingerprint, "trials_sha256": trials_sha, "mode": mode,
              "head_sha256": head_info["sha256"] if head_info else None,
              "norm": {k: norm.get(k) for k in ("method", "cohort_cache_fingerprint", "cohort_split",
                                                "top_k")},
              "skip_missing": bool(skip_missing)}
    mean_sub = info.get("mean_sub")
    if mean_sub:   # only when on: scores without it keep their fingerprint
        config["mean_sub"] = {k: mean_sub.get(k) for k in ("cache_fingerprint", "split")}
    enrol_use, test_use = MODES[mode]
    return {
        "avfuse_version": __version__,
        "created_utc": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "cache": {"path": str(Path(cache.path).resolve()), "fingerprint": cache.fingerprint},
        "trials": {"path": str(Path(trials.path).resolve()), "sha256": trials_sha,
                   "n_trials": int(trials.n_trials), "labeled": bool(trials.labeled)},
        "mode": mode, "enrol_use": list(enrol_use), "test_use": list(test_use),
        "channels": info["channels"], "score_kind": info["score_kind"],
        "head": head_info, "norm": norm, "mean_sub": mean_sub, "skip_missing": bool(skip_missing), "force": bool(force),
        "counts": info["counts"], "timings_s": info.get("timings_s"),
        "config_fingerprint": fingerprint(config),
    }
