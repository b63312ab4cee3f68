"""Manifest records at VoxCeleb2 scale: durations files instead of header probes, the record stream.

``avfuse manifest`` fills a record's ``duration`` / ``sample_rate`` / ``fps`` / ``num_frames``
in one of three ways (``iter_scan``):

* default: not at all (``None``). ``avfuse extract`` decodes every clip anyway and stores the
  duration of the decoded audio in the cache's ``duration`` array (the manifest's value is
  only its fallback for a clip without audio); unreadable media are flagged there, in
  ``<cache>.failures.jsonl``.
* ``durations``: ``duration`` from a VoxCeleb durations file (``read_durations``: one
  ``spk/video/utt seconds`` per line, plain or gzipped, e.g. ``vox2_dev_duration.txt.gz``).
  A scanned clip the file does not list keeps ``None`` (counted: ``durations_summary``);
  ids of the file not in the tree are counted and otherwise ignored.
* ``probe``: every file's header (``data_manifests.probe``): about 1-2 CPU-ms per m4a/mp4,
  an hour of 16 cores for the 2.2M files of VoxCeleb2 dev.

Without probes a record costs a dict look-up and a JSON line (tens of CPU-us per clip, see
``benchmarks/manifest_speed.py``). Also here: the thread-pool ``ordered_map`` used for
listing and probing, and ``gzip_file`` (the finished JSONL gzipped byte for byte).
"""

from __future__ import annotations

import collections
import gzip
import os
import shutil
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator, Sequence, TypeVar

import numpy as np

from data_manifests.manifest import ClipRecord
from data_manifests.splits import SplitAssigner
from pipeline.core.errors import ManifestError
from pipeline.core.progress import progress as progress_

if TYPE_CHECKING:
    from data_manifests.voxceleb import ClipFiles

T = TypeVar("T")
R = TypeVar("R")

DURATIONS_HINT = ("a durations file has one 'spk/video/utt seconds' per line (.txt or .txt.gz), "
                  "like VoxCeleb's vox2_dev_duration.txt.gz")


# ----------------------------------------------------------------------------- parallel helpers

def default_workers() -> int:
    """Threads for listing and header reads: I/O-bound, so a few per core (at most 16)."""
    return max(1, min(16, 4 * (os.cpu_count() or 1)))


def ordered_map(fn: Callable[[T], R], items: Sequence[T], *, workers: int, chunk: int = 64) -> Iterator[R]:
    """``map(fn, items)`` on a thread pool, yielding in input order with a bounded
    number of chunks in flight (memory stays flat for a million items)."""
    if workers <= 1 or len(items) <= chunk:
        for x in items:
            yield fn(x)
        return

    def run(lo: int) -> list[R]:
        return [fn(x) for x in items[lo:lo + chunk]]

    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="avfuse-scan") as ex:
        pending: collections.deque = collections.deque()
        try:
            for lo in range(0, len(items), chunk):
                pending.append(ex.submit(run, lo))
                if len(pending) >= 4 * workers:
                    yield from pending.popleft().result()
            while pending:
                yield from pending.popleft().result()
        finally:  # interrupted or closed early: do not probe what nobody will read
            for f in pending:
                f.cancel()


# ----------------------------------------------------------------------------- durations files

@dataclass
class Durations:
    """Clip durations read from one file (or several, ``merge_durations``): ``seconds[clip_id]``."""

    path: str
    seconds: dict[str, float]
    paths: tuple[str, ...] = ()      # the files merged (empty: just ``path``)

    def __len__(self) -> int:
        return len(self.seconds)

    def key(self) -> tuple:
        """Identity of the file(s) for resume keys: path, size, mtime (one tuple per file when merged)."""
        def one(p: str) -> tuple:
            st = os.stat(p)
            return os.path.abspath(p), st.st_size, st.st_mtime
        return one(self.path) if len(self.paths) <= 1 else tuple(one(p) for p in self.paths)


