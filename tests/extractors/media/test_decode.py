"""extractors.decode on real encoded media (soundfile / PyAV / PIL / torchvision written
in tmp dirs), good and bad."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from data_manifests.synth.media import add_aac_stream, encode_aac, encode_frames
from extractors.media import decode, frame_indices, load_audio, load_faces
from pipeline.core import DecodeError


# ----------------------------------------------------------------------------- media writers
def sine(freq: float, seconds: float, sr: int, amp: float = 0.3) -> np.ndarray:
    t = np.arange(int(round(seconds * sr))) / sr
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def write_wav(path, audio: np.ndarray, sr: int) -> Path:
    import soundfile as sf
    sf.write(str(path), audio, sr)
    return Path(path)


def _add_audio(container, audio: np.ndarray, sr: int):
    """An AAC stream for ``audio`` (mono or stereo) with the encoder's defaults."""
    return add_aac_stream(container, sr, 1 if audio.ndim == 1 else audio.shape[1], bit_rate=None, options=None)


def _encode_audio(container, audio: np.ndarray, sr: int, st=None) -> None:
    """audio: (T,) mono or (T, C) -> AAC stream in ``container``."""
    encode_aac(container, st or _add_audio(container, audio, sr), audio, sr)


def write_m4a(path, audio: np.ndarray, sr: int) -> Path:
    import av
    with av.open(str(path), "w", format="ipod") as c:
        _encode_audio(c, audio, sr)
    return Path(path)


def level_frames(n: int, h: int = 64, w: int = 64, step: int = 8) -> np.ndarray:
    """n RGB frames; frame i is a flat grey of level ``(step * i) % 240 + 8``."""
    lv = ((np.arange(n) * step) % 240 + 8).astype(np.uint8)
    return np.broadcast_to(lv[:, None, None, None], (n, h, w, 3)).copy()


def write_mp4(path, frames: np.ndarray | None, fps: int = 25, audio: np.ndarray | None = None,
              sr: int = 16000, gop: int = 12, fmt: str = "mp4") -> Path:
    """H.264 video of uint8 (N,H,W,3) frames (and/or an AAC track)."""
    import av
    with av.open(str(path), "w", format=fmt) as c:
        ast = _add_audio(c, audio, sr) if audio is not None else None
        if frames is not None:
            st = c.add_stream("libx264", rate=fps)
            st.width, st.height, st.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
            st.codec_context.gop_size = gop
            st.codec_context.options = {"preset": "ultrafast", "crf": "10", "threads": "1",
                                        "keyint_min": str(gop), "sc_threshold": "0"}
            encode_frames(c, st, frames, fps)
        if audio is not None:
            _encode_audio(c, audio, sr, ast)
    return Path(path)


def write_jpg(path, rgb: np.ndarray, mode: str = "RGB", fmt: str = "JPEG") -> Path:
    from PIL import Image
    Image.fromarray(rgb).convert(mode).save(str(path), format=fmt, quality=95)
    return Path(path)


def dominant_freq(x: np.ndarray, sr: int) -> float:
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.argmax(spec) * sr / len(x))


# ----------------------------------------------------------------------------- audio
def test_wav_16k_is_read_exactly(tmp_path):
    x = sine(440, 1.0, 16000)
    write_wav(tmp_path / "a.wav", x, 16000)
    y = load_audio(tmp_path / "a.wav", 16000)
    assert y.dtype == np.float32 and y.shape == x.shape
    assert np.abs(y - x).max() < 1e-4  # 16-bit PCM quantisation only


