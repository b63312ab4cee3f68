"""VoxCeleb scanners on small real media trees (wav/m4a/mp4/jpg written here)."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner
from PIL import Image

from data_manifests import discover, read_manifest, read_split_source, scan, scan_to_manifest
from data_manifests.probe import probe_container
from pipeline.cli.manifest import manifest_cmd
from pipeline.core import ConfigError, ManifestError

REPO = Path(__file__).resolve().parents[2]
SR = 16000


# ----------------------------------------------------------------------------- media writers

def write_wav(path: Path, seconds: float, sr: int = SR) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * sr)) / sr
    sf.write(path, (0.1 * np.sin(2 * np.pi * 200 * t)).astype(np.float32), sr, subtype="PCM_16")


def _encode_audio(container, stream, seconds: float, sr: int) -> None:
    x = (0.1 * np.sin(2 * np.pi * 300 * np.arange(int(seconds * sr)) / sr)).astype(np.float32)[None]
    frame = av.AudioFrame.from_ndarray(x, format="flt", layout="mono")
    frame.sample_rate = sr
    for p in stream.encode(frame):
        container.mux(p)
    for p in stream.encode(None):
        container.mux(p)


def write_m4a(path: Path, seconds: float, sr: int = SR) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w", format="mp4") as c:
        s = c.add_stream("aac", rate=sr)
        s.layout = "mono"
        _encode_audio(c, s, seconds, sr)


def write_mp4(path: Path, n_frames: int, fps: int = 25, size: int = 64, audio_sr: int | None = SR) -> None:
    """H.264 video (+ an AAC track unless ``audio_sr`` is None)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as c:
        v = c.add_stream("libx264", rate=fps)
        v.width = v.height = size
        v.pix_fmt = "yuv420p"
        a = None
        if audio_sr:
            a = c.add_stream("aac", rate=audio_sr)
            a.layout = "mono"
        for i in range(n_frames):
            img = np.full((size, size, 3), (40 + 20 * i) % 255, np.uint8)
            for p in v.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(p)
        for p in v.encode(None):
            c.mux(p)
        if a is not None:
            _encode_audio(c, a, n_frames / fps, audio_sr)


def write_frames(folder: Path, n: int, size: int = 64) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(np.full((size, size, 3), 10 * i, np.uint8)).save(folder / f"{i + 1:05d}.jpg", quality=80)


@pytest.fixture(scope="module")
def vox2_tree(tmp_path_factory) -> Path:
    """ROOT/{dev,test}/{aac,mp4}/SPK/VIDEO/UTT with one audio-only and one video-only clip."""
    root = tmp_path_factory.mktemp("vox2")
    write_m4a(root / "dev/aac/id00012/vidA/00001.m4a", 0.6)
    write_mp4(root / "dev/mp4/id00012/vidA/00001.mp4", 10)
    write_m4a(root / "dev/aac/id00012/vidB/00002.m4a", 0.3)          # audio only
    write_mp4(root / "dev/mp4/id00015/vidC/00001.mp4", 8)            # video only (AAC track inside)
    write_m4a(root / "test/aac/id00017/vidD/00003.m4a", 0.5)
    write_mp4(root / "test/mp4/id00017/vidD/00003.mp4", 12, fps=30, audio_sr=None)
    (root / "dev/aac/id00012/vidA/notes.txt").write_text("ignored")  # wrong extension
    (root / "dev/aac/id00012/stray.m4a").write_bytes(b"")          # wrong depth
    return root


@pytest.fixture(scope="module")
def vox1_tree(tmp_path_factory) -> Path:
    """ROOT/wav + ROOT/frames (jpg folders) + one mp4, one corrupt wav, one empty frame folder."""
    root = tmp_path_factory.mktemp("vox1")
    write_wav(root / "wav/id10270/x6uYqmx31kE/00001.wav", 1.25)
    write_frames(root / "frames/id10270/x6uYqmx31kE/00001", 5)
    write_wav(root / "wav/id10270/8jEAjG6SegY/00008.wav", 0.5, sr=8000)
    write_mp4(root / "mp4/id10270/8jEAjG6SegY/00008.mp4", 6, audio_sr=None)
    write_wav(root / "wav/id10300/ize_eiCFEg0/00003.wav", 0.75)            # audio only
    write_frames(root / "frames/id10309/vobW27_-JyQ/00002", 3)            # frames only
    bad = root / "wav/id10300/ize_eiCFEg0/00004.wav"
    bad.write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")                     # unreadable header
    (root / "frames/id10300/ize_eiCFEg0/00004").mkdir(parents=True)     # no jpg inside
    return root


# ----------------------------------------------------------------------------- discovery + probing

