"""ClipRecord manifests: JSONL(.gz) round trips, resumable writing, checks and error paths."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest
import soundfile as sf

from data_manifests import (
    ClipRecord,
    ManifestWriter,
    SplitAssigner,
    check_manifest,
    iter_manifest,
    manifest_fingerprint,
    read_manifest,
    write_manifest,
)
from data_manifests.splits import SplitSource
from pipeline.core import ManifestError


def rec(i: int, **kw) -> ClipRecord:
    d = dict(clip_id=f"id{i:05d}/vid/{i:05d}", speaker=f"id{i:05d}", video="vid",
             audio_path=f"wav/id{i:05d}/vid/{i:05d}.wav", duration=1.5 + i, sample_rate=16000, split="test",
             dataset="vox1")
    d.update(kw)
    return ClipRecord(**d)


@pytest.mark.parametrize("name", ["m.jsonl", "m.jsonl.gz"])
def test_round_trip_and_relative_paths(tmp_path, name):
    recs = [rec(1), rec(2, audio_path=None, video_path="/abs/x.mp4", fps=25.0, num_frames=50), rec(3, split=None)]
    p = tmp_path / "sub" / name
    assert write_manifest(p, recs) == 3
    if name.endswith(".gz"):
        with gzip.open(p, "rt") as f:            # really gzipped
            assert json.loads(f.readline())["clip_id"] == recs[0].clip_id
    back = read_manifest(p, resolve=False)
    assert back == recs
    resolved = read_manifest(p)
    assert resolved[0].audio_path == str(tmp_path / "sub" / "wav/id00001/vid/00001.wav")
    assert resolved[1].video_path == "/abs/x.mp4" and resolved[1].audio_path is None
    assert not list(p.parent.glob(".*tmp"))


@pytest.mark.parametrize("line,match", [
    ('{"clip_id": "a/b/c", "speaker": "a"', "not valid JSON"),
    ('["a/b/c"]', "expected a JSON object"),
    ('{"clip_id": "a/b/c", "speaker": "a", "video": "b", "colour": 1}', r"unknown field\(s\) \['colour'\]"),
    ('{"speaker": "a", "video": "b"}', "missing or empty 'clip_id'"),
])
def test_malformed_line_names_file_and_line(tmp_path, line, match):
    p = tmp_path / "m.jsonl"
    p.write_text(rec(1).to_json() + "\n\n" + rec(2).to_json() + "\n" + line + "\n")
    with pytest.raises(ManifestError, match=match) as e:
        read_manifest(p)
    assert e.value.line == 4 and e.value.path == str(p) and str(e.value).startswith(f"{p}:4: ")


def test_duplicate_ids_are_an_error(tmp_path):
    p = tmp_path / "m.jsonl"
    write_manifest(p, [rec(1), rec(2), rec(1, duration=9.0)])
    with pytest.raises(ManifestError, match="duplicate clip id 'id00001/vid/00001'"):
        read_manifest(p)
    assert len(list(iter_manifest(p))) == 3       # streaming readers do not hold all ids
    with pytest.raises(ManifestError, match="duplicate"):
        check_manifest(p, progress=False)


def test_missing_manifest(tmp_path):
    with pytest.raises(ManifestError, match="manifest not found") as e:
        read_manifest(tmp_path / "none.jsonl")
    assert "avfuse manifest" in e.value.hint


def test_manifest_writer_resumes_after_torn_line(tmp_path):
    p = tmp_path / "m.jsonl"
    with ManifestWriter(p) as w:
        assert w.write(rec(1)) and w.write(rec(2)) and not w.write(rec(1))
    with open(p, "a") as f:
        f.write(rec(3).to_json()[:20])             # killed mid-line
    with ManifestWriter(p) as w:
        assert w.done == {rec(1).clip_id, rec(2).clip_id} and rec(2).clip_id in w
        w.write(rec(3))
    assert [r.clip_id for r in read_manifest(p)] == [rec(i).clip_id for i in (1, 2, 3)]
    with pytest.raises(ManifestError, match="plain .jsonl"):
        ManifestWriter(tmp_path / "m.jsonl.gz")


def test_fingerprint_follows_identity_and_order():
    a = [rec(1), rec(2)]
    assert manifest_fingerprint(a) == manifest_fingerprint([rec(1, duration=99.0), rec(2)])
    assert manifest_fingerprint(a) != manifest_fingerprint(a[::-1])
    assert manifest_fingerprint(a) != manifest_fingerprint([rec(1, split="dev"), rec(2)])
    assert len(manifest_fingerprint(a)) == 16


def test_check_reports_every_missing_media_path(tmp_path):
    recs = []
    for i in range(4):
        r = rec(i, frames_dir=f"frames/{i}")
        sf.write(tmp_path / f"{i}.wav", np.zeros(160, np.float32), 16000)
        r.audio_path = f"{i}.wav"
        (tmp_path / f"frames/{i}").mkdir(parents=True)
        (tmp_path / f"frames/{i}/00001.jpg").write_bytes(b"\xff\xd8")
        recs.append(r)
    p = tmp_path / "m.jsonl"
    write_manifest(p, recs)
    assert check_manifest(p, progress=False).ok
    (tmp_path / "1.wav").unlink()
    (tmp_path / "frames/3/00001.jpg").unlink()     # an empty frame folder counts as gone
    rep = check_manifest(p, progress=False)
    assert not rep.ok and rep.n_records == 4 and rep.n_missing_records == 2
    assert [(m["clip_id"], m["field"]) for m in rep.missing] == [(recs[1].clip_id, "audio_path"),
                                                                 (recs[3].clip_id, "frames_dir")]
    assert rep.missing[0]["path"] == str(tmp_path / "1.wav")
    assert len(read_manifest(p)) == 4


def test_split_assigner_precedence():
    a = SplitSource(spec="a", path="a", split="test", clips={"s1/v/1": "test"}, speakers={"s2": "test"})
    b = SplitSource(spec="b", path="b", split=None, clips={}, speakers={"s1": "dev"})
    sa = SplitAssigner("train", [a, b])
    assert sa.assign("s1/v/1", "dev") == "dev"      # b (later) overrides a's clip entry
    assert sa.assign("s2/v/1", None) == "test"
    assert sa.assign("s3/v/1", "dev") == "train"    # --split replaces the folder split
    assert SplitAssigner().assign("s3/v/1", "dev") == "dev"
    rep = {r["source"]: r for r in sa.report()}
    assert rep["a"]["n_clips_matched"] == 1 and rep["a"]["n_speakers_matched"] == 1
    assert rep["b"]["n_speakers_matched"] == 1 and rep["b"]["n_clips_listed"] == 0
