"""Distributed extraction on a real Dask LocalCluster (2 spawned worker processes, loopback
only): the toy corpus (real media, plus a zero-byte and a garbage file), ge2e_lstm with its
real packaged weights and iresnet18 random, real Zarr/HDF5 caches. Faults are real too: a
worker SIGKILLed mid-run, a driver process SIGKILLed mid-run, a worker plugin that kills
its process whenever a given task starts (a poison input)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from data_manifests import ClipRecord, read_manifest, write_manifest
from pipeline.cli.dask_options import dask_options, parse_devices, run_with_options
from pipeline.core import ClusterError, ConfigError
from pipeline.extract import ExtractConfig, run_extract
from pipeline.extract.dask import ClusterOptions, open_cluster, run_distributed
from pipeline.extract.dask.worker import worker_info

REPO = Path(__file__).resolve().parents[3]
BASE = dict(audio_backbone="ge2e_lstm", audio_weights="pretrained", face_backbone="iresnet18",
            face_weights="random", frames=2, segments=4, dtype="float32", min_segment_seconds=0.5,
            batch_size=4, num_workers=1)

try:
    from distributed.diagnostics.plugin import WorkerPlugin
except ImportError:  # pragma: no cover
    WorkerPlugin = object


class KillOnStart(WorkerPlugin):
    """Fault injection: SIGKILL this worker process when a task whose key contains one of
    ``needles`` starts executing (as a decoder crashing on a poison file would)."""

    name = "test-kill-on-start"

    def __init__(self, needles):
        self.needles = tuple(needles)

    def transition(self, key, start, finish, **kwargs):
        if finish == "executing" and any(n in str(key) for n in self.needles):
            os.kill(os.getpid(), signal.SIGKILL)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    from data_manifests.synth import synthesize
    root = tmp_path_factory.mktemp("dist")
    synthesize(root / "toy", speakers=6, videos_per_speaker=2, clips_per_video=1, seed=0,
               progress=False, workers=1)
    good = read_manifest(root / "toy" / "manifest.jsonl")
    (root / "zero.m4a").write_bytes(b"")
    (root / "garbage.wav").write_bytes(np.random.default_rng(3).bytes(4000))
    bad = [ClipRecord(clip_id="idbad/zero/00001", speaker="idbad", video="zero", split="train", dataset="bad",
                      audio_path=str(root / "zero.m4a"), video_path=good[0].video_path),
           ClipRecord(clip_id="idbad/garbage/00001", speaker="idbad", video="garbage", split="train",
                      dataset="bad", audio_path=str(root / "garbage.wav"))]
    records = good[:3] + bad[:1] + good[3:9] + bad[1:] + good[9:]   # 14 rows
    write_manifest(root / "manifest.jsonl", records)
    return SimpleNamespace(root=root, manifest=root / "manifest.jsonl", records=records)


@pytest.fixture(scope="module")
def ref(corpus):
    """The single-process reference run."""
    cfg = ExtractConfig(shard_size=4, **BASE)
    run_extract(corpus.manifest, corpus.root / "ref.zarr", cfg, progress=False)
    return corpus.root / "ref.zarr"


_CONNECTS: list = []
_WATCH = [False]


def _audit(event, args):
    """Every socket this test process connects (driver, scheduler, Nannies) while the cluster is up."""
    if _WATCH[0] and event == "socket.connect":
        _CONNECTS.append(args[1])


sys.addaudithook(_audit)   # (audit hooks cannot be removed; idle unless _WATCH[0])


@pytest.fixture(scope="module")
def client(corpus):
    _WATCH[0] = True
    try:
        with open_cluster(ClusterOptions(cluster="local", workers=2, dashboard=False), "cpu",
                          log=lambda m: None) as c:
            assert c.scheduler.address.startswith("tcp://127.0.0.1:")
            assert all(a.startswith("tcp://127.0.0.1:") for a in c.nthreads())
            yield c
    finally:
        _WATCH[0] = False
    # never a non-loopback address (tcp to 127.0.0.1, or unix sockets)
    bad = [a for a in _CONNECTS if isinstance(a, tuple) and a and a[0] not in ("127.0.0.1", "localhost", "::1")]
    assert _CONNECTS and not bad, bad



def _read_all(path):
    from pipeline.cache import open_cache
    with open_cache(path) as c:
        assert c.is_complete
        return c.ids.tolist(), {n: c.to_numpy(n, dtype=None) for n in c.names}, Path(c.failures_path).read_text()


def _assert_same_cache(a, b, skip_rows=()):
    ids_a, arr_a, fail_a = _read_all(a)
    ids_b, arr_b, fail_b = _read_all(b)
    assert ids_a == ids_b
    assert set(arr_a) == set(arr_b)
    keep = np.setdiff1d(np.arange(len(ids_a)), np.asarray(skip_rows, dtype=int))
    for name in arr_a:
        x, y = arr_a[name][keep], arr_b[name][keep]
        if x.dtype == bool:
            assert np.array_equal(x, y), name
        else:
            np.testing.assert_allclose(x, y, rtol=1e-4, atol=2e-5, err_msg=name)
    if not len(skip_rows):
        assert fail_a == fail_b


def _cfg(shard_size=2):
    return ExtractConfig(shard_size=shard_size, **BASE)


def _pids(client) -> dict:
    return {a: info["pid"] for a, info in client.run(worker_info).items()}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


# ----------------------------------------------------------------------------- equal
def test_two_workers_equal_single_process(corpus, ref, client):
    infos = client.run(worker_info).values()
    before = {i["pid"]: i["model_loads"] for i in infos}
    assert {i["decode"] for i in infos} == {"process"}      # local workers are not daemonic: they fork decoders
    s = run_distributed(corpus.manifest, corpus.root / "two.zarr", _cfg(), client=client, progress=False)
    _assert_same_cache(ref, corpus.root / "two.zarr")
    assert s.n_shards == 7 and s.computed_shards == list(range(7)) and not s.fallback_shards
    assert s.clips_computed == 14 and sum(w["clips"] for w in s.per_worker.values()) == 14
    assert s.failed_clips == 2 and s.failures_by == {"decode/audio": 2}
    assert "w0" in s.text() or "w1" in s.text()
    # the backbones were built once per worker process for the whole run, not per shard
    infos = client.run(worker_info).values()
    after = {i["pid"]: i["model_loads"] for i in infos}
    assert set(after) == set(before) and all(after[p] - before[p] == 1 for p in after)
    # and one decode pool per worker, forked once for all its shards (not once per shard)
    pools = {i["pid"]: i["decode_pids"] for i in infos}
    assert all(len(p) == 1 for p in pools.values())      # --num-workers 1 x 1 thread per worker
    # the provenance is the in-process run's (device/workers are not part of it): resumable either way
    from pipeline.cache import open_cache
    with open_cache(ref) as a, open_cache(corpus.root / "two.zarr") as b:
        assert a.provenance["audio_backbone"]["sha256"] == b.provenance["audio_backbone"]["sha256"]
        assert {k: v for k, v in a.provenance.items() if k != "config"} == \
               {k: v for k, v in b.provenance.items() if k != "config"}
    # a second run finds nothing to do
    s2 = run_distributed(corpus.manifest, corpus.root / "two.zarr", _cfg(), client=client, progress=False)
    assert s2.computed_shards == [] and s2.shards_skipped == 7
    s3 = run_distributed(corpus.manifest, corpus.root / "two_again.zarr", _cfg(), client=client, progress=False)
    _assert_same_cache(ref, corpus.root / "two_again.zarr")
    again = {i["pid"]: i["decode_pids"] for i in client.run(worker_info).values()}
    assert s3.computed_shards == list(range(7)) and again == pools     # the same decoders served the next run


# ----------------------------------------------------------------------------- faults
def test_worker_killed_mid_run_same_cache(corpus, ref, client):
    killed = []

    def kill_a_busy_worker(k, rep):
        if killed:
            return
        infos = client.run(worker_info)
        busy = [i for i in infos.values() if any("-shard-" in key for key in i["running"])]
        victim = (busy or list(infos.values()))[0]
        os.kill(victim["pid"], signal.SIGKILL)
        killed.append(victim)

    s = run_distributed(corpus.manifest, corpus.root / "killed.zarr", _cfg(), client=client, progress=False,
                        on_shard=kill_a_busy_worker)
    assert killed and not _alive(killed[0]["pid"])
    _assert_same_cache(ref, corpus.root / "killed.zarr")
    # every shard reported exactly once: computed here, or found done by a re-executed task
    done = s.computed_shards + s.already_done_in_task
    assert sorted(done) == list(range(7)) and not s.fallback_shards
    client.wait_for_workers(2, timeout=120)
    assert killed[0]["pid"] not in _pids(client).values()   # the Nanny restarted that worker


def test_resume_computes_only_the_rest(corpus, ref, client):
    path = corpus.root / "resumed.zarr"

    class Stop(Exception):
        pass

    def stop_after_two(k, rep, seen=[]):
        seen.append(k)
        if len(seen) == 2:
            raise Stop

    with pytest.raises(Stop):
        run_distributed(corpus.manifest, path, _cfg(), client=client, progress=False, on_shard=stop_after_two,
                        window=2)
    markers = path / "_avfuse" / "markers" / "c"
    # tasks of the stopped run still executing finish on their own; wait for them
    deadline = time.time() + 60
    while any(i["running"] for i in client.run(worker_info).values()) and time.time() < deadline:
        time.sleep(0.2)
    first = {int(p.name): p.stat().st_mtime_ns for p in markers.iterdir()}
    assert 2 <= len(first) < 7
    s = run_distributed(corpus.manifest, path, _cfg(), client=client, progress=False)
    assert sorted(s.computed_shards) == sorted(set(range(7)) - set(first))
    assert s.shards_skipped == len(first) and s.clips_computed == 14 - 2 * len(first)
    assert {k: (markers / str(k)).stat().st_mtime_ns for k in first} == first   # not rewritten
    _assert_same_cache(ref, path)


def test_poison_shard_ends_as_clip_failures(corpus, ref, client):
    """A shard whose task kills its worker, then (clip by clip) one clip whose decode kills
    its worker: the run ends; that clip is a failure, every other row is as in-process."""
    path = corpus.root / "poison.zarr"
    old = client.run_on_scheduler(lambda dask_scheduler: dask_scheduler.allowed_failures)
    client.run_on_scheduler(lambda dask_scheduler: setattr(dask_scheduler, "allowed_failures", 0))
    client.register_plugin(KillOnStart(["-shard-3", "-decode-3-1"]))
    try:
        s = run_distributed(corpus.manifest, path, _cfg(), client=client, progress=False)
    finally:
        client.unregister_worker_plugin(KillOnStart.name)
        client.run_on_scheduler(lambda dask_scheduler, v=old: setattr(dask_scheduler, "allowed_failures", v))
    # (with allowed_failures 0, a shard that shared the killed worker may fall back too: same result)
    assert 3 in s.fallback_shards and 3 in s.computed_shards
    poison_row = 3 * 2 + 1
    poison_id = corpus.records[poison_row].clip_id
    _assert_same_cache(ref, path, skip_rows=[poison_row])
    from pipeline.cache import open_cache
    with open_cache(path) as c:
        assert not c.to_numpy("has_audio")[poison_row] and not c.to_numpy("has_face")[poison_row]
        assert not c.to_numpy("audio/clip")[poison_row].any() and not c.to_numpy("face/frames")[poison_row].any()
        mine = [f for f in c.failures() if f["clip_id"] == poison_id]
        # flagged like any failed clip: one record per modality, at the stage whose task died
        assert sorted(f["modality"] for f in mine) == ["audio", "face"]
        assert all(f["stage"] == "decode" and "KilledWorker" in f["error"] for f in mine)
        with open_cache(ref) as r:
            assert [f for f in c.failures() if f["clip_id"] != poison_id] == r.failures()
    client.wait_for_workers(2, timeout=120)


def test_hdf5_driver_killed_then_resumed_via_scheduler(corpus, ref, client):
    """A driver process connected with --scheduler is SIGKILLed mid-run (its lock stays
    behind; its running task finishes); the rerun resumes and merges the HDF5 parts."""
    path = corpus.root / "killed_driver.h5"
    script = textwrap.dedent(f"""
        import sys, torch
        torch.set_num_threads(1)
        from pipeline.cli.dask_options import run_with_options
        from pipeline.extract.config import ExtractConfig
        run_with_options({str(corpus.manifest)!r}, {str(path)!r}, ExtractConfig(shard_size=2, **{BASE!r}),
                         progress=False, scheduler={client.scheduler.address!r})
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    parts = path.with_name(path.name + ".parts")
    deadline = time.time() + 120
    try:
        while time.time() < deadline and proc.poll() is None:
            if parts.is_dir() and any(p.suffix == ".json" for p in parts.iterdir()):
                break
            time.sleep(0.05)
        assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    staged = {p.stem for p in parts.iterdir() if p.suffix == ".json"}
    assert staged and len(staged) < 7
    assert path.with_name(path.name + ".lock").exists()        # the dead driver's lock is stale
    with pytest.warns(UserWarning, match="stale cache lock"):
        s = run_with_options(corpus.manifest, path, _cfg(), progress=False, scheduler=client.scheduler.address)
    assert not set(s.computed_shards) & {int(x) for x in staged}
    assert not any(p.suffix in (".json", ".npz") for p in parts.iterdir())   # merged into the .h5
    _assert_same_cache(ref, path)


