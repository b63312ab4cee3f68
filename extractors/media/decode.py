"""In-process media decoding: audio to mono float32 at a target rate, faces to F evenly
spaced, centre-cropped, resized RGB frames. No ffmpeg subprocess per file.

This module holds the audio decoders and re-exports the face side, so that callers import
everything from here:

* ``.wav``/``.flac`` (and anything libsndfile reads): :mod:`soundfile`. A RIFF WAV whose
  ``data`` chunk is shorter than its header declares is *truncated* and refused.
* ``.m4a``/``.aac``/``.mp4``/... : PyAV (the first audio stream; for an mp4 face track the
  audio track). Any decoder error, even after some packets decoded, is a ``DecodeError``.
* Faces: ``load_faces`` from ``extractors.media.decode_video`` (videos: fast and exact paths,
  seeking in long videos) and ``extractors.media.decode_frames`` (jpg folders); the frame sampling
  rule and the crop/resize are in ``extractors.media.decode_common``.

Resampling: ``torchaudio`` windowed-sinc (``Resample`` module, kernel cached per
``(source_rate, target_rate)``). Mono mix-down: the plain mean of the channels.
"""

from __future__ import annotations

import os
import struct
import threading
from pathlib import Path

import numpy as np

from extractors.media.common import _check_regular_file, _open_stream, _short, centre_crop_resize, frame_indices
from extractors.media.frames import IMAGE_EXTS
from extractors.media.video import SEEK_THRESHOLD_S, load_faces
from pipeline.core.errors import DecodeError

SOUNDFILE_EXTS = {".wav", ".flac", ".ogg", ".aiff", ".aif", ".au", ".w64", ".rf64"}

__all__ = ["load_audio", "load_faces", "frame_indices", "resample", "centre_crop_resize",
           "SEEK_THRESHOLD_S", "IMAGE_EXTS", "_check_regular_file", "_open_stream", "_short"]


# ----------------------------------------------------------------------------- audio
_resamplers: dict[tuple[int, int], object] = {}
_resampler_lock = threading.Lock()


def _resampler(src: int, dst: int):
    key = (int(src), int(dst))
    r = _resamplers.get(key)
    if r is None:
        import torchaudio.transforms as T
        with _resampler_lock:
            r = _resamplers.get(key)
            if r is None:
                r = T.Resample(key[0], key[1])  # the sinc kernel is built once here
                _resamplers[key] = r
    return r


def resample(wave: np.ndarray, src_sr: int, dst_sr: int) -> np.ndarray:
    """Windowed-sinc resampling of a mono float32 signal (torchaudio's ``Resample``)."""
    if int(src_sr) == int(dst_sr):
        return np.ascontiguousarray(wave, dtype=np.float32)
    import torch
    with torch.inference_mode():
        out = _resampler(src_sr, dst_sr)(torch.from_numpy(np.ascontiguousarray(wave, dtype=np.float32)))
    return out.numpy()


def _wav_truncation(path: str) -> str | None:
    """For a RIFF WAV: a message if the data chunk is shorter than declared, else None."""
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(12)
            if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
                return None
            pos = 12
            while pos + 8 <= size:
                f.seek(pos)
                cid, clen = struct.unpack("<4sI", f.read(8))
                if cid == b"data":
                    if clen in (0, 0xFFFFFFFF):  # streaming placeholder
                        return None
                    have = size - (pos + 8)
                    if have < clen:
                        return f"truncated: the header declares {clen} data bytes, the file holds {have}"
                    return None
                pos += 8 + clen + (clen & 1)
    except OSError:
        return None
    return None


def _load_soundfile(path: str) -> tuple[np.ndarray, int]:
    import soundfile as sf
    msg = _wav_truncation(path) if path.lower().endswith(".wav") else None
    if msg:
        raise DecodeError(msg, path=path, hint="re-download or re-extract this file")
    try:
        data, sr = sf.read(path, dtype="float32", always_2d=True)
    except Exception as e:  # libsndfile: format not recognised, lost sync, ...
        raise DecodeError(f"cannot decode audio ({_short(e)})", path=path,
                          hint="the file is corrupt or not audio; re-download or drop it from the manifest") from None
    return data.mean(axis=1, dtype=np.float32) if data.shape[1] > 1 else data[:, 0], int(sr)


def _load_pyav_audio(path: str) -> tuple[np.ndarray, int]:
    import av
    container, stream = _open_stream(path, "audio")
    try:
        sr = stream.codec_context.sample_rate or stream.rate
        declared = (float(stream.duration * stream.time_base) if stream.duration and stream.time_base
                    else (container.duration / 1e6 if container.duration else None))
        resampler = av.AudioResampler(format="fltp")  # keep rate and layout, planar float
        chunks: list[np.ndarray] = []
        try:
            for frame in container.decode(stream):
                for f in resampler.resample(frame):
                    chunks.append(f.to_ndarray())
            for f in resampler.resample(None):
                chunks.append(f.to_ndarray())
        except Exception as e:
            raise DecodeError(f"audio decoding failed ({_short(e)})", path=path,
                              hint="the file is truncated or corrupt; re-download it") from None
    finally:
        container.close()
    if not chunks or not sr:
        raise DecodeError("no audio samples decoded", path=path, hint="the audio stream is empty")
    data = np.concatenate(chunks, axis=1).astype(np.float32, copy=False)
    got = data.shape[1] / float(sr)
    # a truncated faststart file (index first) decodes up to the cut without an error:
    # compare with the duration the container declares (AAC priming/padding is a few frames)
    if declared and declared - got > max(0.05 * declared, 3 * 1024 / float(sr)):
        raise DecodeError(f"truncated: decoded {got:.2f} s of the {declared:.2f} s the file declares",
                          path=path, hint="the file is truncated or corrupt; re-download it")
    return (data.mean(axis=0) if data.shape[0] > 1 else data[0]), int(sr)


def load_audio(path: str | Path, target_sr: int) -> np.ndarray:
    """Decode ``path`` to a mono float32 waveform at ``target_sr`` Hz, shape ``(T,)``.

    wav/flac go through soundfile, everything else (m4a, aac, mp4 audio track...) through
    PyAV. Channels are averaged; the rate is converted with a cached torchaudio kernel.
    Zero-byte, truncated, corrupt files, files without an audio stream, empty or
    non-finite audio: ``DecodeError(path=..., hint=...)``.
    """
    path = str(path)
    _check_regular_file(path, "audio file")
    if os.path.getsize(path) == 0:
        raise DecodeError("audio file is empty (0 bytes)", path=path, hint="re-download or re-extract this file")
    ext = os.path.splitext(path)[1].lower()
    wave, sr = _load_soundfile(path) if ext in SOUNDFILE_EXTS else _load_pyav_audio(path)
    if wave.size == 0:
        raise DecodeError("no audio samples in this file", path=path, hint="the file holds a header only")
    if not np.isfinite(wave).all():
        raise DecodeError("audio holds NaN/Inf samples", path=path, hint="the file is corrupt")
    return resample(wave, sr, int(target_sr))
