"""What one backend does beyond the contract: HDF5 staged parts, Zarr direct chunk reads."""

from __future__ import annotations

import os

import numpy as np

from pipeline.cache import CacheLayout, create_cache, open_cache
from pipeline.cache.testing import LAYOUT, PROV, fill, make_cache, make_rows, shard_data


def test_hdf5_staged_parts_readable_then_merged(tmp_path):
    """HDF5 specifics: shards are readable from their parts before finalize; a deleted
    part is damage; finalize merges into a new .h5 and removes the merged parts."""
    w = create_cache(tmp_path / "c.h5", layout=CacheLayout(**LAYOUT), provenance=PROV, **make_rows())
    for k in range(3):
        arrays, failures = shard_data(w.layout, w.ids.tolist(), k)
        w.write_shard(k, arrays, failures)
    parts = tmp_path / "c.h5.parts"
    assert sorted(p.name for p in parts.glob("0*")) == [f"{k:06d}.{e}" for k in range(3) for e in ("json", "npz")]
    c = open_cache(w.path)
    assert c.is_complete and c.info()["shards_staged_not_merged"] == 3
    before = c.to_numpy("face/frames")
    inode = os.stat(w.path).st_ino
    w.finalize()
    assert not list(parts.glob("0*")) and os.stat(w.path).st_ino != inode
    np.testing.assert_array_equal(open_cache(w.path).to_numpy("face/frames"), before)
    w.invalidate_shard(0)
    arrays, failures = shard_data(w.layout, w.ids.tolist(), 0)
    w.write_shard(0, arrays, failures)
    (parts / "000000.npz").unlink()
    c = open_cache(w.path)
    assert any("shard 0" in p and "missing" in p for p in c.verify())
    assert c.damaged_shards() == [0]


def test_zarr_direct_chunk_reads_equal_zarr(tmp_path):
    """The Zarr backend reads chunks of avfuse-encoded arrays itself: same bytes as zarr."""
    import zarr
    w = make_cache(tmp_path, ".zarr", shard_size=3)  # the last shard is partial (1 row)
    fill(w)
    w.finalize()
    c = open_cache(w.path)
    for name in c.names:
        assert c._backend._direct(name) is not None  # avfuse's own encoding: read directly
        ref = zarr.open_array(str(w.path), path=name, mode="r")[:]
        got = c._backend.read_shards(name, 0, c.n_shards)
        assert got.dtype == ref.dtype and np.array_equal(got, ref)
        np.testing.assert_array_equal(c._backend.read(name, 4, 6), ref[4:6])
        np.testing.assert_array_equal(c._backend.read(name, 9, 10), ref[9:10])
