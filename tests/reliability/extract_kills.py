"""kill -9 of ``avfuse extract`` at seeded points, then a rerun to the end, for each backend.

Zarr (``run_kill_series``): the probes read chunk files and done markers; 10 kill points
(``kill_plan``): ``startup``, ``compute`` (inside the next shard), ``mid_write`` (between a
shard's chunks and its marker).

HDF5 (``run_h5_kill_series``): the backend stages every finished shard as
``C.h5.parts/NNNNNN.npz`` + ``.json`` (temp file, fsync, rename) and ``finalize()`` merges
the parts into a copy of ``C.h5`` renamed over it. The seeded kill points hit each stage:

* ``startup``: 0.3-3 s after the start, or when the run takes the lock;
* ``compute``: once 1 more shard is staged, after 0-50 ms;
* ``staging``: as soon as a part temp file (``.NNNNNN.HOST-PID-*.tmp``) appears (inside a shard's write);
* ``finalize``: as soon as the merge copy (``.C.h5.finalize-*``) appears, i.e. while the run
  merges and renames. It is a short window: a run that ends before it is caught counts as
  ``missed`` (reported, not a failure).

Both: the first kill that finds decode workers waits up to ``ORPHAN_GRACE_S`` for them to
exit by themselves. ``run_extract_kills(work, base, suffix)`` runs the one of a backend.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from tests.reliability.badmedia import REPO
from tests.reliability.harness import (
    avfuse_cmd,
    avfuse_here,
    child_env,
    compare_caches,
    fault_corpus,
    fault_flags,
    lost_clips,
)
from tests.reliability.kill_tools import N_KILLS, ORPHAN_GRACE_S, _kill_group, _lock_pid, state_problems


def _kill_once(proc, log: list[dict]):
    """Kill the run's process group; wait for its decode workers once, at the first kill that
    finds some (later kills: no wait)."""
    wait = 0.0 if any(x.get("workers_at_kill", 0) for x in log) else ORPHAN_GRACE_S
    return _kill_group(proc, wait)


def _start(cmd: list[str]):
    """The extract run to kill, in its own process group (its decode workers with it)."""
    return subprocess.Popen(cmd, cwd=REPO, env=child_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)


def _reap(proc) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait()
    proc.stderr.close()

def _done(cache: Path) -> int:
    """Done shards of ``cache`` right now (a marker file is the one resume state)."""
    d = cache / "_avfuse" / "markers" / "c"
    try:
        return sum(1 for x in os.listdir(d) if x.isdigit())
    except FileNotFoundError:
        return 0


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
        proc = _start(cmd)
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
            orphans, orphan_s, workers = _kill_once(proc, log)
        finally:
            _reap(proc)
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


# ============================================================================ HDF5
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
        proc = _start(cmd)
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
            orphans, orphan_s, workers = _kill_once(proc, log)
        finally:
            _reap(proc)
        log.append({"kill": i + 1, **point, "hit": True, "seconds_after_start": round(time.time() - t0, 2),
                    "staged_before": before, "staged_after": staged(cache), "children_left": orphans,
                    "children_waited_s": round(orphan_s, 2), "workers_at_kill": workers})
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


def run_extract_kills(work: Path, base: Path, suffix: str = ".zarr", *, seed: int = 0) -> SimpleNamespace:
    """The kill series of the backend of ``suffix`` (``.zarr`` or ``.h5``), with ``suffix`` set on the result."""
    run = run_kill_series if suffix == ".zarr" else run_h5_kill_series
    r = run(work, base, seed=seed)
    r.suffix = suffix
    return r
