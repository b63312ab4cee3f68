"""H.264 on the GPU's video decoders (NVDEC) instead of the CPU: measured, not used by ``extract``.

The CPU floor of exact-pixel decoding on VoxCeleb2-format media is ~28 CPU-ms per clip for
the reference frames alone (``benchmarks/decode_floor.py``), above issue 15's 25 ms target
for audio + video. The FFmpeg that PyAV bundles is built with ``--enable-nvdec``, so on a
box with an NVIDIA driver the same packets can be decoded by NVDEC (an H200 has 7 decoder
engines) through ``av.open(..., hwaccel=HWAccel("cuda"))``; PyAV downloads each decoded
frame to host memory (NV12). This script answers, on the GPU box, the three questions that
decide whether ``extract`` should offer it:

* **CPU-ms per clip** (process CPU, all threads) of the fast path's frame selection with
  the NVDEC decoder vs the software decoder, same clips, same run;
* **throughput**: clips/s (wall) of ``--procs`` processes decoding with NVDEC vs software;
* **pixels**: the 8 wanted frames from NVDEC vs software after the same RGB conversion and
  resize: equal, or the largest difference in levels (H.264 decoding is specified
  bit-exactly; a difference would come from the NV12 -> RGB conversion).

Where no CUDA device can be opened (this CPU box) it reports ``{"available": false, ...}``
with the reason and measures nothing; ``benchmarks/gpu_check.py`` runs it as a section.

    python benchmarks/nvdec_check.py --media DIR [--clips 24] [--procs 16] [--json out.json]
"""

from __future__ import annotations

import argparse
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import save_json  # noqa: E402


_HELD = []


def _open(path: str, hw: bool):
    """``path`` opened for the software decoder or for NVDEC. PyAV creates a hardware device
    context at every open; ``primary_ctx`` makes it the device's primary CUDA context (the one torch
    uses) instead of a new CUDA context per clip (~0.1 s and ~300 MB each), and this process keeps
    that context alive between clips by holding one torch tensor on the device."""
    import av
    if not hw:
        return av.open(path)
    from av.codec.hwaccel import HWAccel
    if not _HELD:
        import torch
        _HELD.append(torch.empty(1, device="cuda"))
    return av.open(path, hwaccel=HWAccel("cuda", allow_software_fallback=False, options={"primary_ctx": "1"}))


def faces(path: str, hw: bool, n_frames: int = 8, size: int = 112) -> np.ndarray:
    """The fast path's 8 frames of ``path`` (``extractors.media.video._fast_frames``), decoded by
    NVDEC (``hw``) or by the software decoder; raises when the fast path declines the clip."""
    from extractors.media.video import _fast_frames
    with _open(path, hw) as c:
        s = c.streams.video[0]
        if hw and not s.codec_context.is_hwaccel:
            raise RuntimeError("the codec context did not take the CUDA hwaccel")
        res = _fast_frames(c, s, n_frames, size, True, False, False)
    if res is None:
        raise RuntimeError(f"fast path declined {path}")
    return res[0]


def probe() -> tuple[bool, str]:
    """Whether NVDEC can be opened here, and why not."""
    try:
        import av.codec.hwaccel as h
        kinds = h.hwdevices_available()
    except Exception as e:  # an old PyAV without hwaccel
        return False, f"PyAV has no hwaccel ({type(e).__name__}: {e})"
    if "cuda" not in kinds:
        return False, f"this FFmpeg build has no cuda hwaccel (has {kinds})"
    try:
        import torch
        if not torch.cuda.is_available():
            return False, "torch sees no CUDA device"
    except ImportError:
        pass
    return True, ""


def _cpu_ms(paths: list[str], hw: bool, repeats: int) -> float:
    faces(paths[0], hw)  # warm: driver, decoder creation paths
    best = float("inf")
    for _ in range(repeats):
        t0 = time.process_time()
        for p in paths:
            faces(p, hw)
        best = min(best, (time.process_time() - t0) / len(paths) * 1e3)
    return best


def _decode_many(args: tuple[list[str], bool]) -> int:
    paths, hw = args
    for p in paths:
        faces(p, hw)
    return len(paths)


def _clips_per_s(paths: list[str], hw: bool, procs: int, per_proc: int) -> float:
    work = [(paths * (-(-per_proc // len(paths))))[:per_proc] for _ in range(procs)]
    import multiprocessing as mp
    # spawn: the parent may hold a CUDA context already, which forked children cannot use
    with ProcessPoolExecutor(procs, mp_context=mp.get_context("spawn")) as pool:
        list(pool.map(_decode_many, [(paths[:1], hw)] * procs))  # start and warm every process
        t0 = time.perf_counter()
        n = sum(pool.map(_decode_many, [(w, hw) for w in work]))
        return n / (time.perf_counter() - t0)


def measure(paths: list[str], repeats: int = 3, procs: int = 16, per_proc: int = 32) -> dict:
    ok, why = probe()
    out: dict = {"available": ok, "clips": len(paths)}
    if not ok:
        out["reason"] = why
        return out
    try:
        sw = [faces(p, False) for p in paths]
        hwf = [faces(p, True) for p in paths]
    except Exception as e:
        out.update(available=False, reason=f"{type(e).__name__}: {e}")
        return out
    diffs = [int(np.abs(a.astype(np.int16) - b.astype(np.int16)).max()) for a, b in zip(sw, hwf)]
    out["pixels_equal_clips"] = sum(d == 0 for d in diffs)
    out["max_level_difference"] = max(diffs)
    out["cpu_ms_per_clip"] = {"software": _cpu_ms(paths, False, repeats), "nvdec": _cpu_ms(paths, True, repeats)}
    out["clips_per_s"] = {"procs": procs,
                          "software": _clips_per_s(paths, False, procs, per_proc),
                          "nvdec": _clips_per_s(paths, True, procs, per_proc)}
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--media", required=True, help="a folder written by benchmarks/voxceleb_media.py (vox2)")
    ap.add_argument("--clips", type=int, default=24, help="at most this many of its clips")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--procs", type=int, default=16, help="processes of the throughput run")
    ap.add_argument("--json", help="write the results here")
    a = ap.parse_args(argv)
    from data_manifests.manifest import read_manifest
    recs = read_manifest(Path(a.media) / "manifest.jsonl")[: a.clips]
    res = measure([str(r.video_path) for r in recs], a.repeats, a.procs)
    print(res)
    save_json(a.json, res)
    return res


if __name__ == "__main__":
    main()
