"""What the audio, video and frame-folder decoders share: path checks, opening a PyAV
stream with a ``DecodeError`` naming the file, the frame sampling rule and the crop/resize.

Frame sampling rule (the same for videos and folders)
-----------------------------------------------------
The clip's ``n`` frames are cut into ``F`` equal sub-sequences (as DCA's 8 sub-sequences)
and the centre frame of each is taken: ``idx[i] = floor((i + 0.5) * n / F)``. When
``n < F`` several sub-sequences share a frame: only the first occurrence is *valid*, the
repeats are returned (same pixels) with ``valid = False`` so that a mean over valid frames
counts each real frame once.

Crop and resize (exact path): the centre square of each frame, resized to ``size`` x
``size`` with PIL's bilinear filter (antialiased when shrinking; single-threaded, so decode
workers do not compete for torch's thread pool). The fast video path resizes square frames
in swscale instead (see ``extractors.media.decode_video``).
"""

from __future__ import annotations

import os

import numpy as np

from pipeline.core.errors import DecodeError

#: per stream kind: (what the file is called, what it is not, hint when the stream is missing)
_AV_KINDS = {"audio": ("media", "not a media file", "give an audio_path for this clip, or leave the audio out"),
             "video": ("video", "not a video", "give a frames_dir for this clip, or leave the faces out")}


def _check_regular_file(path: str, what: str) -> None:
    """``DecodeError`` unless ``path`` is a regular file (a device, FIFO or folder is refused unopened)."""
    if os.path.isfile(path):
        return
    if os.path.exists(path):
        raise DecodeError(f"{what} is not a regular file (a device, FIFO or folder)", path=path,
                          hint="point the manifest at the media file itself")
    raise DecodeError(f"{what} not found", path=path, hint="check the manifest's media paths")


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


def _short(e: BaseException) -> str:
    msg = str(e).splitlines()[0] if str(e) else ""
    return f"{type(e).__name__}: {msg[:200]}" if msg else type(e).__name__


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


def centre_crop_resize(img: np.ndarray, size: int | None) -> np.ndarray:
    """uint8 RGB ``(H, W, 3)`` -> centre square crop resized to ``size`` x ``size``, as
    uint8 ``(3, size, size)``. PIL bilinear (antialiased when shrinking), one thread.
    ``size=None``: the crop only, at the source side (resized later, on the device)."""
    from PIL import Image
    h, w = img.shape[:2]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    if size is None or side == size:
        out = img[top:top + side, left:left + side]
    else:
        out = np.asarray(Image.fromarray(np.ascontiguousarray(img)).resize(
            (size, size), Image.BILINEAR, box=(left, top, left + side, top + side)))
    return np.ascontiguousarray(out.transpose(2, 0, 1))
