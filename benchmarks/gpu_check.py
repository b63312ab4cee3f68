"""The prepared GPU check: one run on a lent GPU box (one H100/H200, 16 cores) in under 8 minutes.

Writes ``gpu_check.json`` and ``gpu_check.md`` (one table) into ``--out``. Measured, in order:

1. **media**: VoxCeleb2-shaped clips (``voxceleb_media``: H.264 224x224 yuv420p 25 fps, x264's
   default GOP with B-frames, ~250 kb/s of moving texture, AAC 16 kHz beside it as .m4a),
   durations drawn stratified from the real VoxCeleb2-dev distribution (``DURATION_QUANTILES``),
   a pool of distinct clips hard-linked under many real-looking names; manifest by ``avfuse
   manifest``'s default path (no header probes).
2. **decode**: CPU-ms per clip (``time.process_time``, all threads) of ``load_audio`` and
   ``load_faces`` as ``avfuse extract --resize-on cpu`` calls them; the decode-bound projection.
   **handoff**, **resize**: the main process's CPU per clip receiving decoded clips (pickled vs
   the shared-memory ring), ``--resize-on device`` vs ``cpu`` (decode CPU, backbone clips/s,
   cosine) and pageable / pinned host->device copies (``benchmarks/gpu_check_handoff.py``).
3. **extract**: ``run_extract`` end to end (decode worker processes, ``--resize-on auto`` =
   device on CUDA, ``ecapa_tdnn`` C=1024 +
   ``iresnet100``, random weights: same FLOPs as trained ones), clips/s and GPU busy share
   (``torch.cuda.utilization`` / ``nvidia-smi`` sampled every 0.2 s).
4. **gpu_bound**: the backbones alone (``embed_shard`` on clips decoded beforehand), bf16 and
   fp32, clips/s, busy share, and the bf16-vs-fp32 cosine per clip; the GPU-bound projection.
5. **dask**: the same extraction through a Dask ``LocalCluster`` of 1 worker on the GPU.
6. **fusion**: one epoch of ``mlp`` (batch 256 and 1024) and ``dca`` at full VoxCeleb2-dev scale (1,092,009 clips,
   5,994 identities, 192-d audio / 512-d face, 8 steps), embeddings generated on the device
   in ``benchmarks/train_speed.py``'s distribution (its 12 GB Zarr store would take longer to
   write than this whole check; the cache load is what ``train_speed.py`` measures).
7. **scoring**: VoxCeleb1-E (581,480 trials, the original list) from a real Zarr cache, ``score_speed.run_avfuse``.

``--dry`` (the default where torch sees no CUDA): the same code at tiny sizes on the CPU, with
``ge2e_lstm`` + ``iresnet18`` and 1 frame per clip, in well under a minute; ``tests/test_gpu_check.py`` runs
it. A section that fails is recorded as ``{"error": ...}``, the others still run, exit 1.
How to run it through the device tool: docs/gpu-check.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
import traceback
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.gpu_check_fusion import sec_fusion  # noqa: E402
from benchmarks.gpu_check_handoff import sec_handoff, sec_resize  # noqa: E402
from benchmarks.gpu_check_report import Busy, markdown, projections  # noqa: E402
from benchmarks.train_speed import VOX2_CLIPS, VOX2_IDS  # noqa: E402

# quantiles of the 1,092,009 VoxCeleb2-dev durations (seconds) at these levels (tests check them)
QUANTILE_LEVELS = (*np.linspace(0, 0.95, 20).round(2).tolist(), 0.99, 0.999, 1.0)
DURATION_QUANTILES = (3.97, 4.1, 4.22, 4.42, 4.54, 4.74, 4.99, 5.18, 5.5, 5.76, 6.08, 6.46, 6.85, 7.36, 8.0,
                      8.7, 9.66, 11.01, 13.12, 17.15, 28.93, 52.42, 220.22)


@dataclass
class Sizes:
    pool: int                 # distinct media clips encoded
    clips: int                # clips of the end-to-end run (pool clips under many names)
    decode_sample: int        # clips decoded in-process for CPU-ms
    gpu_clips: int            # clips decoded once for the backbone-only timing
    dask_clips: int
    fusion_clips: int
    fusion_ids: int
    trials: int | None        # Vox1-E trials scored (None: all)
    audio: str
    face: str
    frames: int = 8
    segments: int = 8
    batch: int = 128
    max_seconds: float = 1e9  # clip length cap (dry: short clips)
    fusion_steps: int = 8     # segments / frames per clip of the fusion embeddings


FULL = Sizes(pool=64, clips=4096, decode_sample=48, gpu_clips=256, dask_clips=4096, fusion_clips=VOX2_CLIPS,
             fusion_ids=VOX2_IDS, trials=None, audio="ecapa_tdnn", face="iresnet100")
DRY = Sizes(pool=2, clips=4, decode_sample=2, gpu_clips=2, dask_clips=2, fusion_clips=96, fusion_ids=12,
            trials=2000, audio="ge2e_lstm", face="iresnet18", frames=1, segments=2, batch=4, max_seconds=1.0,
            fusion_steps=2)


# ----------------------------------------------------------------------------- media (replaceable)
def durations(n: int, cap: float) -> np.ndarray:
    """``n`` clip lengths stratified over the real VoxCeleb2-dev distribution, whole 40 ms frames."""
    u = (np.arange(n) + 0.5) / n
    return np.minimum(np.round(np.interp(u, QUANTILE_LEVELS, DURATION_QUANTILES) * 25) / 25, cap)


def _encode_clip(job: tuple[str, float, int]) -> None:
    import torch

    from data_manifests.synth.media import write_m4a, write_mp4
    stem, seconds, seed = job
    rng = np.random.default_rng(seed)
    n, size = int(round(seconds * 25)), 224
    big = size + 2 * n
    small = torch.from_numpy(rng.integers(0, 256, (1, 3, big // 3, big // 3)).astype(np.float32))
    tex = torch.nn.functional.interpolate(small, size=(big, big), mode="bicubic")[0].permute(1, 2, 0)
    tex = tex.clamp(0, 255).to(torch.uint8).numpy()           # detail at 3 px: ~250 kb/s at crf 20
    frames = np.stack([tex[i:i + size, 2 * i:2 * i + size] for i in range(n)])
    t = np.arange(int(seconds * 16000)) / 16000
    audio = (0.1 * np.sin(2 * np.pi * (150 + 50 * np.sin(2 * np.pi * 0.5 * t)) * t)
             + 0.02 * rng.standard_normal(len(t))).astype(np.float32)
    write_mp4(f"{stem}.mp4", frames, 25, audio, 16000)
    write_m4a(f"{stem}.m4a", audio, 16000)


def voxceleb_media(root: Path, pool: int, clips: int, cap: float, procs: int) -> dict:
    """``root/dev/{aac,mp4}/idNNNNN/VIDEO/UTT.{m4a,mp4}``: ``pool`` encoded clips, hard-linked under
    ``clips`` names (8 utterances per video, 4 videos per speaker). Replaceable by any generator
    that writes this layout (e.g. ``benchmarks/voxceleb_media.py``)."""
    secs = durations(pool, cap)
    (root / "pool").mkdir(parents=True)
    t0 = time.perf_counter()
    with ProcessPoolExecutor(procs) as ex:
        list(ex.map(_encode_clip, [(str(root / "pool" / f"{i:03d}"), float(s), i) for i, s in enumerate(secs)]))
    enc = time.perf_counter() - t0
    for k in range(clips):
        spk, vid, utt = f"id{k // 32:05d}", f"vid{(k // 8) % 4:08d}", f"{k % 8 + 1:05d}"
        for mod, ext in (("aac", "m4a"), ("mp4", "mp4")):
            d = root / "dev" / mod / spk / vid
            d.mkdir(parents=True, exist_ok=True)
            os.link(root / "pool" / f"{k % pool:03d}.{ext}", d / f"{utt}.{ext}")
    mp4 = [os.path.getsize(root / "pool" / f"{i:03d}.mp4") for i in range(pool)]
    return {"pool": pool, "clips": clips, "pool_mean_seconds": float(secs.mean()), "encode_s": enc,
            "mp4_kbps": 8 * sum(mp4) / float(secs.sum()) / 1000}


# ----------------------------------------------------------------------------- helpers
def cfg_for(s: Sizes, device: str, **kw):
    from pipeline.extract.config import ExtractConfig
    return ExtractConfig(**{"audio_backbone": s.audio, "audio_weights": "random", "face_backbone": s.face,
                            "face_weights": "random", "frames": s.frames, "segments": s.segments,
                            "batch_size": s.batch, "device": device, "shard_size": 256, **kw})


def cpu_topology() -> dict:
    """Logical CPUs, physical cores and the model, from /proc/cpuinfo (Linux; else {})."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {}
    blocks = [{k.strip(): v.strip() for k, v in (ln.split(":", 1) for ln in b.splitlines() if ":" in ln)}
              for b in text.split("\n\n") if b.strip()]
    cores = {(b.get("physical id", "0"), b.get("core id", b.get("processor", ""))) for b in blocks}
    model = next((b["model name"] for b in blocks if b.get("model name")), "")
    return {"logical": len(blocks), "physical_cores": len(cores), "model": model}


