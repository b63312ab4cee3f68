"""Decode budget per clip on VoxCeleb-format media: naive vs before vs after, same run.

CPU-ms per clip (process CPU time over all threads, plus the CPU of finished child
processes, ``time.process_time`` + ``resource.getrusage(RUSAGE_CHILDREN)``: a busy box
stretches wall time, much less CPU time) for the parts of one clip's decode:

* **audio**: the 16 kHz mono AAC ``.m4a`` to float32 at 16 kHz. naive: a PyAV loop
  (``to_ndarray`` per frame, concatenate); before = after: ``extractors.media.decode.load_audio``;
* **video -> 8 frames**: the 8 frames of the sampling rule as RGB at the video's 224 x 224
  (no resize). naive: decode every frame to RGB, then pick; before: the exact path
  (``load_faces(exact=True)``: decode every frame up to the last wanted one, convert the
  wanted ones); after: the default fast path (demux first, skip non-reference frames that
  are not wanted, one decoder thread);
* **crop/resize**: the same at 112 x 112 (IResNet's input) minus the 224 figure;
* variants of the after path that were measured and not taken (they move the embeddings:
  see the check) and decoder threads;
* **in decode workers**: ``pipeline.extract.shard.iter_decoded`` with worker processes, the
  real ``decode_clip`` (audio + faces), CPU of the parent and the workers per clip.

The embedding check: exact vs after path, per clip cosine of the face/clip embeddings with
a random-init ``--backbone`` (registry init), next to the highest cosine between two
different clips. The projection: the after figure scaled to VoxCeleb2-dev's mean duration
(7.78 s; decode cost grows with the frames decoded) on 16 cores.

    python benchmarks/decode_speed.py [--media DIR | --clips 24] [--repeats 3] [--workers 2]
                                      [--check-clips 8] [--backbone iresnet18] [--vox1-clips 6] [--json FILE]
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import save_json  # noqa: E402
from benchmarks.voxceleb_media import add_media_args, bench_records, generate, real_durations  # noqa: E402
from data_manifests.manifest import read_manifest  # noqa: E402
from extractors.media.common import centre_crop_resize, frame_indices  # noqa: E402
from extractors.media.decode import load_audio, load_faces  # noqa: E402
from extractors.media.video import faces_from_video  # noqa: E402

VOX2_DEV_CLIPS = 1_092_009
CORES = 16


def cpu_s() -> float:
    ch = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + ch.ru_utime + ch.ru_stime


def per_clip_ms(fn, items, repeats: int) -> float:
    """Best of ``repeats`` passes over ``items``: CPU-ms per item."""
    fn(items[0])  # warm: imports, kernels
    best = float("inf")
    for _ in range(repeats):
        t0 = cpu_s()
        for it in items:
            fn(it)
        best = min(best, (cpu_s() - t0) / len(items) * 1e3)
    return best


def naive_audio(path: str) -> np.ndarray:
    import av
    with av.open(path) as c:
        chunks = [f.to_ndarray() for f in c.decode(c.streams.audio[0])]
    x = np.concatenate(chunks, axis=1)
    return x.mean(0) if x.shape[0] > 1 else x[0]


def naive_faces(path: str, size: int) -> np.ndarray:
    import av
    with av.open(path) as c:
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(c.streams.video[0])]
    idx, _ = frame_indices(len(frames), 8)
    return np.stack([centre_crop_resize(frames[i], size) for i in idx])


def worker_ms(records, workers: int, min_items: int = 96) -> float:
    """CPU-ms per clip of ``iter_decoded`` in worker processes (the list repeated to at least
    ``min_items`` so that the workers' start-up is spread thin; it is still included)."""
    from pipeline.extract.decode_pool import DecodeSpec, iter_decoded
    spec = DecodeSpec(audio_sr=16000, face_size=112, frames=8)
    records = list(records) * max(1, -(-min_items // len(records)))
    t0 = cpu_s()
    n = sum(1 for _ in iter_decoded(records, spec, num_workers=workers, backend="process"))
    return (cpu_s() - t0) / n * 1e3


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_media_args(ap)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--check-clips", type=int, default=8)
    ap.add_argument("--backbone", default="iresnet18")
    ap.add_argument("--vox1-clips", type=int, default=6, help="VoxCeleb1-format clips (wav + jpg folder); 0: skip")
    ap.add_argument("--json", help="write the results here")
    a = ap.parse_args(argv)
    tmp = tempfile.TemporaryDirectory(prefix="avfuse-decode-")
    recs = bench_records(a.media, a.clips, tmp.name)
    mp4 = [r.video_path for r in recs]
    m4a = [r.audio_path for r in recs]
    mean_s = float(np.mean([r.duration for r in recs]))
    R = a.repeats
    res: dict = {"clips": len(recs), "mean_seconds": mean_s, "repeats": R,
                 "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
                            f"load {os.getloadavg()[0]:.1f}"}
    t = {}
    t["audio"] = {"naive": per_clip_ms(naive_audio, m4a, R),
                  "before": per_clip_ms(lambda p: load_audio(p, 16000), m4a, R)}
    t["audio"]["after"] = t["audio"]["before"]
    for size, key in ((224, "video"), (112, "faces")):
        t[key] = {"naive": per_clip_ms(lambda p: naive_faces(p, size), mp4, R),
                  "before": per_clip_ms(lambda p: load_faces(p, size=size, exact=True), mp4, R),
                  "after": per_clip_ms(lambda p: load_faces(p, size=size), mp4, R)}
    t["crop_resize"] = {k: t["faces"][k] - t["video"][k] for k in ("naive", "before", "after")}
    t["total"] = {k: t["audio"][k] + t["faces"][k] for k in ("naive", "before", "after")}
    variants = {"after + skip loop filter": dict(skip_loop_filter=True),
                "after + swscale resize": dict(fast_resize=True),
                "after, 2 frame threads": dict(threads=2),
                "after without non-ref skipping": dict(skip_nonref=False)}
    res["variants_faces_ms"] = {k: per_clip_ms(lambda p: faces_from_video(p, 8, 112, **kw), mp4, R)
                                for k, kw in variants.items()}
    res["parts_ms"] = t
    if a.workers > 0:
        res["in_workers_ms"] = {"workers": a.workers, "audio+faces": worker_ms(recs, a.workers)}
    # projection: scale the duration-dependent cost to VoxCeleb2-dev's mean duration
    real_mean = float(real_durations("vox2").mean())
    after = t["total"]["after"] * real_mean / mean_s
    res["projection"] = {"vox2_mean_seconds": real_mean, "after_ms_at_vox2_mean": after,
                         "clips_per_s_16_cores": CORES * 1e3 / after,
                         "vox2_dev_minutes_16_cores": VOX2_DEV_CLIPS * after / 1e3 / CORES / 60,
                         "target_ms": 25.0, "meets_target": after <= 25.0}
    if a.check_clips > 0:
        from extractors.media.check import compare_paths
        chk = {}
        for name, kw in (("after (default)", {}), ("+ skip loop filter", dict(skip_loop_filter=True)),
                         ("+ swscale resize", dict(fast_resize=True))):
            r = compare_paths(mp4[:a.check_clips], backbone=a.backbone, **kw)
            chk[name] = {"clip_cos_min": min(r["clip_cos"]), "frame_cos_min": min(r["frame_cos_min"]),
                         "max_pixel_diff": max(r["max_pixel_diff"]), "other_clip_cos_max": r["other_clip_cos_max"]}
        res["embedding_check"] = {"backbone": a.backbone, "clips": min(a.check_clips, len(mp4)), "paths": chk}
    if a.vox1_clips > 0:
        v1 = Path(tmp.name) / "vox1"
        generate(v1, kind="vox1", clips=a.vox1_clips, progress=False)
        r1 = read_manifest(v1 / "manifest.jsonl")
        res["vox1_ms"] = {"mean_seconds": float(np.mean([r.duration for r in r1])),
                          "audio_wav": per_clip_ms(lambda r: load_audio(r.audio_path, 16000), r1, R),
                          "faces_jpg": per_clip_ms(lambda r: load_faces(frames_dir=r.frames_dir), r1, R)}
    report(res)
    save_json(a.json, res)
    tmp.cleanup()
    return res


def report(res: dict) -> None:
    t = res["parts_ms"]
    print(f"\n{res['clips']} VoxCeleb2-format clips, mean {res['mean_seconds']:.2f} s; {res['machine']}")
    print("\n| CPU-ms per clip | naive | before | after | naive/after |\n| --- | --- | --- | --- | --- |")
    for k, label in (("audio", "audio (m4a)"), ("video", "video -> 8 frames"), ("crop_resize", "crop/resize"),
                     ("total", "**total**")):
        r = t[k]
        print(f"| {label} | {r['naive']:.1f} | {r['before']:.1f} | {r['after']:.1f} | x{r['naive'] / max(r['after'], 1e-9):.1f} |")
    for k, v in res["variants_faces_ms"].items():
        print(f"| faces: {k} | | | {v:.1f} | |")
    if "in_workers_ms" in res:
        w = res["in_workers_ms"]
        print(f"| decode_clip in {w['workers']} worker processes (parent + workers) | | | {w['audio+faces']:.1f} | |")
    p = res["projection"]
    print(f"\nat VoxCeleb2-dev's mean {p['vox2_mean_seconds']:.2f} s: {p['after_ms_at_vox2_mean']:.1f} CPU-ms/clip -> "
          f"{p['clips_per_s_16_cores']:.0f} clips/s on 16 cores -> {p['vox2_dev_minutes_16_cores']:.1f} min for "
          f"{VOX2_DEV_CLIPS:,} clips (target 25 ms: {'met' if p['meets_target'] else 'NOT met'})")
    if "embedding_check" in res:
        e = res["embedding_check"]
        print(f"\nembedding check, {e['backbone']} random init, {e['clips']} clips (exact vs path):")
        for k, v in e["paths"].items():
            print(f"  {k}: clip cos min {v['clip_cos_min']:.6f}, frame cos min {v['frame_cos_min']:.6f}, "
                  f"max pixel diff {v['max_pixel_diff']}, different clips' cos max {v['other_clip_cos_max']:.4f}")
    if "vox1_ms" in res:
        v = res["vox1_ms"]
        print(f"\nVoxCeleb1 format (mean {v['mean_seconds']:.2f} s): wav {v['audio_wav']:.1f} ms, "
              f"8 jpg faces {v['faces_jpg']:.1f} ms per clip")


if __name__ == "__main__":
    main()
