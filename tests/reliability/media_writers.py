"""Writers of real media files for the reliability corpus (WAV, m4a, mp4 with H.264
and/or AAC, images in any PIL mode and format, face-like frames), and the 16 kHz mono
decode the checks compare against."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from data_manifests.synth.media import add_aac_stream, encode_aac, encode_frames

SR = 16000


def write_wav(path: Path, audio: np.ndarray, sr: int) -> Path:
    """PCM16 WAV; ``audio`` (T,) mono or (T, C)."""
    import soundfile as sf
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), np.clip(audio, -1, 1), sr, subtype="PCM_16", format="WAV")
    return path


def _add_aac(container, audio: np.ndarray, sr: int):
    """An AAC stream for ``audio`` (mono or stereo), the fast coder, the encoder's default bit rate."""
    return add_aac_stream(container, sr, 1 if audio.ndim == 1 else audio.shape[1], bit_rate=None,
                          options={"aac_coder": "fast"})


def write_m4a(path: Path, audio: np.ndarray, sr: int) -> Path:
    """AAC in an .m4a (mono or stereo, any rate)."""
    import av
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w", format="ipod") as c:
        encode_aac(c, _add_aac(c, audio, sr), audio, sr)
    return path


def write_mp4(path: Path, frames: np.ndarray | None, fps: int = 25, audio: np.ndarray | None = None,
              sr: int = SR, faststart: bool = False) -> Path:
    """H.264 video (``frames`` uint8 (N, H, W, 3), None: no video track) and/or an AAC track."""
    import av
    path.parent.mkdir(parents=True, exist_ok=True)
    opts = {"movflags": "+faststart"} if faststart else {}
    with av.open(str(path), "w", format="mp4", options=opts) as c:
        vs = None
        if frames is not None:  # all streams are added before the first packet is muxed
            n, h, w, _ = frames.shape
            vs = c.add_stream("libx264", rate=fps)
            vs.width, vs.height, vs.pix_fmt = w, h, "yuv420p"
            vs.codec_context.options = {"preset": "ultrafast", "threads": "1"}
        ast = _add_aac(c, audio, sr) if audio is not None else None
        if vs is not None:
            encode_frames(c, vs, frames, fps)
        if ast is not None:
            encode_aac(c, ast, audio, sr)
    return path


def write_image(path: Path, rgb: np.ndarray, mode: str = "RGB", fmt: str = "JPEG") -> Path:
    """An image file from uint8 RGB, converted to PIL ``mode`` (L, CMYK...) and saved as ``fmt``
    whatever the file's extension says (PNG bytes in a ``.jpg`` ...)."""
    from PIL import Image
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb).convert(mode).save(path, format=fmt)
    return path


def face_frames(n: int, size: int = 96, seed: int = 0) -> np.ndarray:
    """``n`` smooth, face-sized RGB frames (a bright ellipse on a textured background)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    base = np.stack([0.4 + 0.3 * np.sin(6 * xx + c) * np.cos(5 * yy) for c in range(3)], -1)
    out = np.empty((n, size, size, 3), np.uint8)
    for i in range(n):
        cx, cy = 0.5 + 0.05 * np.sin(i / 5), 0.5 + 0.05 * np.cos(i / 7)
        face = (((xx - cx) / 0.28) ** 2 + ((yy - cy) / 0.36) ** 2) < 1
        img = base.copy()
        img[face] = (0.85, 0.65, 0.55)
        img += rng.normal(0, 0.02, img.shape)
        out[i] = np.clip(img * 255, 0, 255).astype(np.uint8)
    return out


def decode_mono16k(path: str) -> np.ndarray:
    from extractors.media import load_audio
    return load_audio(path, SR)


def _resample(x: np.ndarray, src: int, dst: int) -> np.ndarray:
    from scipy.signal import resample_poly
    g = np.gcd(src, dst)
    return resample_poly(x, dst // g, src // g).astype(np.float32)
