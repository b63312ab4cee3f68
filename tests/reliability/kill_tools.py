"""Process and store probes shared by the kill scenarios: the pid holding a cache's lock,
what is wrong with a (possibly unfinished) cache, and SIGKILL of a run with its children."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

N_KILLS = 10


def _lock_pid(cache: Path) -> int | None:
    try:
        return int(json.loads(cache.with_name(cache.name + ".lock").read_text())["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def state_problems(cache: Path) -> list[str]:
    """Inconsistencies of a (possibly unfinished) cache: anything ``verify`` reports besides
    shards not done, and done shards that cannot be read."""
    from pipeline.cache import open_cache
    from pipeline.core import CacheError
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
