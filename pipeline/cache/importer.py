"""``avfuse cache import``: build an ordinary embedding cache from embeddings made elsewhere;
``avfuse cache export --format kaldi``: write a cache's embeddings as Kaldi ark + scp.

Import (``import_cache``): every source is read and checked first
(``pipeline.import_sources``: dimensions, NaN/Inf, id forms, truncated arks), then per
modality (duplicate ids across its sources, one dimension). Rows are the sorted union of
all ids, ``has_audio``/``has_face`` True where that modality has the row. Speakers are
the ids' first component (VoxCeleb ids: ``idNNNNN``); splits come from ``--manifest`` (its
rows' ``split``, and ``duration``) and are ``split`` for ids it lacks (duration 0: unknown).
Array fill rules (the cache layout of docs/DESIGN.md):

* without a sequence source a modality has S = 1 (F = 1) step: the clip vector, valid;
* with one, rows it lacks get the clip vector as their one valid step, and rows without
  a clip vector get the mean of their valid steps (as extraction defines ``face/clip``);
* steps that are all zero are padding (``*_valid`` False).

The cache is written with ``create_cache`` + ``write_shard`` into a temp name beside
``out`` (``.NAME.importing-PID-XXXX.zarr``), finalized, then renamed over ``out``:
a failed or killed import leaves no cache behind. The provenance names every source
(path, format, shape, sha256 of each file read) as the ``audio_backbone`` /
``face_backbone`` entries (``name: "imported"``, and ``model``: the ``--audio-model`` /
``--face-model`` name when given), so ``train``/``score``/``ablate``/``analyze`` and their
fingerprint checks work unchanged. The embedding space of an imported modality is its model
name when given (a head trained on one import scores another import of the same model), else
its source files (``fusion.checkpoint.space_differences``).
"""

from __future__ import annotations

import os
import shutil
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from pipeline import __version__
from pipeline.cache.import_sources import Source, find_duplicates, read_source
from pipeline.core.errors import CacheError, ConfigError
from pipeline.core.progress import progress as progress_

MODALITY_ARRAYS = {"audio": ("audio/clip", "audio/segments", "audio/segment_valid", "has_audio"),
                   "face": ("face/clip", "face/frames", "face/frame_valid", "has_face")}


@dataclass
class ImportConfig:
    """How sources become a cache: ``split`` for ids the manifest lacks (or all, without
    one); ``dtype`` the stored float type; ``shard_size`` rows per shard; ``audio_model`` /
    ``face_model`` what made the embeddings (e.g. ``wespeaker_resnet34_vox2``): caches imported
    with the same name are one embedding space, so a head trained on one scores the other
    (without a name, only a cache of the same source files is)."""
    split: str = "train"
    dtype: str = "float16"
    shard_size: int = 16384
    audio_model: str | None = None
    face_model: str | None = None

    def validate(self) -> None:
        if self.dtype not in ("float16", "float32"):
            raise ConfigError(f"--dtype must be float16 or float32, got {self.dtype!r}")
        if not isinstance(self.shard_size, int) or self.shard_size < 1:
            raise ConfigError(f"--shard-size must be a positive int, got {self.shard_size!r}")
        for flag, v in (("--audio-model", self.audio_model), ("--face-model", self.face_model)):
            if v is not None and (not isinstance(v, str) or not v.strip()):
                raise ConfigError(f"{flag} must be a non-empty name, got {v!r}")


@dataclass
class ImportSummary:
    cache: str
    rows: int
    audio_rows: int
    face_rows: int
    both_rows: int
    splits: dict = field(default_factory=dict)
    seconds: float = 0.0
    cpu_seconds: float = 0.0
    read_seconds: float = 0.0
    write_seconds: float = 0.0

    def text(self) -> str:
        sp = ", ".join(f"{k}: {v}" for k, v in sorted(self.splits.items()))
        return (f"imported {self.rows} rows into {self.cache} (audio {self.audio_rows}, face {self.face_rows}, "
                f"both {self.both_rows}; splits {sp}) in {self.seconds:.1f} s "
                f"(read {self.read_seconds:.1f} s, write {self.write_seconds:.1f} s, CPU {self.cpu_seconds:.1f} s)")


@dataclass
class Modality:
    """One modality's rows: clip vectors and/or step sequences, each by id."""
    name: str
    clip: Source | None = None
    seq: Source | None = None
    clip_row: np.ndarray | None = None    # per cache row: row of ``clip`` (-1: none)
    seq_row: np.ndarray | None = None

    @property
    def dim(self) -> int:
        return int((self.clip or self.seq).data.shape[-1])

    @property
    def steps(self) -> int:
        return int(self.seq.data.shape[1]) if self.seq is not None else 1


