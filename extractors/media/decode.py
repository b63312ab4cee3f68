"""In-process media decoding: audio to mono float32 at a target rate, faces to F evenly
spaced, centre-cropped, resized RGB frames. No ffmpeg subprocess per file.

Decoders
--------
* ``.wav``/``.flac`` (and anything libsndfile reads): :mod:`soundfile`. A RIFF WAV whose
  ``data`` chunk is shorter than its header declares is *truncated* and refused.
* ``.m4a``/``.aac``/``.mp4``/... : PyAV (the first audio stream; for an mp4 face track the
  audio track). Any decoder error, even after some packets decoded, is a ``DecodeError``.
* Video frames: PyAV. Short clips (<= ``SEEK_THRESHOLD_S`` seconds) are decoded through
  once; longer videos seek to the keyframe before each wanted frame and decode forward.
* Frame folders (``*.jpg``): ``torchvision.io.decode_jpeg`` (grayscale and CMYK become
  RGB); a file it refuses (e.g. a PNG named ``.jpg``) goes to ``decode_image`` and then
  PIL before it is declared unreadable.

Frame sampling rule (the same for videos and folders)
-----------------------------------------------------
The clip's ``n`` frames are cut into ``F`` equal sub-sequences (as DCA's 8 sub-sequences)
and the centre frame of each is taken: ``idx[i] = floor((i + 0.5) * n / F)``. When
``n < F`` several sub-sequences share a frame: only the first occurrence is *valid*, the
repeats are returned (same pixels) with ``valid = False`` so that a mean over valid frames
counts each real frame once. In a folder, an unreadable chosen file is replaced by the
nearest readable file of its sub-sequence; if none is readable, that slot is a repeat of a
readable frame with ``valid = False``; if no chosen file is readable the clip is a
``DecodeError``.

Crop and resize: the centre square of each frame, resized to ``size`` x ``size`` with PIL's
bilinear filter (antialiased when shrinking; single-threaded, so decode workers do not
compete for torch's thread pool).

Resampling: ``torchaudio`` windowed-sinc (``Resample`` module, kernel cached per
``(source_rate, target_rate)``). Mono mix-down: the plain mean of the channels.
"""

from __future__ import annotations

import os
import re
import struct
import threading
from pathlib import Path

import numpy as np

from pipeline.core.errors import DecodeError

SOUNDFILE_EXTS = {".wav", ".flac", ".ogg", ".aiff", ".aif", ".au", ".w64", ".rf64"}
SEEK_THRESHOLD_S = 30.0      # videos longer than this are sampled by seeking
IMAGE_EXTS = (".jpg", ".jpeg")

__all__ = ["load_audio", "load_faces", "frame_indices", "resample", "centre_crop_resize",
           "SEEK_THRESHOLD_S"]


# ----------------------------------------------------------------------------- audio
_resamplers: dict[tuple[int, int], object] = {}
_resampler_lock = threading.Lock()


def _check_regular_file(path: str, what: str) -> None:
    """``DecodeError`` unless ``path`` is a regular file (a device, FIFO or folder is refused unopened)."""
    if os.path.isfile(path):
        return
    if os.path.exists(path):
        raise DecodeError(f"{what} is not a regular file (a device, FIFO or folder)", path=path,
                          hint="point the manifest at the media file itself")
    raise DecodeError(f"{what} not found", path=path, hint="check the manifest's media paths")


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


#: per stream kind: (what the file is called, what it is not, hint when the stream is missing)
_AV_KINDS = {"audio": ("media", "not a media file", "give an audio_path for this clip, or leave the audio out"),
             "video": ("video", "not a video", "give a frames_dir for this clip, or leave the faces out")}


def _open_stream(path: str, kind: str):
    """``(container, its first audio/video stream)`` via PyAV; unreadable file or no such
    stream -> ``DecodeError`` with the path (the container is closed then)."""
    import av
    what, not_a, hint_missing = _AV_KINDS[kind]
    try:
        container = av.open(path)
    except Exception as e:
        raise DecodeError(f"cannot open {what} ({_short(e)})", path=path,
                          hint=f"the file is corrupt, truncated or {not_a}") from None
    streams = container.streams.audio if kind == "audio" else container.streams.video
    if not streams:
        container.close()
        raise DecodeError(f"no {kind} stream in this file", path=path, hint=hint_missing)
    return container, streams[0]


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


