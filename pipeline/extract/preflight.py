"""``avfuse preflight``: decode a manifest's clips exactly as ``avfuse extract`` would, without
backbones, before booking the GPU box.

Per clip, ``pipeline.extract.shard.decode_clip`` runs twice, once for the audio and once for
the faces (the same calls, errors and failure records as extraction; a clip's two
modalities are independent there too), each timed in process CPU time (``time.process_time``
of the decoding process: all its threads). Decoding runs in worker processes (one torch
thread each, as extract's decode workers) or inline with ``workers=0``.

Figures
-------
* ``cpu_ms_per_clip`` = audio + video CPU-ms, averaged over the decoded clips (failed ones
  included: they cost what they cost);
* ``projected_hours`` = ``manifest_clips * cpu_ms_per_clip / cores / 3.6e6`` for ``cores``
  (the GPU box: ``--cores``, default 16); ``projected_hours_here`` the same on this
  machine's usable cores. Decode only: backbones, transfers and writes come on top, and
  decoding overlaps them in ``extract``. This arithmetic assumes a clip costs as much CPU with
  every core decoding as alone: on a 16-core H200 box 16 processes reached 48-87 % of it.
* ``measured_clips_per_s`` (with ``--workers N``, at least 4 clips per worker): the rate the N
  processes decoded at, from the first result to the last; ``projected_hours_measured`` the
  manifest at that rate. On the GPU box with N = its cores - 1 this is the decode figure to plan by.

Faces are decoded as ``extract --device cuda`` does by default (``resize_on="device"``: centre
crop only, the GPU resizes; ~2 CPU-ms per clip less than ``cpu``, docs/BENCHMARKS.md).
"""

from __future__ import annotations

import dataclasses
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from pipeline.core.errors import ConfigError, ManifestError
from pipeline.core.progress import progress as progress_
from pipeline.extract.config import usable_cores


@dataclass
class PreflightResult:
    manifest: str
    manifest_clips: int
    n_clips: int                  # clips decoded (the sample)
    n_failed: int                 # clips with at least one failure record
    failures: list[dict]
    audio_cpu_ms_per_clip: float
    video_cpu_ms_per_clip: float
    cores: int
    cores_here: int
    seconds: float                # wall time of the run
    sample_seed: int | None = None
    resize_on: str = "device"     # how faces were decoded (extract's --resize-on)
    workers: int = 0
    measured_clips_per_s: float | None = None   # with ``workers`` processes, first result to last
    per_clip: list[dict] = field(default_factory=list, repr=False)

    @property
    def projected_hours_measured(self) -> float | None:
        """The whole manifest at the rate ``workers`` processes decoded here (None without workers)."""
        return self.manifest_clips / self.measured_clips_per_s / 3600 if self.measured_clips_per_s else None

    @property
    def cpu_ms_per_clip(self) -> float:
        return self.audio_cpu_ms_per_clip + self.video_cpu_ms_per_clip

    def hours(self, cores: int) -> float:
        return self.manifest_clips * self.cpu_ms_per_clip / max(1, cores) / 3.6e6

    def to_json(self) -> dict:
        d = {k: v for k, v in dataclasses.asdict(self).items() if k != "per_clip"}
        d.update(cpu_ms_per_clip=self.cpu_ms_per_clip, projected_hours=self.hours(self.cores),
                 projected_hours_measured=self.projected_hours_measured,
                 projected_hours_here=self.hours(self.cores_here),
                 clips_per_s=(self.cores * 1e3 / self.cpu_ms_per_clip) if self.cpu_ms_per_clip else None)
        return d

    def text(self) -> str:
        lines = [f"{self.n_clips} of {self.manifest_clips} clips decoded in {self.seconds:.1f} s: "
                 f"{self.n_failed} will fail"]
        for f in self.failures:
            lines.append(f"  FAIL {f['clip_id']} [{f['modality']}] {f['error']}")
        lines.append(f"decode CPU per clip: {self.cpu_ms_per_clip:.1f} ms (audio {self.audio_cpu_ms_per_clip:.1f}, "
                     f"video {self.video_cpu_ms_per_clip:.1f}, faces as --resize-on {self.resize_on})")
        lines.append(f"projected decode time of the {self.manifest_clips} clips: "
                     f"{_hm(self.hours(self.cores_here))} on this machine ({self.cores_here} cores), "
                     f"{_hm(self.hours(self.cores))} on {self.cores} cores "
                     f"({self.manifest_clips} x {self.cpu_ms_per_clip:.1f} ms / cores)")
        if self.measured_clips_per_s:
            lines.append(f"measured with {self.workers} decode process{'es' if self.workers > 1 else ''} here: {self.measured_clips_per_s:.1f} clips/s, "
                         f"{_hm(self.projected_hours_measured)} for the {self.manifest_clips} clips (run preflight on "
                         f"the GPU box with --workers = its cores - 1, what extract uses, for the figure that counts)")
        lines.append("(decode CPU only: this run's own wall time also holds the decoders' start-up, which a run "
                     "of many clips amortises; with every core decoding a clip costs more CPU than here alone: "
                     "on a 16-core H200 box, 16 processes reached 48-87 % of this projection's rate, "
                     "docs/BENCHMARKS.md \"GPU check\")")
        return "\n".join(lines)


