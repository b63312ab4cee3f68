"""kill -9 at many points: ``avfuse extract`` (a chain of 10 seeded kills, then a rerun to
the end), a Dask worker killed mid-shard, and ``save_head`` / ``avfuse train`` killed while
writing a checkpoint.

After every kill the store must be consistent (done shards pass ``verify``, nothing
half-read), and the finished cache must equal the uninterrupted reference: same ids in the
same order (none twice, none missing), same flags, allclose embeddings, the same failures
file, ``avfuse cache verify`` exit 0.
"""

from __future__ import annotations

import multiprocessing
import os
import re
import signal
import subprocess
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from tests.reliability.badmedia import (REPO)
from tests.reliability.harness import (avfuse_cmd, avfuse_here, child_env, compare_caches, extract_config,
                                       fault_corpus, fault_flags, lost_clips)

N_KILLS = 10


# ============================================================================ extraction kills
def _done(cache: Path) -> int:
    """Done shards of ``cache`` right now (a marker file is the one resume state)."""
    d = cache / "_avfuse" / "markers" / "c"
    try:
        return sum(1 for x in os.listdir(d) if x.isdigit())
    except FileNotFoundError:
        return 0


def _lock_pid(cache: Path) -> int | None:
    import json
    try:
        return int(json.loads(cache.with_name(cache.name + ".lock").read_text())["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def half_written(cache: Path) -> list[int]:
    """Not-done shards that already have some chunk files (a kill between the data and the
    marker): they must be recomputed, never read."""
    if not (cache / "_avfuse").is_dir():
        return []
    done = {int(x) for x in os.listdir(cache / "_avfuse" / "markers" / "c")} \
        if (cache / "_avfuse" / "markers" / "c").is_dir() else set()
    found = set()
    for arr in ("audio/clip", "audio/segments", "face/frames", "face/clip", "has_audio", "duration"):
        c = cache / arr / "c"
        if c.is_dir():
            found |= {int(x) for x in os.listdir(c) if x.isdigit()}
    return sorted(found - done)


def writing_since(cache: Path, t: float) -> list[int]:
    """Not-done shards whose 1-D chunk files (``has_audio``, ``has_face``, ``duration``) were
    written at or after time ``t``: a shard caught between its data and its marker."""
    d = cache / "_avfuse" / "markers" / "c"
    done = {int(x) for x in os.listdir(d) if x.isdigit()} if d.is_dir() else set()
    out = set()
    for arr in ("has_audio", "has_face", "duration"):
        c = cache / arr / "c"
        try:
            for x in os.listdir(c):
                if x.isdigit() and int(x) not in done and os.stat(c / x).st_mtime >= t:
                    out.add(int(x))
        except (FileNotFoundError, NotADirectoryError):
            continue
    return sorted(out)


def state_problems(cache: Path) -> list[str]:
    """Inconsistencies of a (possibly unfinished) cache: anything ``verify`` reports besides
    shards not done, and done shards that cannot be read."""
    from pipeline.cache import open_cache
    from pipeline.errors import CacheError
    if not cache.exists():
        return []
    try:
        with open_cache(cache) as c:
            probs = [p for p in c.verify() if not re.match(r"\d+ of \d+ shards not done", p)]
            for k in sorted(c.done_shards()):
                for n in c.names:
                    c.read_shard(n, k)
            if len(set(c.ids.tolist())) != c.n_rows:
                probs.append("duplicate ids")
            return probs
    except CacheError as e:
        return [f"unreadable after the kill: {e}"]


def _kill_group(proc: subprocess.Popen, wait_s: float = 0.0) -> tuple[int, float, int]:
    """SIGKILL the main process, then wait up to ``wait_s`` for its child processes (decode
    workers) to exit by themselves. Returns (children still alive, seconds waited, children
    alive at the kill); those left are then killed with the process group (they are ours:
    started in its session)."""
    before = len([p for p in _group_members(proc.pid) if p != proc.pid])
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    t0 = time.time()
    left = _group_members(proc.pid)
    while left and time.time() - t0 < wait_s:
        time.sleep(0.1)
        left = _group_members(proc.pid)
    if left:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return len(left), time.time() - t0, before


def _group_members(pgid: int) -> list[int]:
    """Live processes of process group ``pgid`` (zombies excluded)."""
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            stat = Path(f"/proc/{d}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[2]) == pgid and fields[0] != "Z":
            out.append(int(d))
    return out


#: how long decode workers may take to notice that the killed main process is gone
#: (torch's DataLoader worker watchdog polls every 5 s)
ORPHAN_GRACE_S = 12.0


def kill_plan(n: int, seed: int) -> list[dict]:
    """Seeded kill points, 10 by default:

    * 2 ``startup``: a random 0.3-3 s after the start, or as soon as the run takes the cache
      lock if that comes first (imports, model loading, store creation);
    * 4 ``compute``: once ``more`` (0 or 1) further shards are done, after 0-50 ms (inside
      the decoding/backbones of the next shard);
    * 4 ``mid_write``: once ``more`` further shards are done, as soon as the next shard has
      chunk files but no done marker yet (between its data and its marker).

    ``more`` sums to at most 4, so a series advances at most ~12 of the 14 shards and every
    kill hits a live run with work left, on any CPU."""
    rng = np.random.default_rng(seed)
    more = [1] * 4 + [0] * (n - 6)
    rng.shuffle(more)
    plan = [{"mode": "startup", "delay": float(rng.uniform(0.3, 3.0))} for _ in range(2)]
    plan += [{"mode": "compute" if j < (n - 2) // 2 else "mid_write", "more": more[j],
              "delay": float(rng.uniform(0.0, 0.05))} for j in range(n - 2)]
    return [plan[i] for i in rng.permutation(n)]


def run_kill_series(work: Path, base: Path, *, n_kills: int = N_KILLS, seed: int = 0,
                    timeout: float = 300) -> SimpleNamespace:
    """Start ``python -m pipeline extract`` on the fault corpus, kill -9 it at each point of
    ``kill_plan``, restarting it each time, then let a last run finish. Returns the kill log
    (one dict per kill), the final run, its differences from the reference, the
    ``avfuse cache verify`` exit status and the problems seen after any kill."""
    work.mkdir(parents=True, exist_ok=True)
    corpus, ref = fault_corpus(base)
    cache = work / "killed.zarr"
    cmd = avfuse_cmd("extract", "-m", str(corpus.manifest), "-c", str(cache), *fault_flags())
    log, problems = [], []
    t_start = time.time()
    for i, point in enumerate(kill_plan(n_kills, seed)):
        before = _done(cache)
        proc = subprocess.Popen(cmd, cwd=REPO, env=child_env(), stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, start_new_session=True)
        t0 = time.time()
        try:
            alive = lambda: proc.poll() is None and time.time() - t0 < timeout  # noqa: E731
            if point["mode"] == "startup":
                deadline = t0 + point["delay"]
                while alive() and time.time() < deadline and _lock_pid(cache) != proc.pid:
                    time.sleep(0.005)
            else:
                while alive() and _lock_pid(cache) != proc.pid:
                    time.sleep(0.01)
                while alive() and _done(cache) < before + point["more"]:
                    time.sleep(0.005)
                if point["mode"] == "mid_write":
                    while alive() and not writing_since(cache, t0):
                        time.sleep(0.001)
                else:
                    deadline = time.time() + point["delay"]
                    while alive() and time.time() < deadline:
                        time.sleep(0.002)
            if proc.poll() is not None:
                problems.append(f"kill {i}: the run ended (rc {proc.returncode}) before the kill point: "
                                f"{proc.stderr.read().decode()[-800:]}")
                break
            # wait for the decode workers once (the first kill after the lock), not every time
            wait = ORPHAN_GRACE_S if point["mode"] != "startup" and not any(
                x["mode"] != "startup" for x in log) else 0.0
            orphans, orphan_s, workers = _kill_group(proc, wait)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            proc.stderr.close()
        after = _done(cache)
        rec = {"kill": i + 1, **point, "seconds_after_start": round(time.time() - t0, 2),
               "done_before": before, "done_after": after, "half_written": half_written(cache),
               "locked_by_dead_pid": _lock_pid(cache) == proc.pid, "children_left": orphans,
               "children_waited_s": round(orphan_s, 2), "workers_at_kill": workers}
        for p in state_problems(cache):
            problems.append(f"kill {i + 1}: {p}")
        log.append(rec)
    final = avfuse_here(*cmd[3:])          # the same command, run to the end (in this process)
    diffs = compare_caches(ref, cache) if final.rc == 0 else [f"final run failed: {final.stderr[-2000:]}"]
    verify = avfuse_here("cache", "verify", str(cache), "--quiet")
    leftovers = sorted(p.name for p in cache.parent.iterdir()
                       if p.name.startswith(f".{cache.name}") and ("creating" in p.name or "removing" in p.name))
    return SimpleNamespace(log=log, final=final, diffs=diffs, verify=verify, problems=problems,
                           leftovers=leftovers, seconds=time.time() - t_start, cache=cache, ref=ref,
                           lost=lost_clips(ref, cache))


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return tmp_path_factory.getbasetemp() / "reliability-toy"


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    import torch
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def series(tmp_path_factory, base):
    return run_kill_series(tmp_path_factory.mktemp("kills"), base)


def test_kill9_ten_times_then_rerun_equals_uninterrupted(series):
    r = series
    assert r.problems == []                       # after every kill: done shards verify and read
    assert len(r.log) == N_KILLS
    assert r.final.rc == 0, r.final.stderr[-2000:]
    assert r.diffs == [] and r.lost == 0          # same ids/rows/flags/embeddings/failures file
    assert r.verify.rc == 0 and r.verify.stdout.startswith("OK"), r.verify.stdout + r.verify.stderr
    assert r.leftovers == []                      # no half-created store left beside it
    # the kills really hit different stages: start-up, and mid-run after some shards
    assert {k["mode"] for k in r.log} == {"startup", "compute", "mid_write"}
    assert all(k["done_after"] < 14 for k in r.log) and r.log[-1]["done_after"] > 0
    # the stale lock of a killed run is taken over by the next one
    assert "stale" in r.final.stderr or not r.log[-1]["locked_by_dead_pid"]


def test_decode_workers_exit_when_extract_is_killed(series):
    """Regression test (found by this suite, fixed in pipeline/extract_shard.py
    ``_worker_init`` with PR_SET_PDEATHSIG): after kill -9 of ``avfuse extract`` its
    DataLoader decode worker lingered as an orphan (blocked at exit flushing decoded clips
    into a queue nobody reads; seen alive > 60 s), a full Python + torch process each."""
    first = next(k for k in series.log if k["mode"] != "startup")
    assert first["workers_at_kill"] >= 1, "the kill must hit a run with decode workers"
    assert first["children_left"] == 0, f"{first['children_left']} decode worker(s) still alive " \
                                        f"{ORPHAN_GRACE_S:.0f} s after the kill"


# ============================================================================ Dask worker killed
def run_dask_worker_kill(work: Path, base: Path, *, seed: int = 0) -> SimpleNamespace:
    """``run_distributed`` on a LocalCluster of 2 worker processes (1 thread each); as soon
    as a worker is executing a shard task (after at least one shard is done), that worker
    process is killed with SIGKILL. The nanny restarts it, the scheduler reschedules the
    task; the finished cache must equal the reference."""
    work.mkdir(parents=True, exist_ok=True)
    from distributed import Client, LocalCluster

    from pipeline.distributed import run_distributed
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
    from fusion.registry import build_head, save_head
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
    from fusion.registry import build_head, load_head, save_head
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
    from fusion.registry import build_head, save_head
    from pipeline.config import _temp_stem
    path = tmp_path / "head.pt"
    live = tmp_path / f"{_temp_stem(path)}{os.getppid()}.abc.tmp"    # the parent (pytest's launcher) is alive
    live.write_bytes(b"partial")
    save_head(path, build_head("mlp", 8, 8), {})
    assert live.exists()


def run_train_kill(work: Path, base: Path, *, seed: int = 0) -> SimpleNamespace:
    """``avfuse train --out H`` where H already holds a head, killed with SIGKILL at a seeded
    moment while it loads/trains; H must still load, unchanged."""
    work.mkdir(parents=True, exist_ok=True)
    from fusion.registry import load_head
    from pipeline.config import sha256_file
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
