"""Sections of ``benchmarks/gpu_check.py`` for the CPU -> GPU hand-off (issue 15):

* ``handoff``: the main process's CPU-ms per clip receiving decoded clips from the decode
  processes, pickled (a torch DataLoader, the path before) vs the shared-memory ring
  (``pipeline.extract.shm_ring``, what ``extract`` runs), faces at 112 and at the source 224
  (``--resize-on device``), clips made up by the workers (``benchmarks/handoff_speed.py``);
* ``resize``: ``--resize-on device`` vs ``cpu`` on the VoxCeleb-format media: decode-side CPU-ms
  per clip (crop only vs crop + PIL resize), the face backbone's clips/s on the device with
  each input (the device resize and the 4x host->device bytes included), the embeddings'
  cosine device vs CPU resize per clip and per frame; and host->device copies of one face
  batch: pageable, pinned per batch (``Tensor.pin_memory()``, what ``extract`` did before:
  torch's caching host allocator reuses the pinned blocks), one reusable pinned buffer, and
  ``pipeline.extract.staging`` (what ``extract`` does now: the batch copied straight into a
  pinned block of the caching allocator), GB/s and host CPU-ms per batch.
"""

from __future__ import annotations

import time

import numpy as np


def sec_handoff(ctx) -> dict:
    from benchmarks.handoff_speed import run_loader, run_ring
    n = 512 if ctx.cuda else 16           # ~10 s in all on the 16-core box
    out = {"clips": n, "workers": ctx.decode_workers}
    for size in (112, 224):
        best = {}
        for _ in range(2):
            for name, fn in (("pickle", lambda s=size: run_loader(n, s, "numpy", ctx.decode_workers)),
                             ("ring", lambda s=size: run_ring(n, s, ctx.decode_workers))):
                p, c = fn()
                best[name] = min(best.get(name, (np.inf, np.inf)), (p, c))
        out[str(size)] = {"parent_ms": {k: v[0] for k, v in best.items()},
                          "workers_ms": {k: v[1] for k, v in best.items()},
                          "parent_ratio": best["pickle"][0] / max(best["ring"][0], 1e-9)}
    return out


def _sync(cuda: bool) -> None:
    if cuda:
        import torch
        torch.cuda.synchronize()


def copies(ctx, faces: np.ndarray, reps: int) -> dict:
    """Host->device copies of ``faces`` (one batch): pageable, fresh pinned, reused pinned buffer,
    ``extract``'s staging buffer."""
    import torch

    from pipeline.extract.staging import host_buffer, to_device
    src = torch.from_numpy(faces)

    def staged():
        arr, t = host_buffer(faces.shape, faces.dtype, ctx.device)
        np.copyto(arr, faces)
        return to_device(t, ctx.device)

    staging = torch.empty_like(src, pin_memory=ctx.cuda)
    ways = {"pageable": lambda: src.to(ctx.device),
            "pinned per batch": lambda: src.pin_memory().to(ctx.device, non_blocking=True) if ctx.cuda
            else src.to(ctx.device),
            "reused pinned buffer": lambda: staging.copy_(src).to(ctx.device, non_blocking=True),
            "staging (extract now)": staged}
    out = {"batch_mb": faces.nbytes / 1e6}
    for name, fn in ways.items():
        fn()
        _sync(ctx.cuda)
        c0, t0 = time.process_time(), time.perf_counter()
        for _ in range(reps):
            fn()
            _sync(ctx.cuda)      # the reused buffer must not be overwritten while a copy from it runs
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        out[name] = {"gb_per_s": faces.nbytes * reps / wall / 1e9, "host_cpu_ms": 1e3 * cpu / reps}
    return out