def cosines(a: np.ndarray, b: np.ndarray) -> dict:
    a, b = a.astype(np.float64), b.astype(np.float64)
    c = (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)
    return {"min": round(float(c.min()), 6), "mean": round(float(c.mean()), 6)}


# ----------------------------------------------------------------------------- sections
def sec_decode(ctx) -> dict:
    from data_manifests.manifest import read_manifest
    from extractors.media.decode import load_audio, load_faces
    from pipeline.extract.decode_pool import decode_spec
    recs = read_manifest(ctx.manifest)[:ctx.s.decode_sample]
    spec = decode_spec(cfg_for(ctx.s, ctx.device))       # what extract decodes: rate, crop, frames
    load_audio(recs[0].audio_path, spec.audio_sr)         # warm-up: codec and resampler set-up
    load_faces(recs[0].video_path, None, n_frames=spec.frames, size=spec.face_size)
    a = v = 0.0
    for r in recs:
        c0 = time.process_time()
        load_audio(r.audio_path, spec.audio_sr)
        c1 = time.process_time()
        load_faces(r.video_path, None, n_frames=spec.frames, size=spec.face_size)
        c2 = time.process_time()
        a, v = a + c1 - c0, v + c2 - c1
    n = len(recs)
    return {"clips": n, "audio_cpu_ms_per_clip": 1e3 * a / n, "video_cpu_ms_per_clip": 1e3 * v / n,
            "cpu_ms_per_clip": 1e3 * (a + v) / n}