def _merge(sources: list[Source]) -> Source | None:
    """One source from several of one role (same dimension; no id twice)."""
    if not sources:
        return None
    sorted_ids = find_duplicates(sources)
    first = sources[0]
    for s in sources[1:]:
        if s.data.shape[-1] != first.data.shape[-1]:
            raise CacheError(f"id {s.raw_ids[0]}: dimension mismatch: {s.data.shape[-1]}-d embeddings, but "
                             f"{first.path} has {first.data.shape[-1]}-d", path=s.path,
                             hint="all embeddings of one modality must come from one backbone")
    if len(sources) == 1:
        first.sorted_ids = sorted_ids
        return first
    if first.valid is not None:
        s_max = max(s.data.shape[1] for s in sources)
        data = np.concatenate([np.pad(s.data, ((0, 0), (0, s_max - s.data.shape[1]), (0, 0))) for s in sources])
        valid = np.concatenate([np.pad(s.valid, ((0, 0), (0, s_max - s.valid.shape[1]))) for s in sources])
    else:
        data, valid = np.concatenate([s.data for s in sources]), None
    return Source(first.path, first.role, first.format, np.concatenate([s.ids for s in sources]),
                  np.concatenate([s.raw_ids for s in sources]), data, valid, [], parts=sources,
                  sorted_ids=sorted_ids)


def _modality(name: str, clips: list[Source], seqs: list[Source]) -> Modality | None:
    m = Modality(name, _merge(clips), _merge(seqs))
    if m.clip is None and m.seq is None:
        return None
    if m.clip is not None and m.seq is not None and m.clip.data.shape[-1] != m.seq.data.shape[-1]:
        raise CacheError(f"id {m.seq.raw_ids[0]}: dimension mismatch: {m.seq.data.shape[-1]}-d steps, but the "
                         f"{name} clip embeddings are {m.clip.data.shape[-1]}-d", path=m.seq.path,
                         hint="the sequence source must come from the same backbone as the clip source")
    return m


def _provenance(m: Modality | None, model: str | None) -> dict | None:
    if m is None:
        return None
    srcs = [p for s in (m.clip, m.seq) if s is not None for p in (s.parts or [s])]
    out = {"name": "imported", "embedding_dim": m.dim, "weights": "imported",
           "sources": [s.provenance() for s in srcs]}
    if model:
        out["model"] = model.strip()
    return out


def _manifest_rows(manifest: Path | None, ids: np.ndarray, split: str):
    """``(speakers, splits, durations, manifest fingerprint)`` of the sorted ``ids``; the
    manifest's rows are found by one binary search over its sorted ids."""
    speakers = np.strings.partition(ids, "/")[0]
    splits = np.full(len(ids), split, dtype=object)
    durations = np.zeros(len(ids), np.float32)
    if manifest is None:
        return speakers, splits.astype(str), durations, None
    from data_manifests.manifest import manifest_fingerprint, read_manifest
    records = read_manifest(manifest)
    m_ids = np.array([r.clip_id for r in records], dtype=str)
    order = np.argsort(m_ids)
    pos = np.searchsorted(m_ids[order], ids)
    pos[pos == len(m_ids)] = 0
    hit = m_ids[order][pos] == ids if len(m_ids) else np.zeros(len(ids), bool)
    rec_idx = order[pos[hit]]
    splits[hit] = [records[i].split or split for i in rec_idx.tolist()]
    durations[hit] = [records[i].duration or 0.0 for i in rec_idx.tolist()]
    return speakers, splits.astype(str), durations, manifest_fingerprint(records)


def _fill(m: Modality, a: int, b: int, out: dict, cache_steps: int) -> None:
    """The shard rows ``[a, b)`` of modality ``m`` into ``out`` (vectorised gathers)."""
    names = MODALITY_ARRAYS[m.name]
    n = b - a
    clip = np.zeros((n, m.dim), np.float32)
    steps = np.zeros((n, cache_steps, m.dim), np.float32)
    valid = np.zeros((n, cache_steps), bool)
    has_clip = np.zeros(n, bool)
    has_seq = np.zeros(n, bool)
    if m.seq is not None:
        j = m.seq_row[a:b]
        has_seq = j >= 0
        has_seq[has_seq] = m.seq.valid[j[has_seq]].any(1)   # no valid step: no sequence
        steps[has_seq, :m.seq.data.shape[1]] = m.seq.data[j[has_seq]]
        valid[has_seq, :m.seq.valid.shape[1]] = m.seq.valid[j[has_seq]]
    if m.clip is not None:
        j = m.clip_row[a:b]
        has_clip = j >= 0
        clip[has_clip] = m.clip.data[j[has_clip]]
    only_clip = has_clip & ~has_seq
    steps[only_clip, 0] = clip[only_clip]
    valid[only_clip, 0] = True
    only_seq = has_seq & ~has_clip
    if only_seq.any():
        w = valid[only_seq].astype(np.float32)
        clip[only_seq] = (steps[only_seq] * w[..., None]).sum(1) / np.maximum(w.sum(1), 1)[:, None]
    out[names[0]], out[names[1]], out[names[2]], out[names[3]] = clip, steps, valid, has_clip | has_seq


