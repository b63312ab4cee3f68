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