def sec_resize(ctx) -> dict:
    import torch

    from benchmarks.gpu_check import cfg_for, cosines
    from benchmarks.resize_check import best_ms
    from data_manifests.manifest import read_manifest
    from extractors.media.decode import load_faces
    from pipeline.extract.embed import embed_faces
    from pipeline.extract.models import get_models
    s = ctx.s
    recs = read_manifest(ctx.manifest)[:ctx.s.decode_sample]
    videos = [r.video_path for r in recs]
    cfg = cfg_for(s, ctx.device, dtype="float32")
    models = get_models(cfg)
    crop = int(models.face_info["spec"]["crop"])
    timed = videos[:24]                    # one pass each after a warm-up: ~2 s
    out = {"clips": len(videos), "crop": crop,
           "decode_cpu_ms": {"cpu": best_ms(lambda v: load_faces(v, n_frames=s.frames, size=crop), timed, 1),
                             "device": best_ms(lambda v: load_faces(v, n_frames=s.frames, size=None), timed, 1)}}
    out["decode_cpu_ms"]["saved"] = out["decode_cpu_ms"]["cpu"] - out["decode_cpu_ms"]["device"]
    small = [load_faces(v, n_frames=s.frames, size=crop) for v in videos]
    big = [load_faces(v, n_frames=s.frames, size=None) for v in videos]
    valid = [v for _, v in small]
    reps = max(1, ctx.s.gpu_clips // max(1, len(videos)))        # the same clips again: GPU-sized work
    res = {}
    for name, faces in (("cpu", [f for f, _ in small]), ("device", [f for f, _ in big])):
        embed_faces(models, faces[:2], valid[:2], cfg)                  # warm-up
        with torch.inference_mode():
            _sync(ctx.cuda)
            t0 = time.perf_counter()
            r = embed_faces(models, faces * reps, valid * reps, cfg)
            _sync(ctx.cuda)
        res[name] = r
        out[f"{name}_clips_per_s"] = len(faces) * reps / (time.perf_counter() - t0)
    n = len(videos)
    out["clip_cos"] = cosines(res["device"].clip[:n], res["cpu"].clip[:n])
    fv = np.stack(valid)
    out["frame_cos"] = cosines(res["device"].frames[:n][fv], res["cpu"].frames[:n][fv])
    out["precision"] = cfg.compute_precision()
    batch = np.concatenate([f for f, _ in big] * reps)[: s.batch * s.frames]
    out["copy_224"] = copies(ctx, batch, 20 if ctx.cuda else 2)
    out["copy_112"] = copies(ctx, np.concatenate([f for f, _ in small] * reps)[: s.batch * s.frames],
                             20 if ctx.cuda else 2)
    return out


def rows(g, _f) -> list[tuple]:
    """The Markdown rows of these sections (``g(*keys)`` digs in the results)."""
    hand = [(f"hand-off to the main process, faces {k}", _f(g("handoff", k, "parent_ms", "ring"), 3), "CPU-ms/clip",
             f"ring; pickled {_f(g('handoff', k, 'parent_ms', 'pickle'), 3)} "
             f"(x{_f(g('handoff', k, 'parent_ratio'), 1)})") for k in ("112", "224")]
    return hand + [
        ("decode faces, resize on device vs cpu", _f(g("resize", "decode_cpu_ms", "device")), "CPU-ms/clip",
         f"cpu {_f(g('resize', 'decode_cpu_ms', 'cpu'))}; saved {_f(g('resize', 'decode_cpu_ms', 'saved'), 2)}"),
        ("face backbone, resize on device vs cpu", _f(g("resize", "device_clips_per_s")), "clips/s",
         f"cpu-resized input {_f(g('resize', 'cpu_clips_per_s'))}; cosine clip/frame min "
         f"{_f(g('resize', 'clip_cos', 'min'), 5)} / {_f(g('resize', 'frame_cos', 'min'), 5)}"),
        ("host->device, face batch 224", _f(g("resize", "copy_224", "staging (extract now)", "gb_per_s"), 2), "GB/s",
         f"staging (extract) host CPU-ms/batch "
         f"{_f(g('resize', 'copy_224', 'staging (extract now)', 'host_cpu_ms'), 2)}; "
         f"reused buffer {_f(g('resize', 'copy_224', 'reused pinned buffer', 'gb_per_s'), 2)}, "
         f"pinned per batch {_f(g('resize', 'copy_224', 'pinned per batch', 'gb_per_s'), 2)}, pageable "
         f"{_f(g('resize', 'copy_224', 'pageable', 'gb_per_s'), 2)}; host CPU-ms/batch reused "
         f"{_f(g('resize', 'copy_224', 'reused pinned buffer', 'host_cpu_ms'), 2)} / per batch "
         f"{_f(g('resize', 'copy_224', 'pinned per batch', 'host_cpu_ms'), 2)} / pageable "
         f"{_f(g('resize', 'copy_224', 'pageable', 'host_cpu_ms'), 2)}"),
    ]