def _present(m: Modality) -> np.ndarray:
    """Bool per cache row: the modality has a clip vector or a sequence with a valid step."""
    seq = m.seq_row >= 0
    if m.seq is not None:
        seq[seq] = m.seq.valid[m.seq_row[seq]].any(1)
    return (m.clip_row >= 0) | seq


def _temp_path(out: Path) -> Path:
    return out.with_name(f".{out.name}.importing-{os.getpid()}-{uuid.uuid4().hex[:8]}{out.suffix}")


def _sweep_dead_imports(out: Path) -> None:
    """Remove ``.NAME.importing-PID-*`` left by imports killed on this host (pid gone)."""
    from pipeline.core.fsio import pid_alive
    for tmp in out.parent.glob(f".{out.name}.importing-*"):
        pid = tmp.name.split(".importing-", 1)[1].split("-", 1)[0]
        if pid.isdigit() and not pid_alive(int(pid)) and not tmp.name.endswith((".failures.jsonl", ".lock")):
            _remove_temp(tmp)


def _remove_temp(tmp: Path) -> None:
    for p in (tmp, tmp.with_name(tmp.name + ".parts")):
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
    for extra in (".failures.jsonl", ".lock"):
        tmp.with_name(tmp.name + extra).unlink(missing_ok=True)


def import_cache(out: str | Path, *, audio: Sequence[str] = (), face: Sequence[str] = (),
                 audio_segments: Sequence[str] = (), face_frames: Sequence[str] = (),
                 manifest: str | Path | None = None, cfg: ImportConfig | None = None,
                 overwrite: bool = False, progress: bool = True) -> ImportSummary:
    """Build cache ``out`` (.zarr or .h5) from the sources (see the module docstring)."""
    from pipeline.cache.backends import backend_for
    from pipeline.cache.layout import CacheLayout
    from pipeline.cache.writer import create_cache, remove_existing
    cfg = cfg or ImportConfig()
    cfg.validate()
    t0, c0 = time.perf_counter(), time.process_time()
    out = Path(out)
    cls = backend_for(out, creating=True)
    if out.exists() and not overwrite:
        raise CacheError("the output cache already exists", path=out,
                         hint="pass --overwrite to replace it, or pick another path")
    if not (audio or face or audio_segments or face_frames):
        raise ConfigError("nothing to import", hint="pass at least one --audio or --face source")
    read = {role: [read_source(s, role, progress) for s in specs] for role, specs in
            (("audio", audio), ("face", face), ("audio_segments", audio_segments), ("face_frames", face_frames))}
    mods = {"audio": _modality("audio", read["audio"], read["audio_segments"]),
            "face": _modality("face", read["face"], read["face_frames"])}
    parts = [s.sorted_ids for m in mods.values() if m for s in (m.clip, m.seq) if s is not None]
    ids = parts[0] if len(parts) == 1 else np.unique(np.concatenate(parts))   # sorted, unique
    for m in mods.values():
        if m is None:
            continue
        for part, attr in ((m.clip, "clip_row"), (m.seq, "seq_row")):
            row = np.full(len(ids), -1, np.int64)
            if part is not None:
                row[np.searchsorted(ids, part.ids)] = np.arange(len(part.ids))
            setattr(m, attr, row)
    speakers, splits, durations, m_fp = _manifest_rows(Path(manifest) if manifest else None, ids, cfg.split)
    a_mod, f_mod = mods["audio"], mods["face"]
    layout = CacheLayout(audio_dim=a_mod.dim if a_mod else None, face_dim=f_mod.dim if f_mod else None,
                         segments=a_mod.steps if a_mod else 1, frames=f_mod.steps if f_mod else 1,
                         dtype=cfg.dtype, shard_size=cfg.shard_size)
    from pipeline.core.config import to_dict
    provenance = {"avfuse_version": __version__, "manifest_fingerprint": m_fp,
                  "audio_backbone": _provenance(a_mod, cfg.audio_model),
                  "face_backbone": _provenance(f_mod, cfg.face_model),
                  "config": {"import": to_dict(cfg), "manifest": str(manifest) if manifest else None}}
    t_read = time.perf_counter() - t0
    _sweep_dead_imports(out)
    tmp = _temp_path(out)
    try:
        w = create_cache(tmp, ids=ids, speakers=speakers, splits=splits, layout=layout, provenance=provenance)
        with w.lock(), progress_(total=len(ids), desc="import", unit="row", enabled=progress,
                                 leave=True) as bar:
            for k in range(w.n_shards):
                s = w.shard_slice(k)
                arrays: dict[str, np.ndarray] = {"duration": durations[s]}
                for name, m in mods.items():
                    if m is not None:
                        _fill(m, s.start, s.stop, arrays, layout.segments if name == "audio" else layout.frames)
                    else:
                        arrays[f"has_{name}"] = np.zeros(s.stop - s.start, bool)
                w.write_shard(k, arrays)
                bar.update(s.stop - s.start)
            w.finalize()
        w.close()
        shutil.rmtree(tmp.with_name(tmp.name + ".parts"), ignore_errors=True)  # HDF5: merged, now empty
        if out.exists():
            remove_existing(out, cls)
        os.rename(tmp, out)
        fail = tmp.with_name(tmp.name + ".failures.jsonl")
        if fail.exists():
            os.replace(fail, out.with_name(out.name + ".failures.jsonl"))
    finally:
        _remove_temp(tmp)
    has_a, has_f = (np.zeros(len(ids), bool) if m is None else _present(m) for m in (a_mod, f_mod))
    u, c = np.unique(splits, return_counts=True)
    return ImportSummary(cache=str(out), rows=len(ids), audio_rows=int(has_a.sum()), face_rows=int(has_f.sum()),
                         both_rows=int((has_a & has_f).sum()), splits=dict(zip(u.tolist(), c.tolist())),
                         seconds=time.perf_counter() - t0, cpu_seconds=time.process_time() - c0,
                         read_seconds=t_read, write_seconds=time.perf_counter() - t0 - t_read)


