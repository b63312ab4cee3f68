"""`avfuse synth --av-correlation R`: R = 0 is the corpus of before the option byte for byte (reference
hashes computed with the code before the option existed), R > 0 links voice and face parameters through
shared traits with the stated correlations while keeping each modality's marginal shares."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from data_manifests.synth.corpus import synthesize
from data_manifests.synth.face import sample_face
from data_manifests.synth.traits import correlate, sample_traits
from data_manifests.synth.voice import sample_voice
from pipeline.cli.synth import synth_cmd
from pipeline.core.errors import ConfigError

TINY = dict(speakers=6, videos_per_speaker=2, clips_per_video=1, seed=5, clip_seconds=0.3, face_size=32,
            workers=1, progress=False)
# sha256 over (relative path, bytes) of every file of the TINY corpus, computed with the code of commit
# 97a53f7 (before --av-correlation existed), in three groups so that a failure says what changed: "meta"
# (manifest, trials, synth_info.json), "audio" (AAC m4a / WAV) and "video" (H.264 mp4 / JPEG). The media
# bytes are those of this PyAV/libx264/libjpeg build (as test_synth.test_same_seed_same_bytes assumes).
REFERENCE = {
    "vox2": {"meta": "75463fe8fb4b0e2e57f5d70b2c43fcc900bc21f90fbecc50a3acda290f0efc63",
             "audio": "f045b5a47b7dfc5546acd1e27d0f79c26b5c5dd10a97935f13b451468ff0a83c",
             "video": "216c899026233b6ef0a1638c362430283ed407e9f1a4f14b20f10f70d077e3ec"},
    "vox1": {"meta": "e9660894ae4fe4647178baba5db9b4b4c404316cf83f7efd2816bfb50b82b3a1",
             "audio": "43c9ee1fa629c33050f535b2a9d7ae03d30afc7d4036dc81facc9f0f8128acce",
             "video": "a378528f30e00904a71b1e0b6e105f03b118681ed8d5df87a93ffb4dd107a6f3"}}


def corpus_hashes(root: Path) -> dict[str, str]:
    hs = {g: hashlib.sha256() for g in ("meta", "audio", "video")}
    for p in sorted(root.rglob("*")):
        if p.is_file():
            rel = str(p.relative_to(root))
            group = "audio" if rel.endswith((".m4a", ".wav")) else "video" if rel.endswith((".mp4", ".jpg")) else "meta"
            hs[group].update(rel.encode() + b"\0" + p.read_bytes())
    return {g: h.hexdigest() for g, h in hs.items()}


@pytest.mark.parametrize("layout,fmt", [("vox2", "mp4"), ("vox1", "jpg")])
def test_zero_correlation_is_the_old_corpus_byte_for_byte(tmp_path, layout, fmt):
    out = tmp_path / layout
    synthesize(out, layout=layout, frames_format=fmt, av_correlation=0.0, **TINY)
    assert corpus_hashes(out) == REFERENCE[layout]
    assert "av_correlation" not in json.loads((out / "synth_info.json").read_text())["config"]


def test_correlated_corpus_differs_records_r_and_keeps_the_rest(tmp_path):
    a, b = tmp_path / "r0", tmp_path / "r1"
    synthesize(a, layout="vox1", frames_format="jpg", **TINY)
    res = CliRunner().invoke(synth_cmd, ["--out", str(b), "--layout", "vox1", "--frames-format", "jpg",
                                         "--speakers", "6", "--videos-per-speaker", "2", "--clips-per-video", "1",
                                         "--seed", "5", "--clip-seconds", "0.3", "--workers", "1", "--quiet",
                                         "--av-correlation", "1"])
    assert res.exit_code == 0, res.output
    info = json.loads((b / "synth_info.json").read_text())
    assert info["config"]["av_correlation"] == 1.0
    # same ids, splits, durations and trials: only voices and faces change (face_size differs: default 128)
    assert (a / "trials" / "test.txt").read_bytes() == (b / "trials" / "test.txt").read_bytes()
    wav = sorted(p.relative_to(a) for p in a.rglob("*.wav"))
    assert wav == sorted(p.relative_to(b) for p in b.rglob("*.wav"))
    assert sum((a / p).read_bytes() != (b / p).read_bytes() for p in wav) == len(wav)
    res = CliRunner().invoke(synth_cmd, ["--out", str(tmp_path / "bad"), "--av-correlation", "1.5", "--quiet"])
    assert isinstance(res.exception, ConfigError) and "--av-correlation" in str(res.exception)


def _rng(*k):
    return np.random.default_rng(np.random.SeedSequence(list(k)))


def _population(r: float, n: int = 1500):
    voices, faces = [], []
    for i in range(n):
        v, f = correlate(sample_voice(_rng(9, 2, i)), sample_face(_rng(9, 3, i)), _rng(9, 10, i), r)
        voices.append(v)
        faces.append(f)
    return voices, faces


def test_traits_have_correlation_r_between_voice_and_face():
    t = np.array([np.concatenate(sample_traits(_rng(1, i), 0.6)) for i in range(4000)])
    for k in range(3):
        assert np.corrcoef(t[:, 3 + k], t[:, 6 + k])[0, 1] == pytest.approx(0.6, abs=0.04)
        assert t[:, 3 + k].std() == pytest.approx(1.0, abs=0.04)      # each side stays N(0, 1)


@pytest.mark.parametrize("r", [0.0, 0.5, 1.0])
def test_voice_predicts_face_as_stated_and_marginals_hold(r):
    voices, faces = _population(r)
    f0 = np.log([v.f0 for v in voices])
    low_voice = np.array([v.f0 < 160 for v in voices])                   # the sex-typical F0 split
    beard = np.array([f.beard > 0 for f in faces])
    head_w = np.array([f.head_w for f in faces])
    styles = np.bincount([f.hair_style for f in faces], minlength=4) / len(faces)
    # marginal shares of synth_face at every R
    assert beard.mean() == pytest.approx(0.25, abs=0.035)
    np.testing.assert_allclose(styles, [0.12, 0.43, 0.25, 0.20], atol=0.035)
    assert np.mean([v.f0 for v in voices]) == pytest.approx(170, abs=8)
    c_beard, c_head = np.corrcoef(low_voice, beard)[0, 1], np.corrcoef(f0, head_w)[0, 1]
    if r == 0:                    # the independent corpus: unchanged draws, no link
        assert abs(c_beard) < 0.07 and abs(c_head) < 0.07
        assert voices[0] is not None and faces[0] == sample_face(_rng(9, 3, 0))
    else:                         # low voices go with beards, high voices with narrower heads, growing with R
        assert c_beard > 0.15 * r and c_head < -0.3 * r
    # the voice's sex is u_voice[0] > 0 (sample_traits is correlate's first draw of the same generator):
    # women's voices come with a beard only when the face's own view of the traits says male
    sex = np.array([[u[0] > 0 for u in sample_traits(_rng(9, 10, i), r)[1:]] for i in range(len(voices))]) \
        if r > 0 else None
    if sex is not None:
        assert not (sex[:, 1] & beard).any()                          # the face's sex rules beards
        agree = (sex[:, 0] == sex[:, 1]).mean()
        assert agree == pytest.approx(0.5 + math.asin(r) / math.pi, abs=0.03)   # 2/3 at R=0.5, 1 at R=1
        assert np.median([v.f0 for v, s_ in zip(voices, sex[:, 0]) if s_]) > 180 > \
            np.median([v.f0 for v, s_ in zip(voices, sex[:, 0]) if not s_])
