"""The decoder's floor on VoxCeleb2-format media: how far exact pixels can go below today's fast path.

Issue 15 asks for <= 25 CPU-ms per average VoxCeleb2 clip (audio + 8 faces). The fast path
(``extractors.media.video``) decodes only what the 8 wanted frames need: every reference
frame up to the last wanted one, plus the wanted frames. This script measures, in one run
and as process CPU per clip (best of ``--repeats`` passes):

* **all frames**: every video packet through the H.264 decoder, nothing converted
  (the decoder's cost of the whole clip);
* **floor**: exactly the packets the fast path decodes (reference frames up to the last
  wanted one, plus the wanted ones), nothing converted, no per-packet Python beyond the
  decode call: what any path returning the *same pixels* must still pay, with libavcodec
  as the decoder;
* **fast path**: ``load_faces`` (the default path: the floor plus the NAL checks, 8 RGB
  conversions and the 8 PIL resizes to 112);
* **audio**: ``load_audio`` of the 16 kHz AAC ``.m4a``.

``floor + audio`` against 25 ms says whether the target is reachable without changing
pixels; the cuts that change pixels (loop filter, one-step resize) are measured with their
embedding check in ``benchmarks/decode_speed.py``.

    python benchmarks/decode_floor.py [--media DIR | --clips 24] [--repeats 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import save_json  # noqa: E402
from benchmarks.decode_speed import CORES, VOX2_DEV_CLIPS, per_clip_ms  # noqa: E402
from benchmarks.voxceleb_media import add_media_args, bench_records  # noqa: E402
from extractors.media.common import frame_indices  # noqa: E402
from extractors.media.decode import load_audio, load_faces  # noqa: E402
from extractors.media.video import _is_reference, _nal_length_size  # noqa: E402

TARGET_MS = 25.0
VOX2_DEV_MEAN_S = 7.78


def _packets(path: str):
    """The demuxed video packets of ``path`` (kept with their container) and the index (in
    decode order) of each packet the fast path decodes."""
    import av
    c = av.open(path)
    s = c.streams.video[0]
    s.codec_context.thread_count = 1
    packets = [p for p in c.demux(s) if p.size]
    pts = np.asarray([p.pts for p in packets], dtype=np.int64)
    order = np.argsort(pts, kind="stable")
    idx, _ = frame_indices(len(packets), 8)
    wanted = set(pts[order[idx]].tolist())
    nal = _nal_length_size(s.codec_context)
    needed = [d for d in range(int(order[idx].max()) + 1)
              if int(pts[d]) in wanted or nal is None or _is_reference(bytes(packets[d]), nal)]
    return c, s, packets, needed


def decode_all(path: str) -> int:
    c, s, packets, _ = _packets(path)
    n = sum(len(s.codec_context.decode(p)) for p in packets) + len(s.codec_context.decode(None))
    c.close()
    return n


def decode_floor(path: str) -> int:
    c, s, packets, needed = _packets(path)
    n = sum(len(s.codec_context.decode(packets[d])) for d in needed) + len(s.codec_context.decode(None))
    c.close()
    return n


def demux_only(path: str) -> int:
    c, _, _, needed = _packets(path)
    c.close()
    return len(needed)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_media_args(ap)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", help="write the results here")
    a = ap.parse_args(argv)
    tmp = tempfile.TemporaryDirectory(prefix="avfuse-floor-")
    recs = bench_records(a.media, a.clips, tmp.name)
    mp4 = [str(r.video_path) for r in recs]
    m4a = [str(r.audio_path) for r in recs]
    mean_s = float(np.mean([r.duration for r in recs]))
    R = a.repeats
    frames = [decode_all(p) for p in mp4]
    decoded = [demux_only(p) for p in mp4]
    ms = {"demux + packet selection": per_clip_ms(demux_only, mp4, R),
          "all frames, no conversion": per_clip_ms(decode_all, mp4, R),
          "floor: fast path's packets, no conversion": per_clip_ms(decode_floor, mp4, R),
          "fast path (load_faces, 8 x 112)": per_clip_ms(lambda p: load_faces(p, size=112), mp4, R),
          "audio (load_audio, m4a)": per_clip_ms(lambda p: load_audio(p, 16000), m4a, R)}
    floor_total = ms["floor: fast path's packets, no conversion"] + ms["audio (load_audio, m4a)"]
    fast_total = ms["fast path (load_faces, 8 x 112)"] + ms["audio (load_audio, m4a)"]
    scale = VOX2_DEV_MEAN_S / mean_s
    res = {"clips": len(recs), "mean_seconds": mean_s, "repeats": R,
           "mean_frames": float(np.mean(frames)), "mean_frames_decoded": float(np.mean(decoded)),
           "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
                      f"load {os.getloadavg()[0]:.1f}",
           "cpu_ms_per_clip": ms, "floor_plus_audio_ms": floor_total, "fast_plus_audio_ms": fast_total,
           "target_ms": TARGET_MS,
           "vox2_dev_minutes_16_cores": {k: v * scale * VOX2_DEV_CLIPS / CORES / 1e3 / 60
                                         for k, v in (("floor", floor_total), ("fast", fast_total))}}
    report(res)
    save_json(a.json, res)
    return res


def report(res: dict) -> None:
    print(f"{res['clips']} VoxCeleb2-format clips, mean {res['mean_seconds']:.2f} s, "
          f"{res['mean_frames']:.0f} frames per clip, {res['mean_frames_decoded']:.0f} decoded by the fast path; "
          f"{res['machine']}; best of {res['repeats']}")
    print("| CPU-ms per clip | |\n| --- | --- |")
    for k, v in res["cpu_ms_per_clip"].items():
        print(f"| {k} | {v:.1f} |")
    m = res["vox2_dev_minutes_16_cores"]
    print(f"floor + audio {res['floor_plus_audio_ms']:.1f} ms (fast path + audio {res['fast_plus_audio_ms']:.1f} ms) "
          f"vs target {res['target_ms']:.0f} ms: "
          + ("reachable with exact pixels" if res["floor_plus_audio_ms"] <= res["target_ms"]
             else "NOT reachable with exact pixels and this decoder"))
    print(f"VoxCeleb2 dev on {CORES} cores (scaled to the mean {VOX2_DEV_MEAN_S} s): floor {m['floor']:.1f} min, "
          f"fast path {m['fast']:.1f} min")


if __name__ == "__main__":
    main()
