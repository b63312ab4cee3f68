"""Compute one shard of an embedding cache: the pure, reusable core of ``avfuse extract``.

Used in-process by ``pipeline/extract.py`` and by Dask workers (one task = one shard).
Nothing here touches the cache: a shard goes in as ``ClipRecord``s and comes out as the
arrays of the cache layout plus per-clip failure records.

Definitions (also in docs of ``avfuse extract``)
-----------------------------------------------
* ``audio/clip``: the backbone on the whole utterance (repeat-tiled to the minimum
  segment length when shorter, see ``extractors.batching``).
* ``audio/segments``: the backbone on S equal parts of the utterance; an utterance
  shorter than ``S * min_segment_seconds`` gets fewer real parts, repeated cyclically
  into the S slots, the repeats flagged False in ``audio/segment_valid``; one shorter
  than a single segment has all S slots False. With ``segment_windows="centre"``: the DCA
  authors' S windows of 1.015 s at the centres of S equal spans (``extractors.windows``).
* ``face/frames``: the backbone on F evenly spaced frames (``extractors.media.decode``);
  ``face/frame_valid`` False for repeats of an earlier frame; ``face/clip`` = the mean of
  the valid frames' embeddings (float32 mean, then stored).
* a failed decode, a backbone error or a non-finite embedding sets ``has_audio`` /
  ``has_face`` False with all-zero vectors, and yields a failure record
  ``{"clip_id", "stage": "decode"|"backbone", "modality": "audio"|"face", "error"}``.
  A clip with no source of a modality is *missing*, not failed (no record).
* ``duration``: seconds of decoded audio (before tiling); else the manifest's duration; else 0.

Embeddings depend only on the clip and the embedding-relevant config (not on batch
size, bucketing, workers or order): batches are padded with true lengths passed to the
backbone, and repeats are computed once and copied.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from pipeline.extract.config import ExtractConfig
from pipeline.extract.decode_pool import DecodedClip, _failure, decode_spec, iter_decoded
from pipeline.extract.models import Models, get_models


# ----------------------------------------------------------------------------- compute
@dataclass
class ShardStats:
    """Timings of one shard (seconds)."""
    clips: int = 0
    decode_seconds: float = 0.0      # summed over clips (in workers: CPU time spent decoding)
    compute_seconds: float = 0.0     # wall time in the backbones (incl. batching, transfers)
    audio_seconds: float = 0.0       # part of compute_seconds spent on audio
    face_seconds: float = 0.0        # part of compute_seconds spent on faces
    wait_seconds: float = 0.0        # wall time the consumer waited for decoded clips
    pickled_clips: int = 0           # clips handed over pickled instead of through the ring's slots

    def add(self, other: "ShardStats") -> None:
        """Accumulate ``other`` into this one (field-wise sum)."""
        for f in dataclasses.fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))


@dataclass
class ShardResult:
    arrays: dict[str, np.ndarray]
    failures: list[dict]
    stats: ShardStats


def compute_shard(records: Sequence, cfg: ExtractConfig, *, models: Models | None = None,
                  num_workers: int | None = None, backend: str = "thread",
                  progress: Callable[[int], None] | None = None, pool=None) -> ShardResult:
    """Decode and embed the clips of one shard (``records``, in row order, resolved paths).

    This is the unit of work of every runner: in-process, or one Dask task per shard.
    Models come from the per-process cache unless given. ``pool``: a running decode
    ``RingPool`` to decode with (a Dask worker's), instead of workers started for this shard.
    """
    models = models or get_models(cfg)
    spec = decode_spec(cfg, models)
    t0 = time.perf_counter()
    # the whole shard is held before it is embedded: prefetch all of it, so the hand-off ring has a slot per clip
    decoded = list(iter_decoded(records, spec, num_workers=cfg.num_workers if num_workers is None else num_workers,
                                backend=backend, prefetch=max(1, len(records)), pool=pool))
    res = embed_shard(decoded, cfg, models, progress=progress)
    res.stats.wait_seconds = time.perf_counter() - t0 - res.stats.compute_seconds
    return res


def embed_shard(decoded: Sequence[DecodedClip], cfg: ExtractConfig, models: Models,
                progress: Callable[[int], None] | None = None) -> ShardResult:
    """Run the backbones over decoded clips (one shard, row order) -> the shard's arrays."""
    from pipeline.extract.embed import embed_audio, embed_faces
    n = len(decoded)
    t0 = time.perf_counter()
    failures: list[dict] = [f for d in decoded for f in d.failures]
    arrays: dict[str, np.ndarray] = {}
    has_audio = np.zeros(n, dtype=bool)
    has_face = np.zeros(n, dtype=bool)
    store = np.dtype(cfg.dtype)
    t_audio = time.perf_counter()
    if models.audio is not None:
        audio_res = embed_audio(models, [decoded[i].audio for i in range(n)], cfg)
        failures += [_failure(decoded[i].clip_id, "backbone", "audio", e) for i, e in audio_res.errors.items()]
        has_audio = audio_res.ok
        arrays["audio/clip"] = _cast(audio_res.clip, store)
        arrays["audio/segments"] = _cast(audio_res.segments, store)
        arrays["audio/segment_valid"] = audio_res.segment_valid
    t_face = time.perf_counter()
    if progress is not None and models.face is None:
        progress(n)
    if models.face is not None:
        face_res = embed_faces(models, [decoded[i].faces for i in range(n)],
                               [decoded[i].face_valid for i in range(n)], cfg, progress=progress)
        failures += [_failure(decoded[i].clip_id, "backbone", "face", e) for i, e in face_res.errors.items()]
        has_face = face_res.ok
        arrays["face/frames"] = _cast(face_res.frames, store)
        arrays["face/frame_valid"] = face_res.frame_valid
        arrays["face/clip"] = _cast(face_res.clip, store)
    t_end = time.perf_counter()
    has_audio = check_stored(arrays, has_audio, "audio", decoded, failures, store)
    has_face = check_stored(arrays, has_face, "face", decoded, failures, store)
    arrays["has_audio"] = has_audio
    arrays["has_face"] = has_face
    arrays["duration"] = np.asarray([d.duration for d in decoded], dtype=np.float32)
    row = {d.clip_id: i for i, d in enumerate(decoded)}
    failures.sort(key=lambda f: (row[f["clip_id"]], f["stage"] != "decode", f["modality"] or ""))
    stats = ShardStats(clips=n, decode_seconds=sum(d.decode_seconds for d in decoded),
                       compute_seconds=time.perf_counter() - t0, audio_seconds=t_face - t_audio,
                       face_seconds=t_end - t_face)
    return ShardResult(arrays=arrays, failures=failures, stats=stats)


def _cast(a: np.ndarray, store: np.dtype) -> np.ndarray:
    """``a`` in the storage dtype; values beyond its range become inf quietly (``check_stored``
    flags those clips right after, with a message instead of numpy's warning)."""
    with np.errstate(over="ignore"):
        return a.astype(store)


FLOAT_ARRAYS = {"audio": ("audio/clip", "audio/segments"), "face": ("face/frames", "face/clip")}


def check_stored(arrays: dict[str, np.ndarray], has: np.ndarray, modality: str, decoded: Sequence,
                 failures: list[dict], store: np.dtype) -> np.ndarray:
    """Fail (flag, with a ``backbone`` failure record) the clips whose embeddings are not finite
    *as stored*: a float32 embedding beyond float16's range (65504) becomes inf in a float16
    cache, and is never stored silently. Returns the new ``has`` flags."""
    names = [x for x in FLOAT_ARRAYS[modality] if x in arrays]
    if not names:
        return has
    bad = np.zeros(len(has), dtype=bool)
    for x in names:
        a = arrays[x]
        bad |= ~np.isfinite(a.reshape(len(a), -1)).all(axis=1)
    bad &= has
    if not bad.any():
        return has
    why = (f"{modality} embedding overflows {store.name} (|x| > {float(np.finfo(store).max):g}) after the cast "
           f"to the storage dtype; rerun with --dtype float32") if store == np.float16 \
        else f"{modality} embedding is not finite as stored ({store.name})"
    for i in np.flatnonzero(bad):
        failures.append(_failure(decoded[i].clip_id, "backbone", modality, why))
        for x in names:
            arrays[x][i] = 0
    return has & ~bad


def failed_shard(records: Sequence, cfg: ExtractConfig, *, audio_dim: int | None, face_dim: int | None,
                 error: str, stage: str = "backbone") -> ShardResult:
    """The arrays of a shard whose computation failed as a whole (e.g. a poison shard that
    kills workers): every clip flagged (``has_audio``/``has_face`` False, zero vectors) with
    one failure record per clip and modality in use."""
    n = len(records)
    store = np.dtype(cfg.dtype)
    arrays: dict[str, np.ndarray] = {}
    mods = []
    if audio_dim is not None:
        mods.append("audio")
        arrays["audio/clip"] = np.zeros((n, audio_dim), store)
        arrays["audio/segments"] = np.zeros((n, cfg.segments, audio_dim), store)
        arrays["audio/segment_valid"] = np.zeros((n, cfg.segments), bool)
    if face_dim is not None:
        mods.append("face")
        arrays["face/frames"] = np.zeros((n, cfg.frames, face_dim), store)
        arrays["face/frame_valid"] = np.zeros((n, cfg.frames), bool)
        arrays["face/clip"] = np.zeros((n, face_dim), store)
    arrays["has_audio"] = np.zeros(n, bool)
    arrays["has_face"] = np.zeros(n, bool)
    arrays["duration"] = np.asarray([float(r.duration or 0.0) for r in records], np.float32)
    failures = [_failure(r.clip_id, stage, m, error) for r in records for m in mods]
    return ShardResult(arrays=arrays, failures=failures, stats=ShardStats(clips=n))


def records_of_shard(records: Sequence, k: int, shard_size: int) -> Sequence:
    """The records of shard ``k``: rows ``[k*shard_size, (k+1)*shard_size)``."""
    return records[k * shard_size:(k + 1) * shard_size]
