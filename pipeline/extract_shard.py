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
  than a single segment has all S slots False.
* ``face/frames``: the backbone on F evenly spaced frames (``extractors.decode``);
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

import concurrent.futures as cf
import dataclasses
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from pipeline.errors import ConfigError

DTYPES = ("float16", "float32")
PRECISIONS = ("auto", "fp32", "bf16")


@dataclass
class ExtractConfig:
    """Everything ``avfuse extract`` needs besides the manifest and the cache path.

    Fields in ``EMBEDDING_FIELDS`` change the stored embeddings and go into the cache's
    provenance; ``batch_size`` (clips per forward batch; on CUDA faces run ``batch_size *
    frames`` images per batch, on CPU at most 8), ``num_workers`` (decode processes or
    threads) and ``device`` do not; ``precision`` does, through ``compute_precision()``.
    """

    audio_backbone: str | None = None
    audio_weights: str | None = None      # checkpoint path, "random", or "pretrained" (resolved)
    face_backbone: str | None = None
    face_weights: str | None = None
    segments: int = 8
    frames: int = 8
    dtype: str = "float16"
    shard_size: int = 256
    min_segment_seconds: float = 0.5
    seed: int = 0
    precision: str = "auto"               # auto: bf16 autocast on CUDA, fp32 on CPU
    batch_size: int = 8
    num_workers: int = 2
    device: str = "cpu"

    EMBEDDING_FIELDS = ("segments", "frames", "dtype", "shard_size", "min_segment_seconds", "seed")

    def validate(self) -> "ExtractConfig":
        """Check values; raises ``ConfigError`` with a hint. Returns self."""
        if not self.audio_backbone and not self.face_backbone:
            raise ConfigError("no backbone chosen", hint="give --audio-backbone and/or --face-backbone")
        for mod in ("audio", "face"):
            name, w = getattr(self, f"{mod}_backbone"), getattr(self, f"{mod}_weights")
            if name and not w:
                raise ConfigError(f"--{mod}-backbone {name} needs --{mod}-weights",
                                  hint="give a checkpoint path, or the word 'random' for a seeded "
                                       "random init (there are no silent default weights)")
            if w and not name:
                raise ConfigError(f"--{mod}-weights given without --{mod}-backbone")
        for key in ("segments", "frames", "shard_size", "batch_size"):
            v = getattr(self, key)
            if not isinstance(v, int) or v < 1:
                raise ConfigError(f"{key} must be a positive integer, got {v!r}")
        if not isinstance(self.num_workers, int) or self.num_workers < 0:
            raise ConfigError(f"num_workers must be >= 0, got {self.num_workers!r}")
        if self.dtype not in DTYPES:
            raise ConfigError(f"dtype must be one of {DTYPES}, got {self.dtype!r}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if not self.min_segment_seconds > 0:
            raise ConfigError(f"min_segment_seconds must be > 0, got {self.min_segment_seconds!r}")
        if not (self.device == "cpu" or self.device.startswith("cuda")):
            raise ConfigError(f"device must be cpu, cuda or cuda:N, got {self.device!r}")
        return self

    def compute_precision(self) -> str:
        """The precision actually used: ``precision`` with ``auto`` resolved by device."""
        if self.precision != "auto":
            return self.precision
        return "bf16" if self.device.startswith("cuda") else "fp32"

    def embedding_config(self) -> dict:
        """The provenance ``config`` block: fields that change what is stored."""
        d = {k: getattr(self, k) for k in self.EMBEDDING_FIELDS}
        d["compute_precision"] = self.compute_precision()
        return d


# ----------------------------------------------------------------------------- models
@dataclass
class Models:
    """Loaded backbones (eval mode, on ``device``) and their ``load_backbone`` info."""
    audio: Any = None
    audio_info: dict | None = None
    face: Any = None
    face_info: dict | None = None
    device: str = "cpu"
    precision: str = "fp32"


_MODELS: dict[tuple, Models] = {}
_MODELS_LOCK = threading.Lock()


def _weights_key(w: str | None) -> tuple:
    if w in (None, "random"):
        return (w,)
    try:
        st = os.stat(w)
        return (str(Path(w).resolve()), st.st_size, st.st_mtime_ns)
    except OSError:
        return (w,)


def resolve_weights(backbone: str | None, weights: str | None) -> str | None:
    """``"pretrained"`` -> the packaged checkpoint of ``backbone`` (its module's
    ``pretrained_path()``, e.g. ge2e_lstm's resemblyzer file); other values unchanged."""
    if weights != "pretrained" or not backbone:
        return weights
    import importlib

    from extractors.registry import get_backbone
    from pipeline.errors import BackboneError
    entry = get_backbone(backbone)
    mod = importlib.import_module(getattr(entry.build, "__module__", "") or "extractors.registry")
    fn = getattr(mod, "pretrained_path", None)
    if fn is None:
        raise BackboneError(f"backbone {backbone!r} has no packaged pretrained weights",
                            hint="give a checkpoint path, or 'random'")
    return str(fn())


def get_models(cfg: ExtractConfig) -> Models:
    """The backbones of ``cfg``, built and loaded once per process (cached by backbone,
    weights file identity, seed, device and precision). Thread-safe."""
    import torch

    from extractors.registry import get_backbone, load_backbone
    from pipeline.errors import BackboneError
    key = (cfg.audio_backbone, _weights_key(cfg.audio_weights), cfg.face_backbone,
           _weights_key(cfg.face_weights), cfg.seed, cfg.device, cfg.compute_precision())
    with _MODELS_LOCK:
        if key in _MODELS:
            return _MODELS[key]
        if cfg.device.startswith("cuda") and not torch.cuda.is_available():
            raise ConfigError(f"device {cfg.device} asked for, but torch sees no CUDA device",
                              hint="use --device cpu, or check the driver / CUDA_VISIBLE_DEVICES")
        m = Models(device=cfg.device, precision=cfg.compute_precision())
        for mod in ("audio", "face"):
            name = getattr(cfg, f"{mod}_backbone")
            if not name:
                continue
            entry = get_backbone(name)
            if entry.modality != mod:
                raise BackboneError(f"backbone {name!r} is a {entry.modality} backbone, not {mod}",
                                    hint=f"pick a {mod} backbone of `avfuse backbones` for --{mod}-backbone")
            module, info = load_backbone(name, getattr(cfg, f"{mod}_weights"), seed=cfg.seed, device=cfg.device)
            if mod == "face":
                module = module.to(memory_format=torch.channels_last)
            setattr(m, mod, module)
            setattr(m, f"{mod}_info", info)
        _MODELS[key] = m
        return m


def clear_model_cache() -> None:
    with _MODELS_LOCK:
        _MODELS.clear()


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


def decode_spec(cfg: ExtractConfig, models: Models | None = None) -> DecodeSpec:
    from extractors.registry import get_backbone
    sr = get_backbone(cfg.audio_backbone).spec.sample_rate if cfg.audio_backbone else None
    size = get_backbone(cfg.face_backbone).spec.crop if cfg.face_backbone else None
    return DecodeSpec(audio_sr=sr, face_size=size, frames=cfg.frames)


def _failure(clip_id: str, stage: str, modality: str, err: BaseException | str) -> dict:
    msg = err if isinstance(err, str) else (str(err) if str(err) else type(err).__name__)
    if isinstance(err, BaseException) and type(err).__name__ not in ("DecodeError", "BackboneError"):
        msg = f"{type(err).__name__}: {msg}"
    return {"clip_id": clip_id, "stage": stage, "modality": modality, "error": msg}


def decode_clip(rec, spec: DecodeSpec) -> DecodedClip:
    """Decode one ``ClipRecord`` (paths already resolved). Never raises for bad media:
    errors become failure records and the modality is left ``None``."""
    from extractors.decode import load_audio, load_faces
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
        try:
            out.faces, out.face_valid = load_faces(rec.video_path, rec.frames_dir,
                                                   n_frames=spec.frames, size=spec.face_size)
        except Exception as e:
            out.failures.append(_failure(rec.clip_id, "decode", "face", e))
    if out.audio is None:
        out.duration = float(rec.duration or 0.0)
    out.decode_seconds = time.perf_counter() - t0
    return out


def _worker_init(_: int) -> None:
    import torch
    torch.set_num_threads(1)
    _die_with_parent()


def _die_with_parent() -> None:
    """Linux: have the kernel SIGKILL this decode worker when its parent dies (kill -9 of
    ``avfuse extract`` would otherwise orphan it, blocked flushing into a dead queue)."""
    import ctypes
    import os
    import signal
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux/glibc: nothing to do
        return
    if os.getppid() == 1:  # the parent is already gone
        os._exit(0)


class _DecodeDataset:
    """Map-style dataset for torch's DataLoader: item i = decode of ``records[i]``."""

    def __init__(self, records: Sequence, spec: DecodeSpec):
        self.records, self.spec = records, spec

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> DecodedClip:
        return decode_clip(self.records[i], self.spec)


def _identity(x):
    return x


def iter_decoded(records: Sequence, spec: DecodeSpec, *, num_workers: int = 0,
                 backend: str = "process", prefetch: int = 64) -> Iterator[DecodedClip]:
    """Decoded clips in the order of ``records``, decoded ahead of the consumer.

    ``num_workers=0``: inline. ``backend="process"``: a torch DataLoader with
    ``num_workers`` processes (1 torch thread each); ``"thread"``: a thread pool (for
    daemonic processes such as Dask workers, which may not fork). At most ``prefetch``
    clips are decoded ahead.
    """
    if num_workers <= 0 or len(records) == 0:
        for r in records:
            yield decode_clip(r, spec)
        return
    if backend == "process":
        import torch.utils.data as tud
        loader = tud.DataLoader(_DecodeDataset(records, spec), batch_size=None, shuffle=False,
                                num_workers=num_workers, collate_fn=_identity, worker_init_fn=_worker_init,
                                prefetch_factor=max(2, prefetch // num_workers), persistent_workers=False)
        yield from loader
        return
    if backend != "thread":
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
                  progress: Callable[[int], None] | None = None) -> ShardResult:
    """Decode and embed the clips of one shard (``records``, in row order, resolved paths).

    This is the unit of work of every runner: in-process, or one Dask task per shard.
    Models come from the per-process cache unless given.
    """
    models = models or get_models(cfg)
    spec = decode_spec(cfg, models)
    t0 = time.perf_counter()
    decoded = list(iter_decoded(records, spec, num_workers=cfg.num_workers if num_workers is None else num_workers,
                                backend=backend))
    res = embed_shard(decoded, cfg, models, progress=progress)
    res.stats.wait_seconds = time.perf_counter() - t0 - res.stats.compute_seconds
    return res


def embed_shard(decoded: Sequence[DecodedClip], cfg: ExtractConfig, models: Models,
                progress: Callable[[int], None] | None = None) -> ShardResult:
    """Run the backbones over decoded clips (one shard, row order) -> the shard's arrays."""
    from pipeline.extract_embed import embed_audio, embed_faces
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
        arrays["audio/clip"] = audio_res.clip.astype(store)
        arrays["audio/segments"] = audio_res.segments.astype(store)
        arrays["audio/segment_valid"] = audio_res.segment_valid
    t_face = time.perf_counter()
    if progress is not None and models.face is None:
        progress(n)
    if models.face is not None:
        face_res = embed_faces(models, [decoded[i].faces for i in range(n)],
                               [decoded[i].face_valid for i in range(n)], cfg, progress=progress)
        failures += [_failure(decoded[i].clip_id, "backbone", "face", e) for i, e in face_res.errors.items()]
        has_face = face_res.ok
        arrays["face/frames"] = face_res.frames.astype(store)
        arrays["face/frame_valid"] = face_res.frame_valid
        arrays["face/clip"] = face_res.clip.astype(store)
    t_end = time.perf_counter()
    arrays["has_audio"] = has_audio
    arrays["has_face"] = has_face
    arrays["duration"] = np.asarray([d.duration for d in decoded], dtype=np.float32)
    row = {d.clip_id: i for i, d in enumerate(decoded)}
    failures.sort(key=lambda f: (row[f["clip_id"]], f["stage"] != "decode", f["modality"] or ""))
    stats = ShardStats(clips=n, decode_seconds=sum(d.decode_seconds for d in decoded),
                       compute_seconds=time.perf_counter() - t0, audio_seconds=t_face - t_audio,
                       face_seconds=t_end - t_face)
    return ShardResult(arrays=arrays, failures=failures, stats=stats)


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
