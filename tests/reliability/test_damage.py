"""A damaged store, in a Zarr and in an HDF5 cache: found, refused, repaired.

Copies of the backend's reference cache, three shards damaged at once:

* Zarr (a folder of chunk files): a deleted chunk file (shard 3 of ``face/frames``), a chunk
  with flipped bytes (shard 5 of ``audio/segments``), a done marker that is not JSON any
  more (shard 7);
* HDF5 (one file): the bytes of shards changed in place, under h5py's feet (the data is
  stored uncompressed, so nothing but avfuse's per-shard checksums can notice): flipped
  bytes in shard 3's chunk of ``face/frames`` and in shard 5's chunk of ``audio/segments``,
  shard 7's marker replaced by ``"{not json"``.

``avfuse cache verify`` reports each (exit 1), reading the rows raises ``CacheError``
naming the shard, a rerun of ``avfuse extract`` recomputes them, and so does the documented
repair (``verify --invalidate-damaged`` then extract). Edited attributes (provenance in
zarr.json) are reported by verify and make ``avfuse extract`` refuse the store (one-line
error, exit 2).
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from pipeline.cache import open_cache
from pipeline.core import CacheError
from tests.reliability.harness import avfuse_here, compare_caches, fault_corpus, fault_flags, one_line_error


def _chunk(cache: Path, name: str, k: int) -> Path:
    ndim = {"audio/clip": 2, "audio/segments": 3, "face/frames": 3, "face/clip": 2}.get(name, 1)
    return cache.joinpath(name, "c", str(k), *(["0"] * (ndim - 1)))


def damage_zarr(cache: Path) -> dict[str, int]:
    """Damage three shards of a complete Zarr cache in three ways; returns kind -> shard."""
    _chunk(cache, "face/frames", 3).unlink()                       # a deleted chunk
    p = _chunk(cache, "audio/segments", 5)                         # flipped bytes mid-chunk
    b = bytearray(p.read_bytes())
    mid = len(b) // 2
    b[mid:mid + 16] = bytes(x ^ 0xFF for x in b[mid:mid + 16])
    p.write_bytes(bytes(b))
    (cache / "_avfuse" / "markers" / "c" / "7").write_bytes(b"\x00not json")   # a clobbered marker
    return {"deleted chunk (face/frames)": 3, "flipped bytes (audio/segments)": 5, "marker not JSON": 7}


H5_DAMAGE = {"flipped bytes (face/frames)": ("face/frames", 3),
             "flipped bytes (audio/segments)": ("audio/segments", 5), "marker not JSON": (None, 7)}


def damage_h5(path: Path) -> dict[str, int]:
    """Apply ``H5_DAMAGE`` to the finished HDF5 cache at ``path`` (no staged parts left); kind -> shard."""
    import h5py

    with open_cache(path) as c:
        ss = c.shard_size
    offsets = {}
    with h5py.File(path, "r") as f:
        for kind, (name, k) in H5_DAMAGE.items():
            if name is not None:
                info = f[name].id.get_chunk_info_by_coord((k * ss,) + (0,) * (f[name].ndim - 1))
                offsets[kind] = (info.byte_offset, info.size)
    with open(path, "r+b") as fh:
        for off, size in offsets.values():
            at = off + size // 2
            fh.seek(at)
            b = fh.read(16)
            fh.seek(at)
            fh.write(bytes(x ^ 0xFF for x in b))
    with h5py.File(path, "r+") as f:
        f["_avfuse/markers"][H5_DAMAGE["marker not JSON"][1]] = "{not json"
    return {kind: k for kind, (_, k) in H5_DAMAGE.items()}


DAMAGE = {".zarr": damage_zarr, ".h5": damage_h5}


def _copy(ref: Path, dst: Path) -> Path:
    if ref.is_dir():
        shutil.copytree(ref, dst)
    else:
        shutil.copyfile(ref, dst)
    shutil.copyfile(ref.with_name(ref.name + ".failures.jsonl"), dst.with_name(dst.name + ".failures.jsonl"))
    return dst


def read_errors(cache: Path, shards: dict[str, int]) -> dict[str, str]:
    """kind -> the error of reading that shard's rows of every array (``to_numpy``)."""
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