def merge_durations(files: Sequence[Durations]) -> Durations:
    """Several durations files as one (e.g. VoxCeleb2 dev's and test's); an id two files list with
    different durations is a ``ManifestError`` naming both."""
    if len(files) == 1:
        return files[0]
    seconds: dict[str, float] = {}
    origin: dict[str, str] = {}
    for d in files:
        for clip, sec in d.seconds.items():
            if clip in seconds and abs(seconds[clip] - sec) > 1e-6:
                raise ManifestError(f"{clip} is listed with {seconds[clip]} s in {origin[clip]} and {sec} s here",
                                    path=d.path, hint="give each clip's duration in one file")
            seconds.setdefault(clip, sec)
            origin.setdefault(clip, d.path)
    return Durations(path=", ".join(d.path for d in files), seconds=seconds, paths=tuple(d.path for d in files))


def read_durations(path: str | Path) -> Durations:
    """Parse a durations file: ``spk/video/utt seconds`` per line, ``.gz`` or plain.

    Blank lines and ``#`` lines are skipped; an id may carry a media extension (stripped).
    A line with another number of fields, an id that is not ``SPK/VIDEO/UTT``, a duration
    that is not a finite number >= 0, or an id listed twice is a ``ManifestError`` naming
    ``file:line``. A clean file is parsed without a Python loop per line (1.09M lines of
    VoxCeleb2 dev in about a second); anything unusual goes through the line-by-line parser,
    which finds the first bad line.
    """
    path = str(path)
    if not os.path.isfile(path):
        raise ManifestError("durations file not found", path=path, hint=DURATIONS_HINT)
    try:
        with (gzip.open(path, "rb") if path.endswith(".gz") else open(path, "rb")) as f:
            raw = f.read()
    except (OSError, EOFError, zlib.error) as e:
        raise ManifestError(f"cannot read durations file ({e})", path=path, hint=DURATIONS_HINT) from None
    try:
        text = raw.decode("utf-8").lstrip("\ufeff")
    except UnicodeDecodeError as e:
        raise ManifestError("not UTF-8 text", path=path, line=raw[:e.start].count(b"\n") + 1,
                            hint=DURATIONS_HINT) from None
    seconds = _parse_clean(text)
    if seconds is None:
        seconds = _parse_lines(text, path)
    return Durations(path=path, seconds=seconds)


def _parse_clean(text: str) -> dict[str, float] | None:
    """Vectorised parse of a file with no comments, extensions or errors; None otherwise."""
    if "#" in text:
        return None
    tokens = text.split()
    if len(tokens) % 2:
        return None
    ids, vals = tokens[0::2], tokens[1::2]
    if not ids:
        return {}
    try:
        secs = np.array(vals, dtype=np.float64)
    except ValueError:
        return None
    if not (np.isfinite(secs).all() and (secs >= 0).all()):
        return None
    joined = "\n".join(ids)
    if "//" in joined or "\n/" in joined or "/\n" in joined or joined[0] == "/" or joined[-1] == "/":
        return None
    buf = np.frombuffer(joined.encode("utf-8"), np.uint8)
    newlines = np.flatnonzero(buf == ord("\n"))
    slashes = np.flatnonzero(buf == ord("/"))
    per_id = np.bincount(np.searchsorted(newlines, slashes), minlength=len(ids))
    if (per_id != 2).any():
        return None
    dots = np.flatnonzero(buf == ord("."))
    if len(dots):  # an extension (or a dot inside an id): let the line parser normalise it
        return None
    out = dict(zip(ids, secs.tolist()))
    return out if len(out) == len(ids) else None   # a duplicate: the line parser names it


