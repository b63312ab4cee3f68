"""VoxCeleb-format media for benchmarks (not the toy corpus: no identities, only the format).

Writes clips shaped like the real releases, with a ClipRecord manifest beside them:

* **vox2** (VoxCeleb2 dev layout ``dev/mp4/ID/VIDEO/UTT.mp4`` + ``dev/aac/ID/VIDEO/UTT.m4a``):
  H.264 224x224 yuv420p 25 fps from PyAV's libx264 with x264's *default* GOP (preset medium:
  keyint 250, 3 B-frames, adaptive B placement) at an average bit rate of ~250 kb/s, an AAC
  16 kHz mono track in the mp4 (VoxCeleb2 mp4s carry one) and the same audio as a 16 kHz mono
  ``.m4a`` beside it;
* **vox1** (``wav/ID/VIDEO/UTT.wav`` + ``frames/ID/VIDEO/UTT/0001.jpg ...``): 16 kHz PCM16 wav
  and the face track as one 224x224 jpg per frame at 25 fps.

Content: a multi-octave noise texture (structure at every scale, like a face and a
background) panned along a smooth random path, a textured "head" ellipse moving over it, and
a little per-frame grain. Flat colours decode unrealistically fast (almost every macroblock
is a skip); this content keeps every frame's residual and motion vectors busy at the
rate-controlled ~250 kb/s. Audio: a harmonic voice-like tone with a syllable envelope and
noise (AAC decode cost barely depends on content).

Durations: quantiles of the real VoxCeleb2-dev (or VoxCeleb1-dev) durations in
``../shared/voxceleb/*_duration.txt.gz``: clip i gets the ``(i + 0.5) / N`` quantile, so N
clips follow the real distribution (mean 7.78 s for VoxCeleb2 dev, long tail to 220 s),
**capped** at ``--max-seconds`` (default 30 s, the decoder's sequential/seek threshold;
0.9 % of VoxCeleb2-dev clips are longer, the capped mean is 7.69 s). The manifest's
``duration`` is the written duration. Deterministic for a seed (same PyAV build).

    python benchmarks/voxceleb_media.py OUT [--kind vox2|vox1] [--clips 40] [--seed 0] [--max-seconds 30]
"""

from __future__ import annotations

import argparse
import gzip
import os
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data_manifests.manifest import ClipRecord, read_manifest, write_manifest  # noqa: E402
from data_manifests.synth.media import add_aac_stream, encode_aac, write_jpg_frames, write_m4a, write_wav

SR = 16000
FPS = 25
SIZE = 224
VIDEO_BIT_RATE = 250_000
#: x264 defaults (preset medium, keyint 250, bframes 3) apart from one thread (reproducible bytes)
X264_DEFAULT = {"threads": "1"}
DURATION_FILES = {"vox2": "vox2_dev_duration.txt.gz", "vox1": "vox1_dev_duration.txt.gz"}


def shared_dir() -> Path:
    env = os.environ.get("AVFUSE_SHARED")
    return Path(env) if env else Path(__file__).resolve().parents[1].parent / "shared"


def real_durations(kind: str = "vox2") -> np.ndarray:
    """All durations (s) of the real VoxCeleb dev set of ``kind``, sorted."""
    path = shared_dir() / "voxceleb" / DURATION_FILES[kind]
    with gzip.open(path, "rt") as f:
        d = np.array([float(line.split()[1]) for line in f if line.strip()], dtype=np.float64)
    return np.sort(d)


def sample_durations(n: int, kind: str = "vox2", max_seconds: float = 30.0) -> np.ndarray:
    """``n`` durations at the ``(i + 0.5) / n`` quantiles of the real ones, capped, in 1/25 s."""
    real = real_durations(kind)
    q = real[np.minimum(((np.arange(n) + 0.5) / n * len(real)).astype(np.int64), len(real) - 1)]
    return np.round(np.minimum(q, max_seconds) * FPS) / FPS


