"""The synthetic toy VoxCeleb corpus: real media decoded back, layouts, manifest, splits,
trials, determinism, identity sanity, the CLI."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import av
import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner

from data_manifests import read_manifest, read_trials
from data_manifests.synth.corpus import SynthConfig, assign_splits, make_trials, speaker_id, synthesize, video_ids
from data_manifests.synth.face import FaceVariation, render_clip, sample_face, sample_scene
from data_manifests.synth.media import decode_audio, decode_video
from data_manifests.synth.voice import sample_channel, sample_voice, synth_clip
from pipeline.cli.synth import synth_cmd
from pipeline.core import ConfigError
from pipeline.experiments import read_conditions

SMALL = dict(speakers=6, videos_per_speaker=2, clips_per_video=2, clip_seconds=0.5, workers=1, progress=False)


@pytest.fixture(scope="module")
def vox2(tmp_path_factory):
    out = tmp_path_factory.mktemp("vox2")
    return out, synthesize(out, layout="vox2", seed=3, **SMALL)


@pytest.fixture(scope="module")
def vox2_again(tmp_path_factory):
    out = tmp_path_factory.mktemp("vox2_again")
    return out, synthesize(out, layout="vox2", seed=3, **SMALL)


@pytest.fixture(scope="module")
def vox1_jpg(tmp_path_factory):
    out = tmp_path_factory.mktemp("vox1_jpg")
    return out, synthesize(out, layout="vox1", frames_format="jpg", seed=3, **SMALL)


def _hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


# ------------------------------------------------------------------ layout and media
def test_vox2_layout_streams_and_manifest(vox2):
    root, report = vox2
    recs = read_manifest(root / "manifest.jsonl")
    raw = [json.loads(line) for line in (root / "manifest.jsonl").read_text().splitlines()]
    assert len(recs) == report["n_clips"] == 6 * 2 * 2
    assert [r.clip_id for r in recs] == sorted(r.clip_id for r in recs)
    for r, d in zip(recs, raw):
        spk, vid, utt = r.clip_id.split("/")
        assert re.fullmatch(r"id0\d{4}", spk) and re.fullmatch(r"[A-Za-z0-9_-]{11}", vid)
        assert re.fullmatch(r"\d{5}", utt) and (r.speaker, r.video) == (spk, vid)
        top = "test" if r.split == "test" else "dev"
        assert d["audio_path"] == f"{top}/aac/{spk}/{vid}/{utt}.m4a"      # relative in the file
        assert d["video_path"] == f"{top}/mp4/{spk}/{vid}/{utt}.mp4"
        assert r.frames_dir is None and r.dataset == "toy-vox2"
        assert r.sample_rate == 16000 and r.fps == 25.0
        assert r.duration == pytest.approx(r.num_frames / 25) and 0.36 <= r.duration <= 0.64
        with av.open(r.audio_path) as c:                                   # m4a: AAC mono 16 kHz
            (a,) = c.streams.audio
            assert a.codec_context.name == "aac" and a.codec_context.sample_rate == 16000
            assert a.codec_context.layout.nb_channels == 1
            assert float(a.duration * a.time_base) == pytest.approx(r.duration, abs=0.07)
        with av.open(r.video_path) as c:                                   # mp4: H.264 25 fps + AAC
            v, a = c.streams.video[0], c.streams.audio[0]
            assert v.codec_context.name == "h264" and v.average_rate == 25
            assert (v.codec_context.width, v.codec_context.height) == (128, 128)
            assert a.codec_context.name == "aac" and a.codec_context.sample_rate == 16000
        frames = decode_video(r.video_path)
        assert frames.shape == (r.num_frames, 128, 128, 3)
        pcm, sr = decode_audio(r.audio_path)
        n = int(r.duration * 16000)
        assert sr == 16000 and n <= len(pcm) <= n + 2048                     # + AAC frame padding
        assert 0.005 < np.sqrt(np.mean(pcm[:n] ** 2)) < 0.5 and np.abs(pcm).max() <= 1.0
        pcm_mp4, _ = decode_audio(r.video_path)
        assert np.allclose(pcm_mp4, pcm, atol=1e-6)                         # same audio in both files


def test_splits_disjoint_by_speaker(vox2):
    root, report = vox2
    recs = read_manifest(root / "manifest.jsonl")
    by_split: dict[str, set[str]] = {}
    for r in recs:
        by_split.setdefault(r.split, set()).add(r.speaker)
    assert set(by_split) == {"train", "dev", "test"}
    assert not (by_split["train"] & by_split["dev"]) and not (by_split["train"] & by_split["test"])
    assert not (by_split["dev"] & by_split["test"])
    assert {k: len(v) for k, v in by_split.items()} == report["speakers_per_split"] == \
        {"train": 2, "dev": 2, "test": 2}
    # 40 speakers: 60/20/20
    assert [assign_splits(SynthConfig(speakers=40)).count(s) for s in ("train", "dev", "test")] == [24, 8, 8]


def test_trials_balanced_cross_video_and_complete(vox2):
    root, report = vox2
    recs = {r.clip_id: r for r in read_manifest(root / "manifest.jsonl")}
    for split in ("dev", "test"):
        path = root / "trials" / f"{split}.txt"
        first = path.read_text().splitlines()[0].split()
        assert first[0] in ("0", "1") and first[1].endswith(".wav") and first[2].endswith(".wav")
        tl = read_trials(path)
        assert tl.n_target == tl.n_nontarget == tl.n_trials // 2 > 0
        assert report["n_trials"][split] == {"n_trials": tl.n_trials, "n_target": tl.n_target,
                                             "n_nontarget": tl.n_nontarget}
        pairs = set()
        for lab, e, t in zip(tl.labels, tl.enrol, tl.test):
            re_, rt = recs[e], recs[t]
            assert re_.split == rt.split == split
            if lab == 1:
                assert re_.speaker == rt.speaker and re_.video != rt.video
            else:
                assert re_.speaker != rt.speaker
            key = frozenset((e, t))
            assert len(key) == 2 and key not in pairs
            pairs.add(key)
        ids = sorted(c for c, r in recs.items() if r.split == split)
        all_targets = {frozenset((a, b)) for i, a in enumerate(ids) for b in ids[i + 1:]
                       if recs[a].speaker == recs[b].speaker and recs[a].video != recs[b].video}
        assert {frozenset((e, t)) for lab, e, t in zip(tl.labels, tl.enrol, tl.test) if lab == 1} == all_targets
        assert tl.n_target == 2 * 4            # 2 speakers x (2 clips x 2 clips across their 2 videos)


def test_make_trials_cap_is_balanced_and_deterministic(vox2):
    root, _ = vox2
    recs = read_manifest(root / "manifest.jsonl")
    a = make_trials(recs, "dev", seed=1, max_trials=6)
    assert a == make_trials(recs, "dev", seed=1, max_trials=6)
    assert len(a[0]) == 6 and sum(a[0]) == 3
    assert make_trials(recs, "dev", seed=1) != make_trials(recs, "dev", seed=2)


def test_vox1_jpg_layout(vox1_jpg):
    root, report = vox1_jpg
    recs = read_manifest(root / "manifest.jsonl")
    assert len(recs) == 24 and {r.dataset for r in recs} == {"toy-vox1"}
    from torchvision.io import decode_jpeg, read_file

    for r in recs:
        spk, vid, utt = r.clip_id.split("/")
        assert re.fullmatch(r"id1\d{4}", spk)
        assert r.audio_path.endswith(f"wav/{spk}/{vid}/{utt}.wav") and r.video_path is None
        assert r.frames_dir.endswith(f"frames/{spk}/{vid}/{utt}")
        info = sf.info(r.audio_path)
        assert (info.samplerate, info.channels, info.subtype, info.format) == (16000, 1, "PCM_16", "WAV")
        assert info.frames == round(r.duration * 16000)
        names = sorted(p.name for p in Path(r.frames_dir).iterdir())
        assert names == [f"{i:04d}.jpg" for i in range(1, r.num_frames + 1)]
    img = decode_jpeg(read_file(str(Path(recs[0].frames_dir) / "0001.jpg")))
    assert tuple(img.shape) == (3, 128, 128)
    assert not (root / "dev").exists() and not (root / "mp4").exists()


# ------------------------------------------------------------------ determinism
def test_same_seed_same_bytes(vox2, vox2_again):
    (a, _), (b, _) = vox2, vox2_again
    ha, hb = _hashes(a), _hashes(b)
    assert ha.keys() == hb.keys()
    for name in ("manifest.jsonl", "trials/dev.txt", "trials/test.txt", "synth_info.json"):
        assert ha[name] == hb[name], name
    # media: identical bytes with this PyAV/libx264 build (threads=1, bitexact muxing) ...
    assert ha == hb
    # ... and, what the pipeline relies on, identical decoded content
    rec = read_manifest(a / "manifest.jsonl")[5]
    rec_b = read_manifest(b / "manifest.jsonl")[5]
    assert np.array_equal(decode_audio(rec.audio_path)[0], decode_audio(rec_b.audio_path)[0])
    assert np.array_equal(decode_video(rec.video_path), decode_video(rec_b.video_path))


def test_different_seed_different_content(tmp_path, vox1_jpg):
    root, _ = vox1_jpg
    out = synthesize(tmp_path / "s4", layout="vox1", frames_format="jpg", seed=4,
                     **{**SMALL, "clips_per_video": 1})
    mine = read_manifest(Path(out["manifest"]))
    theirs = read_manifest(root / "manifest.jsonl")
    assert {r.video for r in mine}.isdisjoint({r.video for r in theirs})
    a, _ = sf.read(mine[0].audio_path)
    b, _ = sf.read(theirs[0].audio_path)
    n = min(len(a), len(b))
    assert not np.allclose(a[:n], b[:n])
    assert read_trials(Path(out["trials"]["test"])).enrol.tolist() != \
        read_trials(root / "trials" / "test.txt").enrol.tolist()


def test_speaker_content_does_not_depend_on_speaker_count(tmp_path, vox1_jpg):
    root, _ = vox1_jpg
    # 7 speakers, 1 clip per video: clip 00001 of every video of the 6 speakers is the same
    out = synthesize(tmp_path / "s7", layout="vox1", frames_format="jpg", seed=3,
                     **{**SMALL, "speakers": 7, "clips_per_video": 1})
    more = {r.clip_id: r for r in read_manifest(Path(out["manifest"]))}
    base = [r for r in read_manifest(root / "manifest.jsonl") if r.clip_id.endswith("/00001")]
    assert len(more) == 14 and len(base) == 12 and all(r.clip_id in more for r in base)
    for r in base[::3]:
        m = more[r.clip_id]
        assert Path(r.audio_path).read_bytes() == Path(m.audio_path).read_bytes()
        assert (Path(r.frames_dir) / "0002.jpg").read_bytes() == (Path(m.frames_dir) / "0002.jpg").read_bytes()
    assert video_ids(3, 0, 2) == video_ids(3, 0, 3)[:2]
    assert speaker_id("vox1", 0) == "id10001" and speaker_id("vox2", 41) == "id00042"


# ------------------------------------------------------------------ identity and conditions
def _median_pitch(pcm: np.ndarray) -> float:
    """log2 of the median autocorrelation pitch (60-400 Hz) of the louder half of 40 ms frames."""
    n = 640
    frames = np.lib.stride_tricks.sliding_window_view(pcm, n)[::160]
    energy = (frames ** 2).sum(1)
    frames = frames[energy > np.median(energy)]
    frames = frames - frames.mean(1, keepdims=True)
    ac = np.fft.irfft(np.abs(np.fft.rfft(frames, 2 * n, axis=1)) ** 2, axis=1)[:, :n]
    lo, hi = 16000 // 400, 16000 // 60
    lag = lo + ac[:, lo:hi].argmax(1)
    return float(np.log2(16000 / np.median(lag)))


def _colour_hist(frames: np.ndarray) -> np.ndarray:
    centre = frames[:, 32:96, 32:96].reshape(-1, 3) // 32           # 8 bins per channel
    h = np.bincount(centre[:, 0] * 64 + centre[:, 1] * 8 + centre[:, 2], minlength=512).astype(float)
    return np.sqrt(h / h.sum())


def _within_across(feats: np.ndarray, spk: np.ndarray, vid: np.ndarray) -> tuple[float, float]:
    d = np.linalg.norm(feats[:, None] - feats[None], axis=-1)
    iu = np.triu_indices(len(feats), 1)
    same = spk[iu[0]] == spk[iu[1]]
    cross_video = vid[iu[0]] != vid[iu[1]]
    return d[iu][same & cross_video].mean(), d[iu][~same].mean()


def test_identity_is_in_the_content(vox2):
    """Without any model: a speaker's clips from different videos are closer (median pitch
    of the audio; colour histogram of the face region) than clips of two speakers."""
    root, _ = vox2
    cond = read_conditions(root)
    recs = read_manifest(root / "manifest.jsonl")
    clean_audio = [r for r in recs if cond[r.clip_id]["audio"] == "clean"]
    feats = np.array([[_median_pitch(decode_audio(r.audio_path)[0])] for r in clean_audio])
    within, across = _within_across(feats, np.array([r.speaker for r in clean_audio]),
                                    np.array([r.video for r in clean_audio]))
    assert within < 0.8 * across, (within, across)
    good_face = [r for r in recs if cond[r.clip_id]["face"] == "ok"]
    feats = np.array([_colour_hist(decode_video(r.video_path)) for r in good_face])
    within, across = _within_across(feats, np.array([r.speaker for r in good_face]),
                                    np.array([r.video for r in good_face]))
    assert within < 0.8 * across, (within, across)


def test_conditions_recorded_and_visible(vox2):
    root, report = vox2
    cond = read_conditions(root)
    assert len(cond) == report["n_clips"]
    assert sum(c["audio"] == "noisy" for c in cond.values()) == report["degraded"]["noisy_audio"]
    assert {c["face"] for c in cond.values()} <= {"ok", "occluded", "absent"}
    # the renderer: an absent face is a blank frame, an occluder hides most of the face
    rng = np.random.default_rng
    face, scene = sample_face(rng(1)), sample_scene(rng(2), 128, FaceVariation())
    mouth = np.full(4, 0.5, np.float32)
    ok = render_clip(face, scene, mouth, rng(3), condition="ok").astype(float)
    occ = render_clip(face, scene, mouth, rng(3), condition="occluded").astype(float)
    absent = render_clip(face, scene, mouth, rng(3), condition="absent").astype(float)
    assert absent.std() < 5 and ok.std() > 20
    assert np.abs(occ - ok)[:, 40:100, 30:98].mean() > 10
    # noisy audio: same voice, lower speech-to-noise contrast (flatter loudness over time)
    voice, channel = sample_voice(rng(4)), sample_channel(rng(5))
    clean, mouth_track = synth_clip(voice, channel, 16000, rng(6))
    noisy, _ = synth_clip(voice, channel, 16000, rng(6), noisy=True)
    assert len(clean) == 16000 and len(mouth_track) == 25 and mouth_track.max() > 0.2

    def dynamic_range(x):
        e = np.sort(np.sqrt(np.mean(x[: len(x) // 400 * 400].reshape(-1, 400) ** 2, axis=1)))
        return e[-5:].mean() / (e[:5].mean() + 1e-9)
    assert dynamic_range(noisy) < 0.5 * dynamic_range(clean)


# ------------------------------------------------------------------ errors and CLI
def test_bad_configs_raise_config_error(tmp_path):
    with pytest.raises(ConfigError, match="speakers"):
        synthesize(tmp_path / "a", speakers=3, progress=False)
    with pytest.raises(ConfigError, match="vox2 layout"):
        synthesize(tmp_path / "b", layout="vox2", frames_format="jpg", speakers=6, progress=False)
    with pytest.raises(ConfigError, match="videos-per-speaker"):
        synthesize(tmp_path / "c", speakers=6, videos_per_speaker=1, progress=False)
    with pytest.raises(ConfigError, match="unknown synth option"):
        synthesize(tmp_path / "d", speakers=6, colour="red", progress=False)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="not a synthetic corpus") as e:
        synthesize(tmp_path / "busy", speakers=6, progress=False)
    assert e.value.hint and (tmp_path / "busy" / "notes.txt").exists()
    # a real corpus (manifest, media folders) is never overwritten, even with overwrite=True
    real = tmp_path / "real"
    (real / "wav").mkdir(parents=True)
    (real / "manifest.jsonl").write_text("")
    with pytest.raises(ConfigError, match="not a synthetic corpus"):
        synthesize(real, speakers=6, overwrite=True, progress=False)
    assert (real / "wav").is_dir() and (real / "manifest.jsonl").exists()


def test_cli_vox1_mp4_and_overwrite(tmp_path):
    out = tmp_path / "cli"
    args = ["--out", str(out), "--layout", "vox1", "--speakers", "6", "--videos-per-speaker", "2",
            "--clips-per-video", "1", "--clip-seconds", "0.4", "--seed", "7", "--workers", "1", "--quiet"]
    res = CliRunner().invoke(synth_cmd, args + ["--json"])
    assert res.exit_code == 0, res.output
    report = json.loads(res.output)
    assert report["n_clips"] == 12 and report["dataset"] == "toy-vox1"
    recs = read_manifest(out / "manifest.jsonl")
    assert all(r.video_path.endswith(".mp4") and r.audio_path.endswith(".wav") for r in recs)
    with av.open(recs[0].video_path) as c:
        assert c.streams.video[0].codec_context.name == "h264"
    again = CliRunner().invoke(synth_cmd, args)
    assert isinstance(again.exception, ConfigError) and "--overwrite" in str(again.exception)
    res = CliRunner().invoke(synth_cmd, args + ["--overwrite"])
    assert res.exit_code == 0 and "wrote 12 clips" in res.output and "trials test" in res.output
    # the split of identities is the user's (the quality gates' corpus is 0.6,0.1,0.3)
    res = CliRunner().invoke(synth_cmd, args + ["--overwrite", "--speakers", "10", "--split-fractions", "0.4,0.2,0.4",
                                                "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["speakers_per_split"] == {"train": 4, "dev": 2, "test": 4}
    for bad in ("0.5,0.5", "a,b,c", "0.5,0.2,0.2"):
        res = CliRunner().invoke(synth_cmd, args + ["--overwrite", "--split-fractions", bad])
        assert isinstance(res.exception, ConfigError) and "split" in str(res.exception)
    help_ = CliRunner().invoke(synth_cmd, ["--help"])
    assert help_.exit_code == 0 and "--videos-per-speaker" in help_.output
