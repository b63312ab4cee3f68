"""Scan throughput: `data_manifests.voxceleb` vs a naive sequential walk-and-probe, same tree, same run.

Builds synthetic trees of tiny but valid media in a temp folder (bytes of one real file
copied per clip, so building is cheap and every header is a real one):

* vox1: ``wav/SPK/VIDEO/UTT.wav`` (0.01 s PCM16 wav stubs), probed with soundfile;
* vox2: ``dev/aac/.../UTT.m4a`` + ``dev/mp4/.../UTT.mp4`` (AAC; H.264 64x64 + AAC), probed with PyAV.

The naive baseline is what a short script would do: ``os.walk`` the tree and probe every
file in one loop, reading the same header fields. Our scan = discovery + probing + records
(no manifest writing; that is a streaming JSONL append). Files are in the page cache
(just written), so this measures CPU cost of header parsing, not disk seeks; on a cold
network disk the thread pool helps more, since header reads wait on I/O.

    python benchmarks/scan_speed.py [--vox1-clips 10000] [--vox2-clips 2000] [--workers 8] [--repeats 3] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import av  # noqa: E402
import numpy as np  # noqa: E402
import soundfile as sf  # noqa: E402

from benchmarks.common import save_json, scratch_dir  # noqa: E402
from data_manifests.voxceleb import scan  # noqa: E402

VOX2_DEV_CLIPS = 1_092_009


def template_files(tmp: Path) -> dict[str, bytes]:
    sf.write(tmp / "t.wav", np.zeros(160, np.float32), 16000, subtype="PCM_16")
    with av.open(str(tmp / "t.m4a"), "w", format="mp4") as c:
        s = c.add_stream("aac", rate=16000)
        s.layout = "mono"
        _audio(c, s)
    with av.open(str(tmp / "t.mp4"), "w") as c:
        v = c.add_stream("libx264", rate=25)
        v.width = v.height = 64
        v.pix_fmt = "yuv420p"
        a = c.add_stream("aac", rate=16000)
        a.layout = "mono"
        for i in range(5):
            for p in v.encode(av.VideoFrame.from_ndarray(np.full((64, 64, 3), 50 * i, np.uint8), format="rgb24")):
                c.mux(p)
        for p in v.encode(None):
            c.mux(p)
        _audio(c, a)
    return {k: (tmp / f"t.{k}").read_bytes() for k in ("wav", "m4a", "mp4")}


def _audio(c, s) -> None:
    fr = av.AudioFrame.from_ndarray(np.zeros((1, 3200), np.float32), format="flt", layout="mono")
    fr.sample_rate = 16000
    for p in list(s.encode(fr)) + list(s.encode(None)):
        c.mux(p)


def build_tree(root: Path, n_clips: int, kinds: list[tuple[str, str, bytes]]) -> float:
    """``n_clips`` clips as SPK(100 clips)/VIDEO(10 clips)/UTT; returns seconds taken."""
    t0 = time.perf_counter()
    for i in range(n_clips):
        spk, vid, utt = f"id{i // 100:05d}", f"vid{(i // 10) % 10:02d}", f"{i % 10 + 1:05d}"
        for folder, ext, data in kinds:
            d = root / folder / spk / vid
            if i % 10 == 0:
                d.mkdir(parents=True, exist_ok=True)
            (d / f"{utt}.{ext}").write_bytes(data)
    return time.perf_counter() - t0


def naive_scan(root: Path) -> int:
    """os.walk + one probe per file, sequentially; returns the number of clips seen."""
    clips = set()
    for dirpath, _, files in os.walk(root):
        for f in files:
            path = os.path.join(dirpath, f)
            stem, ext = os.path.splitext(f)
            if ext == ".wav":
                info = sf.info(path)
                _ = (info.frames / info.samplerate, info.samplerate)
            elif ext in (".m4a", ".mp4"):
                with av.open(path) as c:
                    for s in c.streams:
                        _ = (s.duration, s.time_base, s.frames, getattr(s, "average_rate", None))
            else:
                continue
            rel = Path(dirpath).parts[-2:]
            clips.add(f"{rel[0]}/{rel[1]}/{stem}")
    return len(clips)


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def bench(name: str, root: Path, layout: str, n: int, workers: int, repeats: int) -> dict:
    """Best of ``repeats`` rounds per method (rounds interleave the methods, so a noisy
    neighbour on a shared machine hits all of them alike)."""
    best = {"naive": float("inf"), "ours_1thread": float("inf"), "ours_parallel": float("inf")}
    for _ in range(repeats):
        n_naive, t = timed(lambda: naive_scan(root))
        best["naive"] = min(best["naive"], t)
        (recs1, _), t = timed(lambda: scan(root, layout, workers=1, progress=False))
        best["ours_1thread"] = min(best["ours_1thread"], t)
        (recs, rep), t = timed(lambda: scan(root, layout, workers=workers, progress=False))
        best["ours_parallel"] = min(best["ours_parallel"], t)
        assert n_naive == len(recs) == len(recs1) == n and rep.n_unreadable == 0
        assert all(r.duration is not None for r in recs)
    t_naive, t_one, t_par = best["naive"], best["ours_1thread"], best["ours_parallel"]
    row = {"tree": name, "clips": n, "naive_clips_per_s": n / t_naive, "ours_1thread_clips_per_s": n / t_one,
           f"ours_{workers}threads_clips_per_s": n / t_par, "speedup_vs_naive": t_naive / t_par,
           "best_seconds": best}
    print(f"{name:5s} {n:7d} clips | naive {n / t_naive:8.0f} clips/s | ours 1 thread {n / t_one:8.0f} | "
          f"ours {workers} threads {n / t_par:8.0f} clips/s | x{t_naive / t_par:.2f} vs naive", flush=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--vox1-clips", type=int, default=10_000)
    ap.add_argument("--vox2-clips", type=int, default=2_000)
    ap.add_argument("--repeats", type=int, default=3, help="rounds per method; the best is kept")
    ap.add_argument("--workers", type=int, default=8)
    ap.add_argument("--json", type=Path, help="also write the numbers here")
    args = ap.parse_args()
    with scratch_dir("avfuse-scan-bench-") as tmp:
        tpl = template_files(tmp)
        t1 = build_tree(tmp / "v1", args.vox1_clips, [("wav", "wav", tpl["wav"])])
        t2 = build_tree(tmp / "v2" / "dev", args.vox2_clips, [("aac", "m4a", tpl["m4a"]), ("mp4", "mp4", tpl["mp4"])])
        print(f"built trees: vox1 {args.vox1_clips} wav in {t1:.1f} s, vox2 {args.vox2_clips} m4a+mp4 in {t2:.1f} s "
              f"(cores: {os.cpu_count()}, workers: {args.workers})", flush=True)
        rows = [bench("vox1", tmp / "v1", "vox1", args.vox1_clips, args.workers, args.repeats),
                bench("vox2", tmp / "v2", "vox2", args.vox2_clips, args.workers, args.repeats)]
        v2 = rows[1]
        proj = {k: VOX2_DEV_CLIPS / v2[k] / 60 for k in v2 if k.endswith("clips_per_s")}
        print("projection for the 1,092,009 VoxCeleb2 dev clips (m4a + mp4 headers, warm cache): " +
              ", ".join(f"{k.replace('_clips_per_s', '')} {m:.1f} min" for k, m in proj.items()))
        result = {"machine": f"{platform.machine()} {os.cpu_count()} cores, {platform.python_version()}",
                  "load_average_after": os.getloadavg(),
                  "rows": rows, "vox2_dev_projection_minutes": proj}
        print(json.dumps(result, indent=1))
        save_json(args.json, result, indent=1)


if __name__ == "__main__":
    main()