# ----------------------------------------------------------------------------- content
def _texture(rng: np.random.Generator, size: int) -> np.ndarray:
    """uint8 (size, size, 3): noise octaves from 1/64 to 1/2 of the size, summed."""
    import torch
    import torch.nn.functional as F
    acc = torch.zeros(1, 3, size, size)
    for cells, amp in ((4, 1.0), (8, 0.7), (16, 0.5), (32, 0.35), (64, 0.25), (128, 0.18)):
        g = torch.from_numpy(rng.standard_normal((1, 3, cells, cells)).astype(np.float32))
        acc += amp * F.interpolate(g, size=(size, size), mode="bicubic", align_corners=False)
    acc = (acc - acc.mean()) / acc.std()
    img = (128 + 40 * acc).clamp(0, 255).to(torch.uint8)[0].permute(1, 2, 0).numpy()
    return np.ascontiguousarray(img)


def video_frames(n: int, rng: np.random.Generator, size: int = SIZE) -> np.ndarray:
    """uint8 (n, size, size, 3): a panned background texture, a moving textured head, grain."""
    big = 3 * size
    bg = _texture(rng, big)
    head_tex = _texture(rng, size)
    t = np.arange(n) / FPS
    ph = rng.uniform(0, 2 * np.pi, 6)
    # background pan (px) and head centre/size: smooth, a few px per frame like a talking head
    bx = (size + 0.8 * size * np.sin(0.21 * t + ph[0])).astype(np.int64)
    by = (size + 0.8 * size * np.sin(0.17 * t + ph[1])).astype(np.int64)
    cx = size / 2 + 18 * np.sin(0.9 * t + ph[2]) + 6 * np.sin(3.1 * t + ph[3])
    cy = size / 2 + 12 * np.sin(0.7 * t + ph[4])
    rad = size * (0.30 + 0.02 * np.sin(0.5 * t + ph[5]))
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    out = np.empty((n, size, size, 3), np.uint8)
    for i in range(n):  # one frame = a few vectorised array ops
        frame = bg[by[i]:by[i] + size, bx[i]:bx[i] + size].astype(np.int16)
        mask = ((xx - cx[i]) / (0.8 * rad[i])) ** 2 + ((yy - cy[i]) / rad[i]) ** 2 <= 1.0
        shift = int(4 * np.sin(2.3 * t[i]))
        frame[mask] = np.roll(head_tex, shift, axis=0)[mask].astype(np.int16) + 20
        frame += rng.integers(-3, 4, size=(size, size, 1), dtype=np.int16)
        out[i] = np.clip(frame, 0, 255).astype(np.uint8)
    return out


def voice(seconds: float, rng: np.random.Generator, sr: int = SR) -> np.ndarray:
    """float32 mono: harmonics of a wandering F0 under a ~4 Hz syllable envelope, plus noise."""
    n = int(round(seconds * sr))
    t = np.arange(n) / sr
    f0 = 120 + 30 * np.sin(2 * np.pi * 0.3 * t + rng.uniform(0, 6)) + 10 * rng.standard_normal()
    phase = 2 * np.pi * np.cumsum(f0) / sr
    y = sum((0.5 / k) * np.sin(k * phase) for k in range(1, 9))
    env = np.clip(np.sin(2 * np.pi * 4.0 * t + rng.uniform(0, 6)), 0, None) ** 2
    return (0.3 * env * y + 0.01 * rng.standard_normal(n)).astype(np.float32)


# ----------------------------------------------------------------------------- writers
def write_vox2_mp4(path: Path, frames: np.ndarray, audio: np.ndarray, bit_rate: int = VIDEO_BIT_RATE) -> None:
    """H.264 (x264 default GOP with B-frames, ABR ``bit_rate``) + AAC 16 kHz mono, as VoxCeleb2's mp4."""
    import av
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w", format="mp4", options={"fflags": "+bitexact"}) as c:
        vs = c.add_stream("libx264", rate=FPS)
        vs.width, vs.height, vs.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        vs.bit_rate = bit_rate
        vs.codec_context.options = dict(X264_DEFAULT)
        vs.codec_context.time_base = Fraction(1, FPS)
        ast = add_aac_stream(c, SR)
        for i in range(len(frames)):
            fr = av.VideoFrame.from_ndarray(frames[i], format="rgb24")
            fr.pts, fr.time_base = i, Fraction(1, FPS)
            for p in vs.encode(fr):
                c.mux(p)
        for p in vs.encode(None):
            c.mux(p)
        encode_aac(c, ast, audio, SR)


