"""Clip manifests: one ``ClipRecord`` per utterance, serialised as JSONL (optionally gzipped).

Paths in a record are stored as written; relative paths are resolved against the
manifest file's directory (``ClipRecord.resolved``), so a corpus directory with
its ``manifest.jsonl`` can be moved as a whole.

Also here: ``check_manifest`` (entries whose media files are gone) and the split sources
of ``avfuse manifest --split-from`` (``read_split_source``, ``SplitAssigner``).
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import json
import os
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

from pipeline.core.errors import ManifestError
from pipeline.core.fsio import output_mode, temp_prefix
from pipeline.core.progress import progress as progress_

MEDIA_FIELDS = ("audio_path", "video_path", "frames_dir")


@dataclass
class ClipRecord:
    """One VoxCeleb utterance. Missing modalities are explicit ``None``s."""

    clip_id: str                      # "idXXXXX/VIDEO/UTT": the VoxCeleb id without extension
    speaker: str
    video: str
    audio_path: str | None = None     # wav / m4a / flac (or None: no audio)
    video_path: str | None = None     # mp4 (face track), may also carry the audio track
    frames_dir: str | None = None     # folder of jpg frames (VoxCeleb1 style)
    duration: float | None = None     # seconds
    sample_rate: int | None = None
    fps: float | None = None
    num_frames: int | None = None
    split: str | None = None          # train / dev / test (or None: unassigned)
    dataset: str | None = None        # vox1 / vox2 / toy-vox1 / toy-vox2 ...

    @property
    def has_audio_source(self) -> bool:
        return self.audio_path is not None or self.video_path is not None

    @property
    def has_face_source(self) -> bool:
        return self.video_path is not None or self.frames_dir is not None

    def to_json(self) -> str:
        # not dataclasses.asdict: its recursive deep copy was 80 % of a manifest's write time
        return json.dumps({k: getattr(self, k) for k in _FIELD_NAMES}, ensure_ascii=False, separators=(",", ":"))

    @classmethod
    def from_dict(cls, d: dict, *, path: str | Path | None = None, line: int | None = None) -> "ClipRecord":
        if not isinstance(d, dict):
            raise ManifestError("expected a JSON object per line", path=path, line=line)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ManifestError(f"unknown field(s) {unknown}", path=path, line=line,
                                hint=f"a ClipRecord has: {', '.join(sorted(names))}")
        for req in ("clip_id", "speaker", "video"):
            if not isinstance(d.get(req), str) or not d.get(req):
                raise ManifestError(f"missing or empty '{req}'", path=path, line=line)
        return cls(**d)

    def resolved(self, base: str | Path | None) -> "ClipRecord":
        """A copy with relative media paths made absolute against ``base``."""
        if base is None:
            return self
        changes = {}
        for f in MEDIA_FIELDS:
            v = getattr(self, f)
            if v is not None and not os.path.isabs(v):
                changes[f] = str(Path(base) / v)
        return dataclasses.replace(self, **changes) if changes else self


_FIELD_NAMES = tuple(f.name for f in dataclasses.fields(ClipRecord))


def _open_text(path: str | Path, mode: str, *, gz: bool | None = None):
    path = str(path)
    if gz is None:
        gz = path.endswith(".gz")
    if gz:
        return io.TextIOWrapper(gzip.open(path, mode + "b"), encoding="utf-8")
    return open(path, mode, encoding="utf-8")


def iter_manifest(path: str | Path, *, resolve: bool = True) -> Iterator[ClipRecord]:
    """Stream records from a ``.jsonl`` / ``.jsonl.gz`` manifest.

    Malformed lines raise ``ManifestError`` naming file and line. Duplicate ids
    are checked by ``read_manifest`` (streaming readers may not hold all ids).
    """
    path = Path(path)
    if not path.exists():
        raise ManifestError("manifest not found", path=path, hint="create one with `avfuse manifest` or `avfuse synth`")
    base = path.parent if resolve else None
    try:
        f = _open_text(path, "r")
    except OSError as e:
        raise ManifestError(f"cannot read manifest ({e.strerror or e})", path=path) from None
    try:
        yield from _records(f, path, base)
    except (EOFError, OSError, zlib.error, UnicodeDecodeError) as e:
        what = ("not UTF-8 text" if isinstance(e, UnicodeDecodeError) else
                "a truncated or damaged compressed file" if path.name.endswith(".gz") else "unreadable")
        raise ManifestError(f"cannot read manifest: {what} ({type(e).__name__}: {str(e)[:120]})", path=path,
                            hint="regenerate it with `avfuse manifest` (or re-download it)") from None
    finally:
        f.close()


def _records(f, path: Path, base) -> Iterator[ClipRecord]:
    for i, raw in enumerate(f, start=1):
        s = raw.strip()
        if not s:
            continue
        try:
            d = json.loads(s)
        except json.JSONDecodeError as e:
            raise ManifestError(f"not valid JSON ({e.msg})", path=path, line=i,
                                hint="each line must be one JSON ClipRecord") from None
        try:
            rec = ClipRecord.from_dict(d, path=path, line=i)
        except TypeError as e:  # pragma: no cover - guarded by from_dict
            raise ManifestError(str(e), path=path, line=i) from None
        yield rec.resolved(base)


def read_manifest(path: str | Path, *, resolve: bool = True) -> list[ClipRecord]:
    """All records; duplicate clip ids are a ``ManifestError``."""
    out: list[ClipRecord] = []
    seen: dict[str, int] = {}
    for rec in iter_manifest(path, resolve=resolve):
        if rec.clip_id in seen:
            raise ManifestError(f"duplicate clip id {rec.clip_id!r} (first at record {seen[rec.clip_id] + 1})",
                                path=path, hint="clip ids must be unique; remove the duplicate")
        seen[rec.clip_id] = len(out)
        out.append(rec)
    return out


def write_manifest(path: str | Path, records: Iterable[ClipRecord]) -> int:
    """Write all records atomically (temp file then rename). Returns the count."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{temp_prefix(path)}tmp")
    n = 0
    try:
        with _open_text(tmp, "w", gz=str(path).endswith(".gz")) as f:
            for r in records:
                f.write(r.to_json() + "\n")
                n += 1
        with open(tmp, "rb+") as f:
            os.fchmod(f.fileno(), output_mode(path))   # the replaced file's mode, else the umask's
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return n


