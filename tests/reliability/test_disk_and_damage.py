"""A full disk while ``avfuse extract`` writes the cache, and a damaged store.

Full disk, two ways (both through the real CLI in a subprocess):
* a 200 KiB tmpfs holding the cache (needs root and ``mount``; skipped otherwise): the
  store fills up after a few shards -> ENOSPC;
* a file-size limit (``RLIMIT_FSIZE`` soft limit 0, ``SIGXFSZ`` ignored) set inside the
  extract process once 2 shards are done -> every further write fails with EFBIG.
Expected: exit status != 0 with one ``avfuse: error:`` line and no traceback; the shards
done before stay valid (``verify`` finds nothing but shards not done); a rerun with space
completes a cache equal to the uninterrupted reference.

Damaged store (copies of the reference cache): a deleted chunk file, a chunk with flipped
bytes and a done marker that is not JSON any more: ``avfuse cache verify`` reports each
(exit 1), reading the rows raises ``CacheError`` naming the shard, and a rerun of
``avfuse extract`` recomputes them; edited attributes (provenance) are reported by verify
and make ``avfuse extract`` refuse the store (one-line error, exit 2).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from tests.reliability.harness import (avfuse_cmd, avfuse_here, compare_caches, fault_corpus, fault_flags,
                                       one_line_error, run_avfuse)
from tests.reliability.test_kills import state_problems

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
from pipeline.cli import main
main(sys.argv[3:])
"""


def _done_shards(cache: Path) -> int:
    from pipeline.cache import open_cache
    from pipeline.errors import CacheError
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


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return tmp_path_factory.getbasetemp() / "reliability-toy"


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


# ============================================================================ damage
def _chunk(cache: Path, name: str, k: int) -> Path:
    ndim = {"audio/clip": 2, "audio/segments": 3, "face/frames": 3, "face/clip": 2}.get(name, 1)
    return cache.joinpath(name, "c", str(k), *(["0"] * (ndim - 1)))


def damage(cache: Path) -> dict[str, int]:
    """Damage three shards of a complete cache in three ways; returns kind -> shard."""
    _chunk(cache, "face/frames", 3).unlink()                       # a deleted chunk
    p = _chunk(cache, "audio/segments", 5)                         # flipped bytes mid-chunk
    b = bytearray(p.read_bytes())
    mid = len(b) // 2
    b[mid:mid + 16] = bytes(x ^ 0xFF for x in b[mid:mid + 16])
    p.write_bytes(bytes(b))
    (cache / "_avfuse" / "markers" / "c" / "7").write_bytes(b"\x00not json")   # a clobbered marker
    return {"deleted chunk (face/frames)": 3, "flipped bytes (audio/segments)": 5, "marker not JSON": 7}


def _copy(ref: Path, dst: Path) -> Path:
    shutil.copytree(ref, dst)
    shutil.copyfile(ref.with_name(ref.name + ".failures.jsonl"), dst.with_name(dst.name + ".failures.jsonl"))
    return dst


def read_errors(cache: Path, shards: dict[str, int]) -> dict[str, str]:
    """kind -> the error of reading that shard's rows of every array (``to_numpy``)."""
    from pipeline.cache import open_cache
    from pipeline.errors import CacheError
    out = {}
    with open_cache(cache) as c:
        for kind, k in shards.items():
            try:
                for n in c.names:
                    c.to_numpy(n, rows=[k])
                out[kind] = "read without error"
            except CacheError as e:
                out[kind] = str(e)
    return out