def test_flac_44k1_stereo_is_mixed_down_and_resampled(tmp_path):
    import torch
    import torchaudio.functional as AF
    left, right = sine(500, 1.0, 44100, 0.4), sine(1500, 1.0, 44100, 0.2)
    write_wav(tmp_path / "s.flac", np.stack([left, right], 1), 44100)
    y = load_audio(tmp_path / "s.flac", 16000)
    ref = AF.resample(torch.from_numpy((left + right) / 2), 44100, 16000).numpy()
    assert y.shape == ref.shape == (16000,)
    assert np.abs(y - ref).max() < 2e-4
    spec = np.abs(np.fft.rfft(y))
    assert spec[500] > 0.3 * spec.max() and spec[1500] > 0.3 * spec.max()


@pytest.mark.parametrize("sr", [8000, 48000])
def test_wav_other_rates_keep_their_pitch(tmp_path, sr):
    write_wav(tmp_path / "r.wav", sine(700, 2.0, sr), sr)
    y = load_audio(tmp_path / "r.wav", 16000)
    assert abs(len(y) - 32000) <= 1
    assert abs(dominant_freq(y, 16000) - 700) < 2


def test_resampler_kernel_is_cached(tmp_path):
    write_wav(tmp_path / "r.wav", sine(300, 0.5, 22050), 22050)
    load_audio(tmp_path / "r.wav", 16000)
    r = decode._resamplers[(22050, 16000)]
    load_audio(tmp_path / "r.wav", 16000)
    assert decode._resamplers[(22050, 16000)] is r


def test_m4a_48k_stereo_aac(tmp_path):
    x = sine(600, 2.0, 48000)
    write_m4a(tmp_path / "a.m4a", np.stack([x, x], 1), 48000)
    y = load_audio(tmp_path / "a.m4a", 16000)
    assert y.dtype == np.float32 and y.ndim == 1
    assert abs(len(y) - 32000) < 16000 * 0.1  # AAC priming / padding frames at most
    assert abs(dominant_freq(y, 16000) - 600) < 2
    assert 0.15 < np.abs(y).max() < 0.45


def test_mp4_audio_track(tmp_path):
    x = sine(400, 1.5, 16000)
    write_mp4(tmp_path / "v.mp4", level_frames(10), audio=x, sr=16000)
    y = load_audio(tmp_path / "v.mp4", 16000)
    assert abs(len(y) - len(x)) < 2048
    assert abs(dominant_freq(y, 16000) - 400) < 2


def test_mp4_without_audio_stream(tmp_path):
    write_mp4(tmp_path / "v.mp4", level_frames(10))
    with pytest.raises(DecodeError, match="no audio stream") as e:
        load_audio(tmp_path / "v.mp4", 16000)
    assert e.value.path == str(tmp_path / "v.mp4") and e.value.hint


@pytest.mark.parametrize("ext", [".wav", ".flac", ".m4a", ".mp4"])
def test_zero_byte_and_garbage_files(tmp_path, ext):
    (tmp_path / f"z{ext}").write_bytes(b"")
    with pytest.raises(DecodeError, match="empty"):
        load_audio(tmp_path / f"z{ext}", 16000)
    (tmp_path / f"g{ext}").write_bytes(np.random.default_rng(0).bytes(6000))
    with pytest.raises(DecodeError) as e:
        load_audio(tmp_path / f"g{ext}", 16000)
    assert e.value.path.endswith(f"g{ext}") and e.value.hint