def _hm(hours: float) -> str:
    m = hours * 60
    return f"{m * 60:.1f} s" if m < 1 else (f"{m:.1f} min" if m < 120 else f"{hours:.2f} h")


def warm_up() -> None:
    """Import the decoders' libraries before any clip is timed (imports are not per-clip cost)."""
    import av  # noqa: F401
    import soundfile  # noqa: F401
    import torchvision.io  # noqa: F401
    from PIL import Image  # noqa: F401

    import extractors.media.decode  # noqa: F401
    import pipeline.extract.shard  # noqa: F401


def _init_worker() -> None:
    from pipeline.extract.shm_ring import worker_init
    worker_init(0)
    warm_up()


def preflight_clip(rec, spec) -> dict:
    """Decode one clip as ``extract`` does; ``{clip_id, failures, audio_ms, video_ms}``."""
    from pipeline.extract.decode_pool import DecodeSpec, decode_clip
    out = {"clip_id": rec.clip_id, "failures": [], "audio_ms": 0.0, "video_ms": 0.0}
    for key, part in (("audio_ms", DecodeSpec(spec.audio_sr, None, spec.frames)),
                      ("video_ms", DecodeSpec(None, spec.face_size, spec.frames, resize_on=spec.resize_on))):
        if part.audio_sr is None and part.face_size is None:
            continue
        t0 = time.process_time()
        d = decode_clip(rec, part)
        out[key] = (time.process_time() - t0) * 1e3
        out["failures"] += d.failures
    return out


def _star(args):
    return preflight_clip(*args)


def sample_records(records: Sequence, n: int | None, seed: int) -> list:
    """All records, or ``n`` of them drawn without replacement by ``seed`` (manifest order kept)."""
    if n is None or n >= len(records):
        return list(records)
    pick = np.sort(np.random.default_rng(seed).choice(len(records), size=n, replace=False))
    return [records[i] for i in pick.tolist()]


def run_preflight(manifest: str | Path, *, sample: int | None = None, seed: int = 0, workers: int = 0,
                  cores: int = 16, audio_sr: int | None = 16000, face_size: int | None = 112, frames: int = 8,
                  resize_on: str = "device", progress: bool = True) -> PreflightResult:
    """Decode the clips of ``manifest`` (or a seeded sample) as extract would; see the module docstring.
    ``resize_on``: ``device`` (default) decodes as ``extract --device cuda`` does by default (faces
    only centre-cropped, resized by the GPU); ``cpu`` as on the CPU (+ PIL resize in the workers)."""
    from data_manifests.manifest import read_manifest
    from pipeline.extract.decode_pool import DecodeSpec
    if sample is not None and sample < 1:
        raise ConfigError(f"--sample must be >= 1, got {sample}")
    if audio_sr is None and face_size is None:
        raise ConfigError("nothing to decode: both audio and faces are off", hint="keep one of them")
    records = read_manifest(manifest)
    if not records:
        raise ManifestError("the manifest holds no clips", path=manifest, hint="check how it was made")
    todo = sample_records(records, sample, seed)
    if resize_on not in ("cpu", "device"):
        raise ConfigError(f"resize_on must be cpu or device, got {resize_on!r}")
    spec = DecodeSpec(audio_sr=audio_sr, face_size=face_size, frames=frames, resize_on=resize_on)
    bar = None
    if progress:
        bar = progress_(total=len(todo), desc="preflight", unit="clip", leave=True)
    t0 = time.perf_counter()
    rows: list[dict] = []
    rate = None
    if workers > 0:
        import multiprocessing as mp
        with mp.get_context("fork" if sys.platform.startswith("linux") else "spawn").Pool(
                workers, initializer=_init_worker) as pool:
            t_first = None
            for r in pool.imap(_star, [(rec, spec) for rec in todo], chunksize=4):
                rows.append(r)
                t_first = t_first or time.perf_counter()    # the workers are up and warm from here
                if bar is not None:
                    bar.update(1)
            # the rate at which the processes decoded, start-up left out; only with enough clips per process
            if len(rows) >= 4 * workers and time.perf_counter() > t_first:
                rate = (len(rows) - 1) / (time.perf_counter() - t_first)
    else:
        warm_up()
        for rec in todo:
            rows.append(preflight_clip(rec, spec))
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()
    failures = [f for r in rows for f in r["failures"]]
    n = len(rows)
    return PreflightResult(manifest=str(manifest), manifest_clips=len(records), n_clips=n,
                           n_failed=len({f["clip_id"] for f in failures}), failures=failures,
                           audio_cpu_ms_per_clip=sum(r["audio_ms"] for r in rows) / n,
                           video_cpu_ms_per_clip=sum(r["video_ms"] for r in rows) / n,
                           cores=int(cores), cores_here=usable_cores(), seconds=time.perf_counter() - t0,
                           sample_seed=seed if sample is not None and sample < len(records) else None,
                           resize_on=resize_on, workers=int(workers), measured_clips_per_s=rate,
                           per_clip=rows)