def sec_nvdec(ctx) -> dict:
    """H.264 on NVDEC vs the software decoder (``benchmarks/nvdec_check.py``); on the CPU: why not."""
    from benchmarks.nvdec_check import measure
    from data_manifests.manifest import read_manifest
    recs = read_manifest(ctx.manifest)[:min(ctx.s.decode_sample, 24)]
    return measure([str(r.video_path) for r in recs], repeats=2, procs=min(16, os.cpu_count() or 1),
                   per_proc=32 if ctx.cuda else 2)


def sec_extract(ctx) -> dict:
    from pipeline.extract.run import run_extract
    cfg = cfg_for(ctx.s, ctx.device, num_workers=ctx.decode_workers)
    with Busy(ctx.cuda) as b:
        sm = run_extract(ctx.manifest, ctx.work / "e2e.zarr", cfg, progress=False)
    st = sm.stats
    return {"clips": sm.clips_computed, "seconds": sm.seconds, "clips_per_s": sm.clips_per_s,
            "gpu_busy_share": b.share, "decode_workers": cfg.num_workers, "batch_size": cfg.batch_size,
            "precision": cfg.compute_precision(), "resize_on": cfg.compute_resize_on(), "failed_clips": sm.failed_clips,
            "backbone_seconds": st.compute_seconds, "wait_for_decode_seconds": st.wait_seconds,
            "decode_wall_seconds_summed": st.decode_seconds, "pickled_clips": st.pickled_clips}


