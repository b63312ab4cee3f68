"""Stage-1 scaling on Dask: clips/s of in-process ``avfuse extract`` against a LocalCluster
of 1 and 2 worker processes, on the same corpus, in one run (caches checked equal).

CPU mode (default, any machine): in-process ``run_extract`` (decode worker processes +
torch threads = cores) vs ``--cluster local --workers 1`` and ``--workers 2`` (torch
threads = cores / workers each, decode threads per worker). Two rates per Dask run:
*end to end* (cluster start + workers loading the backbones + extraction, what a user
waits for) and *steady* (extraction only, after every worker has its backbones).

GPU mode (``--gpu``): on one GPU, in-process extraction with 1, 4, 8 and 16 decode
processes (where decoding stops being the bottleneck), plus one pinned Dask GPU worker
(2 shard threads x the best decode count), and a clearly labelled *projection* for
VoxCeleb2 dev (1,092,009 clips) on 8 such GPUs from the best measured per-GPU rate.

    python benchmarks/extract_scaling.py                      # CPU: in-process vs 1 and 2 workers
    python benchmarks/extract_scaling.py --gpu --speakers 64 --videos 4 --clips 4 --clip-seconds 4

Prints a table and writes the numbers as JSON (``--json``, default next to this file).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import save_json, scratch_dir  # noqa: E402

VOX2_CLIPS = 1_092_009
VOX2_MEAN_SECONDS = 7.78


def _cfg(args, device: str, num_workers: int):
    from pipeline.extract.config import ExtractConfig
    return ExtractConfig(audio_backbone="ge2e_lstm", audio_weights=args.audio_weights, face_backbone="iresnet18",
                         face_weights="random", shard_size=args.shard_size, batch_size=args.batch_size,
                         num_workers=num_workers, device=device, dtype="float16")


def _max_diff(a: Path, b: Path) -> float:
    from pipeline.cache.reader import open_cache
    with open_cache(a) as x, open_cache(b) as y:
        assert x.ids.tolist() == y.ids.tolist()
        return max(float(np.abs(x.to_numpy(n) - y.to_numpy(n)).max()) for n in x.names
                   if x.specs[n].dtype != "bool")


def run_in_process(args, manifest: Path, out: Path, device: str, num_workers: int) -> dict:
    from pipeline.extract.run import run_extract
    t0 = time.perf_counter()
    s = run_extract(manifest, out, _cfg(args, device, num_workers), progress=False)
    wall = time.perf_counter() - t0
    return {"mode": f"in-process, {num_workers} decode proc", "clips": s.clips_computed, "seconds": wall,
            "clips_per_s": s.clips_computed / wall, "decode_s": s.stats.decode_seconds,
            "compute_s": s.stats.compute_seconds, "wait_s": s.stats.wait_seconds}


def run_dask(args, manifest: Path, out: Path, device: str, workers: int, num_workers: int,
             threads_per_worker: int | None = None) -> dict:
    from pipeline.extract.dask.cluster import ClusterOptions, open_cluster
    from pipeline.extract.dask.driver import run_distributed
    t0 = time.perf_counter()
    opts = ClusterOptions(cluster="local", workers=workers, threads_per_worker=threads_per_worker,
                          devices=("0",) * workers if device.startswith("cuda") else None, dashboard=False)
    with open_cluster(opts, device, log=lambda m: None) as client:
        t_up = time.perf_counter() - t0
        s = run_distributed(manifest, out, _cfg(args, device, num_workers), client=client, progress=False,
                            log=lambda m: None)
    wall = time.perf_counter() - t0
    steady = s.seconds - s.setup_seconds
    return {"mode": f"dask {workers} worker(s) x {num_workers} decode threads", "clips": s.clips_computed,
            "seconds": wall, "clips_per_s": s.clips_computed / wall, "cluster_start_s": t_up,
            "setup_s": s.setup_seconds, "steady_s": steady, "steady_clips_per_s": s.clips_computed / steady,
            "per_worker_clips": {w: v["clips"] for w, v in s.per_worker.items()},
            "decode_s": s.stats.decode_seconds, "compute_s": s.stats.compute_seconds}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--gpu", action="store_true", help="GPU mode: decode-process sweep on one GPU + projection")
    ap.add_argument("--corpus", type=Path, default=None, help="existing toy corpus (with manifest.jsonl)")
    ap.add_argument("--speakers", type=int, default=8)
    ap.add_argument("--videos", type=int, default=2, help="videos per speaker")
    ap.add_argument("--clips", type=int, default=2, help="clips per video")
    ap.add_argument("--clip-seconds", type=float, default=2.0)
    ap.add_argument("--shard-size", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=None, help="[default: 8 on CPU, 64 on GPU]")
    ap.add_argument("--decode", type=str, default="1,4,8,16", help="GPU mode: decode process counts")
    ap.add_argument("--device", default="cuda", help="GPU mode's device (cpu: a dry run of that mode)")
    ap.add_argument("--audio-weights", default="pretrained")
    ap.add_argument("--keep", type=Path, default=None, help="keep the caches in this folder")
    ap.add_argument("--json", type=Path, default=Path(__file__).with_suffix(".json"))
    args = ap.parse_args(argv)
    args.batch_size = args.batch_size or (64 if args.gpu else 8)
    from data_manifests.synth.corpus import synthesize
    with scratch_dir("avfuse-scaling-") as tmp:
        work = args.keep or tmp
        work.mkdir(parents=True, exist_ok=True)
        corpus = args.corpus
        if corpus is None:
            corpus = tmp / "toy"
            synthesize(corpus, speakers=args.speakers, videos_per_speaker=args.videos, clips_per_video=args.clips,
                       seed=0, clip_seconds=args.clip_seconds, progress=False, workers=os.cpu_count() or 1)
        manifest = corpus / "manifest.jsonl"
        rows = []
        if args.gpu:
            import torch
            if args.device.startswith("cuda") and not torch.cuda.is_available():
                raise SystemExit("--gpu: torch sees no CUDA device")
            for n in [int(x) for x in args.decode.split(",")]:
                rows.append(run_in_process(args, manifest, work / f"inproc{n}.zarr", args.device, n))
                print(f"  {rows[-1]['mode']}: {rows[-1]['clips_per_s']:.1f} clips/s", flush=True)
            best = max(rows, key=lambda r: r["clips_per_s"])
            n_best = int(best["mode"].split(", ")[1].split()[0])
            rows.append(run_dask(args, manifest, work / "dask1gpu.zarr", args.device, 1, n_best,
                                 threads_per_worker=2))
            ref = work / f"inproc{n_best}.zarr"
            diff = _max_diff(ref, work / "dask1gpu.zarr")
        else:
            rows.append(run_in_process(args, manifest, work / "inproc.zarr", "cpu", 2))
            rows.append(run_dask(args, manifest, work / "dask1.zarr", "cpu", 1, 2))
            rows.append(run_dask(args, manifest, work / "dask2.zarr", "cpu", 2, 1))
            ref = work / "inproc.zarr"
            diff = max(_max_diff(ref, work / "dask1.zarr"), _max_diff(ref, work / "dask2.zarr"))
        base = rows[0]["clips_per_s"] if not args.gpu else max(r["clips_per_s"] for r in rows if "steady_s" not in r)
        n_clips = rows[0]["clips"]
        print(f"\ncorpus: {n_clips} clips of ~{args.clip_seconds:.1f} s; shard size {args.shard_size}; "
              f"{os.cpu_count()} CPU cores; load avg {os.getloadavg()[0]:.1f}")
        print(f"{'mode':<42} {'clips/s':>8} {'x in-proc':>9} {'steady clips/s':>15} {'x in-proc':>9}")
        for r in rows:
            st = r.get("steady_clips_per_s")
            print(f"{r['mode']:<42} {r['clips_per_s']:8.2f} {r['clips_per_s'] / base:9.2f} "
                  + (f"{st:15.2f} {st / base:9.2f}" if st else f"{'':15} {'':9}"))
            if "per_worker_clips" in r:
                print(f"{'':4}cluster start {r['cluster_start_s']:.1f} s, backbones loaded on workers after "
                      f"{r['setup_s']:.1f} s; per worker: {r['per_worker_clips']}")
        print(f"max |diff| of embeddings, Dask vs in-process: {diff:.2e}")
        rate = max(r.get("steady_clips_per_s") or r["clips_per_s"] for r in rows)
        per_gpu = "GPU" if args.gpu and args.device.startswith("cuda") else "CPU worker"
        hours = VOX2_CLIPS / (8 * rate) / 3600
        proj = {"per_unit_clips_per_s": rate, "units": 8, "hours": hours, "clip_seconds": args.clip_seconds,
                "note": "linear scaling assumed; VoxCeleb2 dev clips average 7.78 s"}
        print(f"PROJECTION (not measured): VoxCeleb2 dev, {VOX2_CLIPS:,} clips, on 8 x this {per_gpu} at the best "
              f"measured {rate:.1f} clips/s each: {hours:.1f} h (assumes linear scaling over 8 units; clips here "
              f"are ~{args.clip_seconds:.1f} s, VoxCeleb2's average {VOX2_MEAN_SECONDS} s: audio decode/compute "
              f"grow with length)")
        out = {"mode": "gpu" if args.gpu else "cpu", "clips": n_clips, "clip_seconds": args.clip_seconds,
               "shard_size": args.shard_size, "batch_size": args.batch_size, "cpu_count": os.cpu_count(),
               "load_avg_1min": os.getloadavg()[0], "rows": rows, "max_abs_diff": diff, "projection": proj}
        if args.gpu and args.device.startswith("cuda"):
            import torch
            out["gpu"] = torch.cuda.get_device_name(0)
        save_json(args.json, out, indent=2)
        return out


if __name__ == "__main__":
    main()
