"""Media writers of the synthetic corpus: AAC ``.m4a``, H.264+AAC ``.mp4``, PCM ``.wav``, ``.jpg`` frames.

Everything goes through PyAV (libav* bundled in its wheel), soundfile and torchvision, so
no system ``ffmpeg`` is needed. The encoders run single-threaded with fixed options and
the muxers in ``bitexact`` mode (no creation time, no encoder version string), so the same
input gives byte-identical files on the same PyAV/libx264 build (the synth tests check
this); a different PyAV build may encode differently, and then at least the decoded audio
and frames of two runs with the same seed are still identical.

Definitions:

* audio arrays are float32 mono in [-1, 1] at ``sample_rate`` (16 kHz here), clipped;
* video frames are uint8 ``(F, H, W, 3)`` RGB, encoded as yuv420p H.264 at ``fps``;
* an ``.mp4`` carries the video stream and, when audio is given, an AAC track of the
  same audio (VoxCeleb2 mp4s have both).
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np

#: AAC bit rate for 16 kHz mono speech (VoxCeleb2's m4a files are ~ 64 kb/s stereo-equivalent).
AAC_BIT_RATE = 48_000
#: libx264 options: constant quality, default GOP with B-frames (as real VoxCeleb mp4s have, so
#: decoders see reordered time stamps), one thread so that the bytes are reproducible.
X264_OPTIONS = {"preset": "veryfast", "crf": "20", "threads": "1"}
#: AAC encoder options: the fast coder (3x faster than twoloop, fine for speech) and bitexact.
AAC_OPTIONS = {"aac_coder": "fast", "flags": "+bitexact"}
#: muxer options that drop time stamps / version strings from the container.
BITEXACT = {"fflags": "+bitexact"}


def encode_aac(container, stream, audio: np.ndarray, sample_rate: int) -> None:
    """Encode ``audio`` (``(T,)`` mono or ``(T, C)``, clipped to [-1, 1]) into AAC ``stream``
    (from ``add_aac_stream``) and mux it into ``container``, flushing the encoder."""
    import av

    pcm = np.clip(np.asarray(audio, dtype=np.float32), -1.0, 1.0)
    pcm = pcm[:, None] if pcm.ndim == 1 else pcm
    layout = "mono" if pcm.shape[1] == 1 else "stereo"
    frame_size = stream.codec_context.frame_size or 1024
    pts = 0
    for start in range(0, len(pcm), frame_size):
        chunk = np.ascontiguousarray(pcm[start:start + frame_size].T)
        frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout=layout)
        frame.sample_rate = sample_rate
        frame.pts = pts
        frame.time_base = Fraction(1, sample_rate)
        pts += chunk.shape[1]
        for packet in stream.encode(frame):
            container.mux(packet)
    for packet in stream.encode(None):
        container.mux(packet)


def add_aac_stream(container, sample_rate: int, channels: int = 1, *, bit_rate: int | None = AAC_BIT_RATE,
                   options: dict | None = AAC_OPTIONS):
    """An AAC stream (mono, or stereo for ``channels=2``) in ``container``; ``bit_rate``/``options``
    None: the encoder's defaults."""
    stream = container.add_stream("aac", rate=sample_rate)
    stream.layout = "mono" if channels == 1 else "stereo"
    if bit_rate is not None:
        stream.bit_rate = bit_rate
    if options is not None:
        stream.codec_context.options = dict(options)
    return stream


def write_m4a(path: str | Path, audio: np.ndarray, sample_rate: int) -> None:
    """AAC-LC in an MPEG-4 audio container (``.m4a``), mono at ``sample_rate``."""
    import av

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w", format="ipod", options=BITEXACT) as container:
        stream = add_aac_stream(container, sample_rate)
        encode_aac(container, stream, audio, sample_rate)


def encode_frames(container, stream, frames: np.ndarray, fps: int) -> None:
    """Encode uint8 ``(N, H, W, 3)`` RGB frames into a video ``stream`` of ``container`` and flush it."""
    import av

    for i in range(len(frames)):
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frames[i]), format="rgb24")
        frame.pts = i
        frame.time_base = Fraction(1, fps)
        for packet in stream.encode(frame):
            container.mux(packet)
    for packet in stream.encode(None):
        container.mux(packet)


def write_mp4(path: str | Path, frames: np.ndarray, fps: int, audio: np.ndarray | None = None,
              sample_rate: int = 16000) -> None:
    """H.264 (yuv420p) video at ``fps`` plus, if ``audio`` is given, an AAC track.

    ``frames`` is uint8 ``(F, H, W, 3)`` RGB with even ``H`` and ``W``.
    """
    import av

    frames = np.ascontiguousarray(frames, dtype=np.uint8)
    n, h, w, _ = frames.shape
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w", format="mp4", options=BITEXACT) as container:
        vstream = container.add_stream("libx264", rate=fps)
        vstream.width = w
        vstream.height = h
        vstream.pix_fmt = "yuv420p"
        vstream.codec_context.options = dict(X264_OPTIONS)
        vstream.codec_context.time_base = Fraction(1, fps)
        astream = add_aac_stream(container, sample_rate) if audio is not None else None
        encode_frames(container, vstream, frames, fps)
        if astream is not None:
            encode_aac(container, astream, audio, sample_rate)


def write_wav(path: str | Path, audio: np.ndarray, sample_rate: int) -> None:
    """16-bit PCM WAV (VoxCeleb1's format), mono."""
    import soundfile as sf

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), np.clip(np.asarray(audio, dtype=np.float32), -1.0, 1.0), sample_rate,
             subtype="PCM_16", format="WAV")


def write_jpg_frames(folder: str | Path, frames: np.ndarray, quality: int = 90) -> list[Path]:
    """One JPEG per frame, ``0001.jpg``, ``0002.jpg`` ... (1-based, 4 digits) in ``folder``."""
    import torch
    from torchvision.io import encode_jpeg

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    batch = torch.from_numpy(np.ascontiguousarray(frames, dtype=np.uint8)).permute(0, 3, 1, 2).contiguous()
    encoded = encode_jpeg(list(batch), quality=quality)
    for i, data in enumerate(encoded, start=1):
        p = folder / f"{i:04d}.jpg"
        p.write_bytes(data.numpy().tobytes())
        out.append(p)
    return out


def decode_audio(path: str | Path) -> tuple[np.ndarray, int]:
    """First audio stream of a media file as float32 mono and its rate (for checks and tests)."""
    import av

    chunks = []
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        rate = stream.codec_context.sample_rate
        for frame in container.decode(stream):
            a = frame.to_ndarray()
            chunks.append(a.reshape(-1) if a.ndim == 1 or a.shape[0] == 1 else a.mean(axis=0))
    pcm = np.concatenate(chunks).astype(np.float32) if chunks else np.zeros(0, np.float32)
    return pcm, rate


def decode_video(path: str | Path) -> np.ndarray:
    """All frames of the first video stream as uint8 ``(F, H, W, 3)`` RGB."""
    import av

    with av.open(str(path)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(container.streams.video[0])]
    return np.stack(frames) if frames else np.zeros((0, 0, 0, 3), np.uint8)


__all__ = ["encode_frames", "write_m4a", "write_mp4", "write_wav", "write_jpg_frames", "decode_audio", "decode_video",
           "add_aac_stream", "encode_aac", "AAC_BIT_RATE", "AAC_OPTIONS", "X264_OPTIONS"]