class ManifestWriter:
    """Append-only, resumable JSONL writer: ids already in the file are skipped.

    A torn last line (crash mid-write) is dropped on reopen, so a rerun after
    kill -9 continues where the file is still valid. Plain ``.jsonl`` only.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if str(self.path).endswith(".gz"):
            raise ManifestError("resumable writing needs a plain .jsonl file", path=self.path,
                                hint="write .jsonl, then gzip it when done")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.done: set[str] = set()
        good_bytes = 0
        if self.path.exists():
            with open(self.path, "rb") as f:
                for raw in f:
                    if not raw.endswith(b"\n"):
                        break  # torn last line
                    try:
                        self.done.add(json.loads(raw)["clip_id"])
                    except (json.JSONDecodeError, KeyError, TypeError):
                        break
                    good_bytes += len(raw)
            with open(self.path, "r+b") as f:
                f.truncate(good_bytes)
        self._f = open(self.path, "a", encoding="utf-8")

    def __contains__(self, clip_id: str) -> bool:
        return clip_id in self.done

    def write(self, rec: ClipRecord) -> bool:
        if rec.clip_id in self.done:
            return False
        self._f.write(rec.to_json() + "\n")
        self.done.add(rec.clip_id)
        return True

    def flush(self) -> None:
        self._f.flush()
        os.fsync(self._f.fileno())

    def close(self) -> None:
        if not self._f.closed:
            self.flush()
            self._f.close()

    def __enter__(self) -> "ManifestWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def manifest_fingerprint(records: Iterable[ClipRecord]) -> str:
    """sha256 over the records' identity fields (order matters: it fixes cache rows)."""
    h = hashlib.sha256()
    for r in records:
        h.update(f"{r.clip_id}\t{r.speaker}\t{r.split}\t{r.audio_path is not None}\t"
                 f"{r.video_path is not None or r.frames_dir is not None}\n".encode())
    return h.hexdigest()[:16]


# ----------------------------------------------------------------------------- checking

@dataclass
class CheckReport:
    """Result of ``check_manifest``: entries whose media are gone (never dropped)."""

    path: str
    n_records: int
    missing: list[dict]               # {"clip_id", "field", "path"}

    @property
    def n_missing_records(self) -> int:
        return len({m["clip_id"] for m in self.missing})

    @property
    def ok(self) -> bool:
        return not self.missing


def _media_gone(field_name: str, path: str) -> bool:
    if field_name == "frames_dir":
        try:
            with os.scandir(path) as it:
                return not any(os.path.splitext(e.name)[1].lower() in (".jpg", ".jpeg") for e in it)
        except OSError:
            return True
    return not os.path.isfile(path)


def check_manifest(path: str | Path, *, progress: bool = True) -> CheckReport:
    """Check that every media path of every record exists.

    ``audio_path``/``video_path`` must be files and ``frames_dir`` a folder with at least one
    jpg. Malformed lines and duplicate clip ids raise ``ManifestError`` as in
    ``read_manifest``; missing media are collected in the report, in manifest order.
    """

    missing: list[dict] = []
    seen: set[str] = set()
    n = 0
    for rec in progress_(iter_manifest(path), desc="check", unit="clip", enabled=progress, leave=True):
        n += 1
        if rec.clip_id in seen:
            raise ManifestError(f"duplicate clip id {rec.clip_id!r} (record {n})", path=path,
                                hint="clip ids must be unique; remove the duplicate")
        seen.add(rec.clip_id)
        for f in MEDIA_FIELDS:
            p = getattr(rec, f)
            if p is not None and _media_gone(f, p):
                missing.append({"clip_id": rec.clip_id, "field": f, "path": p})
    return CheckReport(path=str(path), n_records=n, missing=missing)


# ----------------------------------------------------------------------------- split marking


