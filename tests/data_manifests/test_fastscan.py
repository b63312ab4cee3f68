"""Manifests without header probes: durations files (plain/gz, bad lines), trees of empty files,
and the default path end to end: `avfuse manifest` with no durations, then `avfuse extract`."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from data_manifests.fastscan import _parse_clean, _parse_lines, read_durations
from data_manifests.manifest import read_manifest
from data_manifests.voxceleb import scan, scan_to_manifest
from pipeline.cli.manifest import manifest_cmd
from pipeline.core.errors import ManifestError

REPO = Path(__file__).resolve().parents[2]
CLIPS = ["id00012/vidA/00001", "id00012/vidA/00002", "id00012/vidB/00001", "id00015/vidC/00001",
         "id00015/vidC/00003"]


def empty_tree(root: Path, clips=CLIPS, part: str = "dev") -> Path:
    """A vox2 tree of EMPTY m4a/mp4 files: any header probe of these would fail."""
    for cid in clips:
        for mod, ext in (("aac", ".m4a"), ("mp4", ".mp4")):
            p = root / part / mod / f"{cid}{ext}"
            p.parent.mkdir(parents=True, exist_ok=True)
            p.touch()
    return root


def write_durations(path: Path, lines: list[str]) -> Path:
    text = "".join(line + "\n" for line in lines)
    if str(path).endswith(".gz"):
        with gzip.open(path, "wt", encoding="utf-8") as f:
            f.write(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


# ----------------------------------------------------------------------------- durations files

@pytest.mark.parametrize("name", ["d.txt", "d.txt.gz"])
def test_read_durations_plain_and_gz(tmp_path, name):
    d = read_durations(write_durations(tmp_path / name, ["id00012/vidA/00001 6.464000", "id00012/vidA/00002 4.2",
                                                         "", "id00015/vidC/00001 13.184"]))
    assert d.seconds == {"id00012/vidA/00001": 6.464, "id00012/vidA/00002": 4.2, "id00015/vidC/00001": 13.184}
    assert len(d) == 3 and d.path == str(tmp_path / name)


def test_line_parser_handles_comments_extensions_and_crlf(tmp_path):
    p = tmp_path / "d.txt"
    p.write_bytes(b"\xef\xbb\xbf# spk/video/utt seconds\r\nid1/v/00001.wav 1.5\r\n\r\n  id1/v/00002.m4a\t2\r\n")
    assert _parse_clean(p.read_text(encoding="utf-8-sig")) is None     # not clean: the line parser takes it
    assert read_durations(p).seconds == {"id1/v/00001": 1.5, "id1/v/00002": 2.0}


def test_vectorised_parse_equals_line_parse_on_real_files(voxceleb_dir):
    for name in ("vox2_tst_duration.txt.gz", "vox1_dev_duration.txt.gz"):
        with gzip.open(voxceleb_dir / name, "rt") as f:
            text = f.read()
        fast = _parse_clean(text)
        assert fast is not None and fast == _parse_lines(text, name)
        assert len(fast) == {"vox2_tst_duration.txt.gz": 36_237, "vox1_dev_duration.txt.gz": 148_642}[name]


@pytest.mark.parametrize("bad_line, line_no, message", [
    ("id1/v/00003 1.0 extra", 3, "(2 fields), got 3"),
    ("id1/v/00003", 3, "(2 fields), got 1"),
    ("id1/00003 1.0", 3, "bad clip id 'id1/00003'"),
    ("id1//00003 1.0", 3, "bad clip id"),
    ("id1/v/x/00003 1.0", 3, "bad clip id"),
    ("id1/v/00003 abc", 3, "bad duration 'abc'"),
    ("id1/v/00003 nan", 3, "bad duration 'nan'"),
    ("id1/v/00003 -1", 3, "bad duration '-1'"),
    ("id1/v/00001 2.0", 3, "listed twice (first at line 1)"),
])
@pytest.mark.parametrize("name", ["d.txt", "d.txt.gz"])
def test_bad_lines_name_file_and_line(tmp_path, name, bad_line, line_no, message):
    p = write_durations(tmp_path / name, ["id1/v/00001 1.0", "id1/v/00002 1.5", bad_line, "id1/v/00004 2.5"])
    with pytest.raises(ManifestError) as e:
        read_durations(p)
    assert str(e.value).startswith(f"{p}:{line_no}: ") and message in str(e.value)


def test_unreadable_durations_files(tmp_path):
    with pytest.raises(ManifestError, match="durations file not found"):
        read_durations(tmp_path / "nope.txt.gz")
    (tmp_path / "bad.txt.gz").write_bytes(b"this is not gzip")
    with pytest.raises(ManifestError, match="cannot read durations file"):
        read_durations(tmp_path / "bad.txt.gz")
    (tmp_path / "latin1.txt").write_bytes(b"id1/v/00001 1.0\nid1/v/caf\xe9 2.0\n")
    with pytest.raises(ManifestError) as e:
        read_durations(tmp_path / "latin1.txt")
    assert str(e.value).startswith(f"{tmp_path / 'latin1.txt'}:2: not UTF-8")


# ----------------------------------------------------------------------------- scans without probes

def test_durations_fill_records_and_report_missing_and_extra(tmp_path):
    tree = empty_tree(tmp_path / "vox2")
    durs = write_durations(tmp_path / "d.txt.gz", ["id00012/vidA/00001 6.4", "id00012/vidB/00001 4.25",
                                                   "id00015/vidC/00003 8.0", "id09999/vidZ/00001 3.0",
                                                   "id09999/vidZ/00002 3.5"])
    recs, rep = scan(tree, "vox2", probe=False, durations=durs, progress=False)
    got = {r.clip_id: r.duration for r in recs}
    assert got == {"id00012/vidA/00001": 6.4, "id00012/vidA/00002": None, "id00012/vidB/00001": 4.25,
                   "id00015/vidC/00001": None, "id00015/vidC/00003": 8.0}
    assert all(r.sample_rate is None and r.fps is None and r.num_frames is None for r in recs)
    assert rep.unreadable == [] and rep.probed is False        # empty files: no header was opened
    assert rep.durations == {"file": str(durs), "n_listed": 5, "n_missing": 2, "n_unused": 2,
                             "missing_sample": ["id00012/vidA/00002", "id00015/vidC/00001"]}


def test_probe_and_durations_together_is_an_error(tmp_path):
    tree = empty_tree(tmp_path / "vox2")
    durs = write_durations(tmp_path / "d.txt", ["id00012/vidA/00001 6.4"])
    with pytest.raises(ManifestError, match="probing on"):
        scan(tree, "vox2", probe=True, durations=durs, progress=False)
    r = CliRunner().invoke(manifest_cmd, ["--root", str(tree), "--layout", "vox2", "--out", str(tmp_path / "m.jsonl"),
                                          "--durations", str(durs), "--probe", "-q"])
    assert r.exit_code == 2 and "drop --durations or --probe" in r.output


def test_cli_durations_gz_manifest_equals_plain(tmp_path):
    tree = empty_tree(tmp_path / "vox2")
    durs = write_durations(tmp_path / "d.txt", ["id00012/vidA/00001 6.4", "id00099/x/00001 1.0"])
    outs = []
    for name in ("m.jsonl", "m.jsonl.gz"):
        out = tmp_path / name
        r = CliRunner().invoke(manifest_cmd, ["--root", str(tree), "--layout", "vox2", "--out", str(out),
                                              "--durations", str(durs), "-q"])
        assert r.exit_code == 0, r.output
        assert "1 clips matched, 4 not listed (duration empty), 1 listed ids not in the tree" in r.output
        assert "4 clip(s) not in" in r.output and "filled at extraction" in r.output
        outs.append(out)
        side = json.loads(Path(f"{out}.scan.json").read_text())
        assert side["durations"]["n_missing"] == 4 and side["probed"] is False
    assert gzip.decompress(outs[1].read_bytes()) == outs[0].read_bytes()
    assert [r.duration for r in read_manifest(outs[1])] == [6.4, None, None, None, None]
    assert not list(tmp_path.glob(".m.jsonl*"))                # no partial or temp file left


def test_cli_bad_durations_file_is_one_line_exit_2(tmp_path):
    tree = empty_tree(tmp_path / "vox2")
    durs = write_durations(tmp_path / "d.txt", ["id00012/vidA/00001 6.4", "id00012/vidA/00002 six"])
    out = tmp_path / "m.jsonl"
    proc = subprocess.run([sys.executable, "-m", "pipeline", "manifest", "--root", str(tree), "--layout", "vox2",
                           "--out", str(out), "--durations", str(durs), "-q"], cwd=REPO, capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"avfuse: error: {durs}:2: bad duration 'six': expected seconds "
                                                f"(a number >= 0) -- fix or remove the line"]
    assert not out.exists()


def test_resume_key_follows_the_durations_file(tmp_path, monkeypatch):
    import data_manifests.voxceleb as scanmod

    tree = empty_tree(tmp_path / "vox2")
    d1 = write_durations(tmp_path / "d1.txt", [f"{c} 1.0" for c in CLIPS])
    d2 = write_durations(tmp_path / "d2.txt", [f"{c} 2.0" for c in CLIPS])
    out = tmp_path / "m.jsonl"
    orig = scanmod.iter_scan

    def interrupted(files, **kw):       # a run killed (Ctrl-C) after two records
        for i, item in enumerate(orig(files, **kw)):
            if i == 2:
                raise KeyboardInterrupt
            yield item

    monkeypatch.setattr(scanmod, "iter_scan", interrupted)
    with pytest.raises(KeyboardInterrupt):
        scan_to_manifest(out, tree, "vox2", probe=False, durations=d1, progress=False)
    monkeypatch.setattr(scanmod, "iter_scan", orig)
    rep = scan_to_manifest(out, tree, "vox2", probe=False, durations=d2, progress=False)
    assert rep.n_resumed == 0 and {r.duration for r in read_manifest(out)} == {2.0}   # d1's records not reused
    monkeypatch.setattr(scanmod, "iter_scan", interrupted)
    with pytest.raises(KeyboardInterrupt):
        scan_to_manifest(out, tree, "vox2", probe=False, durations=d1, progress=False)
    monkeypatch.setattr(scanmod, "iter_scan", orig)
    rep = scan_to_manifest(out, tree, "vox2", probe=False, durations=d1, progress=False)
    assert rep.n_resumed == 2 and rep.n_clips == 5 and {r.duration for r in read_manifest(out)} == {1.0}


# ----------------------------------------------------------------------------- end to end

def _run(args, cwd):
    proc = subprocess.run([sys.executable, "-m", "pipeline", *args], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_manifest_without_durations_then_extract_fills_them(tmp_path):
    """Default `avfuse manifest` (no probe, no durations) -> `avfuse extract`: the cache's durations
    are the decoded ones, equal to the synthetic corpus's own (probed) manifest values."""
    from data_manifests.synth.corpus import synthesize
    from pipeline.cache.reader import open_cache

    synthesize(tmp_path / "toy", speakers=6, videos_per_speaker=2, clips_per_video=1, seed=0, progress=False,
               workers=1)
    truth = {r.clip_id: r for r in read_manifest(tmp_path / "toy" / "manifest.jsonl")}
    _run(["manifest", "--root", str(tmp_path / "toy"), "--layout", "vox2", "--out", "m.jsonl", "-q"], tmp_path)
    recs = read_manifest(tmp_path / "m.jsonl")
    assert sorted(truth) == [r.clip_id for r in recs]
    assert all(r.duration is None and r.sample_rate is None and r.fps is None and r.num_frames is None for r in recs)
    _run(["manifest", "--check", "m.jsonl", "-q"], tmp_path)
    _run(["extract", "-m", "m.jsonl", "-c", "m.zarr", "--audio-backbone", "ge2e_lstm", "--audio-weights", "random",
          "--face-backbone", "iresnet18", "--face-weights", "random", "--device", "cpu", "--frames", "2",
          "--segments", "2", "--threads", "1", "--num-workers", "0", "--quiet"], tmp_path)
    with open_cache(tmp_path / "m.zarr") as c:
        assert c.is_complete and c.ids.tolist() == [r.clip_id for r in recs]
        dur = c.to_numpy("duration", dtype=None)
        assert c.to_numpy("has_audio", dtype=None).all() and c.to_numpy("has_face", dtype=None).all()
        assert Path(c.failures_path).read_text().strip() == ""
    # the decoded AAC is the written length rounded up to whole 1024-sample AAC frames (64 ms at 16 kHz)
    over = dur - np.array([truth[r.clip_id].duration for r in recs])
    assert over.min() > -1e-3 and over.max() < 1024 / 16000 + 1e-3