def test_vox2_records_ids_durations_and_missing_modalities(vox2_tree):
    recs, rep = scan(vox2_tree, "vox2", workers=2, progress=False)
    by = {r.clip_id: r for r in recs}
    assert [r.clip_id for r in recs] == sorted(by) == [
        "id00012/vidA/00001", "id00012/vidB/00002", "id00015/vidC/00001", "id00017/vidD/00003"]
    a = by["id00012/vidA/00001"]
    assert a.speaker == "id00012" and a.video == "vidA" and a.dataset == "vox2"
    assert a.audio_path == str(vox2_tree / "dev/aac/id00012/vidA/00001.m4a")
    assert a.video_path == str(vox2_tree / "dev/mp4/id00012/vidA/00001.mp4")
    assert a.frames_dir is None
    assert a.duration == pytest.approx(0.6, abs=0.1)       # from the m4a (AAC padding < 0.1 s)
    assert a.sample_rate == SR and a.fps == 25 and a.num_frames == 10
    only_audio = by["id00012/vidB/00002"]
    assert only_audio.video_path is None and only_audio.fps is None and only_audio.num_frames is None
    assert only_audio.duration == pytest.approx(0.3, abs=0.1)
    only_video = by["id00015/vidC/00001"]
    assert only_video.audio_path is None and only_video.sample_rate == SR   # from the mp4's AAC track
    assert only_video.num_frames == 8 and only_video.duration == pytest.approx(8 / 25, abs=0.1)
    silent = by["id00017/vidD/00003"]
    assert silent.fps == 30 and silent.num_frames == 12
    # splits default to the dev/test folder
    assert [by[k].split for k in sorted(by)] == ["dev", "dev", "dev", "test"]
    assert rep.n_clips == 4 and rep.n_audio_and_face == 2 and rep.n_audio_only == 1 and rep.n_face_only == 1
    assert rep.n_ignored_files == 2 and rep.unreadable == []


def test_vox2_root_may_be_the_part_folder(vox2_tree):
    recs, _ = scan(vox2_tree / "test", "vox2", workers=1, progress=False)
    assert [(r.clip_id, r.split) for r in recs] == [("id00017/vidD/00003", "test")]


def test_vox1_frames_mp4_unreadable_and_empty_frames(vox1_tree):
    recs, rep = scan(vox1_tree, "vox1", workers=3, progress=False)
    by = {r.clip_id: r for r in recs}
    assert sorted(by) == ["id10270/8jEAjG6SegY/00008", "id10270/x6uYqmx31kE/00001",
                          "id10300/ize_eiCFEg0/00003", "id10300/ize_eiCFEg0/00004", "id10309/vobW27_-JyQ/00002"]
    a = by["id10270/x6uYqmx31kE/00001"]
    assert a.duration == pytest.approx(1.25) and a.sample_rate == SR
    assert a.frames_dir == str(vox1_tree / "frames/id10270/x6uYqmx31kE/00001") and a.num_frames == 5
    assert a.video_path is None and a.fps is None and a.split is None and a.dataset == "vox1"
    b = by["id10270/8jEAjG6SegY/00008"]
    assert b.duration == pytest.approx(0.5) and b.sample_rate == 8000 and b.num_frames == 6 and b.fps == 25
    f = by["id10309/vobW27_-JyQ/00002"]
    assert f.audio_path is None and f.num_frames == 3 and f.duration is None
    bad = by["id10300/ize_eiCFEg0/00004"]   # kept, with its paths, duration None, and reported
    assert bad.audio_path.endswith("00004.wav") and bad.frames_dir.endswith("00004") and bad.duration is None
    listed = {(e["clip_id"], Path(e["path"]).name) for e in rep.unreadable}
    assert listed == {("id10300/ize_eiCFEg0/00004", "00004.wav"), ("id10300/ize_eiCFEg0/00004", "00004")}
    assert all(e["error"] for e in rep.unreadable)


def test_no_probe_lists_only(vox1_tree):
    recs, rep = scan(vox1_tree, "vox1", probe=False, progress=False)
    assert len(recs) == 5 and all(r.duration is None and r.sample_rate is None for r in recs)
    assert rep.unreadable == [] and rep.probed is False


def test_probe_container_reports_stream_facts(vox2_tree):
    info = probe_container(str(vox2_tree / "dev/mp4/id00012/vidA/00001.mp4"))
    assert info["fps"] == 25 and info["num_frames"] == 10 and info["sample_rate"] == SR
    assert info["video_duration"] == pytest.approx(0.4, abs=0.05)


