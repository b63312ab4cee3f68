"""What bounds the decode side of ``extract`` on a many-core box (issue 15), and what bounds the GPU side.

Measured on VoxCeleb2-shaped media (``gpu_check.voxceleb_media``), in one run:

* **decode only**: ``decode_clip`` (audio + 8 faces, ``--resize-on`` device, as ``extract`` on
  CUDA) in N forked processes that return nothing (a ``multiprocessing`` pool): clips/s and the
  workers' CPU-ms per clip, N = 1 and 8, 14, 16 (on 16 cores). How decoding scales, with no
  hand-off at all.
* **ring**: the same through ``iter_decoded`` (the shared-memory ring ``extract`` uses), 14
  processes. (Mapping the ring's pages up front, ``MAP_POPULATE``, was measured here too and
  gained nothing: 203 vs 207 clips/s on the H200 box; it went.)
* **pickled**: the same with the arrays pickled back through the pool (the way before the ring).
* **extract** (CUDA only): ``run_extract`` end to end at batch 128 and 256.
* **batch** (CUDA only): the backbones alone (``embed_shard``, bf16) on clips decoded beforehand at
  ``--batch-size`` 64, 128 and 256: clips/s (at 128, one audio batch takes the host as long to
  launch as the GPU to run: ``benchmarks/gpu_profile_backbones.py``).

    python benchmarks/decode_scaling.py --out DIR [--clips 1024] [--dry]

Writes ``decode_scaling.json``. ``--dry``: tiny sizes (tests and CPU-only boxes).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing as mp
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

_SPEC = None


def _init(spec) -> None:
    global _SPEC
    from pipeline.extract.shm_ring import worker_init
    worker_init()
    _SPEC = spec


def _decode_nothing_back(rec) -> float:
    from pipeline.extract.decode_pool import decode_clip
    c0 = time.process_time()
    decode_clip(rec, _SPEC)
    return time.process_time() - c0


def _decode_pickled(rec):
    from pipeline.extract.decode_pool import decode_clip
    return decode_clip(rec, _SPEC)


def pool_rate(recs, spec, n: int, fn) -> dict:
    ctx = mp.get_context("fork")
    with ctx.Pool(n, initializer=_init, initargs=(spec,)) as pool:
        pool.map(_decode_nothing_back, recs[:n])                      # workers up and warm
        t0 = time.perf_counter()
        out = list(pool.imap_unordered(fn, recs, chunksize=2))
        wall = time.perf_counter() - t0
    row = {"workers": n, "clips": len(recs), "clips_per_s": len(recs) / wall}
    if fn is _decode_nothing_back:
        row["worker_cpu_ms_per_clip"] = 1e3 * sum(out) / len(out)
    return row


def ring_rate(recs, spec, n: int) -> dict:
    """Clips/s through ``iter_decoded``'s ring, from the first clip on (workers forked and warm)."""
    from pipeline.extract.decode_pool import iter_decoded
    t0 = time.perf_counter()
    t1, k = None, 0
    for _ in iter_decoded(recs, spec, num_workers=n, backend="process", prefetch=256):
        k += 1
        t1 = t1 or time.perf_counter()
    t2 = time.perf_counter()
    return {"workers": n, "clips": k, "clips_per_s": (k - 1) / max(t2 - t1, 1e-9), "first_clip_s": t1 - t0}


