"""A full disk while ``avfuse extract`` writes the cache, and a damaged store.

Full disk, two ways (both through the real CLI in a subprocess):
* a 200 KiB tmpfs holding the cache (needs root and ``mount``; skipped otherwise): the
  store fills up after a few shards -> ENOSPC;
* a file-size limit (``RLIMIT_FSIZE`` soft limit 0, ``SIGXFSZ`` ignored) set inside the
  extract process once 2 shards are done -> every further write fails with EFBIG.
Expected: exit status != 0 with one ``avfuse: error:`` line and no traceback; the shards
done before stay valid (``verify`` finds nothing but shards not done); a rerun with space
completes a cache equal to the uninterrupted reference.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.reliability.harness import (
    avfuse_cmd,
    avfuse_here,
    compare_caches,
    fault_corpus,
    fault_flags,
    one_line_error,
    run_avfuse,
)
from tests.reliability.kill_tools import state_problems

TMPFS_SIZE = "200k"


# ============================================================================ full disk
@contextlib.contextmanager
def small_filesystem(path: Path, size: str = TMPFS_SIZE):
    """Mount a tmpfs of ``size`` at ``path``; yields a ``grow(new_size)`` function, or None
    when mounting is not allowed here. Unmounted at exit."""
    path.mkdir(parents=True, exist_ok=True)
    ok = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                        capture_output=True).returncode == 0 if hasattr(os, "geteuid") and os.geteuid() == 0 else False

    def grow(new_size: str) -> None:
        subprocess.run(["mount", "-o", f"remount,size={new_size}", str(path)], check=True, capture_output=True)
    try:
        yield grow if ok else None
    finally:
        if ok:
            subprocess.run(["umount", "-l", str(path)], capture_output=True)


_FSIZE_WRAPPER = r"""
import os, resource, signal, sys, threading, time
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)      # writes past the limit raise EFBIG instead
markers, after = os.path.join(sys.argv[1], "_avfuse", "markers", "c"), int(sys.argv[2])
def watch():
    while True:
        try:
            n = sum(1 for x in os.listdir(markers) if x.isdigit())
        except FileNotFoundError:
            n = 0
        if n >= after:
            resource.setrlimit(resource.RLIMIT_FSIZE, (0, resource.RLIM_INFINITY))
            return
        time.sleep(0.002)
threading.Thread(target=watch, daemon=True).start()
from pipeline.cli.main import main
main(sys.argv[3:])
"""


def _done_shards(cache: Path) -> int:
    from pipeline.cache import open_cache
    from pipeline.core import CacheError
    try:
        with open_cache(cache) as c:
            return len(c.done_shards())
    except CacheError:
        return 0


def run_full_disk(work: Path, base: Path, method: str) -> SimpleNamespace | None:
    """Fill the disk under a running extract (``method`` "tmpfs" or "fsize"), check the
    state, then rerun with space. None when ``method`` is "tmpfs" and mounting is refused."""
    work.mkdir(parents=True, exist_ok=True)
    corpus, ref = fault_corpus(base)
    extract = ["extract", "-m", str(corpus.manifest)]
    with (small_filesystem(work / "small") if method == "tmpfs" else contextlib.nullcontext("x")) as grow:
        if grow is None:
            return None
        cache = (work / "small" if method == "tmpfs" else work) / "full.zarr"
        args = [*extract, "-c", str(cache), *fault_flags()]
        if method == "tmpfs":
            full = run_avfuse(*args)
        else:
            full = run_avfuse(cmd=[avfuse_cmd()[0], "-c", _FSIZE_WRAPPER, str(cache), "2", *args])
        done = _done_shards(cache)
        problems = state_problems(cache)
        lock_left = cache.with_name(cache.name + ".lock").exists()
        if method == "tmpfs":
            grow("64m")
        rerun = avfuse_here(*args)
        diffs = compare_caches(ref, cache) if rerun.rc == 0 else [f"rerun failed: {rerun.stderr[-1500:]}"]
        verify = avfuse_here("cache", "verify", str(cache), "--quiet")
    return SimpleNamespace(method=method, full=full, done_before_error=done, problems=problems,
                           lock_left=lock_left, rerun=rerun, diffs=diffs, verify=verify,
                           error_line=next((x for x in full.stderr.splitlines() if x.startswith("avfuse: error:")),
                                           full.stderr.strip().splitlines()[-1] if full.stderr.strip() else ""))


@pytest.fixture(scope="module", params=["tmpfs", "fsize"])
def full_disk(request, tmp_path_factory, base):
    r = run_full_disk(tmp_path_factory.mktemp(f"full_{request.param}"), base, request.param)
    if r is None:
        pytest.skip("cannot mount a tmpfs here (needs root); the fsize variant covers this")
    return r


def test_full_disk_keeps_done_shards_and_resumes(full_disk):
    r = full_disk
    assert r.full.rc != 0
    assert r.done_before_error >= 1, "the disk must fill after some shards were done"
    assert r.problems == []                 # done shards verify and read; the half-written one is pending
    assert not r.lock_left                  # the lock is released on the way out
    assert r.rerun.rc == 0, r.rerun.stderr[-1500:]
    assert r.diffs == [] and r.verify.rc == 0


def test_full_disk_is_one_clear_error(full_disk):
    """Regression test (found by this suite, fixed in pipeline/cache_writer.py
    ``CacheWriter.write_shard``): the OSError (ENOSPC / EFBIG) of the Zarr store escaped as
    a Python traceback (exit 1); it must be one ``CacheError`` line naming the shard and the
    cause, with a hint, exit 2."""
    assert one_line_error(full_disk.full) is None
    assert re.search(r"space|too large|EFBIG|ENOSPC", full_disk.error_line, re.I), full_disk.error_line