def test_wrong_layout_and_bad_root(tmp_path, vox2_tree):
    with pytest.raises(ManifestError, match="found aac/") as e:
        discover(vox2_tree, "vox1")
    assert "--layout vox2" in e.value.hint and str(vox2_tree / "dev") in str(e.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ManifestError, match="no vox2 folders") as e:
        discover(tmp_path / "empty", "vox2")
    assert "--layout" in e.value.hint
    with pytest.raises(ManifestError, match="not found"):
        discover(tmp_path / "nope", "vox2")
    with pytest.raises(ManifestError, match="unknown layout"):
        discover(vox2_tree, "vox3")


def test_same_clip_twice_is_an_error(tmp_path):
    write_wav(tmp_path / "wav/id1/v/00001.wav", 0.2)
    write_wav(tmp_path / "wav/id1/v/00001.flac", 0.2)
    with pytest.raises(ManifestError, match="found twice"):
        discover(tmp_path, "vox1", workers=1)


# ----------------------------------------------------------------------------- splits

def test_split_from_durations_meta_csv_and_precedence(tmp_path, vox1_tree, vox2_tree):
    durs = tmp_path / "tst_duration.txt.gz"
    with gzip.open(durs, "wt") as f:
        f.write("id10270/x6uYqmx31kE/00001 1.25\nid10999/zzz/00001 3.0\n")
    recs, rep = scan(vox1_tree, "vox1", split="dev", split_from=[f"{durs}:test"], probe=False, progress=False)
    splits = {r.clip_id: r.split for r in recs}
    assert splits.pop("id10270/x6uYqmx31kE/00001") == "test"
    assert set(splits.values()) == {"dev"}
    assert rep.split_counts == {"dev": 4, "test": 1}
    assert rep.split_sources[0]["n_clips_listed"] == 2 and rep.split_sources[0]["n_clips_matched"] == 1
    # speaker-level CSV with a BOM and padded cells, like vox2_meta.csv
    meta = tmp_path / "meta.csv"
    meta.write_bytes("\ufeffVoxCeleb2 ID ,VGGFace2 ID ,Gender ,Set \r\n"
                     "id00012 ,n000012 ,m ,test \r\nid00017 ,n000017 ,f ,dev \r\n".encode("utf-8"))
    recs, rep = scan(vox2_tree, "vox2", split_from=[str(meta)], probe=False, progress=False)
    assert {r.clip_id: r.split for r in recs} == {
        "id00012/vidA/00001": "test", "id00012/vidB/00002": "test",
        "id00015/vidC/00001": "dev",      # not in the CSV: keeps its dev/ folder split
        "id00017/vidD/00003": "dev"}      # CSV wins over the test/ folder
    assert rep.split_sources[0]["n_speakers_matched"] == 2


def test_split_source_errors(tmp_path):
    lst = tmp_path / "ids.txt"
    lst.write_text("id1/v/u\n")
    with pytest.raises(ConfigError, match="needs a split name"):
        read_split_source(str(lst))
    with pytest.raises(ConfigError, match="not found"):
        read_split_source(str(tmp_path / "missing.txt") + ":test")
    csv = tmp_path / "m.csv"
    csv.write_text("id,gender\nid1,m\n")
    with pytest.raises(ConfigError, match="no 'Set'"):
        read_split_source(str(csv))


def test_real_vox2_meta_and_vox1_test_durations(voxceleb_dir):
    meta = read_split_source(str(voxceleb_dir / "vox2_meta.csv.gz"))
    with gzip.open(voxceleb_dir / "vox2_meta.csv.gz", "rt", encoding="utf-8-sig") as f:
        rows = [[c.strip() for c in line.split(",")] for line in f.read().splitlines()[1:] if line.strip()]
    assert len(meta.speakers) == len(rows) == 6114
    assert meta.speakers["id00012"] == "dev" and set(meta.speakers.values()) == {"dev", "test"}
    assert sum(v == "test" for v in meta.speakers.values()) == sum(r[3] == "test" for r in rows)
    tst = read_split_source(str(voxceleb_dir / "vox1_tst_duration.txt.gz") + ":test")
    assert len(tst.clips) == 4874 and not tst.speakers and set(tst.clips.values()) == {"test"}


# ----------------------------------------------------------------------------- manifest files + CLI

def test_scan_to_manifest_gz_report_and_relative(tmp_path, vox1_tree):
    out = tmp_path / "m" / "vox1.jsonl.gz"
    rep = scan_to_manifest(out, vox1_tree, "vox1", dataset="my-vox1", relative=True, workers=2, progress=False)
    with gzip.open(out, "rt") as f:
        lines = f.read().splitlines()
    assert len(lines) == 5 and rep.n_clips == 5
    raw = [json.loads(x) for x in lines]
    assert all(not os.path.isabs(d["audio_path"]) for d in raw if d["audio_path"])
    recs = read_manifest(out)                      # relative paths resolve against the manifest folder
    assert all(Path(r.audio_path).is_file() for r in recs if r.audio_path and r.duration is not None)
    assert {r.dataset for r in recs} == {"my-vox1"}
    side = json.loads(Path(f"{out}.scan.json").read_text())
    assert side["n_unreadable"] == 2 and side["n_clips"] == 5
    assert not list(out.parent.glob(".*partial*"))