def run_damage(work: Path, base: Path) -> SimpleNamespace:
    """Damage a copy of the reference; verify, read, rerun extract (a), and separately the
    documented repair: ``verify --invalidate-damaged`` then extract (b)."""
    work.mkdir(parents=True, exist_ok=True)
    corpus, ref = fault_corpus(base)
    a = _copy(ref, work / "damaged.zarr")
    shards = damage(a)
    verify = avfuse_here("cache", "verify", str(a), "--quiet")
    errors = read_errors(a, shards)
    rerun = avfuse_here("extract", "-m", str(corpus.manifest), "-c", str(a), *fault_flags())
    after_rerun = avfuse_here("cache", "verify", str(a), "--quiet")
    b = _copy(ref, work / "repaired.zarr")
    damage(b)
    invalidate = avfuse_here("cache", "verify", str(b), "--quiet", "--invalidate-damaged")
    repair = avfuse_here("extract", "-m", str(corpus.manifest), "-c", str(b), *fault_flags())
    return SimpleNamespace(shards=shards, verify=verify, errors=errors, rerun=rerun, after_rerun=after_rerun,
                           diffs_rerun=compare_caches(ref, a) if rerun.rc == 0 else ["rerun failed"],
                           invalidate=invalidate, repair=repair,
                           diffs_repair=compare_caches(ref, b) if repair.rc == 0 else ["repair failed"])


@pytest.fixture(scope="module")
def damaged(tmp_path_factory, base):
    return run_damage(tmp_path_factory.mktemp("damage"), base)


def assert_each_damage_named(d) -> None:
    """``verify`` exits 1 and names every damaged shard; reading its rows raises an error naming it
    (shared by the Zarr and the HDF5 damage scenarios)."""
    assert d.verify.rc == 1, d.verify.stdout + d.verify.stderr
    for kind, k in d.shards.items():
        assert re.search(rf"shard {k}\b", d.verify.stdout), (kind, d.verify.stdout)
        assert re.search(rf"shard {k}\b", d.errors[kind]), (kind, d.errors[kind])


def test_verify_and_reads_name_each_damaged_shard(damaged):
    assert_each_damage_named(damaged)


def test_invalidate_damaged_then_extract_repairs(damaged):
    assert damaged.invalidate.rc == 1 and "invalidated 3 damaged shard(s)" in damaged.invalidate.stderr
    assert "3 computed now" in damaged.repair.stderr, damaged.repair.stderr[-1500:]
    assert damaged.diffs_repair == []


def test_extract_rerun_recomputes_damaged_shards(damaged):
    """Regression test (found by this suite, fixed in pipeline/extract.py): resume took every
    shard with a marker as done, so a rerun left deleted/corrupted chunks and a clobbered
    marker in place; ``avfuse extract`` must find the damaged done shards and recompute them."""
    assert damaged.rerun.rc == 0, damaged.rerun.stderr[-1500:]
    assert damaged.after_rerun.rc == 0, damaged.after_rerun.stdout[-1500:]
    assert damaged.diffs_rerun == []


def run_edited_attributes(work: Path, base: Path) -> SimpleNamespace:
    """Edit the provenance in zarr.json (as a user "fixing" a path would): verify reports the
    fingerprint mismatch, reads still work (rows are intact), extract refuses the store."""
    work.mkdir(parents=True, exist_ok=True)
    corpus, ref = fault_corpus(base)
    c = _copy(ref, work / "edited.zarr")
    meta = json.loads((c / "zarr.json").read_text())
    meta["attributes"]["avfuse"]["provenance"]["config"]["segments"] = 8
    (c / "zarr.json").write_text(json.dumps(meta))
    verify = avfuse_here("cache", "verify", str(c), "--quiet")
    rerun = avfuse_here("extract", "-m", str(corpus.manifest), "-c", str(c), *fault_flags())
    from pipeline.cache import open_cache
    with open_cache(c) as cc:
        readable = bool(np.isfinite(cc.to_numpy("audio/clip")).all())
    return SimpleNamespace(verify=verify, rerun=rerun, readable=readable)


def test_edited_attributes_are_reported_and_refused(tmp_path, base):
    r = run_edited_attributes(tmp_path, base)
    assert r.verify.rc == 1 and "fingerprint mismatch" in r.verify.stdout
    assert r.rerun.rc == 2 and one_line_error(r.rerun) is None
    assert "segments" in r.rerun.stderr and "--overwrite" in r.rerun.stderr
    assert r.readable
