"""``--resize-on device`` vs the CPU resize: does it keep the embeddings, and what does it save?

On VoxCeleb-format media (``benchmarks/voxceleb_media.py``, vox2: H.264 224x224, durations at
the real VoxCeleb2-dev quantiles), in one run:

* **decode-side CPU-ms per clip** (``time.process_time``, best of ``--repeats``) of the faces as
  a decode worker makes them: ``cpu`` = 8 frames centre-cropped and resized to 112 with PIL
  (today), ``device`` = 8 frames centre-cropped at the source side (224), no resize;
* **the resize where it moves to**: CPU-ms per clip of ``pipeline.extract.embed.faces_on_device``
  on this machine's CPU (the upper bound: on a GPU it is a kernel on data already there);
* **hand-off bytes per clip** (faces): 112 vs 224;
* **the embedding check**: ``embed_faces`` (what ``extract`` runs) with a random-init
  ``--backbone`` (default ``iresnet50``, fp32, CPU) on both, per clip (``face/clip``, mean of
  the valid frames) and per frame, next to the highest cosine between two different clips.
  Pass: cosine >= 0.999 per clip **and** per frame.

    python benchmarks/resize_check.py [--media DIR | --clips 8] [--backbone iresnet50] [--repeats 3] [--json F]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import save_json  # noqa: E402
from benchmarks.voxceleb_media import generate  # noqa: E402
from data_manifests.manifest import read_manifest  # noqa: E402
from extractors.media.decode import load_faces  # noqa: E402


def best_ms(fn, items, repeats: int) -> float:
    fn(items[0])
    best = float("inf")
    for _ in range(repeats):
        t0 = time.process_time()
        for it in items:
            fn(it)
        best = min(best, (time.process_time() - t0) / len(items) * 1e3)
    return best


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def check(videos, backbone: str, frames: int = 8, repeats: int = 3) -> dict:
    import torch

    from pipeline.extract import ExtractConfig, get_models
    from pipeline.extract.embed import embed_faces, faces_on_device
    cfg = ExtractConfig(face_backbone=backbone, face_weights="random", frames=frames, dtype="float32")
    models = get_models(cfg)
    size = int(models.face_info["spec"]["crop"])
    cpu = [load_faces(v, n_frames=frames, size=size) for v in videos]
    dev = [load_faces(v, n_frames=frames, size=None) for v in videos]
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(cpu, dev))
    res = {"backbone": backbone, "clips": len(videos), "crop": size, "source_side": int(dev[0][0].shape[-1])}
    res["decode_cpu_ms"] = {"cpu": best_ms(lambda v: load_faces(v, n_frames=frames, size=size), videos, repeats),
                            "device": best_ms(lambda v: load_faces(v, n_frames=frames, size=None), videos, repeats)}
    res["decode_cpu_ms"]["saved"] = res["decode_cpu_ms"]["cpu"] - res["decode_cpu_ms"]["device"]
    with torch.inference_mode():
        res["resize_on_this_cpu_ms"] = best_ms(lambda f: faces_on_device([f[0]], size, "cpu"), dev, repeats)
    res["handoff_face_bytes"] = {"cpu": int(cpu[0][0].nbytes), "device": int(dev[0][0].nbytes)}
    valid = [v for _, v in cpu]
    a = embed_faces(models, [f for f, _ in cpu], valid, cfg)
    b = embed_faces(models, [f for f, _ in dev], valid, cfg)
    fa, fb = _unit(a.frames), _unit(b.frames)
    frame_cos = (fa * fb).sum(-1)[np.stack(valid)]
    ca, cb = _unit(a.clip), _unit(b.clip)
    cross = ca @ ca.T
    res["clip_cos_min"] = float((ca * cb).sum(-1).min())
    res["clip_cos_mean"] = float((ca * cb).sum(-1).mean())
    res["frame_cos_min"] = float(frame_cos.min())
    res["other_clip_cos_max"] = float(cross[~np.eye(len(ca), dtype=bool)].max()) if len(ca) > 1 else float("nan")
    res["max_level_diff_vs_cpu"] = float(max(np.abs(faces_on_device([d], size, "cpu").numpy()
                                                    - c.astype(np.float32)).max() for (d, _), (c, _) in zip(dev, cpu)))
    res["passes"] = res["clip_cos_min"] >= 0.999 and res["frame_cos_min"] >= 0.999
    return res


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--media", help="a folder written by benchmarks/voxceleb_media.py (vox2)")
    ap.add_argument("--clips", type=int, default=8)
    ap.add_argument("--backbone", default="iresnet50")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json")
    a = ap.parse_args(argv)
    import torch
    torch.set_num_threads(1)
    tmp = tempfile.TemporaryDirectory(prefix="avfuse-resize-")
    media = Path(a.media) if a.media else Path(tmp.name) / "vox2"
    if not a.media:
        generate(media, kind="vox2", clips=a.clips, progress=False)
    recs = read_manifest(media / "manifest.jsonl")
    res = check([r.video_path for r in recs], a.backbone, repeats=a.repeats)
    res["mean_seconds"] = float(np.mean([r.duration for r in recs]))
    res["machine"] = f"{os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}"
    d = res["decode_cpu_ms"]
    print(f"\n{res['clips']} VoxCeleb2-format clips (mean {res['mean_seconds']:.2f} s), {res['machine']}, "
          f"best of {a.repeats}")
    print("| faces | decode-side CPU-ms/clip | hand-off bytes/clip (faces) |\n| --- | --- | --- |")
    print(f"| cpu: crop + PIL resize to {res['crop']} | {d['cpu']:.2f} | {res['handoff_face_bytes']['cpu']:,} |")
    print(f"| device: crop at {res['source_side']} | {d['device']:.2f} | {res['handoff_face_bytes']['device']:,} |")
    print(f"saved {d['saved']:.2f} CPU-ms per clip in the decode workers; the resize itself on this CPU "
          f"(main process): {res['resize_on_this_cpu_ms']:.2f} ms per clip")
    print(f"embedding check ({res['backbone']} random init): clip cos min {res['clip_cos_min']:.6f} "
          f"(mean {res['clip_cos_mean']:.6f}), frame cos min {res['frame_cos_min']:.6f}, different clips' cos "
          f"max {res['other_clip_cos_max']:.4f}, max level diff {res['max_level_diff_vs_cpu']:.2f} -> "
          f"{'PASS' if res['passes'] else 'FAIL'} (>= 0.999 per clip and per frame)")
    save_json(a.json, res)
    tmp.cleanup()
    return res


if __name__ == "__main__":
    main()