def test_several_durations_files_are_merged(tmp_path):
    """VoxCeleb2 ships one durations file for dev and one for test: both given, every clip has its
    duration; an id two files give different durations is refused naming both; a rerun resumes."""
    tree = empty_tree(tmp_path / "vox2")
    dev = write_durations(tmp_path / "dev.txt", ["id00012/vidA/00001 6.4", "id00012/vidA/00002 2.0",
                                                 "id00012/vidB/00001 4.25"])
    tst = write_durations(tmp_path / "tst.txt.gz", ["id00015/vidC/00001 1.5", "id00015/vidC/00003 8.0",
                                                    "id00012/vidA/00001 6.4"])   # listed in both, same value
    out = tmp_path / "m.jsonl"
    args = ["--root", str(tree), "--layout", "vox2", "--out", str(out), "--durations", str(dev),
            "--durations", str(tst), "-q"]
    r = CliRunner().invoke(manifest_cmd, args)
    assert r.exit_code == 0, r.output
    assert "5 clips matched, 0 not listed" in r.output and "warning" not in r.output
    assert [r.duration for r in read_manifest(out)] == [6.4, 2.0, 4.25, 1.5, 8.0]
    r = CliRunner().invoke(manifest_cmd, args)                  # same files: resumed, same manifest
    assert r.exit_code == 0, r.output
    clash = write_durations(tmp_path / "clash.txt", ["id00012/vidA/00002 2.5"])
    with pytest.raises(ManifestError, match=r"id00012/vidA/00002 is listed with 2.0 s in .*dev.txt and 2.5 s"):
        scan(tree, "vox2", probe=False, durations=[dev, clash], progress=False)