def _ids(i: int) -> tuple[str, str, str]:
    return f"id{90000 + i // 8:05d}", f"bench{i // 4:07d}", f"{i % 4 + 1:05d}"


def generate(out: str | Path, *, kind: str = "vox2", clips: int = 40, seed: int = 0,
             max_seconds: float = 30.0, durations=None, progress: bool = True) -> Path:
    """Write ``clips`` clips of ``kind`` under ``out`` and ``out/manifest.jsonl`` (relative
    paths); returns the manifest path. ``durations`` (seconds) overrides the real quantiles."""
    if kind not in DURATION_FILES:
        raise ValueError(f"kind must be vox2 or vox1, got {kind!r}")
    out = Path(out)
    durs = (np.asarray(durations, dtype=np.float64) if durations is not None
            else sample_durations(clips, kind, max_seconds))
    records = []
    it = range(len(durs))
    if progress:
        from tqdm import tqdm
        it = tqdm(it, desc=f"{kind} media", unit="clip", file=sys.stderr)
    for i in it:
        spk, vid, utt = _ids(i)
        rng = np.random.default_rng([seed, i])
        n = max(1, int(round(durs[i] * FPS)))
        frames = video_frames(n, rng)
        audio = voice(n / FPS, rng)
        rel = f"{spk}/{vid}/{utt}"
        if kind == "vox2":
            mp4, m4a = f"dev/mp4/{rel}.mp4", f"dev/aac/{rel}.m4a"
            write_vox2_mp4(out / mp4, frames, audio)
            write_m4a(out / m4a, audio, SR)
            rec = ClipRecord(clip_id=rel, speaker=spk, video=vid, audio_path=m4a, video_path=mp4,
                             duration=n / FPS, sample_rate=SR, fps=float(FPS), num_frames=n, dataset="bench-vox2")
        else:
            wav, fdir = f"wav/{rel}.wav", f"frames/{rel}"
            write_wav(out / wav, audio, SR)
            write_jpg_frames(out / fdir, frames)
            rec = ClipRecord(clip_id=rel, speaker=spk, video=vid, audio_path=wav, frames_dir=fdir,
                             duration=n / FPS, sample_rate=SR, fps=float(FPS), num_frames=n, dataset="bench-vox1")
        records.append(rec)
    manifest = out / "manifest.jsonl"
    write_manifest(manifest, records)
    return manifest


def add_media_args(ap: argparse.ArgumentParser, clips: int = 24) -> None:
    """``--media DIR`` / ``--clips N``: the options of the benchmarks that read VoxCeleb2-format media."""
    ap.add_argument("--media", help="a folder written by benchmarks/voxceleb_media.py (vox2); default: generate")
    ap.add_argument("--clips", type=int, default=clips, help="clips to generate when --media is not given")


def bench_records(media: str | Path | None, clips: int, scratch: str | Path) -> list:
    """The clip records of ``media`` (a folder written by :func:`generate`), or of ``clips``
    VoxCeleb2-format clips generated under ``scratch`` when ``media`` is None."""
    root = Path(media) if media else Path(scratch) / "vox2"
    if not media:
        generate(root, kind="vox2", clips=clips)
    return read_manifest(root / "manifest.jsonl")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", help="output folder (the manifest is OUT/manifest.jsonl)")
    ap.add_argument("--kind", choices=sorted(DURATION_FILES), default="vox2")
    ap.add_argument("--clips", type=int, default=40)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-seconds", type=float, default=30.0, help="cap of the drawn durations")
    a = ap.parse_args(argv)
    m = generate(a.out, kind=a.kind, clips=a.clips, seed=a.seed, max_seconds=a.max_seconds)
    durs = sample_durations(a.clips, a.kind, a.max_seconds)
    print(f"{m}: {a.clips} {a.kind} clips, mean {durs.mean():.2f} s (real mean {real_durations(a.kind).mean():.2f} s)")


if __name__ == "__main__":
    main()