# ----------------------------------------------------------------------------- options
def test_cli_options_and_validation(corpus, tmp_path):
    import click
    from click.testing import CliRunner

    @click.command()
    @dask_options
    def cmd(**kw):
        click.echo(repr(sorted(kw.items())))

    r = CliRunner().invoke(cmd, ["--cluster", "local", "--workers", "2", "--devices", "0,1", "--no-dashboard"])
    assert r.exit_code == 0, r.output
    assert "('devices', ('0', '1'))" in r.output and "('bind_host', '127.0.0.1')" in r.output
    assert "('dashboard', False)" in r.output
    assert CliRunner().invoke(cmd, ["--devices", "0,,1"]).exit_code == 2
    help_text = CliRunner().invoke(cmd, ["--help"]).output
    for flag in ("--cluster", "--workers", "--devices", "--threads-per-worker", "--scheduler", "--dashboard",
                 "--bind-host"):
        assert flag in help_text
    assert parse_devices("0, 1") == ("0", "1")
    with pytest.raises(ConfigError, match="distinct"):
        parse_devices("0,0")
    cfg = _cfg()
    for kw, msg in ((dict(workers=2), "needs --cluster local"),
                    (dict(cluster="local", scheduler="tcp://127.0.0.1:1"), "both given"),
                    (dict(cluster="local", devices="0,1"), "--device cuda"),
                    (dict(scheduler="tcp://127.0.0.1:1", workers=2), "--cluster local only")):
        with pytest.raises(ConfigError, match=msg):
            run_with_options(corpus.manifest, tmp_path / "x.zarr", cfg, progress=False, **kw)
    assert not (tmp_path / "x.zarr").exists()
    # a local cluster pins each worker to one GPU, which it sees as cuda:0: an index is refused, with the fix
    with pytest.raises(ConfigError, match="--device cuda --devices 1"):
        ClusterOptions(cluster="local").validate("cuda:1")
    ClusterOptions(cluster="local", devices=("1",)).validate("cuda")
    ClusterOptions(scheduler="tcp://127.0.0.1:1").validate("cuda:1")    # remote workers: their own GPUs
    # nothing listens on port 1 of loopback: a clear ClusterError, quickly
    with pytest.raises(ClusterError, match="cannot reach the Dask scheduler"):
        with open_cluster(ClusterOptions(scheduler="127.0.0.1:1", connect_timeout_s=1), "cpu"):
            pass


def test_worker_refuses_weights_that_differ(corpus):
    from pipeline.extract.dask.worker import worker_models
    cfg = ExtractConfig(audio_backbone="ge2e_lstm", audio_weights="pretrained")
    with pytest.raises(ClusterError, match="sha256"):
        worker_models(cfg, {"audio": "0" * 64, "face": None})
