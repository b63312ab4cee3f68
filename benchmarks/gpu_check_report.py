"""Helpers of ``benchmarks/gpu_check.py``: GPU busy sampling, VoxCeleb2-dev projections, the Markdown table."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.gpu_check_handoff import rows as handoff_rows  # noqa: E402
from benchmarks.train_speed import VOX2_CLIPS  # noqa: E402

VOX2_MEAN_S = 7.7807  # mean clip length of vox2_dev_duration.txt.gz
#: the top-level keys of gpu_check.json (tests/test_gpu_check.py checks them)
KEYS = ("mode", "machine", "sizes", "media", "decode", "nvdec", "handoff", "resize", "extract", "decode_pool",
        "gpu_bound", "dask",
        "fusion", "scoring", "projections", "seconds")


class Busy:
    """Mean GPU utilisation (share of time a kernel ran) while the block runs; None without CUDA.

    Sampled every 0.2 s by one ``nvidia-smi -lms 200`` process writing to a file: no thread in
    this process (``extract`` forks its decode workers inside the block) and no process start per
    sample. Without ``nvidia-smi``: ``torch.cuda.utilization()`` (needs pynvml) in a thread."""

    def __init__(self, cuda: bool):
        self.cuda, self.samples, self.stop = cuda, [], threading.Event()
        self.proc = self.thread = self.log = None

    def _loop(self) -> None:
        import torch
        while not self.stop.wait(0.2):
            try:
                self.samples.append(float(torch.cuda.utilization()))
            except Exception:       # no pynvml either: no share
                return

    def __enter__(self):
        if not self.cuda:
            return self
        import shutil
        import tempfile
        smi = shutil.which("nvidia-smi")
        if smi:
            self.log = tempfile.TemporaryFile(mode="w+")
            self.proc = subprocess.Popen([smi, "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits",
                                          "-i", "0", "-lms", "200"], stdout=self.log, stderr=subprocess.DEVNULL)
        else:
            self.thread = threading.Thread(target=self._loop, daemon=True)
            self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
            self.log.seek(0)
            self.samples += parse_utilisation(self.log.read())
            self.log.close()
        if self.thread is not None:
            self.thread.join(timeout=1)

    @property
    def share(self) -> float | None:
        return round(float(np.mean(self.samples)) / 100, 3) if self.samples else None


def parse_utilisation(text: str) -> list[float]:
    """The numbers of ``nvidia-smi --query-gpu=utilization.gpu --format=csv,noheader,nounits`` output,
    one per line; lines that are not a number (a cut last line, "[N/A]") are left out."""
    out = []
    for line in text.splitlines():
        try:
            out.append(float(line.strip()))
        except ValueError:
            continue
    return out


def projections(res: dict) -> dict:
    """VoxCeleb2 dev (1,092,009 clips, mean 7.78 s) from the measured rates; audio work scaled by length."""
    out = {}
    dec, gb, ex = res.get("decode", {}), res.get("gpu_bound", {}), res.get("extract", {})
    cores = os.cpu_count() or 1
    if "cpu_ms_per_clip" in dec and "pool_mean_seconds" in res.get("media", {}):
        scale = VOX2_MEAN_S / res["media"]["pool_mean_seconds"]
        ms = dec["cpu_ms_per_clip"] * scale
        out["decode_bound_min"] = VOX2_CLIPS * ms / 1e3 / cores / 60
        out["decode_bound_arithmetic"] = (f"{VOX2_CLIPS:,} x {ms:.1f} CPU-ms (x{scale:.2f} for length) / "
                                          f"{cores} cores")
    pool = (res.get("decode_pool") or {}).get("all_cores") or {}
    if pool.get("clips_per_s") and "pool_mean_seconds" in res.get("media", {}):
        # measured, not CPU-ms / cores: a clip's decode costs more CPU with every core decoding
        scale = VOX2_MEAN_S / res["media"]["pool_mean_seconds"]
        out["decode_measured_min"] = VOX2_CLIPS * scale / pool["clips_per_s"] / 60
        out["decode_measured_arithmetic"] = (f"{VOX2_CLIPS:,} / {pool['clips_per_s']:.0f} clips/s decoded by "
                                             f"{pool['workers']} processes (x{scale:.2f} for length)")
    if "bf16" in gb:
        b, n = gb["bf16"], gb["clips"]
        per = (b["audio_seconds"] * VOX2_MEAN_S / gb["pool_mean_seconds"] + b["face_seconds"]) / n
        out["gpu_bound_min"] = VOX2_CLIPS * per / 60
        out["gpu_bound_arithmetic"] = f"{VOX2_CLIPS:,} x {1e3 * per:.2f} backbone-ms (bf16, audio scaled for length)"
    if ex.get("clips_per_s"):
        out["end_to_end_min"] = VOX2_CLIPS / ex["clips_per_s"] / 60
    return out


def _f(x, nd=1):
    return "-" if x is None else (f"{x:,.{nd}f}" if isinstance(x, (int, float)) else str(x))


def markdown(res: dict) -> str:
    g = lambda *ks: _dig(res, ks)  # noqa: E731
    rows = [
        ("media", f"{_f(g('media', 'pool'), 0)} clips x {_f(g('media', 'pool_mean_seconds'), 2)} s mean", "",
         f"{_f(g('media', 'mp4_kbps'), 0)} kb/s H.264 224x224"),
        ("decode audio + faces", _f(g("decode", "cpu_ms_per_clip")), "CPU-ms/clip",
         f"audio {_f(g('decode', 'audio_cpu_ms_per_clip'))}, video {_f(g('decode', 'video_cpu_ms_per_clip'))} "
         f"({_f(g('sizes', 'frames'), 0)} frames)"),
        ("H.264 on NVDEC vs CPU decoder", _f(g("nvdec", "cpu_ms_per_clip", "nvdec")), "CPU-ms/clip",
         f"software {_f(g('nvdec', 'cpu_ms_per_clip', 'software'))}; clips/s nvdec "
         f"{_f(g('nvdec', 'clips_per_s', 'nvdec'))} / software {_f(g('nvdec', 'clips_per_s', 'software'))}; "
         f"pixels equal {_f(g('nvdec', 'pixels_equal_clips'), 0)}/{_f(g('nvdec', 'clips'), 0)}"
         + (f" (not measured: {g('nvdec', 'reason')})" if g("nvdec", "reason") else "")),
        *handoff_rows(g, _f),
        ("extract end to end", _f(g("extract", "clips_per_s")), "clips/s",
         f"GPU busy {_f(g('extract', 'gpu_busy_share'), 2)}, {_f(g('extract', 'decode_workers'), 0)} decode procs, "
         f"resize on {_f(g('extract', 'resize_on'))}; waited for decode {_f(g('extract', 'wait_for_decode_seconds'))} s "
         f"of {_f(g('extract', 'seconds'))}, backbones {_f(g('extract', 'backbone_seconds'))} s; "
         f"{_f(g('extract', 'pickled_clips'), 0)} clips pickled"),
        *[(f"decode alone, {what}", _f(g("decode_pool", key, "clips_per_s")), "clips/s",
           f"{_f(g('decode_pool', key, 'workers'), 0)} procs, {_f(g('decode_pool', 'clips'), 0)} clips, as extract "
           f"decodes (ring, resize on {_f(g('decode_pool', 'resize_on'))}), no backbones")
          for what, key in (("extract's procs", "extract_procs"), ("one proc per core", "all_cores"))],
        ("backbones only, bf16", _f(g("gpu_bound", "bf16", "clips_per_s")), "clips/s",
         f"GPU busy {_f(g('gpu_bound', 'bf16', 'gpu_busy_share'), 2)}"),
        ("backbones only, fp32", _f(g("gpu_bound", "fp32", "clips_per_s")), "clips/s", ""),
        ("bf16 vs fp32 cosine, audio/face min", f"{_f(g('gpu_bound', 'bf16_vs_fp32_cosine', 'audio/clip', 'min'), 4)}"
         f" / {_f(g('gpu_bound', 'bf16_vs_fp32_cosine', 'face/clip', 'min'), 4)}", "", "per clip"),
        ("VoxCeleb2 dev, decode-bound if it scaled", _f(g("projections", "decode_bound_min")), "min",
         _f(g("projections", "decode_bound_arithmetic"))),
        ("VoxCeleb2 dev, decode measured", _f(g("projections", "decode_measured_min")), "min",
         _f(g("projections", "decode_measured_arithmetic"))),
        ("VoxCeleb2 dev, GPU-bound", _f(g("projections", "gpu_bound_min")), "min",
         _f(g("projections", "gpu_bound_arithmetic"))),
        ("VoxCeleb2 dev, end to end", _f(g("projections", "end_to_end_min")), "min", "at the measured clips/s"),
        ("Dask, 1 GPU worker", _f(g("dask", "clips_per_s_steady")), "clips/s",
         f"steady; {_f(g('dask', 'clips_per_s_end_to_end'))} end to end; GPU busy {_f(g('dask', 'gpu_busy_share'), 2)}; "
         f"decode {_f(g('dask', 'decode_backend'))} x {_f(g('dask', 'decode_per_task'), 0)} per task; "
         f"backbones {_f(g('dask', 'backbone_seconds'))} s, waited {_f(g('dask', 'wait_for_decode_seconds'))} s"),
        ("fusion epoch mlp", _f(g("fusion", "mlp", "epoch_s")), "s", f"{_f(g('fusion', 'clips'), 0)} clips"),
        ("fusion epoch mlp, batch 1024", _f(g("fusion", "mlp_b1024", "epoch_s")), "s",
         "host-bound at 256? (benchmarks/train_step_speed.py)"),
        ("fusion epoch dca", _f(g("fusion", "dca", "epoch_s")), "s", f"{_f(g('fusion', 'clips'), 0)} clips"),
        ("Vox1-E scoring", _f(g("scoring", "score_total_s"), 2), "s", f"{_f(g('scoring', 'n_trials'), 0)} trials"),
    ]
    cpu = res["machine"].get("cpu") or {}
    head = (f"# gpu_check ({res['mode']}, {res['machine'].get('gpu') or 'cpu'}, {res['machine']['cpu_cores']} cores"
            + (f": {cpu.get('physical_cores')} physical, {cpu.get('model')}" if cpu else "") + ")\n\n")
    lines = ["| check | value | unit | note |", "| --- | --- | --- | --- |"]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
    errs = [f"- {k}: {v['error']}" for k, v in res.items() if isinstance(v, dict) and "error" in v]
    return head + "\n".join(lines) + "\n" + ("\nerrors:\n" + "\n".join(errs) + "\n" if errs else "")


def _dig(d, keys):
    for k in keys:
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d