# ----------------------------------------------------------------------------- faces
def frame_indices(n: int, n_frames: int) -> tuple[np.ndarray, np.ndarray]:
    """Centre frame of each of ``n_frames`` equal sub-sequences of ``n`` frames, and the
    validity mask (False for a repeat of an earlier slot's frame when ``n < n_frames``)."""
    if n <= 0:
        raise ValueError("no frames")
    idx = np.floor((np.arange(n_frames) + 0.5) * n / n_frames).astype(np.int64)
    idx = np.minimum(idx, n - 1)
    valid = np.ones(n_frames, dtype=bool)
    valid[1:] = idx[1:] != idx[:-1]
    return idx, valid


def centre_crop_resize(img: np.ndarray, size: int) -> np.ndarray:
    """uint8 RGB ``(H, W, 3)`` -> centre square crop resized to ``size`` x ``size``, as
    uint8 ``(3, size, size)``. PIL bilinear (antialiased when shrinking), one thread."""
    from PIL import Image
    h, w = img.shape[:2]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    if side == size:
        out = img[top:top + side, left:left + side]
    else:
        out = np.asarray(Image.fromarray(np.ascontiguousarray(img)).resize(
            (size, size), Image.BILINEAR, box=(left, top, left + side, top + side)))
    return np.ascontiguousarray(out.transpose(2, 0, 1))


def _natural_key(name: str):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def _decode_image_file(path: str) -> np.ndarray | None:
    """One image file -> uint8 ``(H, W, 3)`` RGB, or None if no decoder can read it."""
    import torchvision.io as tio
    try:
        data = tio.read_file(path)
    except Exception:
        return None
    for fn in (tio.decode_jpeg, tio.decode_image):
        try:
            img = fn(data, mode=tio.ImageReadMode.RGB)
            if img.dim() == 3 and img.shape[0] == 3 and img.numel() > 0:
                return img.permute(1, 2, 0).numpy()
        except Exception:
            pass
    try:  # PIL handles odd files (e.g. CMYK variants libjpeg refuses)
        from PIL import Image
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB")).copy()
    except Exception:
        return None


def _faces_from_folder(frames_dir: str, n_frames: int, size: int):
    if not os.path.isdir(frames_dir):
        raise DecodeError("frame folder not found", path=frames_dir,
                          hint="check the manifest's frames_dir, or leave the faces out")
    names = sorted((n for n in os.listdir(frames_dir) if n.lower().endswith(IMAGE_EXTS)), key=_natural_key)
    if not names:
        raise DecodeError("frame folder holds no .jpg files", path=frames_dir,
                          hint="extract the frames again, or leave the faces out")
    n = len(names)
    idx, valid = frame_indices(n, n_frames)
    cache: dict[int, object] = {}

    def get(i: int):
        if i not in cache:
            cache[i] = _decode_image_file(os.path.join(frames_dir, names[i]))
        return cache[i]

    imgs: list = [None] * n_frames
    for s in range(n_frames):
        if not valid[s]:
            continue
        lo = int(np.floor(s * n / n_frames))
        hi = max(lo + 1, int(np.floor((s + 1) * n / n_frames)))
        order = sorted(range(lo, min(hi, n)), key=lambda j: (abs(j - idx[s]), j))
        for j in order[:4]:  # the centre, then up to 3 nearest neighbours in the sub-sequence
            img = get(j)
            if img is not None:
                imgs[s] = img
                break
        if imgs[s] is None:
            valid[s] = False
    if not valid.any():
        raise DecodeError("none of the sampled frames could be decoded",
                          path=frames_dir, hint="the jpg files are corrupt; extract the frames again")
    out = np.empty((n_frames, 3, size, size), dtype=np.uint8)
    for s in range(n_frames):
        if imgs[s] is not None:
            out[s] = centre_crop_resize(imgs[s], size)
    first_valid = out[int(np.argmax(valid))]
    for s in range(n_frames):  # repeats: the previous slot's frame (or the first valid one)
        if imgs[s] is None:
            out[s] = out[s - 1] if s > 0 and (valid[:s].any()) else first_valid
    return out, valid


