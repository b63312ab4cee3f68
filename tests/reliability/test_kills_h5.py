"""kill -9 of ``avfuse extract`` writing an **HDF5** cache (``C.h5``), then a rerun to the end.

The Zarr series (``test_kills.py``) inspects chunk files; the HDF5 backend stages every
finished shard as ``C.h5.parts/NNNNNN.npz`` + ``.json`` (temp file, fsync, rename) and
``finalize()`` merges the parts into a copy of ``C.h5`` renamed over it. The seeded kill
points here hit each of those stages:

* ``startup``: 0.3-3 s after the start, or when the run takes the lock;
* ``compute``: once 1 more shard is staged, after 0-50 ms;
* ``staging``: as soon as a part temp file (``.NNNNNN.HOST-PID-*.tmp``) appears (inside a shard's write);
* ``finalize``: as soon as the merge copy (``.C.h5.finalize-*``) appears, i.e. while the run
  merges and renames. It is a short window: a run that ends before it is caught counts as
  ``missed`` (reported, not a failure).

After every kill the store must open and its done shards must read; the final run must
equal the uninterrupted (Zarr) reference: same ids, flags, allclose embeddings, the same
failures file; ``avfuse cache verify`` exit 0; no merge copies or part temp files left.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from tests.reliability.badmedia import REPO
from tests.reliability.harness import (avfuse_cmd, avfuse_here, child_env, compare_caches, fault_corpus,
                                       fault_flags, lost_clips)
from tests.reliability.test_kills import _kill_group, _lock_pid, state_problems


def _parts(cache: Path) -> Path:
    return cache.with_name(cache.name + ".parts")


def staged(cache: Path) -> int:
    """Shards staged as done parts right now (their marker ``NNNNNN.json`` exists)."""
    try:
        return sum(1 for x in os.listdir(_parts(cache)) if x.endswith(".json") and x[:6].isdigit())
    except FileNotFoundError:
        return 0


def part_temp(cache: Path, pid: int) -> bool:
    """Whether process ``pid`` is writing a part: ``.NNNNNN.HOST-PID-*.tmp`` exists."""
    try:
        return any(x.startswith(".") and f"-{pid}-" in x and x.endswith(".tmp") for x in os.listdir(_parts(cache)))
    except FileNotFoundError:
        return False


def finalize_copy(cache: Path, pid: int) -> bool:
    """Whether process ``pid`` is merging: its copy ``.C.h5.finalize-PID-*`` exists (a copy
    left by an earlier killed run has another pid)."""
    return any(x.startswith(f".{cache.name}.finalize-{pid}-") for x in os.listdir(cache.parent))


def h5_kill_plan(seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    plan = ([{"mode": "startup", "delay": float(rng.uniform(0.3, 3.0))}]
            + [{"mode": "compute", "delay": float(rng.uniform(0.0, 0.05))} for _ in range(3)]
            + [{"mode": "staging"} for _ in range(2)])
    plan = [plan[i] for i in rng.permutation(len(plan))]
    return plan + [{"mode": "finalize"}, {"mode": "finalize"}]


def run_h5_kill_series(work: Path, base: Path, *, seed: int = 0, timeout: float = 300) -> SimpleNamespace:
    work.mkdir(parents=True, exist_ok=True)
    corpus, ref = fault_corpus(base)
    cache = work / "killed.h5"
    cmd = avfuse_cmd("extract", "-m", str(corpus.manifest), "-c", str(cache), *fault_flags())
    log, problems = [], []
    for i, point in enumerate(h5_kill_plan(seed)):
        before = staged(cache)
        proc = subprocess.Popen(cmd, cwd=REPO, env=child_env(), stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, start_new_session=True)
        t0 = time.time()
        try:
            alive = lambda: proc.poll() is None and time.time() - t0 < timeout  # noqa: E731
            mode = point["mode"]
            if mode == "startup":
                while alive() and time.time() < t0 + point["delay"] and _lock_pid(cache) != proc.pid:
                    time.sleep(0.005)
            elif mode == "compute":
                while alive() and staged(cache) < before + 1:
                    time.sleep(0.005)
                deadline = time.time() + point["delay"]
                while alive() and time.time() < deadline:
                    time.sleep(0.002)
            elif mode == "staging":
                while alive() and not part_temp(cache, proc.pid):
                    time.sleep(0.0005)
            else:
                while alive() and not finalize_copy(cache, proc.pid):
                    time.sleep(0.0005)
            if proc.poll() is not None:
                if mode == "finalize" and proc.returncode == 0:
                    log.append({"kill": i + 1, **point, "hit": False, "staged": staged(cache)})
                    continue
                problems.append(f"kill {i + 1} ({mode}): the run ended (rc {proc.returncode}) before the kill "
                                f"point: {proc.stderr.read().decode()[-800:]}")
                break
            _kill_group(proc, 0.0)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            proc.stderr.close()
        log.append({"kill": i + 1, **point, "hit": True, "seconds_after_start": round(time.time() - t0, 2),
                    "staged_before": before, "staged_after": staged(cache)})
        for p in state_problems(cache):
            problems.append(f"kill {i + 1} ({point['mode']}): {p}")
    final = avfuse_here(*cmd[3:])
    diffs = compare_caches(ref, cache) if final.rc == 0 else [f"final run failed: {final.stderr[-2000:]}"]
    verify = avfuse_here("cache", "verify", str(cache), "--quiet")
    leftovers = sorted(x for x in os.listdir(cache.parent) if x.startswith(f".{cache.name}"))
    if _parts(cache).exists():
        leftovers += sorted(f"{_parts(cache).name}/{x}" for x in os.listdir(_parts(cache)) if x.endswith(".tmp"))
    return SimpleNamespace(log=log, final=final, diffs=diffs, verify=verify, problems=problems,
                           leftovers=leftovers, lost=lost_clips(ref, cache), cache=cache)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return tmp_path_factory.getbasetemp() / "reliability-toy"


def test_kill9_hdf5_extract_then_rerun_equals_uninterrupted(tmp_path, base):
    r = run_h5_kill_series(tmp_path, base)
    assert r.problems == []
    assert r.final.rc == 0, r.final.stderr[-2000:]
    assert r.diffs == [] and r.lost == 0
    assert r.verify.rc == 0 and r.verify.stdout.startswith("OK"), r.verify.stdout + r.verify.stderr
    assert r.leftovers == [], r.leftovers
    hit = {k["mode"] for k in r.log if k["hit"]}
    assert {"startup", "compute", "staging"} <= hit, r.log
    # the 7th run computes the remaining shards and is killed in its merge (14 shards staged)
    assert r.log[6]["hit"] and r.log[6]["staged_after"] == 14, r.log
