"""Damage inside a finished **HDF5** cache (``C.h5``), found and repaired.

The Zarr damage scenario (``test_disk_and_damage.py``) deletes and edits chunk files; an
HDF5 cache is one file, so here the bytes of shards are changed in place, under h5py's
feet (the data is stored uncompressed, so nothing but avfuse's per-shard checksums can
notice), and one done marker is overwritten with something that is not JSON:

* flipped bytes in shard 3's chunk of ``face/frames``;
* flipped bytes in shard 5's chunk of ``audio/segments``;
* shard 7's marker replaced by ``"{not json"``.

``avfuse cache verify`` must exit 1 naming each shard, reading those rows must raise a
``CacheError`` naming the shard, and a plain ``avfuse extract`` rerun must recompute the
three shards and give the uninterrupted reference back.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.reliability.harness import avfuse_here, compare_caches, fault_corpus, fault_flags
from tests.reliability.test_disk_and_damage import assert_each_damage_named, read_errors

DAMAGE = {"flipped bytes (face/frames)": ("face/frames", 3), "flipped bytes (audio/segments)": ("audio/segments", 5),
          "marker not JSON": (None, 7)}


def damage_h5(path: Path) -> dict[str, int]:
    """Apply ``DAMAGE`` to the finished cache at ``path`` (no staged parts left); kind -> shard."""
    import h5py

    from pipeline.cache import open_cache
    with open_cache(path) as c:
        ss = c.shard_size
    offsets = {}
    with h5py.File(path, "r") as f:
        for kind, (name, k) in DAMAGE.items():
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
        f["_avfuse/markers"][DAMAGE["marker not JSON"][1]] = "{not json"
    return {kind: k for kind, (_, k) in DAMAGE.items()}


def _copy(ref: Path, dst: Path) -> Path:
    import shutil
    shutil.copyfile(ref, dst)
    shutil.copyfile(ref.with_name(ref.name + ".failures.jsonl"), dst.with_name(dst.name + ".failures.jsonl"))
    return dst


def run_damage_h5(work: Path, base: Path) -> SimpleNamespace:
    work.mkdir(parents=True, exist_ok=True)
    corpus, ref = fault_corpus(base, ".h5")
    cache = _copy(ref, work / "damaged.h5")
    shards = damage_h5(cache)
    verify = avfuse_here("cache", "verify", str(cache), "--quiet")
    errors = read_errors(cache, shards)
    rerun = avfuse_here("extract", "-m", str(corpus.manifest), "-c", str(cache), *fault_flags())
    after = avfuse_here("cache", "verify", str(cache), "--quiet")
    return SimpleNamespace(shards=shards, verify=verify, errors=errors, rerun=rerun, after=after,
                           diffs=compare_caches(ref, cache) if rerun.rc == 0 else ["rerun failed"])


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return tmp_path_factory.getbasetemp() / "reliability-toy"


@pytest.fixture(scope="module")
def damaged(tmp_path_factory, base):
    return run_damage_h5(tmp_path_factory.mktemp("damage_h5"), base)


def test_h5_verify_and_reads_name_each_damaged_shard(damaged):
    assert_each_damage_named(damaged)


def test_h5_extract_rerun_recomputes_damaged_shards(damaged):
    assert damaged.rerun.rc == 0, damaged.rerun.stderr[-1500:]
    assert "3 computed now" in damaged.rerun.stderr, damaged.rerun.stderr[-1500:]
    assert damaged.after.rc == 0, damaged.after.stdout[-1500:]
    assert damaged.diffs == []
