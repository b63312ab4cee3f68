"""Scan a VoxCeleb1/VoxCeleb2 tree into ``ClipRecord``s.

Accepted trees (``ROOT`` is what ``--root`` names; several roots are merged)::

    vox2:  ROOT/{dev,test}/aac/SPK/VIDEO/UTT.m4a   audio   (folder aac/ or wav/; .m4a .wav .flac)
           ROOT/{dev,test}/mp4/SPK/VIDEO/UTT.mp4   video   (folder mp4/ or video/; .mp4)
    vox1:  ROOT/wav/SPK/VIDEO/UTT.wav              audio   (folder wav/; .wav .flac)
           ROOT/mp4/SPK/VIDEO/UTT.mp4              video   (folder mp4/ or video/; .mp4)
           ROOT/frames/SPK/VIDEO/UTT/*.jpg         faces   (folder frames/ or jpg/; .jpg .jpeg)

For either layout ROOT may hold the modality folders itself, or ``dev/`` and/or ``test/``
folders that hold them (then each clip's split defaults to that folder's name). The
official VoxCeleb1 face archive (``unzippedIntervalFaces/data/<Name>/...``, celebrity
names and a different utterance numbering) is not read directly; link its folders into
``frames/SPK/VIDEO/UTT``. The clip id is ``SPK/VIDEO/UTT`` (no extension). A clip found in
only one modality is kept, the other modality ``None``; files at another depth or with
another extension are counted as ignored.

Listing uses ``os.scandir`` (one speaker folder per task, in a thread pool). A record's
``duration``/``sample_rate``/``fps``/``num_frames`` come from header probes
(``probe=True``, ``data_manifests.probe``), or ``duration`` from a VoxCeleb durations file
(``durations``), or stay None and are filled at extraction (``data_manifests.fastscan``).
A probed clip with a file that cannot be read keeps its record, with ``duration`` None, and the
file is listed in the ``ScanReport`` (never dropped). Splits: the dev/test folder name, then ``split`` for all
clips, then each ``split_from`` source in order (later wins) -- see ``read_split_source``.
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

from data_manifests.fastscan import (
    Durations,
    default_workers,
    durations_summary,
    gzip_file,
    iter_scan,
    merge_durations,
    ordered_map,
    read_durations,
)
from data_manifests.manifest import ClipRecord, ManifestWriter, iter_manifest
from data_manifests.splits import SplitAssigner, read_split_source
from pipeline.core.config import fingerprint
from pipeline.core.errors import ManifestError
from pipeline.core.fsio import atomic_write_json, temp_prefix
from pipeline.core.progress import progress as progress_


@dataclass(frozen=True)
class LayoutSpec:
    """Folder and extension names of one corpus layout (see the module docstring)."""

    name: str
    audio_dirs: tuple[str, ...]
    audio_exts: tuple[str, ...]
    video_dirs: tuple[str, ...] = ("mp4", "video")
    video_exts: tuple[str, ...] = (".mp4",)
    frames_dirs: tuple[str, ...] = ()
    frame_exts: tuple[str, ...] = (".jpg", ".jpeg")

    @property
    def all_dirs(self) -> tuple[str, ...]:
        return self.audio_dirs + self.video_dirs + self.frames_dirs


LAYOUTS: dict[str, LayoutSpec] = {
    "vox1": LayoutSpec("vox1", audio_dirs=("wav",), audio_exts=(".wav", ".flac"),
                       frames_dirs=("frames", "jpg")),
    "vox2": LayoutSpec("vox2", audio_dirs=("aac", "wav"), audio_exts=(".m4a", ".wav", ".flac")),
}
PART_NAMES = ("dev", "test")


@dataclass(slots=True)   # slots: a million of these must stay small
class ClipFiles:
    """The media files found for one clip (absolute paths), before probing."""

    clip_id: str
    audio_path: str | None = None
    video_path: str | None = None
    frames_dir: str | None = None
    part: str | None = None           # "dev" / "test" when found under such a folder

    @property
    def speaker(self) -> str:
        return self.clip_id.split("/", 1)[0]

    @property
    def video(self) -> str:
        return self.clip_id.split("/")[1]


@dataclass
class ScanReport:
    """What a scan found; written beside the manifest as ``<out>.scan.json``."""

    roots: list[str]
    layout: str
    dataset: str
    probed: bool
    n_clips: int = 0
    n_audio_and_face: int = 0
    n_audio_only: int = 0             # an audio file, no mp4 / frame folder
    n_face_only: int = 0              # an mp4 / frame folder, no audio file
    n_ignored_files: int = 0
    n_resumed: int = 0                # records taken from an interrupted earlier run
    unreadable: list[dict] = field(default_factory=list)   # {"clip_id", "path", "error"}
    split_counts: dict[str, int] = field(default_factory=dict)
    split_sources: list[dict] = field(default_factory=list)
    durations: dict | None = None     # with a durations file: fastscan.durations_summary
    seconds: float = 0.0

    @property
    def n_unreadable(self) -> int:
        return len(self.unreadable)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["n_unreadable"] = self.n_unreadable
        return d

    def count(self, rec: ClipRecord) -> None:
        self.n_clips += 1
        face = rec.video_path is not None or rec.frames_dir is not None
        if rec.audio_path is not None and face:
            self.n_audio_and_face += 1
        elif rec.audio_path is not None:
            self.n_audio_only += 1
        else:
            self.n_face_only += 1
        key = rec.split if rec.split is not None else "unassigned"
        self.split_counts[key] = self.split_counts.get(key, 0) + 1


# ----------------------------------------------------------------------------- discovery

def find_parts(root: str | Path, spec: LayoutSpec) -> list[tuple[Path, str | None]]:
    """``[(folder holding modality folders, part name or None)]`` under ``root``."""
    root = Path(os.path.abspath(root))
    if not root.is_dir():
        raise ManifestError("corpus root not found or not a folder", path=root,
                            hint="pass the folder that holds the VoxCeleb tree")
    if any((root / d).is_dir() for d in spec.all_dirs):
        parts = [(root, root.name if root.name in PART_NAMES else None)]
    else:
        parts = [(root / p, p) for p in PART_NAMES if any((root / p / d).is_dir() for d in spec.all_dirs)]
    for base, _ in parts:
        for other in LAYOUTS.values():
            foreign = [d for d in other.audio_dirs if d not in spec.all_dirs and (base / d).is_dir()]
            if foreign:
                raise ManifestError(f"found {foreign[0]}/, which a {spec.name} tree does not have",
                                    path=base, hint=f"is this a {other.name} tree? use --layout {other.name}")
    if not parts:
        raise ManifestError(
            f"no {spec.name} folders found (looked for {'/, '.join(spec.all_dirs)}/ here and in dev/, test/)",
            path=root, hint=f"--root must be the folder that holds e.g. {spec.audio_dirs[0]}/SPK/VIDEO/UTT "
                            f"(or its dev/ and test/ parents); is --layout right?")
    return parts


def _subdirs(path: str) -> list[os.DirEntry]:
    try:
        return [e for e in _visible(path) if e.is_dir()]
    except OSError as e:
        raise ManifestError(f"cannot list folder ({e.strerror})", path=path) from None


def _list_speaker(args: tuple[str, str, tuple[str, ...], bool]) -> tuple[list[tuple[str, str]], int]:
    """``([(clip_id, path)], n_ignored)`` for one speaker folder of one modality."""
    spk_dir, spk, exts, want_dirs = args
    out, ignored = [], 0
    try:
        for vid in _visible(spk_dir):
            if not vid.is_dir():
                ignored += 1
                continue
            for e in _visible(vid.path):
                stem, ext = (e.name, "") if want_dirs else os.path.splitext(e.name)
                if e.is_dir() if want_dirs else (ext.lower() in exts and e.is_file()):
                    out.append((f"{spk}/{vid.name}/{stem}", e.path))
                else:
                    ignored += 1
    except OSError as e:
        raise ManifestError(f"cannot list folder ({e.strerror})", path=e.filename or spk_dir) from None
    return out, ignored


def _visible(path: str) -> list[os.DirEntry]:
    with os.scandir(path) as it:
        return [e for e in it if not e.name.startswith(".")]


def discover(roots: str | Path | Sequence[str | Path], layout: str, *, workers: int | None = None,
             progress: bool = True) -> tuple[list[ClipFiles], int]:
    """All clips under ``roots``, sorted by clip id, and the number of ignored files.

    Two files for one clip in one modality (``00001.wav`` and ``00001.flac``) or the same
    clip id under two roots/parts is a ``ManifestError``.
    """
    spec = get_layout(layout)
    if isinstance(roots, (str, Path)):
        roots = [roots]
    workers = workers or default_workers()
    jobs: list[tuple[str, tuple]] = []   # (field, args)
    parts: dict[str, str | None] = {}
    for root in roots:
        for base, part in find_parts(root, spec):
            for fld, dirs, exts, want_dirs in (("audio_path", spec.audio_dirs, spec.audio_exts, False),
                                               ("video_path", spec.video_dirs, spec.video_exts, False),
                                               ("frames_dir", spec.frames_dirs, spec.frame_exts, True)):
                for d in dirs:
                    mdir = base / d
                    if not mdir.is_dir():
                        continue
                    for spk in _subdirs(str(mdir)):
                        jobs.append((fld, (spk.path, spk.name, exts, want_dirs)))
                        parts[spk.path] = part
    clips: dict[str, ClipFiles] = {}
    ignored = 0
    bar = progress_(total=len(jobs), desc="list", unit="spk", enabled=progress)
    with bar:
        for (fld, args), (found, n_ign) in zip(jobs, ordered_map(_list_speaker, [a for _, a in jobs],
                                                                  workers=workers, chunk=4)):
            ignored += n_ign
            part = parts[args[0]]
            for clip_id, path in found:
                cf = clips.get(clip_id) or clips.setdefault(clip_id, ClipFiles(clip_id, part=part))
                prev = getattr(cf, fld)
                if prev is not None or (part and cf.part and part != cf.part):
                    other = prev or cf.audio_path or cf.video_path or cf.frames_dir
                    raise ManifestError(f"clip {clip_id!r} found twice: {other} and {path}", path=path,
                                        hint="each clip id must appear once per modality; remove one copy")
                cf.part = cf.part or part
                setattr(cf, fld, path)
            bar.update(1)
    return [clips[k] for k in sorted(clips)], ignored


def get_layout(layout: str) -> LayoutSpec:
    try:
        return LAYOUTS[layout]
    except KeyError:
        raise ManifestError(f"unknown layout {layout!r}", hint=f"use one of: {', '.join(LAYOUTS)}") from None


# ----------------------------------------------------------------------------- records

def files_fingerprint(files: Iterable[ClipFiles]) -> str:
    """sha256 (16 hex) over the discovered clips and their paths."""
    h = hashlib.sha256()
    for cf in files:
        h.update(f"{cf.clip_id}\t{cf.audio_path}\t{cf.video_path}\t{cf.frames_dir}\t{cf.part}\n".encode())
    return h.hexdigest()[:16]


# ----------------------------------------------------------------------------- whole scans

def _prepare(roots, layout, dataset, split, split_from, workers, progress, probe=True, durations=None):
    if isinstance(roots, (str, Path)):
        roots = [roots]
    spec = get_layout(layout)
    if probe and durations is not None:
        raise ManifestError("durations file given with probing on", path=str(getattr(durations, "path", durations)),
                            hint="probes read durations from the headers: drop one of the two")
    if durations is not None and not isinstance(durations, Durations):
        many = [durations] if isinstance(durations, (str, Path)) else list(durations)
        durations = merge_durations([d if isinstance(d, Durations) else read_durations(d) for d in many]) \
            if many else None
    sources = [read_split_source(s) if isinstance(s, str) else s for s in split_from]
    files, ignored = discover(roots, layout, workers=workers, progress=progress)
    if not files:
        raise ManifestError(f"no clips found under {', '.join(map(str, roots))}",
                            hint=f"expected {spec.audio_dirs[0]}/SPK/VIDEO/UTT{spec.audio_exts[0]} files; "
                                 f"is --layout right?")
    report = ScanReport(roots=[os.path.abspath(r) for r in roots], layout=layout,
                        dataset=dataset or layout, probed=probe, n_ignored_files=ignored)
    if durations is not None:
        report.durations = durations_summary(files, durations)
    return files, SplitAssigner(split, sources), report, durations


def scan(roots: str | Path | Sequence[str | Path], layout: str, *, dataset: str | None = None,
         split: str | None = None, split_from: Sequence = (), probe: bool = True,
         durations: str | Path | Durations | None = None, workers: int | None = None,
         relative_to: str | Path | None = None, progress: bool = True) -> tuple[list[ClipRecord], ScanReport]:
    """Scan in memory: ``(records sorted by clip id, report)``. ``split_from`` holds
    ``FILE[:SPLIT]`` strings or ``SplitSource``s; ``dataset`` defaults to the layout name;
    ``durations`` (with ``probe=False``) is a durations file, several (merged), or a ``fastscan.Durations``."""
    t0 = time.monotonic()
    files, assigner, report, durs = _prepare(roots, layout, dataset, split, split_from, workers, progress,
                                             probe, durations)
    records = []
    for rec, errors in iter_scan(files, dataset=report.dataset, splits=assigner, probe=probe,
                                 durations=durs, workers=workers, relative_to=relative_to, progress=progress):
        records.append(rec)
        report.count(rec)
        report.unreadable.extend(errors)
    report.split_sources = assigner.report()
    report.seconds = round(time.monotonic() - t0, 3)
    return records, report


def scan_to_manifest(out: str | Path, roots: str | Path | Sequence[str | Path], layout: str, *,
                     dataset: str | None = None, split: str | None = None, split_from: Sequence = (),
                     probe: bool = True, durations: str | Path | Durations | None = None,
                     workers: int | None = None, relative: bool = False, resume: bool = True,
                     progress: bool = True) -> ScanReport:
    """Scan straight into the manifest ``out`` (``.jsonl`` or ``.jsonl.gz``), resumably.

    Records are appended in clip-id order to ``.<out name>.<key>.partial.jsonl`` beside
    ``out`` (``key`` fingerprints the discovered files and the options) and flushed every
    couple of seconds; a rerun after an interruption skips what that file already holds.
    When all clips are done the partial file is renamed onto ``out`` (or gzipped into it),
    so ``out`` only ever appears complete. The report goes to ``<out>.scan.json``.
    ``relative=True`` stores media paths relative to ``out``'s folder; ``durations`` as in ``scan``.
    """
    t0 = time.monotonic()
    out = Path(out)
    files, assigner, report, durs = _prepare(roots, layout, dataset, split, split_from, workers, progress,
                                             probe, durations)
    base = os.path.abspath(out.parent) if relative else None
    key = fingerprint({"files": files_fingerprint(files), "layout": layout, "dataset": report.dataset,
                       "probe": probe, "split": split, "relative_to": base,
                       "durations": durs.key() if durs is not None else None,
                       "sources": [(s.spec, os.path.getsize(s.path), os.path.getmtime(s.path))
                                   for s in assigner.sources]})
    out.parent.mkdir(parents=True, exist_ok=True)
    stem = temp_prefix(out)   # ".NAME." (shortened for long names: the partial names fit NAME_MAX)
    partial = out.with_name(f"{stem}{key}.partial.jsonl")
    errpath = out.with_name(f"{stem}{key}.partial.errors.jsonl")
    for stale in out.parent.glob(f"{glob.escape(stem)}*.partial*.jsonl"):
        if stale not in (partial, errpath) or not resume:
            stale.unlink()
    writer = ManifestWriter(partial)
    if writer.done:
        for rec in iter_manifest(partial, resolve=False):
            report.count(rec)
            assigner.assign(rec.clip_id, rec.split)   # counts the source matches
            report.n_resumed += 1
        report.unreadable.extend(e for e in _read_errors(errpath) if e.get("clip_id") in writer.done)
    todo = [cf for cf in files if cf.clip_id not in writer.done]
    with writer, open(errpath, "a", encoding="utf-8") as ef:
        last = time.monotonic()
        for rec, errors in iter_scan(todo, dataset=report.dataset, splits=assigner, probe=probe,
                                     durations=durs, workers=workers, relative_to=base, progress=progress):
            if errors:  # persist the reasons before the record that refers to them
                ef.write("".join(json.dumps(e) + "\n" for e in errors))
                ef.flush()
                report.unreadable.extend(errors)
            writer.write(rec)
            report.count(rec)
            if time.monotonic() - last > 2.0:
                writer.flush()
                last = time.monotonic()
    if str(out).endswith(".gz"):
        gzip_file(partial, out)   # the finished JSONL, byte for byte
        partial.unlink()
    else:
        os.replace(partial, out)
    errpath.unlink(missing_ok=True)
    report.split_sources = assigner.report()
    report.seconds = round(time.monotonic() - t0, 3)
    atomic_write_json(f"{out}.scan.json", report.to_dict())
    return report


def _read_errors(path: Path) -> list[dict]:
    out = []
    for line in path.read_text(encoding="utf-8").splitlines() if path.exists() else []:
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            break  # torn last line
    return out