def _faces_from_video(video_path: str, n_frames: int, size: int, seek_threshold_s: float):
    _check_regular_file(video_path, "video file")
    if os.path.getsize(video_path) == 0:
        raise DecodeError("video file is empty (0 bytes)", path=video_path, hint="re-download this file")
    container, stream = _open_stream(video_path, "video")
    try:
        rate = float(stream.average_rate or stream.guessed_rate or 0) or None
        duration = (float(stream.duration * stream.time_base) if stream.duration else
                    (container.duration / 1e6 if container.duration else None))
        n_est = stream.frames or (int(round(duration * rate)) if duration and rate else 0)
        try:
            if duration and rate and n_est and duration > seek_threshold_s:
                frames, valid = _seek_frames(container, stream, n_est, rate, n_frames)
            else:
                frames, valid = _sequential_frames(container, stream, n_frames, stream.frames or 0)
        except DecodeError as e:
            e.path = e.path or video_path
            raise
        except Exception as e:
            raise DecodeError(f"video decoding failed ({_short(e)})", path=video_path,
                              hint="the file is truncated or corrupt; re-download it") from None
        if not frames:
            raise DecodeError("no video frames decoded", path=video_path, hint="the video stream is empty")
    finally:
        container.close()
    return np.stack([centre_crop_resize(f, size) for f in frames]), valid


def _pick(frames, n: int, n_frames: int):
    """From a stream of ``n`` frames, the wanted ones as RGB arrays (stops after the last);
    ``(None, count)`` when the stream holds fewer than the last wanted index."""
    idx, valid = frame_indices(n, n_frames)
    want, last = set(idx.tolist()), int(idx.max())
    got, count = {}, 0
    for i, frame in enumerate(frames):
        count = i + 1
        if i in want:
            got[i] = frame.to_ndarray(format="rgb24")
        if i >= last:
            return [got[j] for j in idx.tolist()], valid
    return None, count


def _sequential_frames(container, stream, n_frames: int, n_hint: int):
    """Decode the (short) clip from the start. With the container's frame count ``n_hint``
    the wanted frames are converted on the fly and decoding stops after the last one. With
    no count, or a stream shorter than announced, a first pass counts the frames and a
    second pass picks them. Returns RGB arrays ``(H, W, 3)`` and the validity mask."""
    if n_hint > 0:
        frames, valid = _pick(container.decode(stream), n_hint, n_frames)
        if frames is not None:
            return frames, valid
        count = valid
    else:
        count = sum(1 for _ in container.decode(stream))
    if count == 0:
        return [], None
    container.seek(0, stream=stream, backward=True, any_frame=False)
    frames, valid = _pick(container.decode(stream), count, n_frames)
    if frames is None:
        raise DecodeError(f"the video stream gave {count} frames, then {valid} on a second pass")
    return frames, valid


def _seek_frames(container, stream, n: int, rate: float, n_frames: int):
    """For each wanted frame index k, seek to the keyframe at or before its timestamp and
    decode forward to the first frame whose pts reaches ``start + k / rate``."""
    idx, valid = frame_indices(n, n_frames)
    tb = float(stream.time_base)
    start = stream.start_time or 0
    half = 0.5 / rate / tb
    out, last = [], None
    for k in idx:
        target = start + k / rate / tb
        if last is not None and last.pts is not None and abs(last.pts - target) < half:
            out.append(last)
            continue
        container.seek(int(max(start, target - half)), stream=stream, backward=True, any_frame=False)
        chosen = None
        for frame in container.decode(stream):
            chosen = frame
            if frame.pts is not None and frame.pts >= target - half:
                break
        if chosen is None:
            if not out:
                return [], None
            chosen = last
        out.append(chosen)
        last = chosen
    return [f.to_ndarray(format="rgb24") for f in out], valid


def load_faces(video_path: str | Path | None = None, frames_dir: str | Path | None = None,
               n_frames: int = 8, size: int = 112,
               seek_threshold_s: float = SEEK_THRESHOLD_S) -> tuple[np.ndarray, np.ndarray]:
    """``n_frames`` evenly spaced face frames of a clip: ``(uint8 (F,3,size,size), valid bool (F,))``.

    Exactly one source is used: ``video_path`` (mp4, PyAV) if given, else ``frames_dir``
    (a folder of jpgs). Frames are RGB, centre-cropped to a square and resized to
    ``size`` x ``size``. See the module docstring for the sampling and validity rule.
    Missing/empty sources, no video stream, corrupt files: ``DecodeError``.
    """
    if n_frames < 1 or size < 1:
        raise ValueError("n_frames and size must be >= 1")
    if video_path is not None:
        return _faces_from_video(str(video_path), n_frames, size, seek_threshold_s)
    if frames_dir is not None:
        return _faces_from_folder(str(frames_dir), n_frames, size)
    raise DecodeError("no face source (neither video_path nor frames_dir)",
                      hint="give a video_path or frames_dir in the manifest, or leave the faces out")


def _short(e: BaseException) -> str:
    msg = str(e).splitlines()[0] if str(e) else ""
    return f"{type(e).__name__}: {msg[:200]}" if msg else type(e).__name__
