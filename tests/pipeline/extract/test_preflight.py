"""`avfuse preflight` on real media: VoxCeleb-format clips mixed with missing, empty,
truncated and non-media files; the failures must be extract's own records."""

from __future__ import annotations

import dataclasses
import json

import pytest

from benchmarks.voxceleb_media import generate
from data_manifests.manifest import ClipRecord, read_manifest, write_manifest
from pipeline.cli.main import main
from pipeline.core import ConfigError
from pipeline.extract import ExtractConfig
from pipeline.extract.decode_pool import DecodeSpec, decode_clip, decode_spec
from pipeline.extract.preflight import run_preflight


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    root = tmp_path_factory.mktemp("pre")
    good = read_manifest(generate(root / "good", kind="vox2", durations=[0.6, 1.0, 1.4], progress=False))
    bad = root / "bad"
    bad.mkdir()
    (bad / "empty.mp4").write_bytes(b"")
    (bad / "notes.m4a").write_text("this is not media\n" * 40)
    mp4 = good[2].video_path
    data = open(mp4, "rb").read()
    (bad / "cut.mp4").write_bytes(data[: len(data) // 2])      # moov at the end: cut off
    m4a = open(good[1].audio_path, "rb").read()
    (bad / "cut.m4a").write_bytes(m4a[: len(m4a) // 3])

    def rec(name, **kw):
        return ClipRecord(clip_id=f"idbad/v/{name}", speaker="idbad", video="v", **kw)

    records = list(good) + [
        rec("missing", audio_path=str(bad / "gone.m4a"), video_path=str(bad / "gone.mp4")),
        rec("empty", audio_path=good[0].audio_path, video_path=str(bad / "empty.mp4")),
        rec("truncated", audio_path=str(bad / "cut.m4a"), video_path=str(bad / "cut.mp4")),
        rec("notmedia", audio_path=str(bad / "notes.m4a"), video_path=good[0].video_path),
    ]
    manifest = root / "mixed.jsonl"
    write_manifest(manifest, records)
    return manifest, records


def test_preflight_lists_extracts_failures(mixed):
    manifest, records = mixed
    res = run_preflight(manifest, progress=False)
    assert res.n_clips == res.manifest_clips == 7 and res.n_failed == 4
    spec = DecodeSpec(audio_sr=16000, face_size=112, frames=8)
    want = [f for r in read_manifest(manifest) for f in decode_clip(r, spec).failures]  # what extract logs
    key = lambda f: (f["clip_id"], f["modality"])  # noqa: E731
    assert sorted(res.failures, key=key) == sorted(want, key=key)
    by = {key(f): f["error"] for f in res.failures}
    assert set(by) == {("idbad/v/missing", "audio"), ("idbad/v/missing", "face"), ("idbad/v/empty", "face"),
                       ("idbad/v/truncated", "audio"), ("idbad/v/truncated", "face"), ("idbad/v/notmedia", "audio")}
    assert "not found" in by[("idbad/v/missing", "face")] and "empty" in by[("idbad/v/empty", "face")]
    assert "gone.m4a" in by[("idbad/v/missing", "audio")]
    assert res.audio_cpu_ms_per_clip > 0 and res.video_cpu_ms_per_clip > 0
    assert res.hours(16) == pytest.approx(7 * res.cpu_ms_per_clip / 16 / 3.6e6)
    assert res.resize_on == "device" and res.to_json()["resize_on"] == "device"   # as extract on CUDA
    cpu = run_preflight(manifest, resize_on="cpu", progress=False)                 # as extract on a CPU
    assert cpu.resize_on == "cpu" and sorted(cpu.failures, key=key) == sorted(res.failures, key=key)
    with pytest.raises(ConfigError, match="resize_on"):
        run_preflight(manifest, resize_on="gpu", progress=False)


def test_preflight_default_is_extracts_decode_on_cuda(mixed):
    """``extract --device cuda`` hands faces over centre-cropped at the source side (the GPU
    resizes): preflight's default times that decode, not the CPU resize."""
    _, records = mixed
    cuda = decode_spec(ExtractConfig(face_backbone="iresnet18", face_weights="random", device="cuda"))
    assert cuda.resize_on == "device" == run_preflight.__kwdefaults__["resize_on"]
    faces = decode_clip(records[0], DecodeSpec(None, 112, 8, resize_on="device")).faces
    assert faces.shape == (8, 3, 224, 224)


def test_cli_json_sample_and_workers(mixed, capsys):
    manifest, _ = mixed
    with pytest.raises(SystemExit) as e:
        main(["preflight", "-m", str(manifest), "--json", "-q", "--workers", "2", "--cores", "8"])
    assert e.value.code == 1
    d = json.loads(capsys.readouterr().out)
    for k in ("n_clips", "n_failed", "cpu_ms_per_clip", "audio_cpu_ms_per_clip", "video_cpu_ms_per_clip",
              "projected_hours"):
        assert k in d
    assert d["n_clips"] == 7 and d["n_failed"] == 4 and d["cores"] == 8
    assert d["projected_hours"] == pytest.approx(7 * d["cpu_ms_per_clip"] / 8 / 3.6e6)
    assert d["projected_hours_measured"] is None          # 7 clips are too few for 2 processes' rate
    # with enough clips per process, the rate they decoded at, and the manifest at that rate
    r = run_preflight(manifest, workers=1, progress=False)
    assert r.measured_clips_per_s > 0 and r.to_json()["projected_hours_measured"] == pytest.approx(
        7 / r.measured_clips_per_s / 3600)
    assert "measured with 1 decode process here" in r.text()
    # more decode workers than usable cores: said (the CPU per clip stays right, the wall time does not)
    from pipeline.extract.config import usable_cores
    n = usable_cores() + 1
    with pytest.raises(SystemExit):
        main(["preflight", "-m", str(manifest), "-q", "--sample", "2", "--workers", str(n)])
    err = capsys.readouterr().err
    assert f"--workers {n} on {usable_cores()} usable cores" in err
    # a seeded sample: the same clips for the same seed
    a = run_preflight(manifest, sample=3, seed=5, progress=False)
    b = run_preflight(manifest, sample=3, seed=5, progress=False)
    assert a.n_clips == 3 and [r["clip_id"] for r in a.per_clip] == [r["clip_id"] for r in b.per_clip]


def test_cli_exit_codes(mixed, tmp_path, capsys):
    manifest, records = mixed
    good = tmp_path / "good.jsonl"
    write_manifest(good, [dataclasses.replace(r) for r in records[:3]])
    with pytest.raises(SystemExit) as e:
        main(["preflight", "-m", str(good), "-q"])
    assert e.value.code == 0
    assert "0 will fail" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        main(["preflight", "-m", str(tmp_path / "nope.jsonl")])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "manifest not found" in err[0] and "nope.jsonl" in err[0]
