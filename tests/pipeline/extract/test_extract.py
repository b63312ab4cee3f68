"""Stage-1 extraction end to end on real media: the synthetic toy corpus plus hand-made bad
files (zero-byte, truncated, garbage, missing streams, too short, grayscale/CMYK jpgs,
missing folders), real backbones (ge2e_lstm, iresnet18, random weights), real Zarr/HDF5
caches, a real ``python -m pipeline extract`` subprocess killed with SIGKILL."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from data_manifests import ClipRecord, read_manifest, write_manifest
from pipeline.core import BackboneError, CacheError, ConfigError
from pipeline.extract import ExtractConfig, compute_shard, failed_shard, get_models, resolve_weights, run_extract
from tests.extractors.media.test_decode import level_frames, sine, write_jpg, write_mp4, write_wav

REPO = Path(__file__).resolve().parents[3]
BASE = dict(audio_backbone="ge2e_lstm", audio_weights="random", face_backbone="iresnet18",
            face_weights="random", frames=2, segments=4, dtype="float32", min_segment_seconds=0.5)
CLI_FLAGS = ["--audio-backbone", "ge2e_lstm", "--audio-weights", "random", "--face-backbone", "iresnet18",
             "--face-weights", "random", "--device", "cpu", "--frames", "2", "--segments", "4",
             "--dtype", "float32", "--threads", "1", "--quiet"]


pytestmark = pytest.mark.usefixtures("one_thread")


def _bad_records(d: Path, good: ClipRecord) -> list[tuple[ClipRecord, dict]]:
    """Clips with bad or odd media, each with what the cache must say about it."""
    d.mkdir(parents=True)
    rec = lambda name, **kw: ClipRecord(clip_id=f"idbad/{name}/00001", speaker="idbad", video=name,
                                        split="train", dataset="bad", **kw)
    ok_wav = str(write_wav(d / "ok.wav", sine(220, 1.2, 16000), 16000))
    (d / "zero.m4a").write_bytes(b"")
    raw = Path(good.video_path).read_bytes()
    (d / "trunc.mp4").write_bytes(raw[: len(raw) // 2])
    (d / "garbage.wav").write_bytes(np.random.default_rng(3).bytes(4000))
    write_mp4(d / "video_only.mp4", level_frames(20))
    write_mp4(d / "audio_only.mp4", None, audio=sine(300, 1.0, 16000))
    write_wav(d / "short.wav", sine(330, 0.2, 16000), 16000)
    jpgs = d / "jpgs"
    jpgs.mkdir()
    rgb = np.zeros((48, 64, 3), np.uint8)
    rgb[..., 0] = 180
    write_jpg(jpgs / "1.jpg", rgb, mode="L")
    write_jpg(jpgs / "2.jpg", rgb, mode="CMYK")
    write_jpg(jpgs / "3.jpg", rgb)
    return [
        (rec("zero_audio", audio_path=str(d / "zero.m4a"), video_path=good.video_path),
         dict(audio=False, face=True, fail={("decode", "audio")}, error="empty")),
        (rec("truncated_mp4", video_path=str(d / "trunc.mp4")),
         dict(audio=False, face=False, fail={("decode", "audio"), ("decode", "face")}, error="trunc.mp4")),
        (rec("garbage_wav", audio_path=str(d / "garbage.wav")),
         dict(audio=False, face=False, fail={("decode", "audio")}, error="garbage.wav")),
        (rec("mp4_no_audio", video_path=str(d / "video_only.mp4")),
         dict(audio=False, face=True, fail={("decode", "audio")}, error="no audio stream")),
        (rec("mp4_no_video", video_path=str(d / "audio_only.mp4")),
         dict(audio=True, face=False, fail={("decode", "face")}, error="no video stream")),
        (rec("short", audio_path=str(d / "short.wav")), dict(audio=True, face=False, fail=set(), short=True)),
        (rec("gray_cmyk_jpgs", audio_path=ok_wav, frames_dir=str(jpgs)), dict(audio=True, face=True, fail=set())),
        (rec("missing_frames", audio_path=ok_wav, frames_dir=str(d / "no_such_dir")),
         dict(audio=True, face=False, fail={("decode", "face")}, error="not found")),
    ]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    from data_manifests.synth import synthesize
    root = tmp_path_factory.mktemp("extract")
    synthesize(root / "toy", speakers=6, videos_per_speaker=2, clips_per_video=1, seed=0,
               progress=False, workers=1)
    good = read_manifest(root / "toy" / "manifest.jsonl")  # paths resolved (absolute)
    bad = _bad_records(root / "bad", good[0])
    records = good[:3] + [r for r, _ in bad[:4]] + good[3:8] + [r for r, _ in bad[4:]] + good[8:]
    expect = {r.clip_id: dict(audio=True, face=True, fail=set()) for r in good}
    expect.update({r.clip_id: e for r, e in bad})
    write_manifest(root / "manifest.jsonl", records)
    return SimpleNamespace(root=root, manifest=root / "manifest.jsonl", records=records, expect=expect)


@pytest.fixture(scope="module")
def ref(corpus):
    """The uninterrupted reference run (Zarr, DataLoader decode workers)."""
    cfg = ExtractConfig(shard_size=4, batch_size=3, num_workers=2, **BASE)
    summary = run_extract(corpus.manifest, corpus.root / "ref.zarr", cfg, progress=False)
    return SimpleNamespace(cfg=cfg, summary=summary, path=corpus.root / "ref.zarr")


def _read_all(path):
    from pipeline.cache import open_cache
    with open_cache(path) as c:
        assert c.is_complete
        arrays = {n: c.to_numpy(n, dtype=None) for n in c.names}
        return c.ids.tolist(), arrays, Path(c.failures_path).read_text()


def _assert_same_cache(a, b):
    ids_a, arr_a, fail_a = _read_all(a)
    ids_b, arr_b, fail_b = _read_all(b)
    assert ids_a == ids_b
    assert set(arr_a) == set(arr_b)
    for name in arr_a:
        if arr_a[name].dtype == bool:
            assert np.array_equal(arr_a[name], arr_b[name]), name
        else:
            np.testing.assert_allclose(arr_a[name], arr_b[name], rtol=1e-4, atol=2e-5, err_msg=name)
    assert fail_a == fail_b


# ----------------------------------------------------------------------------- contents
def test_reference_cache_contents(corpus, ref):
    from pipeline.cache import open_cache
    c = open_cache(ref.path)
    assert c.ids.tolist() == [r.clip_id for r in corpus.records]       # manifest order
    has_a, has_f = c.to_numpy("has_audio"), c.to_numpy("has_face")
    for i, r in enumerate(corpus.records):
        e = corpus.expect[r.clip_id]
        assert has_a[i] == e["audio"] and has_f[i] == e["face"], r.clip_id
    # failures.jsonl beside the store: one line per failure, row order, the error says what/where
    lines = [json.loads(x) for x in Path(c.failures_path).read_text().splitlines()]
    got: dict[str, set] = {}
    for f in lines:
        got.setdefault(f["clip_id"], set()).add((f["stage"], f["modality"]))
        want = corpus.expect[f["clip_id"]].get("error")
        assert want and want in f["error"], f
    assert got == {k: e["fail"] for k, e in corpus.expect.items() if e["fail"]}
    assert ref.summary.failed_clips == len(got) and ref.summary.failed_share == pytest.approx(len(got) / c.n_rows)
    # failed or missing modalities are all-zero, never garbage
    for name, flag in (("audio/clip", has_a), ("audio/segments", has_a), ("face/frames", has_f), ("face/clip", has_f)):
        x = c.to_numpy(name)
        assert not np.any(x[~flag]) and np.all(np.abs(x[flag]).reshape(flag.sum(), -1).sum(1) > 0), name
    # face/clip is the mean of the valid frames
    frames, fv, fclip = c.to_numpy("face/frames"), c.to_numpy("face/frame_valid"), c.to_numpy("face/clip")
    for i in np.flatnonzero(has_f):
        np.testing.assert_allclose(fclip[i], frames[i][fv[i]].mean(0), rtol=1e-5, atol=1e-6)
    # segments: ~1 s synthetic clips hold 2 segments of >= 0.5 s (then repeats, flagged);
    # the 0.2 s clip is shorter than one segment: all flagged, still embedded
    sv, segs = c.to_numpy("audio/segment_valid"), c.to_numpy("audio/segments")
    dur = c.to_numpy("duration")
    for i, r in enumerate(corpus.records):
        if not has_a[i]:
            assert not sv[i].any()
            continue
        n_real = min(4, int(dur[i] * 16000) // 8000)
        if corpus.expect[r.clip_id].get("short"):
            assert not sv[i].any() and dur[i] == pytest.approx(0.2, abs=1e-3)
            assert np.allclose(segs[i], segs[i][0])
        else:
            assert sv[i].tolist() == [s < n_real for s in range(4)], r.clip_id
            for s in range(n_real, 4):  # repeat padding: slot s holds part s mod n_real
                assert np.array_equal(segs[i][s], segs[i][s % n_real])
    # provenance: backbones, weights, manifest fingerprint, embedding config (not batch/workers/device)
    p = c.provenance
    assert p["audio_backbone"]["name"] == "ge2e_lstm" and p["face_backbone"]["weights"] == "random"
    assert p["config"]["segments"] == 4 and "batch_size" not in p["config"] and "device" not in p["config"]
    from data_manifests import manifest_fingerprint
    assert p["manifest_fingerprint"] == manifest_fingerprint(corpus.records)
    c.close()


def test_every_clip_came_through_the_ring_while_the_last_shard_was_embedded(ref):
    """The consumer drops a shard's clips before collecting the next: held, they kept the ring's
    slots and the shard after travelled pickled (half the clips of a run, on the GPU box)."""
    assert ref.summary.shards_computed > 2 and ref.summary.stats.pickled_clips == 0


def test_same_embeddings_whatever_batching_workers_backend(corpus, ref):
    # batch 1 instead of 3, decode inline instead of 2 processes, other shard boundaries, HDF5
    cfg = ExtractConfig(shard_size=5, batch_size=1, num_workers=0, **BASE)
    run_extract(corpus.manifest, corpus.root / "b1.h5", cfg, progress=False)
    _assert_same_cache(ref.path, corpus.root / "b1.h5")


def test_compute_shard_is_the_unit_of_work(corpus, ref):
    """One shard computed alone (thread-pool decoding, as in a Dask worker; one batch of
    16) equals that shard of the reference cache."""
    from pipeline.cache import open_cache
    cfg = dataclasses.replace(ref.cfg, batch_size=16)
    res = compute_shard(corpus.records[4:8], cfg, num_workers=2, backend="thread")
    with open_cache(ref.path) as c:
        for name, arr in res.arrays.items():
            np.testing.assert_allclose(arr.astype(np.float32), c.to_numpy(name, rows=range(4, 8)),
                                       rtol=1e-4, atol=2e-5, err_msg=name)
        assert res.failures == [f for f in c.failures() if f["clip_id"] in {r.clip_id for r in corpus.records[4:8]}]
    assert res.stats.clips == 4 and res.stats.compute_seconds > 0


def test_failed_shard_fits_the_layout(corpus, ref, tmp_path):
    """What a runner stores for a shard that fails as a whole (poison input)."""
    from pipeline.cache import CacheLayout, create_cache
    recs = corpus.records[:3]
    res = failed_shard(recs, ref.cfg, audio_dim=256, face_dim=512, error="worker died 3 times")
    w = create_cache(tmp_path / "f.zarr", ids=[r.clip_id for r in recs], speakers=[r.speaker for r in recs],
                     splits=[r.split for r in recs], provenance={"test": 1},
                     layout=CacheLayout(audio_dim=256, face_dim=512, segments=4, frames=2, dtype="float32",
                                        shard_size=4))
    w.write_shard(0, res.arrays, res.failures)
    w.finalize()
    assert len(w.failures()) == 6 and {f["stage"] for f in w.failures()} == {"backbone"}
    assert not w.to_numpy("has_audio").any() and not w.to_numpy("face/clip").any()


# ----------------------------------------------------------------------------- faults
def _done(path) -> int:
    from pipeline.cache import open_cache
    try:
        with open_cache(path) as c:
            return len(c.done_shards())
    except CacheError:
        return 0


def test_kill9_then_resume_equals_uninterrupted(corpus, ref):
    cache = corpus.root / "killed.zarr"
    cmd = [sys.executable, "-m", "pipeline", "extract", "-m", str(corpus.manifest), "-c", str(cache),
           "--shard-size", "2", "--batch-size", "2", "--num-workers", "1", "--max-failures", "1", *CLI_FLAGS]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    n_shards = -(-len(corpus.records) // 2)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None and _done(cache) < 1:
            time.sleep(0.02)
        assert proc.poll() is None, proc.communicate()[1].decode()[-2000:]
        # a second extract on the same cache while the first runs is refused (lock file)
        cfg = ExtractConfig(shard_size=2, batch_size=2, num_workers=0, **BASE)
        with pytest.raises(CacheError, match="locked by pid"):
            run_extract(corpus.manifest, cache, cfg, progress=False)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    done_at_kill = _done(cache)
    assert 1 <= done_at_kill < n_shards, "the run must be killed in the middle"
    with pytest.warns(UserWarning, match="stale"):  # the dead run's lock is taken over
        summary = run_extract(corpus.manifest, cache, cfg, progress=False)
    assert summary.shards_skipped == done_at_kill and summary.shards_computed == n_shards - done_at_kill
    _assert_same_cache(ref.path, cache)


def test_other_provenance_is_refused_unless_overwrite(corpus, ref, tmp_path):
    cfg = dataclasses.replace(ref.cfg, segments=3)
    with pytest.raises(CacheError, match="segments"):
        run_extract(corpus.manifest, ref.path, cfg, progress=False)
    # a small manifest: overwrite replaces the cache
    small = tmp_path / "small.jsonl"
    write_manifest(small, corpus.records[:2])
    with pytest.raises(CacheError, match="differently"):
        run_extract(small, ref.path, ref.cfg, progress=False)
    cfg = dataclasses.replace(ref.cfg, face_backbone=None, face_weights=None)
    s = run_extract(small, tmp_path / "s.zarr", cfg, progress=False)
    s2 = run_extract(small, tmp_path / "s.zarr", dataclasses.replace(cfg, segments=2), overwrite=True, progress=False)
    assert s.shards_computed == s2.shards_computed == 1
    from pipeline.cache import open_cache
    with open_cache(tmp_path / "s.zarr") as c:
        assert c.layout.segments == 2 and not c.has("face/clip")


# ----------------------------------------------------------------------------- CLI
def test_cli_exit_status_follows_max_failures(corpus, ref, invoke):
    args = ["extract", "-m", str(corpus.manifest), "-c", str(ref.path), "--shard-size", "4",
            "--batch-size", "3", "--num-workers", "0", *CLI_FLAGS]
    code, _, err = invoke(args)
    assert code == 1                                     # 6 of 20 clips failed > 1 %
    assert "failed clips" in err and "max-failures" in err and "decode/audio" in err
    code, _, err = invoke(args + ["--max-failures", "0.5"])
    assert code == 0 and "0 computed now" in err         # resume: nothing left to do


def test_cli_refuses_backbone_without_weights(corpus, tmp_path, invoke):
    code, _, err = invoke(["extract", "-m", str(corpus.manifest), "-c", str(tmp_path / "x.zarr"),
                           "--audio-backbone", "ge2e_lstm", "--device", "cpu"])
    assert code == 2 and "--audio-weights" in err
    assert not (tmp_path / "x.zarr").exists()
    code, _, err = invoke(["extract", "-m", str(corpus.manifest), "-c", str(tmp_path / "x.zarr"),
                           "--audio-backbone", "no_such_net", "--audio-weights", "random", "--device", "cpu"])
    assert code == 2 and "known backbones" in err


def test_config_and_weights_resolution():
    with pytest.raises(BackboneError, match="is a face backbone"):
        get_models(ExtractConfig(audio_backbone="iresnet18", audio_weights="random"))
    with pytest.raises(ConfigError, match="needs --face-weights"):
        ExtractConfig(face_backbone="iresnet18").validate()
    with pytest.raises(ConfigError, match="no backbone"):
        ExtractConfig().validate()
    with pytest.raises(BackboneError, match="pretrained"):
        resolve_weights("iresnet18", "pretrained")
    assert resolve_weights("iresnet18", "random") == "random"
    try:
        p = resolve_weights("ge2e_lstm", "pretrained")
    except BackboneError as e:  # resemblyzer not installed: the error says how to get it
        assert "resemblyzer" in str(e)
    else:
        assert Path(p).is_file() and p.endswith("pretrained.pt")


def test_the_summary_says_when_decoding_bound_the_run():
    from pipeline.extract.dask.summary import DistributedSummary
    from pipeline.extract.run import ExtractSummary
    from pipeline.extract.shard import ShardStats
    base = dict(cache="c.zarr", n_rows=4096, n_shards=16, shards_skipped=0, shards_computed=16, clips_computed=4096,
                failed_clips=0, failed_share=0.0, seconds=19.8)
    bound = ExtractSummary(**base, stats=ShardStats(clips=4096, compute_seconds=11.6, wait_seconds=6.3)).text()
    assert "decoding bound this run: the backbones waited 6 s of 20 s" in bound and "--num-workers" in bound
    assert "decoding bound" not in ExtractSummary(**base, stats=ShardStats(wait_seconds=2.0)).text()
    assert "decoding bound" not in ExtractSummary(**{**base, "seconds": 4.0}, stats=ShardStats(wait_seconds=3.0)).text()
    assert "decoding bound" not in DistributedSummary(**base, stats=ShardStats(wait_seconds=60.0)).text()
