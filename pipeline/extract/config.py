"""``ExtractConfig``: every option of a stage-1 run, recorded with its fingerprint in the cache."""

from __future__ import annotations

import os
from dataclasses import dataclass

from pipeline.core.errors import ConfigError

DTYPES = ("float16", "float32")


PRECISIONS = ("auto", "fp32", "bf16")
SEGMENT_WINDOWS = ("equal", "centre")     # extractors.windows.WINDOW_MODES
RESIZE_ON = ("auto", "cpu", "device")


@dataclass
class ExtractConfig:
    """Everything ``avfuse extract`` needs besides the manifest and the cache path.

    Fields in ``EMBEDDING_FIELDS`` change the stored embeddings and go into the cache's
    provenance; ``batch_size`` (clips per forward batch; on CUDA faces run ``batch_size *
    frames`` images per batch, on CPU at most 8), ``num_workers`` (decode processes or
    threads) and ``device`` do not; ``precision`` does, through ``compute_precision()``;
    ``segment_windows`` (``centre``: the DCA authors' windows, ``extractors.windows``) does,
    recorded only when not the default ``equal``, so existing caches keep their fingerprint;
    ``resize_on`` (``device``: video faces are handed over centre-cropped at the source size and
    resized to the backbone's crop on its device, docs/DESIGN.md; ``auto``: ``device`` on CUDA,
    ``cpu`` on the CPU, through ``compute_resize_on()``) likewise, when it resolves to ``device``.
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
    segment_windows: str = "equal"        # equal: S equal parts; centre: the DCA authors' 1.015 s windows
    resize_on: str = "auto"               # cpu: PIL in the decode workers; device: torch on the backbone's device
    #: the audio weights' input preprocessing (``Weights.preprocess`` name, e.g. "resemblyzer_vad"
    #: of ge2e_lstm "pretrained"): set by ``resolve_config`` from named weights; None: none.
    #: Recorded in the provenance through the backbone info (``audio_backbone["preprocess"]``).
    audio_preprocess: str | None = None

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
        if self.segment_windows not in SEGMENT_WINDOWS:
            raise ConfigError(f"segment_windows must be one of {SEGMENT_WINDOWS}, got {self.segment_windows!r}")
        if self.resize_on not in RESIZE_ON:
            raise ConfigError(f"resize_on must be one of {RESIZE_ON}, got {self.resize_on!r}")
        if not (self.device == "cpu" or self.device.startswith("cuda")):
            raise ConfigError(f"device must be cpu, cuda or cuda:N, got {self.device!r}")
        return self

    def compute_precision(self) -> str:
        """The precision actually used: ``precision`` with ``auto`` resolved by device."""
        if self.precision != "auto":
            return self.precision
        return "bf16" if self.device.startswith("cuda") else "fp32"

    def compute_resize_on(self) -> str:
        """Where faces are resized: ``resize_on`` with ``auto`` resolved by device (``device`` on
        CUDA, where the decode workers bound the throughput; ``cpu`` on the CPU, where the main
        process runs the backbones: docs/BENCHMARKS.md)."""
        if self.resize_on != "auto":
            return self.resize_on
        return "device" if self.device.startswith("cuda") else "cpu"

    def describe(self) -> str:
        """One line of how the run will go, for the log: backbones, device, precision, decode workers,
        where faces are resized, batch size."""
        nets = " + ".join(n for n in (self.audio_backbone, self.face_backbone) if n)
        workers = f"{self.num_workers} decode workers" if self.num_workers else "decoding in this process"
        faces = f"; faces resized on the {'device' if self.compute_resize_on() == 'device' else 'CPU'}" \
            if self.face_backbone else ""
        return (f"{nets} on {self.device} ({self.compute_precision()}); {workers}{faces}; "
                f"batch {self.batch_size} clips")

    def embedding_config(self) -> dict:
        """The provenance ``config`` block: fields that change what is stored."""
        d = {k: getattr(self, k) for k in self.EMBEDDING_FIELDS}
        d["compute_precision"] = self.compute_precision()
        if self.segment_windows != "equal":     # only when set: the default keeps every fingerprint
            d["segment_windows"] = self.segment_windows
        if self.compute_resize_on() != "cpu":   # likewise
            d["resize_on"] = self.compute_resize_on()
        return d


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity: a container's or ``taskset``'s share)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:        # not on Linux
        return os.cpu_count() or 1


def default_workers(device: str = "cpu", distributed: bool = False) -> int:
    """Decode processes when ``--num-workers`` is not given. On CUDA in one process: every usable
    core but one (the main process feeds the GPU): there the decode bounds the throughput
    (28 CPU-ms per VoxCeleb2 clip against ~1 ms of GPU, docs/BENCHMARKS.md), and 4 workers on a
    16-core box would take VoxCeleb2 dev from ~35 min to over 2 h. On the CPU, where the backbones
    share the cores, and per task on a Dask cluster: ``min(4, cores)``."""
    cores = usable_cores()
    if device.startswith("cuda") and not distributed:
        return max(1, cores - 1)
    return max(1, min(4, cores))


#: GPU memory (GiB) from which ``--batch-size`` defaults to 128 on CUDA: ecapa_tdnn (C=1024) +
#: iresnet100 at batch 128 peaked at 25 GB on the H200 box, 13 GB at 64 (benchmarks/decode_scaling.py)
BIG_GPU_GIB = 40


def default_batch_size(device: str = "cpu") -> int:
    """Clips per batch when ``--batch-size`` is not given: 8 on the CPU; on CUDA 128 where the GPU
    has at least ``BIG_GPU_GIB`` GiB (390 clips/s vs 318 at 64 for the backbones alone on an H200:
    at 64 the host launching ECAPA's kernels is the bound), else 64."""
    if not device.startswith("cuda"):
        return 8
    try:
        import torch
        if torch.cuda.is_available():
            dev = torch.device(device)
            index = dev.index if dev.index is not None else torch.cuda.current_device()
            if torch.cuda.get_device_properties(index).total_memory >= BIG_GPU_GIB * 2**30:
                return 128
    except Exception:   # no CUDA here (a remote cluster's driver) or a bad index: the safe size
        pass
    return 64