# ------------------------------------------------------------------ export
EXPORT_ARRAYS = {"audio/clip": "has_audio", "audio/segments": "has_audio",
                 "face/clip": "has_face", "face/frames": "has_face"}


def export_kaldi(cache, out_dir: str | Path, *, key_suffix: str = ".wav", allow_incomplete: bool = False,
                 progress: bool = True) -> list[Path]:
    """Write ``OUT/<array>.ark`` + ``.scp`` (``audio_clip``, ``audio_segments``, ``face_clip``,
    ``face_frames``) for the rows that have the modality, float32, keys = clip id +
    ``key_suffix`` (the VoxCeleb trial-list form ``id10270/5r0dWxy17C8/00001.wav``).
    Clips are ``FV`` vectors, sequences ``FM`` matrices of their valid steps."""
    from pipeline.cache.kaldi_ark import write_ark_scp
    cache.refresh()
    if not cache.is_complete and not allow_incomplete:
        raise CacheError(f"cache is incomplete: {len(cache.done_shards())} of {cache.n_shards} shards done",
                         path=cache.path, hint="finish it with `avfuse extract`, or pass --allow-incomplete")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    done = cache.done_mask()
    written = []
    for name, flag in EXPORT_ARRAYS.items():
        if not cache.has(name):
            continue
        rows = np.flatnonzero(cache.to_numpy(flag, allow_incomplete=True).astype(bool) & done)
        keys = np.strings.add(cache.ids[rows], key_suffix)
        data = cache.to_numpy(name, rows)
        nrows = None
        if data.ndim == 3:
            valid = cache.to_numpy(name.split("/")[0] + ("/segment_valid" if "segments" in name else "/frame_valid"),
                                   rows)
            order = np.argsort(~valid, axis=1, kind="stable")          # valid steps first, in order
            data = np.take_along_axis(data, order[..., None], axis=1)
            nrows = valid.sum(1)
        stem = name.replace("/", "_")
        with progress_(total=len(rows), desc=f"export {stem}", unit="row", enabled=progress, leave=True) as bar:
            write_ark_scp(out_dir / f"{stem}.ark", out_dir / f"{stem}.scp", keys, data, nrows, progress=bar.update)
        written += [out_dir / f"{stem}.ark", out_dir / f"{stem}.scp"]
    return written
