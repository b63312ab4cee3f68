"""Face frames from a folder of jpgs (VoxCeleb1 style): ``torchvision.io.decode_jpeg``
(grayscale and CMYK become RGB); a file it refuses (e.g. a PNG named ``.jpg``) goes to
``decode_image`` and then PIL before it is declared unreadable.

Sampling: ``extractors.media.decode_common.frame_indices`` over the naturally sorted file names.
An unreadable chosen file is replaced by the nearest readable file of its sub-sequence; if
none is readable, that slot is a repeat of a readable frame with ``valid = False``; if no
chosen file is readable the clip is a ``DecodeError``. Only the chosen files are read.
"""

from __future__ import annotations

import os
import re

import numpy as np

from extractors.media.common import centre_crop_resize, frame_indices
from pipeline.core.errors import DecodeError

IMAGE_EXTS = (".jpg", ".jpeg")


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


def faces_from_folder(frames_dir: str, n_frames: int, size: int):
    """``(uint8 (F, 3, size, size), valid (F,))`` from a folder of jpgs (see the module docstring)."""
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