def run_damage(work: Path, base: Path, suffix: str = ".zarr") -> SimpleNamespace:
    """Damage a copy of the reference of backend ``suffix``; verify, read, rerun extract (a),
    and separately the documented repair: ``verify --invalidate-damaged`` then extract (b)."""
    work.mkdir(parents=True, exist_ok=True)
    corpus, ref = fault_corpus(base, suffix)
    a = _copy(ref, work / f"damaged{suffix}")
    shards = DAMAGE[suffix](a)
    verify = avfuse_here("cache", "verify", str(a), "--quiet")
    errors = read_errors(a, shards)
    rerun = avfuse_here("extract", "-m", str(corpus.manifest), "-c", str(a), *fault_flags())
    after_rerun = avfuse_here("cache", "verify", str(a), "--quiet")
    b = _copy(ref, work / f"repaired{suffix}")
    DAMAGE[suffix](b)
    invalidate = avfuse_here("cache", "verify", str(b), "--quiet", "--invalidate-damaged")
    repair = avfuse_here("extract", "-m", str(corpus.manifest), "-c", str(b), *fault_flags())
    return SimpleNamespace(suffix=suffix, shards=shards, verify=verify, errors=errors, rerun=rerun,
                           after_rerun=after_rerun,
                           diffs_rerun=compare_caches(ref, a) if rerun.rc == 0 else ["rerun failed"],
                           invalidate=invalidate, repair=repair,
                           diffs_repair=compare_caches(ref, b) if repair.rc == 0 else ["repair failed"])


@pytest.fixture(scope="module", params=[".zarr", ".h5"], ids=["zarr", "hdf5"])
def damaged(request, tmp_path_factory, base):
    return run_damage(tmp_path_factory.mktemp("damage"), base, request.param)


def test_verify_and_reads_name_each_damaged_shard(damaged):
    """``verify`` exits 1 and names every damaged shard; reading its rows raises an error naming it."""
    d = damaged
    assert d.verify.rc == 1, d.verify.stdout + d.verify.stderr
    for kind, k in d.shards.items():
        assert re.search(rf"shard {k}\b", d.verify.stdout), (kind, d.verify.stdout)
        assert re.search(rf"shard {k}\b", d.errors[kind]), (kind, d.errors[kind])


def test_invalidate_damaged_then_extract_repairs(damaged):
    assert damaged.invalidate.rc == 1 and "invalidated 3 damaged shard(s)" in damaged.invalidate.stderr
    assert "3 computed now" in damaged.repair.stderr, damaged.repair.stderr[-1500:]
    assert damaged.diffs_repair == []


def test_extract_rerun_recomputes_damaged_shards(damaged):
    """Regression test (found by this suite, fixed in pipeline/extract.py): resume took every
    shard with a marker as done, so a rerun left deleted/corrupted chunks and a clobbered
    marker in place; ``avfuse extract`` must find the damaged done shards and recompute them."""
    assert damaged.rerun.rc == 0, damaged.rerun.stderr[-1500:]
    assert "3 computed now" in damaged.rerun.stderr, damaged.rerun.stderr[-1500:]
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
    with open_cache(c) as cc:
        readable = bool(np.isfinite(cc.to_numpy("audio/clip")).all())
    return SimpleNamespace(verify=verify, rerun=rerun, readable=readable)


def test_edited_attributes_are_reported_and_refused(tmp_path, base):
    r = run_edited_attributes(tmp_path, base)
    assert r.verify.rc == 1 and "fingerprint mismatch" in r.verify.stdout
    assert r.rerun.rc == 2 and one_line_error(r.rerun) is None
    assert "segments" in r.rerun.stderr and "--overwrite" in r.rerun.stderr
    assert r.readable