def test_truncated_files(tmp_path):
    x = sine(300, 2.0, 16000)
    for name in ("t.wav", "t.flac"):
        write_wav(tmp_path / name, x, 16000)
    write_m4a(tmp_path / "t.m4a", x, 16000)
    for name in ("t.wav", "t.flac", "t.m4a"):
        p = tmp_path / name
        b = p.read_bytes()
        p.write_bytes(b[: len(b) // 2])
        with pytest.raises(DecodeError) as e:
            load_audio(p, 16000)
        assert e.value.path == str(p)
    with pytest.raises(DecodeError, match="truncated"):
        load_audio(tmp_path / "t.wav", 16000)


def test_header_only_wav_and_missing_file(tmp_path):
    write_wav(tmp_path / "h.wav", np.zeros(0, np.float32), 16000)
    with pytest.raises(DecodeError, match="no audio samples"):
        load_audio(tmp_path / "h.wav", 16000)
    with pytest.raises(DecodeError, match="not found"):
        load_audio(tmp_path / "nope.wav", 16000)


# ----------------------------------------------------------------------------- frame sampling rule
def test_frame_indices_rule():
    idx, valid = frame_indices(100, 8)
    assert idx.tolist() == [int((i + 0.5) * 100 / 8) for i in range(8)] and valid.all()
    idx, valid = frame_indices(3, 8)
    assert idx.tolist() == [0, 0, 0, 1, 1, 2, 2, 2]
    assert valid.tolist() == [True, False, False, True, False, True, False, False]
    idx, valid = frame_indices(8, 8)
    assert idx.tolist() == list(range(8)) and valid.all()


# ----------------------------------------------------------------------------- faces: video
def _levels(frames: np.ndarray) -> np.ndarray:
    return frames.reshape(len(frames), -1).mean(1)


def test_video_frames_are_evenly_spaced(tmp_path):
    n = 30
    write_mp4(tmp_path / "v.mp4", level_frames(n))
    frames, valid = load_faces(tmp_path / "v.mp4", n_frames=8, size=32)
    assert frames.dtype == np.uint8 and frames.shape == (8, 3, 32, 32) and valid.all()
    want = ((frame_indices(n, 8)[0] * 8) % 240 + 8).astype(float)
    assert np.abs(_levels(frames) - want).max() < 3


def test_centre_crop_removes_side_bars(tmp_path):
    f = np.zeros((4, 48, 96, 3), np.uint8)
    f[..., 1] = 200                   # green centre
    f[:, :, :24] = (255, 0, 0)        # red bars left and right of the centre square
    f[:, :, 72:] = (255, 0, 0)
    write_mp4(tmp_path / "w.mp4", f)
    frames, valid = load_faces(tmp_path / "w.mp4", n_frames=4, size=24)
    rgb = frames.astype(float).mean(axis=(0, 2, 3))
    assert rgb[1] > 170 and rgb[0] < 30


def test_seek_mode_equals_sequential_decoding(tmp_path):
    n = 120  # 4.8 s at 25 fps, keyframe every 12 frames
    write_mp4(tmp_path / "long.mp4", level_frames(n, step=2), gop=12)
    seq, v1 = load_faces(tmp_path / "long.mp4", n_frames=8, size=32, seek_threshold_s=1e9)
    sek, v2 = load_faces(tmp_path / "long.mp4", n_frames=8, size=32, seek_threshold_s=0.0)
    assert np.array_equal(seq, sek) and np.array_equal(v1, v2)
    want = ((frame_indices(n, 8)[0] * 2) % 240 + 8).astype(float)
    assert np.abs(_levels(sek) - want).max() < 3


def test_container_without_frame_count(tmp_path):
    """Matroska stores no frame count: the frames are counted first, then picked."""
    import av
    n = 37
    p = write_mp4(tmp_path / "v.mkv", level_frames(n, step=6), fmt="matroska")
    with av.open(str(p)) as c:
        assert c.streams.video[0].frames == 0
    frames, valid = load_faces(p, n_frames=8, size=16)
    want = ((frame_indices(n, 8)[0] * 6) % 240 + 8).astype(float)
    assert valid.all() and np.abs(_levels(frames) - want).max() < 3


def test_short_video_repeats_are_invalid(tmp_path):
    write_mp4(tmp_path / "s.mp4", level_frames(3, step=60))
    frames, valid = load_faces(tmp_path / "s.mp4", n_frames=8, size=16)
    assert valid.tolist() == [True, False, False, True, False, True, False, False]
    assert np.array_equal(frames[0], frames[2]) and np.array_equal(frames[3], frames[4])
    assert len(np.unique(np.round(_levels(frames[valid])))) == 3


def test_video_errors(tmp_path):
    write_m4a(tmp_path / "a.m4a", sine(300, 1.0, 16000), 16000)
    with pytest.raises(DecodeError, match="no video stream"):
        load_faces(video_path=tmp_path / "a.m4a")
    (tmp_path / "z.mp4").write_bytes(b"")
    with pytest.raises(DecodeError, match="empty"):
        load_faces(video_path=tmp_path / "z.mp4")
    (tmp_path / "g.mp4").write_bytes(np.random.default_rng(1).bytes(5000))
    with pytest.raises(DecodeError):
        load_faces(video_path=tmp_path / "g.mp4")
    with pytest.raises(DecodeError, match="no face source"):
        load_faces()


def test_truncated_video(tmp_path):
    p = write_mp4(tmp_path / "t.mp4", level_frames(50))
    b = p.read_bytes()
    p.write_bytes(b[: len(b) // 2])  # moov atom at the end: cut off
    with pytest.raises(DecodeError) as e:
        load_faces(video_path=p)
    assert e.value.path == str(p)


# ----------------------------------------------------------------------------- faces: jpg folders
def _folder(tmp_path, n: int, name: str = "frames") -> Path:
    d = tmp_path / name
    d.mkdir()
    for i in range(n):  # names without zero padding: natural order, not lexicographic
        write_jpg(d / f"{i + 1}.jpg", level_frames(1, 40, 60, step=10)[0] * 0 + np.uint8(10 * i + 8))
    return d


def test_folder_natural_order_and_crop(tmp_path):
    d = _folder(tmp_path, 20)
    frames, valid = load_faces(frames_dir=d, n_frames=4, size=20)
    assert frames.shape == (4, 3, 20, 20) and valid.all()
    want = frame_indices(20, 4)[0] * 10 + 8
    assert np.abs(_levels(frames) - want).max() < 2


def test_folder_grayscale_cmyk_png_named_jpg(tmp_path):
    d = tmp_path / "mixed"
    d.mkdir()
    rgb = np.zeros((40, 40, 3), np.uint8)
    rgb[..., 0], rgb[..., 2] = 200, 50
    write_jpg(d / "1.jpg", rgb, mode="L")
    write_jpg(d / "2.jpg", rgb, mode="CMYK")
    write_jpg(d / "3.jpg", rgb, fmt="PNG")
    frames, valid = load_faces(frames_dir=d, n_frames=3, size=16)
    assert valid.all()
    grey = frames[0].astype(int)
    assert np.abs(grey[0] - grey[1]).max() == 0 and np.abs(grey[1] - grey[2]).max() == 0
    for f in frames[1:]:
        m = f.astype(float).mean(axis=(1, 2))
        assert abs(m[0] - 200) < 8 and abs(m[2] - 50) < 8


def test_folder_corrupt_frame_is_replaced_by_neighbour(tmp_path):
    d = _folder(tmp_path, 16)
    idx = frame_indices(16, 4)[0]
    (d / f"{idx[1] + 1}.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    frames, valid = load_faces(frames_dir=d, n_frames=4, size=8)
    assert valid.all()
    lv = _levels(frames)
    assert abs(lv[1] - (idx[1] * 10 + 8)) == pytest.approx(10, abs=2)  # a neighbour, one frame away


def test_folder_all_unreadable_empty_or_missing(tmp_path):
    d = tmp_path / "bad"
    d.mkdir()
    for i in range(3):
        (d / f"{i}.jpg").write_bytes(b"" if i == 0 else os.urandom(100))
    with pytest.raises(DecodeError, match="could be decoded"):
        load_faces(frames_dir=d)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DecodeError, match="no .jpg"):
        load_faces(frames_dir=tmp_path / "empty")
    with pytest.raises(DecodeError, match="not found") as e:
        load_faces(frames_dir=tmp_path / "missing")
    assert e.value.hint