def test_scan_resumes_from_partial_file(tmp_path, vox2_tree, monkeypatch):
    import data_manifests.voxceleb as scanmod

    ref = tmp_path / "ref" / "vox2.jsonl"
    scan_to_manifest(ref, vox2_tree, "vox2", workers=1, progress=False)
    full = ref.read_text().splitlines()
    assert len(full) == 4
    orig = scanmod.iter_scan
    seen = []

    def interrupted(files, **kw):       # a run killed (Ctrl-C) after two records
        for i, item in enumerate(orig(files, **kw)):
            if i == 2:
                raise KeyboardInterrupt
            yield item

    def counting(files, **kw):
        seen.extend(cf.clip_id for cf in files)
        yield from orig(files, **kw)

    out = tmp_path / "vox2.jsonl"
    monkeypatch.setattr(scanmod, "iter_scan", interrupted)
    with pytest.raises(KeyboardInterrupt):
        scan_to_manifest(out, vox2_tree, "vox2", workers=1, progress=False)
    partials = list(tmp_path.glob(".vox2.jsonl.*.partial.jsonl"))
    assert len(partials) == 1 and not out.exists()
    assert len(partials[0].read_text().splitlines()) == 2
    with open(partials[0], "a") as f:
        f.write('{"clip_id": "torn')    # and a torn last line
    monkeypatch.setattr(scanmod, "iter_scan", counting)
    rep = scan_to_manifest(out, vox2_tree, "vox2", workers=1, progress=False)
    assert seen == ["id00015/vidC/00001", "id00017/vidD/00003"]   # only the rest was probed
    assert rep.n_resumed == 2 and rep.n_clips == 4 and rep.split_counts == {"dev": 3, "test": 1}
    assert out.read_text().splitlines() == full
    assert not partials[0].exists()


def test_cli_scan_and_check_reports_missing_media(tmp_path, vox1_tree):
    import shutil
    tree = tmp_path / "tree"
    shutil.copytree(vox1_tree, tree)
    (tree / "frames/id10300/ize_eiCFEg0/00004").rmdir()    # --check would flag an empty frame folder
    out = tmp_path / "vox1.jsonl"
    r = CliRunner().invoke(manifest_cmd, ["--root", str(tree), "--layout", "vox1", "--out", str(out), "-q",
                                          "--split", "test", "--probe"])
    assert r.exit_code == 0, r.output
    assert "5 clips" in r.output and "unreadable" in r.output and "00004.wav" in r.output
    r = CliRunner().invoke(manifest_cmd, ["--check", str(out), "-q"])
    assert r.exit_code == 0 and "all media present" in r.output
    os.unlink(tree / "wav/id10300/ize_eiCFEg0/00003.wav")
    shutil.rmtree(tree / "frames/id10309")
    r = CliRunner().invoke(manifest_cmd, ["--check", str(out), "-q"])
    assert isinstance(r.exception, ManifestError)            # `avfuse` prints it as one line, exit 2
    assert str(r.exception).startswith(f"{out}: 2 of 5 records have missing media files -- ")
    assert "2 of 5 records have missing media" in r.output
    assert "id10300/ize_eiCFEg0/00003" in r.output and "id10309/vobW27_-JyQ/00002" in r.output
    assert len(read_manifest(out)) == 5          # nothing dropped


def test_cli_usage_errors(tmp_path):
    r = CliRunner().invoke(manifest_cmd, ["--root", str(tmp_path)])
    assert r.exit_code == 2 and "missing --layout, --out" in r.output
    r = CliRunner().invoke(manifest_cmd, ["--check", "x.jsonl", "--out", "y.jsonl"])
    assert r.exit_code == 2


def test_subprocess_check_of_missing_manifest_is_one_line(tmp_path):
    p = subprocess.run([sys.executable, "-m", "pipeline", "manifest", "--check", str(tmp_path / "gone.jsonl")],
                       capture_output=True, text=True, cwd=REPO, timeout=120)
    assert p.returncode == 2
    assert p.stderr.strip().splitlines() == [f"avfuse: error: {tmp_path / 'gone.jsonl'}: manifest not found -- "
                                             f"create one with `avfuse manifest` or `avfuse synth`"]
