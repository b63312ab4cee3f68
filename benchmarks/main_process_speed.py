r"""Can one main process feed the GPU at the decode rate? Main-process CPU per clip of ``avfuse extract``.

On the GPU box the decode workers (every core but one) make ~560 clips/s (docs/BENCHMARKS.md);
the one main process receives them (shared-memory ring), cuts the audio segments, pads and
batches, calls the backbones, gathers the embeddings and writes the shards. If that costs more
than ~1.8 CPU-ms per clip, the main process, not the decode, bounds the hour. Measured here with
the backbones replaced by **null backbones** (registered in this script only: audio the mean of a
strided subsample of the waveform -> a 192-d linear map, faces the per-channel mean -> 512-d;
microseconds per batch), so what remains is avfuse's own per-clip work around them:

* ``run_extract`` exactly as ``avfuse extract`` runs it (decode worker processes, ring hand-off,
  batch 64 clips as on CUDA, float16 Zarr cache, ``--resize-on cpu`` (on CUDA the resize is one
  kernel), 8 segments, 8 frames), over ``--repeats`` copies of the VoxCeleb2-format media
  under new clip ids;
* **main-process CPU-ms per clip** (``getrusage(RUSAGE_SELF)``: all its threads) and the feed
  rate it allows (``1000 / ms`` clips/s), next to the workers' decode CPU per clip
  (``RUSAGE_CHILDREN``) and the decode rate of 15 workers at that cost;
* the same with every batch in a **fresh** host array (numpy's ``zeros``/``concatenate`` per batch,
  what ``extract`` did before ``pipeline/extract/staging.py``) against the reused staging buffers,
  interleaved, after one warm-up run (a long run is warm: the fresh arrays' page faults and huge-page
  compaction show only then), median of ``--passes``;
* ``--profile``: the main process under cProfile (CPU of the main thread), the functions with the
  most own time.

The backbone launches on a GPU add their own host cost (kernel launches, ~tens of microseconds per
layer per batch); ``make gpu-check``'s extract section measures the whole.

    python benchmarks/main_process_speed.py [--media DIR | --clips 24] [--repeats 10] [--workers 2] \
        [--passes 3] [--profile]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import resource
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import save_json, scratch_dir  # noqa: E402
from benchmarks.voxceleb_media import add_media_args, bench_records  # noqa: E402

DECODE_WORKERS_GPU_BOX = 15


def register_null_backbones() -> None:
    """``null_audio`` (192-d) and ``null_face`` (512-d, 112 crop): linear maps of a few input
    statistics, so a forward costs microseconds and the rest of extraction is what is timed."""
    import torch

    from extractors.registry import BACKBONES, BackboneEntry, InputSpec, register_backbone

    class NullAudio(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = torch.nn.Linear(1, 192)

        def forward(self, wave, lengths=None):     # the mean of every 400th sample, mapped to 192-d
            return self.proj(wave[:, ::400].float().mean(1, keepdim=True))

    class NullFace(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = torch.nn.Linear(3, 512)

        def forward(self, x):
            return self.proj(x.mean((2, 3)))

    def no_state(module, raw) -> None:
        raise ValueError("null backbones take 'random' weights only")

    if "null_audio" in BACKBONES.names():
        return
    register_backbone(BackboneEntry("null_audio", "audio", InputSpec("audio", 192, sample_rate=16000, features="wave"),
                                    NullAudio, no_state, description="benchmark only"))
    register_backbone(BackboneEntry("null_face", "face", InputSpec("face", 512, crop=112, mean=(0.5,) * 3,
                                                                   std=(0.5,) * 3), NullFace, no_state,
                                    description="benchmark only"))


def cpu_s(who: int) -> float:
    r = resource.getrusage(who)
    return r.ru_utime + r.ru_stime


@contextlib.contextmanager
def fresh_arrays(on: bool):
    """With ``on``: batches assembled in new arrays each time (the way before the staging
    buffers): ``host_buffer`` replaced, for this benchmark's comparison only."""
    import numpy as np

    import pipeline.extract.embed as embed
    if not on:
        yield
        return
    import torch
    kept = embed.host_buffer

    def fresh(shape, dtype, device):
        a = np.zeros(shape, dtype)
        return a, torch.from_numpy(a)
    embed.host_buffer = fresh
    try:
        yield
    finally:
        embed.host_buffer = kept


