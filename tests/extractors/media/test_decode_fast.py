"""The fast video path (extractors.media.decode_video) against the exact one, on VoxCeleb-format
media (benchmarks/voxceleb_media.py: H.264 224x224 25 fps, x264 default GOP with B-frames,
~250 kb/s of textured moving content): same frames, same validity, same embeddings."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.voxceleb_media import generate
from data_manifests.manifest import read_manifest
from extractors.media.decode import load_faces
from extractors.media.video import _fast_frames, _is_reference, _nal_length_size, faces_from_video


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    out = tmp_path_factory.mktemp("voxfmt")
    # 5 frames (< 8: repeats), and three clips of 1-3 s with B-frames and one keyframe
    m = generate(out, kind="vox2", durations=[0.2, 1.0, 2.2, 3.0], seed=3, progress=False)
    return [r.video_path for r in read_manifest(m)]


def test_media_has_non_reference_frames(clips):
    """The thing the fast path skips exists in this media (else the test below proves nothing)."""
    import av
    with av.open(clips[-1]) as c:
        s = c.streams.video[0]
        nal = _nal_length_size(s.codec_context)
        refs = [_is_reference(bytes(p), nal) for p in c.demux(s) if p.size]
    assert nal == 4 and len(refs) == 75
    assert 10 < refs.count(False) < 70 and refs[0]


@pytest.mark.parametrize("size", [112, 224])
def test_fast_path_gives_the_exact_frames(clips, size):
    for p in clips:
        fe, ve = load_faces(p, n_frames=8, size=size, exact=True)
        ff, vf = load_faces(p, n_frames=8, size=size)
        assert fe.shape == ff.shape == (8, 3, size, size)
        assert np.array_equal(ve, vf) and np.array_equal(fe, ff), p
    assert not load_faces(clips[0], n_frames=8, size=size)[1].all()  # 5 frames: repeats flagged


def test_fast_path_is_taken_on_this_media(clips):
    """No silent fall-back to the exact path on well-formed VoxCeleb-format files."""
    import av
    for p in clips:
        with av.open(p) as c:
            res = _fast_frames(c, c.streams.video[0], 8, 112, True, False, False)
        assert res is not None and res[0].shape == (8, 3, 112, 112), p


def test_fast_path_without_skipping_is_the_same_too(clips):
    a, _ = faces_from_video(clips[2], 8, 112, skip_nonref=False)
    b, _ = faces_from_video(clips[2], 8, 112)
    assert np.array_equal(a, b)


def test_embeddings_fast_vs_exact(clips):
    """cosine >= 0.999 per clip with a real-shaped backbone (iresnet18, registry random init);
    different clips stay far apart, so the figure can tell paths apart."""
    from extractors.media.check import compare_paths
    r = compare_paths(clips[1:3], backbone="iresnet18", n_frames=4)
    assert r["clips"] == 2 and r["valid_equal"] and max(r["max_pixel_diff"]) == 0
    assert min(r["clip_cos"]) >= 0.999 and min(r["frame_cos_min"]) >= 0.999
    assert r["other_clip_cos_max"] < 0.99


def test_a_resize_that_moves_pixels_is_not_the_default(clips):
    """The one-step swscale resize measured in the benchmark changes pixels: it stays off."""
    fe, _ = faces_from_video(clips[2], 8, 112, exact=True)
    fs, _ = faces_from_video(clips[2], 8, 112, fast_resize=True)
    assert np.abs(fe.astype(int) - fs.astype(int)).max() > 0


def test_truncated_faststart_video_fails_on_both_paths(tmp_path):
    """Index first, cut at 50 %: the packets before the cut demux fine, but the file is
    truncated; the fast path must not accept the part it can decode (regression)."""
    from pipeline.core.errors import DecodeError
    from tests.reliability.media_writers import write_mp4
    rng = np.random.default_rng(0)
    data = write_mp4(tmp_path / "fs.mp4", rng.integers(0, 255, (60, 48, 48, 3), dtype=np.uint8),
                     faststart=True).read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) // 2])
    for exact in (True, False):
        with pytest.raises(DecodeError, match="video decoding failed") as e:
            load_faces(cut, exact=exact)
        assert e.value.path == str(cut)


def _odd_sized_mp4(path, w=96, h=64, n=6):
    import av
    rng = np.random.default_rng(0)
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=25)
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        for _ in range(n):
            img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            for pkt in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(pkt)
        for pkt in s.encode(None):
            c.mux(pkt)
    return str(path)


def test_shared_reformatter_gives_pyavs_pixels(clips, tmp_path):
    """``_rgb`` (one swscale context per thread) == PyAV's ``to_ndarray(format="rgb24")``
    (a new context per frame) on every frame, across a change of frame size on one thread
    and on a second thread."""
    import threading

    import av

    from extractors.media.video import _rgb
    paths = [clips[-1], _odd_sized_mp4(tmp_path / "odd.mp4"), clips[1]]

    def check(out: list) -> None:
        for p in paths:
            with av.open(p) as c:
                for f in c.decode(video=0):
                    a, b = _rgb(f), f.to_ndarray(format="rgb24")
                    out.append(a.shape == b.shape and np.array_equal(a, b))
                    a2 = _rgb(f, width=56, height=56, interpolation="AREA")
                    b2 = f.to_ndarray(width=56, height=56, format="rgb24", interpolation="AREA")
                    out.append(np.array_equal(a2, b2))

    main: list = []
    check(main)
    other: list = []
    t = threading.Thread(target=check, args=(other,))
    t.start()
    t.join()
    assert len(main) == len(other) > 2 * (75 + 6) and all(main) and all(other)


def test_shared_reformatter_survives_fork(clips, tmp_path):
    """A decode worker forked after the parent converted frames (``shm_ring`` forks its
    workers) converts frames of another size without hanging: swscale slice threads of an
    inherited context would wait forever for threads the child does not have."""
    import os
    import time

    import av

    from extractors.media.video import _rgb
    odd = _odd_sized_mp4(tmp_path / "odd.mp4")
    with av.open(clips[-1]) as c:
        _rgb(next(c.decode(video=0)))          # the parent's context, at 224 x 224
    pid = os.fork()
    if pid == 0:                               # child: another size, then exit without cleanup
        code = 1
        try:
            with av.open(odd) as c:
                code = 0 if _rgb(next(c.decode(video=0))).shape == (64, 96, 3) else 3
        finally:
            os._exit(code)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        time.sleep(0.05)
    else:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        raise AssertionError("the forked child hung converting a frame")
    assert os.waitstatus_to_exitcode(status) == 0