def _parse_lines(text: str, path: str) -> dict[str, float]:
    """Line-by-line parse (the reference for ``_parse_clean``), raising at the first bad line."""
    import math

    from data_manifests.ids import normalize_id

    out: dict[str, float] = {}
    first: dict[str, int] = {}
    for i, line in enumerate(text.splitlines(), start=1):
        fields = line.split()
        if not fields or fields[0].startswith("#"):
            continue
        if len(fields) != 2:
            raise ManifestError(f"expected 'spk/video/utt seconds' (2 fields), got {len(fields)}", path=path,
                                line=i, hint="fix or remove the line")
        cid = normalize_id(fields[0])
        if cid.count("/") != 2 or not all(cid.split("/")):
            raise ManifestError(f"bad clip id {fields[0]!r}: expected SPK/VIDEO/UTT", path=path, line=i,
                                hint="fix or remove the line")
        try:
            sec = float(fields[1])
        except ValueError:
            sec = math.nan
        if not (math.isfinite(sec) and sec >= 0):
            raise ManifestError(f"bad duration {fields[1]!r}: expected seconds (a number >= 0)", path=path,
                                line=i, hint="fix or remove the line")
        if cid in first:
            raise ManifestError(f"clip id {cid!r} listed twice (first at line {first[cid]})", path=path,
                                line=i, hint="remove one of the two lines")
        first[cid] = i
        out[cid] = sec
    return out


def durations_summary(files: Sequence[ClipFiles], durations: Durations, sample: int = 10) -> dict:
    """How the file covers the scanned clips: ``n_listed``, ``n_missing`` (scanned, not listed:
    duration left empty), ``n_unused`` (listed, not scanned) and the first missing ids."""
    secs = durations.seconds
    missing = [cf.clip_id for cf in files if cf.clip_id not in secs]
    return {"file": durations.path, "n_listed": len(secs), "n_missing": len(missing),
            "n_unused": len(secs) - (len(files) - len(missing)), "missing_sample": missing[:sample]}


# ----------------------------------------------------------------------------- records

def _rel(path: str | None, base: str | None) -> str | None:
    return path if path is None or base is None else os.path.relpath(path, base)


def iter_scan(files: Sequence[ClipFiles], *, dataset: str, splits: SplitAssigner | None = None,
              probe: bool = True, durations: Durations | None = None, workers: int | None = None,
              relative_to: str | Path | None = None, progress: bool = True) -> Iterator[tuple[ClipRecord, list[dict]]]:
    """``(record, unreadable files)`` per clip, in the order of ``files``: header facts probed
    (``probe``), or the duration from ``durations``, or nothing (see the module docstring)."""

    from data_manifests.probe import probe_clip

    if probe and durations is not None:
        raise ManifestError("probe and durations both given", hint="probing reads the durations from the headers")
    base = os.path.abspath(relative_to) if relative_to is not None else None
    workers = workers or default_workers()
    empty: dict = {}
    secs = durations.seconds if durations is not None else None

    def one(cf: ClipFiles) -> tuple[dict, list[dict]]:
        if probe:
            return probe_clip(cf)
        if secs is not None:
            return {"duration": secs.get(cf.clip_id)}, []
        return empty, []

    bar = progress_(total=len(files), desc="probe" if probe else "records", unit="clip", enabled=progress,
                    smoothing=0.05, mininterval=0.5)
    with bar:
        for k, (cf, (facts, errors)) in enumerate(zip(files, ordered_map(one, files, workers=workers if probe else 1)),
                                                  start=1):
            rec = ClipRecord(clip_id=cf.clip_id, speaker=cf.speaker, video=cf.video,
                             audio_path=_rel(cf.audio_path, base), video_path=_rel(cf.video_path, base),
                             frames_dir=_rel(cf.frames_dir, base), split=cf.part, dataset=dataset, **facts)
            if splits is not None:
                rec.split = splits.assign(rec.clip_id, rec.split)
            if k % 1024 == 0:   # one bar update per clip costs more than the record itself
                bar.update(1024)
            yield rec, errors
        bar.update(len(files) % 1024)


def gzip_file(src: str | Path, out: str | Path) -> None:
    """``out`` = gzip of ``src``, written beside ``out`` and renamed over it (never half-written)."""
    out = Path(out)
    tmp = out.with_name(f".{out.name}.tmp")
    try:
        with open(src, "rb") as fi, open(tmp, "wb") as raw:
            with gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=6, mtime=0) as fo:
                shutil.copyfileobj(fi, fo, 1 << 20)
            raw.flush()
            os.fsync(raw.fileno())
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
