"""Decode clips for extraction: one clip to arrays (``decode_clip``), or many through a worker pool (``iter_decoded``)."""

from __future__ import annotations

import concurrent.futures as cf
import time
from dataclasses import dataclass, field
from typing import Iterator, Sequence

import numpy as np

from pipeline.extract.config import ExtractConfig
from pipeline.extract.models import Models
from pipeline.extract.shm_ring import RingPool, available, iter_ring, slot_bytes_for


# ----------------------------------------------------------------------------- decoding
@dataclass
class DecodedClip:
    """One clip's decoded inputs (``None`` = missing or failed) and its failure records."""
    clip_id: str
    audio: np.ndarray | None = None           # float32 (T,) at the audio backbone's rate
    faces: np.ndarray | None = None           # uint8 (F, 3, crop, crop)
    face_valid: np.ndarray | None = None      # bool (F,)
    duration: float = 0.0
    failures: list[dict] = field(default_factory=list)
    decode_seconds: float = 0.0


@dataclass(frozen=True)
class DecodeSpec:
    """What to decode for each clip (picklable, for worker processes)."""
    audio_sr: int | None        # None: no audio backbone
    face_size: int | None       # None: no face backbone
    frames: int = 8
    resize_on: str = "cpu"      # "device": video faces travel centre-cropped at the source size


def decode_spec(cfg: ExtractConfig, models: Models | None = None) -> DecodeSpec:
    from extractors.registry import get_backbone
    sr = get_backbone(cfg.audio_backbone).spec.sample_rate if cfg.audio_backbone else None
    size = get_backbone(cfg.face_backbone).spec.crop if cfg.face_backbone else None
    return DecodeSpec(audio_sr=sr, face_size=size, frames=cfg.frames, resize_on=cfg.compute_resize_on())


def _failure(clip_id: str, stage: str, modality: str, err: BaseException | str) -> dict:
    msg = err if isinstance(err, str) else (str(err) if str(err) else type(err).__name__)
    if isinstance(err, BaseException) and type(err).__name__ not in ("DecodeError", "BackboneError"):
        msg = f"{type(err).__name__}: {msg}"
    return {"clip_id": clip_id, "stage": stage, "modality": modality, "error": msg}


def decode_clip(rec, spec: DecodeSpec) -> DecodedClip:
    """Decode one ``ClipRecord`` (paths already resolved). Never raises for bad media:
    errors become failure records and the modality is left ``None``."""
    from extractors.media.decode import load_audio, load_faces
    t0 = time.perf_counter()
    out = DecodedClip(clip_id=rec.clip_id)
    if spec.audio_sr is not None:
        src = rec.audio_path if rec.audio_path is not None else rec.video_path
        if src is not None:
            try:
                out.audio = load_audio(src, spec.audio_sr)
                out.duration = len(out.audio) / spec.audio_sr
            except Exception as e:  # DecodeError, or anything a decoder library throws
                out.failures.append(_failure(rec.clip_id, "decode", "audio", e))
    if spec.face_size is not None and rec.has_face_source:
        # resize_on="device": a video's frames are only centre-cropped here (frame folders are resized as before)
        size = None if spec.resize_on == "device" and rec.video_path is not None else spec.face_size
        try:
            out.faces, out.face_valid = load_faces(rec.video_path, rec.frames_dir, n_frames=spec.frames, size=size)
        except Exception as e:
            out.failures.append(_failure(rec.clip_id, "decode", "face", e))
    if out.audio is None:
        out.duration = float(rec.duration or 0.0)
    out.decode_seconds = time.perf_counter() - t0
    return out


#: the face side a slot of the hand-off ring is sized for when faces travel at the source size
#: (``resize_on="device"``; VoxCeleb2's 224); a clip with bigger frames travels pickled
SOURCE_SIDE = 224


def ring_slot_bytes(spec: DecodeSpec) -> int:
    """Bytes of one hand-off slot for ``spec``'s clips (faces at the crop, or at the source side
    when they are resized on the device)."""
    side = None if spec.face_size is None else (
        spec.face_size if spec.resize_on == "cpu" else max(spec.face_size, SOURCE_SIDE))
    return slot_bytes_for(spec.audio_sr, spec.frames, side)


def ring_pool(spec: DecodeSpec, num_workers: int, slots: int) -> RingPool:
    """A :class:`~pipeline.extract.shm_ring.RingPool` of ``num_workers`` processes decoding clips
    as ``spec`` says (``iter_decoded(..., pool=)`` uses it), with ``slots`` slots."""
    return RingPool(decode_clip, spec, num_workers=num_workers, slots=slots, slot_bytes=ring_slot_bytes(spec))


def iter_decoded(records: Sequence, spec: DecodeSpec, *, num_workers: int = 0,
                 backend: str = "process", prefetch: int = 64, pool: RingPool | None = None) -> Iterator[DecodedClip]:
    """Decoded clips in the order of ``records``, decoded ahead of the consumer.

    ``num_workers=0``: inline. ``backend="process"``: ``num_workers`` forked processes (1 torch
    thread each) handing the arrays over in shared memory (``pipeline.extract.shm_ring``; a
    thread pool where ``fork`` is not available); ``"thread"``: a thread pool (for daemonic
    processes such as Dask workers, which may not fork). At most ``prefetch`` clips are
    decoded ahead. ``pool``: a running :func:`ring_pool` (for ``spec``) to decode with instead of
    starting workers for this iteration (``backend`` and ``num_workers`` are then unused).
    """
    if num_workers <= 0 or len(records) == 0:
        for r in records:
            yield decode_clip(r, spec)
        return
    if pool is not None:
        yield from pool.imap(records, prefetch)
        return
    if backend == "process" and available():
        yield from iter_ring(records, decode_clip, spec, num_workers=num_workers, prefetch=prefetch,
                             slot_bytes=ring_slot_bytes(spec))
        return
    if backend not in ("thread", "process"):
        raise ValueError(f"unknown decode backend {backend!r}")
    with cf.ThreadPoolExecutor(num_workers, thread_name_prefix="avfuse-decode") as pool:
        pending: list[cf.Future] = []
        it = iter(records)
        for r in it:
            pending.append(pool.submit(decode_clip, r, spec))
            if len(pending) >= prefetch:
                break
        while pending:
            fut = pending.pop(0)
            nxt = next(it, None)
            if nxt is not None:
                pending.append(pool.submit(decode_clip, nxt, spec))
            yield fut.result()
