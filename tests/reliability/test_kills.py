"""kill -9 at other points than extraction into a store (``test_extract_kills.py``): a
Dask worker killed mid-shard, and ``save_head`` / ``avfuse train`` killed while writing a
checkpoint.

After every kill the store must be consistent and equal the uninterrupted reference, and a
checkpoint must load whole, from one save.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from tests.reliability.badmedia import REPO
from tests.reliability.extract_kills import _done
from tests.reliability.harness import (
    avfuse_cmd,
    avfuse_here,
    child_env,
    compare_caches,
    extract_config,
    fault_corpus,
    lost_clips,
)
from tests.reliability.kill_tools import N_KILLS, _kill_group, state_problems

pytestmark = pytest.mark.usefixtures("one_thread")


# ============================================================================ Dask worker killed
def run_dask_worker_kill(work: Path, base: Path, *, seed: int = 0) -> SimpleNamespace:
    """``run_distributed`` on a LocalCluster of 2 worker processes (1 thread each); as soon
    as a worker is executing a shard task (after at least one shard is done), that worker
    process is killed with SIGKILL. The nanny restarts it, the scheduler reschedules the
    task; the finished cache must equal the reference."""
    work.mkdir(parents=True, exist_ok=True)
    from distributed import Client, LocalCluster

    from pipeline.extract.dask import run_distributed
    corpus, ref = fault_corpus(base)
    cache = work / "dask.zarr"
    rng = np.random.default_rng(seed)
    killed: dict = {}
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                      host="127.0.0.1") as cluster, Client(cluster) as client:
        stop = threading.Event()

        def killer() -> None:
            delay = float(rng.uniform(0.0, 0.3))
            while not stop.is_set():
                if _done(cache) >= 1:
                    busy = {w: ks for w, ks in client.processing().items()
                            if any("shard" in str(k) for k in ks)}
                    if busy:
                        time.sleep(delay)
                        pids = client.run(os.getpid)
                        addr = sorted(busy)[0]
                        if addr in pids:
                            os.kill(pids[addr], signal.SIGKILL)
                            killed.update(worker=addr, pid=pids[addr], done_at_kill=_done(cache),
                                          tasks=[str(k) for k in busy[addr]])
                            return
                time.sleep(0.02)
        t = threading.Thread(target=killer, daemon=True)
        t.start()
        try:
            summary = run_distributed(corpus.manifest, cache, extract_config(1, num_workers=0), client=client,
                                      progress=False, torch_threads=1, log=lambda m: None)
        finally:
            stop.set()
            t.join(5)
    diffs = compare_caches(ref, cache)
    return SimpleNamespace(killed=killed, summary=summary, diffs=diffs, cache=cache,
                           problems=state_problems(cache), lost=lost_clips(ref, cache))


def test_dask_worker_killed_mid_shard(tmp_path, base):
    pytest.importorskip("distributed")
    r = run_dask_worker_kill(tmp_path, base)
    assert r.killed, "no worker was killed (the run finished first)"
    assert r.diffs == [] and r.problems == [] and r.lost == 0
    assert r.summary.fallback_shards == []        # a single death is a plain retry, not a poison shard


# ============================================================================ checkpoints
def _params(head, i: int) -> None:
    import torch
    with torch.no_grad():
        for j, p in enumerate(head.parameters()):
            p.fill_(i + j / 1000)


def _save_forever(path: str, ready) -> None:
    """Child process: save the head to ``path`` again and again, version i = params filled
    with ``i + j/1000`` and meta ``{"i": i}``."""
    import torch
    torch.set_num_threads(1)
    from fusion import build_head, save_head
    head = build_head("mlp", 256, 512)
    i = 1
    ready.set()
    while True:
        i += 1
        _params(head, i)
        save_head(path, head, {"i": i})


def run_checkpoint_kills(work: Path, *, n_kills: int = N_KILLS, seed: int = 0) -> SimpleNamespace:
    """kill -9 a process that keeps rewriting one head checkpoint, ``n_kills`` times at
    seeded random moments; after each kill ``load_head`` must give one whole version
    (weights and meta of the same save). Also counts temp files left beside it."""
    work.mkdir(parents=True, exist_ok=True)
    from fusion import build_head, load_head, save_head
    path = work / "head.pt"
    head = build_head("mlp", 256, 512)
    _params(head, 1)
    save_head(path, head, {"i": 1})
    rng = np.random.default_rng(seed)
    ctx = multiprocessing.get_context("fork")
    log, problems = [], []
    for k in range(n_kills):
        ready = ctx.Event()
        p = ctx.Process(target=_save_forever, args=(str(path), ready), daemon=True)
        p.start()
        ready.wait(60)
        time.sleep(float(rng.uniform(0.05, 0.5)))
        os.kill(p.pid, signal.SIGKILL)
        p.join()
        try:
            loaded, meta = load_head(path)
            i = meta["i"]
            want = [i + j / 1000 for j in range(len(list(loaded.parameters())))]
            got = [float(q.detach().flatten()[0]) for q in loaded.parameters()]
            whole = bool(np.allclose(got, want)) and all(bool((q == q.flatten()[0]).all()) for q in loaded.parameters())
            if not whole:
                problems.append(f"kill {k + 1}: checkpoint {i} mixes versions")
            log.append({"kill": k + 1, "version_loaded": i, "whole": whole})
        except Exception as e:  # noqa: BLE001 - any failure to load is the finding
            problems.append(f"kill {k + 1}: load_head failed: {type(e).__name__}: {e}")
    temps = sorted(x.name for x in work.iterdir() if x.name.startswith(".head.pt."))
    save_head(path, head, {"i": 0})           # one more save, by a live process, sweeps the dead writers' temps
    left = sorted(x.name for x in work.iterdir() if x.name.startswith(".head.pt."))
    return SimpleNamespace(log=log, problems=problems, temps=temps, temps_after_save=left, path=path)


def test_kill9_while_saving_a_head_checkpoint(tmp_path):
    r = run_checkpoint_kills(tmp_path)
    assert r.problems == []
    assert len(r.log) == N_KILLS and all(x["version_loaded"] >= 2 for x in r.log)
    assert r.temps_after_save == [], f"temp files of killed writers survived the next save: {r.temps_after_save}"


def test_a_save_keeps_the_temp_file_of_a_live_writer(tmp_path):
    """The sweep only removes temps whose writer process is gone."""
    from fusion import build_head, save_head
    from pipeline.core.fsio import _temp_stem
    path = tmp_path / "head.pt"
    live = tmp_path / f"{_temp_stem(path)}{os.getppid()}.abc.tmp"    # the parent (pytest's launcher) is alive
    live.write_bytes(b"partial")
    save_head(path, build_head("mlp", 8, 8), {})
    assert live.exists()


def run_train_kill(work: Path, base: Path, *, seed: int = 0) -> SimpleNamespace:
    """``avfuse train --out H`` where H already holds a head, killed with SIGKILL at a seeded
    moment while it loads/trains; H must still load, unchanged."""
    work.mkdir(parents=True, exist_ok=True)
    from fusion import load_head
    from pipeline.core import sha256_file
    corpus, ref = fault_corpus(base)
    out = work / "trained.pt"
    args = ["train", "--cache", str(ref), "--head", "mlp", "--out", str(out), "--quiet", "--device", "cpu"]
    first = avfuse_here(*args, "--epochs", "2")
    sha = sha256_file(out) if out.exists() else None
    rng = np.random.default_rng(seed)
    proc = subprocess.Popen(avfuse_cmd(*args, "--epochs", "100000"), cwd=REPO, env=child_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    time.sleep(float(rng.uniform(4.0, 8.0)))
    alive = proc.poll() is None
    _kill_group(proc)
    head, meta = load_head(out)
    return SimpleNamespace(first=first, alive_at_kill=alive, unchanged=sha256_file(out) == sha, meta=meta)


def test_kill9_during_avfuse_train_keeps_the_previous_checkpoint(tmp_path, base):
    r = run_train_kill(tmp_path, base)
    assert r.first.rc == 0, r.first.stderr[-2000:]
    assert r.alive_at_kill and r.unchanged