def sec_decode_pool(ctx) -> dict:
    """Decoding alone as ``extract`` runs it (forked processes, the shared-memory ring, the
    resize on the device), no backbones: the clips/s the decode side can feed a GPU on this box."""
    from data_manifests.manifest import read_manifest
    from pipeline.extract.decode_pool import decode_spec, iter_decoded
    recs = read_manifest(ctx.manifest)[:1024 if ctx.cuda else ctx.s.dask_clips]
    spec = decode_spec(cfg_for(ctx.s, ctx.device))
    out = {"clips": len(recs), "resize_on": spec.resize_on}
    for key, w in (("extract_procs", ctx.decode_workers), ("all_cores", max(1, os.cpu_count() or 1))):
        t0 = time.perf_counter()
        n = sum(1 for _ in iter_decoded(recs, spec, num_workers=w, backend="process", prefetch=256))
        out[key] = {"workers": w, "clips_per_s": n / (time.perf_counter() - t0)}
    return out


def sec_gpu_bound(ctx) -> dict:
    import torch

    from data_manifests.manifest import read_manifest
    from pipeline.extract.decode_pool import decode_spec, iter_decoded
    from pipeline.extract.models import get_models
    from pipeline.extract.shard import embed_shard
    recs = read_manifest(ctx.manifest)[:ctx.s.gpu_clips]
    out = {"clips": len(recs)}
    arrays = {}
    decoded = list(iter_decoded(recs, decode_spec(cfg_for(ctx.s, ctx.device)), num_workers=ctx.decode_workers,
                                backend="thread"))     # once: both precisions embed the same inputs
    for prec in ("bf16", "fp32"):
        cfg = cfg_for(ctx.s, ctx.device, precision=prec, dtype="float32")    # compare unrounded embeddings
        models = get_models(cfg)
        embed_shard(decoded[:max(1, len(decoded) // 8)], cfg, models)     # warm-up (kernels, allocator)
        with torch.inference_mode(), Busy(ctx.cuda) as b:
            t0 = time.perf_counter()
            res = embed_shard(decoded, cfg, models)
            wall = time.perf_counter() - t0
        arrays[prec] = res.arrays
        out[prec] = {"clips_per_s": len(recs) / wall, "seconds": wall, "audio_seconds": res.stats.audio_seconds,
                     "face_seconds": res.stats.face_seconds, "gpu_busy_share": b.share}
    out["pool_mean_seconds"] = float(np.mean([len(d.audio) / 16000 for d in decoded if d.audio is not None]))
    out["bf16_vs_fp32_cosine"] = {k: cosines(arrays["bf16"][k], arrays["fp32"][k]) for k in ("audio/clip", "face/clip")}
    return out


def sec_dask(ctx) -> dict:
    from data_manifests.manifest import read_manifest, write_manifest
    from pipeline.extract.dask.cluster import ClusterOptions, open_cluster
    from pipeline.extract.dask.driver import run_distributed
    sub = ctx.work / "dask.jsonl"
    write_manifest(sub, read_manifest(ctx.manifest)[:ctx.s.dask_clips])
    # 2 shard tasks at once, each with half the decode processes extract uses
    cfg = cfg_for(ctx.s, ctx.device, num_workers=max(1, ctx.decode_workers // 2))
    opts = ClusterOptions(cluster="local", workers=1, threads_per_worker=2, dashboard=False,
                          devices=("0",) if ctx.cuda else None)
    t0 = time.perf_counter()
    with Busy(ctx.cuda) as b, open_cluster(opts, ctx.device, log=lambda m: None) as client:
        t_up = time.perf_counter() - t0
        from pipeline.extract.dask.worker import worker_info
        backends = sorted({i["decode"] for i in client.run(worker_info).values()})
        sm = run_distributed(sub, ctx.work / "dask.zarr", cfg, client=client, progress=False, log=lambda m: None)
    wall = time.perf_counter() - t0
    steady = sm.seconds - sm.setup_seconds
    return {"clips": sm.clips_computed, "seconds_end_to_end": wall, "cluster_start_s": t_up,
            "clips_per_s_end_to_end": sm.clips_computed / wall, "clips_per_s_steady": sm.clips_computed / steady,
            "gpu_busy_share": b.share, "failed_clips": sm.failed_clips, "decode_backend": ",".join(backends),
            "decode_per_task": cfg.num_workers, "backbone_seconds": sm.stats.compute_seconds,
            "wait_for_decode_seconds": sm.stats.wait_seconds}


def sec_scoring(ctx) -> dict:
    from benchmarks import score_speed
    from data_manifests.trials import read_trials
    src = score_speed.LISTS["VoxCeleb1-E"]
    if not src.exists():
        return {"skipped": f"{src} not found (set AVFUSE_SHARED)"}
    lst = src
    if ctx.s.trials is not None:   # dry: the first lines of the real list
        import gzip
        with gzip.open(src, "rt") as f:
            lst = ctx.work / "vox1_e_head.txt"
            lst.write_text("".join(next(f) for _ in range(ctx.s.trials)))
    t0 = time.perf_counter()
    cache = score_speed._write(ctx.work / "vox1.zarr", np.asarray(read_trials(lst).utterances()), "test", "vox1")
    build = time.perf_counter() - t0
    r = score_speed.run_avfuse(cache, lst)
    return {"list": src.name, "n_trials": r["n_trials"], "n_utterances": r["n_utterances"], "cache_build_s": build,
            "score_total_s": r["total_s"], "score_cpu_s": r["total_cpu_s"], "eer_percent": r["eer_percent"]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dry", action="store_true", help="tiny sizes on the CPU (the default without CUDA)")
    ap.add_argument("--out", type=Path, default=REPO / "bench_out" / "gpu_check")
    ap.add_argument("--skip", default="", help="comma-separated sections to skip")
    ap.add_argument("--budget", type=float, default=450.0,
                    help="seconds; a section not started by then is skipped (the files are rewritten after "
                         "every section, so a run stopped from outside keeps what it measured)")
    args = ap.parse_args(argv)
    import torch
    cuda = torch.cuda.is_available() and not args.dry
    s = FULL if cuda else DRY
    cores = os.cpu_count() or 1
    work = Path(tempfile.mkdtemp(prefix="avfuse-gpu-check-"))
    ctx = argparse.Namespace(s=s, cuda=cuda, device="cuda" if cuda else "cpu", work=work,
                             decode_workers=max(1, cores - 2) if cuda else 1, manifest=work / "manifest.jsonl")
    res = {"mode": "gpu" if cuda else "dry", "sizes": asdict(s), "seconds": {},
           "machine": {"cpu_cores": cores, "cpu": cpu_topology(), "gpu": torch.cuda.get_device_name(0) if cuda else None,
                       "torch": torch.__version__, "python": platform.python_version()}}
    args.out.mkdir(parents=True, exist_ok=True)
    t_all = time.perf_counter()

    def write() -> str:
        res["projections"] = projections(res)
        res["seconds"]["total"] = round(time.perf_counter() - t_all, 2)
        (args.out / "gpu_check.json").write_text(json.dumps(res, indent=1, default=float) + "\n")
        md = markdown(res)
        (args.out / "gpu_check.md").write_text(md)
        return md

    def run(name, fn) -> None:
        if name in args.skip.split(",") or time.perf_counter() - t_all > args.budget:
            res[name] = {"skipped": "--skip" if name in args.skip.split(",") else f"--budget {args.budget:.0f} s"}
            return
        print(f"gpu_check: {name} ({time.perf_counter() - t_all:.0f} s) ...", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        try:
            res[name] = fn()
        except Exception as e:  # recorded; the other sections still run
            traceback.print_exc()
            res[name] = {"error": f"{type(e).__name__}: {e}"}
        res["seconds"][name] = round(time.perf_counter() - t0, 2)
        write()

    def media() -> dict:
        from data_manifests.voxceleb import scan_to_manifest
        out = voxceleb_media(work / "media", s.pool, s.clips, s.max_seconds, min(16, cores))
        scan_to_manifest(ctx.manifest, work / "media", "vox2", probe=False, progress=False)   # no probes
        return out

    try:
        run("media", media)
        for name, fn in (("decode", sec_decode), ("nvdec", sec_nvdec), ("handoff", sec_handoff),
                         ("resize", sec_resize),
                         ("extract", sec_extract), ("decode_pool", sec_decode_pool), ("gpu_bound", sec_gpu_bound),
                         ("dask", sec_dask), ("fusion", sec_fusion), ("scoring", sec_scoring)):
            run(name, lambda fn=fn: fn(ctx))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(write())
    print(f"wrote {args.out}/gpu_check.json and gpu_check.md ({res['seconds']['total']:.0f} s)", file=sys.stderr)
    return 1 if any(isinstance(v, dict) and "error" in v for v in res.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