def measure(manifest: Path, cache: Path, workers: int, profile: bool) -> dict:
    """One ``run_extract`` of ``manifest`` with the null backbones: CPU of the main process and
    of the (finished) decode workers, wall time, the run's stats; the cProfile when asked."""
    import torch

    from pipeline.extract import ExtractConfig, get_models, run_extract
    torch.set_num_threads(1)
    cfg = ExtractConfig(audio_backbone="null_audio", audio_weights="random", face_backbone="null_face",
                        face_weights="random", batch_size=64, num_workers=workers, resize_on="cpu")
    get_models(cfg)                                 # built before the clock, as a long run amortises it
    prof = None
    if profile:
        import cProfile
        prof = cProfile.Profile(time.thread_time)      # CPU of the main thread, not wall time
    m0, c0, t0 = cpu_s(resource.RUSAGE_SELF), cpu_s(resource.RUSAGE_CHILDREN), time.perf_counter()
    if prof:
        prof.enable()
    summary = run_extract(manifest, cache, cfg, progress=False)
    if prof:
        prof.disable()
    wall = time.perf_counter() - t0
    main_s, child_s = cpu_s(resource.RUSAGE_SELF) - m0, cpu_s(resource.RUSAGE_CHILDREN) - c0
    n = summary.clips_computed
    return {"clips": n, "failed": summary.failed_clips, "wall_s": wall,
            "main_cpu_ms_per_clip": 1000 * main_s / n, "workers_cpu_ms_per_clip": 1000 * child_s / n,
            "wait_s": summary.stats.wait_seconds, "compute_s": summary.stats.compute_seconds,
            "prof": prof}


def top_own_time(prof, n_clips: int, k: int = 15) -> list[tuple[str, float]]:
    """The ``k`` functions with the most own (``tottime``) CPU, in ms per clip."""
    import pstats
    st = pstats.Stats(prof)
    rows = sorted(((f"{Path(f).name}:{line}({name})", v[2]) for (f, line, name), v in st.stats.items()),
                  key=lambda r: -r[1])
    return [(name, 1000 * t / n_clips) for name, t in rows[:k]]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_media_args(ap)
    ap.add_argument("--repeats", type=int, default=10, help="copies of the media (new clip ids)")
    ap.add_argument("--workers", type=int, default=2, help="decode worker processes")
    ap.add_argument("--passes", type=int, default=3, help="runs of each variant (a new cache each), after a warm-up")
    ap.add_argument("--profile", action="store_true", help="also one run under cProfile (own time per function)")
    ap.add_argument("--json", default=str(Path(__file__).with_suffix(".json")))
    a = ap.parse_args(argv)
    from data_manifests.manifest import write_manifest
    register_null_backbones()
    with scratch_dir("avfuse-mainproc-") as tmp:
        base = bench_records(a.media, a.clips, tmp)
        records = [dataclasses.replace(r, clip_id=f"{r.clip_id}-r{k}") for k in range(a.repeats) for r in base]
        manifest = tmp / "repeated.jsonl"
        write_manifest(manifest, records)
        measure(manifest, tmp / "warm.zarr", a.workers, False)
        runs: dict[str, list] = {"fresh": [], "staging": []}
        for i in range(a.passes):
            for name in runs:
                with fresh_arrays(name == "fresh"):
                    runs[name].append(measure(manifest, tmp / f"{name}{i}.zarr", a.workers, False))
        prof = measure(manifest, tmp / "prof.zarr", a.workers, True) if a.profile else None
    med = {k: statistics.median(r["main_cpu_ms_per_clip"] for r in v) for k, v in runs.items()}
    ms = med["staging"]
    dec = statistics.median(r["workers_cpu_ms_per_clip"] for v in runs.values() for r in v)
    decode_rate = DECODE_WORKERS_GPU_BOX * 1000 / dec
    print(f"\n{len(records)} clips ({a.repeats} x {len(base)} VoxCeleb2-format clips), {a.workers} decode workers, "
          f"null backbones; {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}; median of {a.passes} warm runs")
    print("| per clip | CPU-ms | clips/s it allows |\n| --- | --- | --- |")
    print(f"| main process, batches in fresh arrays (before) | {med['fresh']:.2f} | {1000 / med['fresh']:.0f} |")
    print(f"| main process, staging buffers (now) | {ms:.2f} | {1000 / ms:.0f} |")
    print(f"| decode workers (audio + 8 faces, resize on the CPU) | {dec:.2f} | "
          f"{decode_rate:.0f} with {DECODE_WORKERS_GPU_BOX} workers |")
    print(f"staging vs fresh: x{med['fresh'] / ms:.2f} less main-process CPU")
    verdict = "keeps up with" if 1000 / ms > decode_rate else "is SLOWER than"
    print(f"the main process {verdict} {DECODE_WORKERS_GPU_BOX} decode workers at this per-core speed "
          f"({1000 / ms:.0f} vs {decode_rate:.0f} clips/s)")
    out = {"clips": len(records), "main_cpu_ms_per_clip": med, "workers_cpu_ms_per_clip": dec,
           "machine": f"{os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}", "workers": a.workers,
           "runs": {k: [{f: x for f, x in r.items() if f != "prof"} for r in v] for k, v in runs.items()},
           "feed_clips_per_s": 1000 / ms, "decode_clips_per_s_15_workers": decode_rate}
    if prof:
        top = top_own_time(prof["prof"], prof["clips"])
        print(f"\nunder cProfile ({prof['main_cpu_ms_per_clip']:.2f} CPU-ms per clip with the profiler's overhead), "
              "own time, ms per clip:")
        for name, t in top:
            print(f"  {t:7.3f}  {name}")
        out["profile_top"] = top
    save_json(a.json, out)


if __name__ == "__main__":
    main()