def batch_rates(recs, cfg_for, s, device: str, sizes) -> dict:
    import torch

    from pipeline.extract.decode_pool import decode_spec, iter_decoded
    from pipeline.extract.models import get_models
    from pipeline.extract.shard import embed_shard
    cfg0 = cfg_for(s, device)
    decoded = list(iter_decoded(recs, decode_spec(cfg0), num_workers=max(1, (os.cpu_count() or 2) - 2)))
    models = get_models(cfg0)
    out = {"clips": len(decoded)}
    for bs in sizes:
        cfg = dataclasses.replace(cfg0, batch_size=bs)
        embed_shard(decoded[:bs], cfg, models)                          # warm-up at this batch's shapes
        if device != "cpu":
            torch.cuda.reset_peak_memory_stats()
        with torch.inference_mode():
            t0 = time.perf_counter()
            res = embed_shard(decoded, cfg, models)
            wall = time.perf_counter() - t0
        out[f"batch_{bs}"] = {"clips_per_s": len(decoded) / wall, "audio_s": res.stats.audio_seconds,
                              "face_s": res.stats.face_seconds,
                              "peak_cuda_gb": torch.cuda.max_memory_allocated() / 1e9 if device != "cpu" else None}
        print(f"batch {bs}: {out[f'batch_{bs}']}", flush=True)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=REPO / "bench_out" / "decode_scaling")
    ap.add_argument("--clips", type=int, default=1024)
    ap.add_argument("--dry", action="store_true")
    args = ap.parse_args(argv)
    import torch

    from benchmarks.gpu_check import DRY, FULL, cfg_for, voxceleb_media
    from data_manifests.manifest import read_manifest
    from data_manifests.voxceleb import scan_to_manifest
    from pipeline.extract.decode_pool import decode_spec
    cuda = torch.cuda.is_available() and not args.dry
    s = FULL if cuda else DRY
    cores = os.cpu_count() or 1
    n_clips = args.clips if cuda else 8
    work = Path(tempfile.mkdtemp(prefix="avfuse-decode-scaling-"))
    res: dict = {"cores": cores, "device": torch.cuda.get_device_name(0) if cuda else "cpu"}
    args.out.mkdir(parents=True, exist_ok=True)

    def dump() -> None:
        (args.out / "decode_scaling.json").write_text(json.dumps(res, indent=1) + "\n")

    try:
        voxceleb_media(work / "media", s.pool, n_clips, s.max_seconds, min(16, cores))
        scan_to_manifest(work / "m.jsonl", work / "media", "vox2", probe=False, progress=False)
        recs = read_manifest(work / "m.jsonl")
        spec = decode_spec(cfg_for(s, "cuda" if cuda else "cpu"))
        spec = dataclasses.replace(spec, resize_on="device")        # as extract decodes on CUDA
        many = [n for n in (8, 14, 16) if n <= cores] or [cores]
        res["decode_only"] = [pool_rate(recs[:max(8, n_clips // 8)], spec, 1, _decode_nothing_back)]
        res["decode_only"] += [pool_rate(recs, spec, n, _decode_nothing_back) for n in many]
        print(json.dumps(res["decode_only"]), flush=True)
        dump()
        n = max(1, min(14, cores - 2))
        res["ring"] = ring_rate(recs, spec, n)
        res["pickled"] = pool_rate(recs, spec, n, _decode_pickled)
        print(json.dumps({k: res[k] for k in ("ring", "pickled")}), flush=True)
        dump()
        res["batch"] = batch_rates(recs[:512 if cuda else 4], cfg_for, s, "cuda" if cuda else "cpu",
                                   (64, 128, 256) if cuda else (2, 4))
        dump()
        if cuda:
            res["extract"] = {}
            from pipeline.extract.run import run_extract
            for bs in (128, 256):
                cfg = cfg_for(s, "cuda", num_workers=max(1, cores - 2), batch_size=bs)
                sm = run_extract(work / "m.jsonl", work / f"e{bs}.zarr", cfg, progress=False)
                res["extract"][f"batch_{bs}"] = {"clips_per_s": sm.clips_per_s, "seconds": sm.seconds,
                                                 "backbone_s": sm.stats.compute_seconds,
                                                 "wait_for_decode_s": sm.stats.wait_seconds,
                                                 "pickled_clips": sm.stats.pickled_clips}
                print(f"extract batch {bs}: {res['extract'][f'batch_{bs}']}", flush=True)
                dump()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
