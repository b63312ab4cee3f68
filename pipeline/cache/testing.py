"""The embedding-cache contract as test base classes, the way zarr-python ships
``zarr/testing/store.py`` (``StoreTests``) and every store subclasses it.

* ``ReaderContract``: what every reader of a complete cache gives (ids, speakers, splits,
  names/has, ``to_numpy`` of any rows in the stored or a cast dtype, ``rows`` with
  ``missing="raise"``/``"mask"``, ``split_rows``). ``EmbeddingCache`` (both backends) and the
  in-memory ``CacheView`` pass it.
* ``StoreContract(ReaderContract)``: the write side of a store: create/reopen/resume,
  not-done shards never read, validation, provenance, the writer lock, concurrent writers,
  float16 storage, runs of shards, ``failures.jsonl``, damage found by ``verify``, kill -9
  then resume.

A test module subclasses them (``tests/pipeline/cache/test_contract.py``)::

    class TestZarr(StoreContract):
        suffix = ".zarr"

Imported by tests only: pytest is a dev dependency. ``StoreContract`` lives in
``pipeline.cache.testing_store`` (size); the data and damage helpers are here: a small
standard cache (``N`` rows, ``LAYOUT``, ``PROV``) with deterministic shard contents
(``shard_data``: some rows lack audio or face, some clips failed) and the expected arrays
(``expected``); what a disk, a user or a bad copy can do to a store (``lose_chunk``,
``corrupt_chunk``, ``edit_header``, ``edit_ids``); the writer the kill -9 test runs in a
subprocess (``run_writer`` through ``KILL_SCRIPT``).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from pipeline.cache.layout import CacheLayout
from pipeline.cache.reader import open_cache
from pipeline.cache.writer import CacheWriter, create_cache, open_writer
from pipeline.core.errors import CacheError

N = 10
LAYOUT = dict(audio_dim=6, face_dim=5, segments=3, frames=2, shard_size=4)
PROV = {"avfuse_version": "0.1.0", "manifest_fingerprint": "m" * 16,
        "audio_backbone": {"name": "ge2e_lstm", "weights": "random", "sha256": None, "seed": 0},
        "face_backbone": {"name": "iresnet18", "weights": "random", "sha256": None, "seed": 0},
        "config": {"segments": 3, "frames": 2}}


def make_rows(n: int = N) -> dict:
    return {"ids": [f"id{i % 3:05d}/vid{i:03d}/{i:05d}" for i in range(n)],
            "speakers": [f"id{i % 3:05d}" for i in range(n)],
            "splits": ["test" if i % 4 == 0 else "dev" for i in range(n)]}


def shard_data(layout: CacheLayout, ids: list[str], k: int, seed: int = 0) -> tuple[dict, list]:
    """Deterministic arrays + failures of shard ``k`` (some rows lack audio or face)."""
    ss = layout.shard_size
    rows = np.arange(k * ss, min((k + 1) * ss, len(ids)))
    n = len(rows)
    rng = np.random.default_rng([seed, k])
    ha, hf = rows % 5 != 3, rows % 7 != 2
    da, dv, s, f = layout.audio_dim or 1, layout.face_dim or 1, layout.segments, layout.frames
    seg_valid = np.ones((n, s), bool)
    seg_valid[:, -1] = rows % 2 == 0
    arrays = {
        "audio/clip": rng.normal(size=(n, da)) * ha[:, None],
        "audio/segments": rng.normal(size=(n, s, da)) * (ha[:, None] & seg_valid)[..., None],
        "audio/segment_valid": seg_valid & ha[:, None],
        "face/frames": rng.normal(size=(n, f, dv)) * hf[:, None, None],
        "face/frame_valid": np.repeat(hf[:, None], f, axis=1),
        "face/clip": rng.normal(size=(n, dv)) * hf[:, None],
        "has_audio": ha, "has_face": hf,
        "duration": rng.uniform(1, 10, size=n).astype(np.float32),
    }
    for modality, dim in (("audio", layout.audio_dim), ("face", layout.face_dim)):
        if dim is None:  # absent modality: no arrays, never present
            arrays = {k: v for k, v in arrays.items() if not k.startswith(modality + "/")}
            arrays[f"has_{modality}"] = np.zeros(n, bool)
    failures = ([{"clip_id": ids[r], "stage": "decode", "error": f"bad audio {r}", "modality": "audio"}
                 for r in rows[~ha]]
                + [{"clip_id": ids[r], "stage": "backbone", "error": f"bad face {r}", "modality": "face"}
                   for r in rows[~hf]])
    return arrays, failures


def write_shards(path: str, ks: list[int], seed: int = 0) -> list[int]:
    """Worker (another process): open the existing cache and write shards ``ks``."""
    w = open_writer(path)
    for k in ks:
        arrays, failures = shard_data(w.layout, w.ids.tolist(), k, seed)
        w.write_shard(k, arrays, failures)
    return ks


def expected(layout: CacheLayout, ids: list[str], seed: int = 0) -> dict[str, np.ndarray]:
    n_shards = -(-len(ids) // layout.shard_size)
    parts = [shard_data(layout, ids, k, seed)[0] for k in range(n_shards)]
    out = {}
    for name in parts[0]:
        a = np.concatenate([p[name] for p in parts])
        out[name] = a.astype(layout.dtype) if a.dtype.kind == "f" and name != "duration" else a
    return out


# ---- backend-specific damage (what a disk, a user or a bad copy can do) ----
def _h5_chunk(path: Path, name: str, k: int, shard_size: int) -> tuple[int, int]:
    import h5py
    with h5py.File(path, "r") as f:
        ds = f[name]
        info = ds.id.get_chunk_info_by_coord((k * shard_size,) + (0,) * (ds.ndim - 1))
        return info.byte_offset, info.size


def _zarr_chunk(path: Path, name: str, k: int) -> Path:
    import zarr
    a = zarr.open_array(str(path), path=name, mode="r")
    return path / name / a.metadata.chunk_key_encoding.encode_chunk_key((k,) + (0,) * (a.ndim - 1))


def lose_chunk(path: Path, name: str, k: int, shard_size: int) -> None:
    """Zarr: delete the chunk file. HDF5 (one file): the chunk's bytes are lost (zeroed)."""
    if path.suffix == ".zarr":
        _zarr_chunk(path, name, k).unlink()
    else:
        off, size = _h5_chunk(path, name, k, shard_size)
        with open(path, "r+b") as f:
            f.seek(off)
            f.write(b"\0" * size)


def corrupt_chunk(path: Path, name: str, k: int, shard_size: int) -> None:
    """Flip 4 bytes of the chunk of shard ``k`` of ``name`` (Zarr: mid-file; HDF5: in row 0)."""
    if path.suffix == ".zarr":
        f = _zarr_chunk(path, name, k)
        b = bytearray(f.read_bytes())
        for i in range(len(b) // 2, min(len(b), len(b) // 2 + 4)):
            b[i] ^= 0xFF
        f.write_bytes(bytes(b))
    else:
        off, _ = _h5_chunk(path, name, k, shard_size)  # its first row is always in range
        with open(path, "r+b") as f:
            f.seek(off + 2)
            b = bytearray(f.read(4))
            f.seek(off + 2)
            f.write(bytes(x ^ 0xFF for x in b))


def edit_header(path: Path, edit) -> None:
    """Edit the avfuse header attribute in place, the way a user could."""
    if path.suffix == ".zarr":
        import zarr
        g = zarr.open_group(str(path), mode="r+")
        h = json.loads(json.dumps(g.attrs["avfuse"]))
        edit(h)
        g.attrs["avfuse"] = h
    else:
        import h5py
        with h5py.File(path, "r+") as f:
            h = json.loads(f.attrs["avfuse"])
            edit(h)
            f.attrs["avfuse"] = json.dumps(h)


def edit_ids(path: Path, row: int, new: str) -> None:
    if path.suffix == ".zarr":
        import zarr
        zarr.open_array(str(path), path="ids", mode="r+")[row] = new
    else:
        import h5py
        with h5py.File(path, "r+") as f:
            f["ids"][row] = new


def run_writer(path: str, finalize_every: int, n: int, step: bool = False) -> None:
    """What an extraction run does to its cache (the kill -9 test's subprocess). ``step``:
    after each shard, wait for a line on stdin (the test paces the writer, so that on a busy
    machine it cannot run past the kill point while the test is still reading its output)."""
    rows = make_rows(n)
    layout = CacheLayout(**{**LAYOUT, "shard_size": 3, "audio_dim": 64, "face_dim": 64})
    w = create_cache(path, layout=layout, provenance=PROV, **rows)
    with w.lock():
        for i, k in enumerate(w.pending_shards()):
            arrays, failures = shard_data(layout, rows["ids"], k)
            w.write_shard(k, arrays, failures)
            print("wrote", k, flush=True)
            if step:
                sys.stdin.readline()
            if finalize_every and (i + 1) % finalize_every == 0:
                w.finalize()
        w.finalize()
    print("done", flush=True)


KILL_SCRIPT = ("import sys\nfrom pipeline.cache.testing import run_writer\n"
               "run_writer(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), len(sys.argv) > 4)")


def make_cache(folder: Path, suffix: str, name: str = "c", prov: dict = PROV, **layout) -> CacheWriter:
    """A new (or resumed) ``N``-row cache ``folder/NAME SUFFIX`` of ``LAYOUT`` updated by ``layout``."""
    return create_cache(Path(folder) / f"{name}{suffix}", layout=CacheLayout(**{**LAYOUT, **layout}),
                        provenance=prov, **make_rows())


def fill(w: CacheWriter, ks=None, seed: int = 0) -> None:
    """Write shards ``ks`` (default: all) of ``w`` with ``shard_data``."""
    for k in (range(w.n_shards) if ks is None else ks):
        arrays, failures = shard_data(w.layout, w.ids.tolist(), k, seed)
        w.write_shard(k, arrays, failures)


class ReaderContract:
    """Read side of the contract. Subclasses set ``suffix`` (the backend the standard cache is
    written with) and may override ``open_reader`` (default: ``open_cache``)."""

    suffix = ".zarr"

    def make(self, tmp_path: Path, name: str = "c", prov: dict = PROV, **layout):
        return make_cache(tmp_path, self.suffix, name, prov, **layout)

    def fill(self, w, ks=None, seed: int = 0) -> None:
        fill(w, ks, seed)

    def open_reader(self, path: Path):
        return open_cache(path)

    def complete_reader(self, tmp_path: Path):
        """The reader under test over the standard complete cache (3 shards of 4, 4, 2 rows)."""
        w = self.make(tmp_path)
        with w.lock():
            self.fill(w)
            w.finalize()
        w.close()
        return self.open_reader(w.path)

    def test_row_metadata_names_and_has(self, tmp_path):
        c = self.complete_reader(tmp_path)
        rows = make_rows()
        assert c.n_rows == N
        assert c.ids.tolist() == rows["ids"] and c.speakers.tolist() == rows["speakers"]
        assert c.splits.tolist() == rows["splits"]
        assert c.names == list(expected(c.layout, rows["ids"])) and c.has("face/clip") and not c.has("nope")

    def test_to_numpy_any_rows_in_cast_or_stored_dtype(self, tmp_path):
        c = self.complete_reader(tmp_path)
        want = expected(c.layout, c.ids.tolist())
        idx = [9, 0, 5, 5, 3, 8]  # unsorted, repeated, across all three shards
        for name in c.names:
            assert c.to_numpy(name).dtype == (bool if want[name].dtype == bool else np.float32)
            np.testing.assert_array_equal(c.to_numpy(name, dtype=None), want[name])
            assert c.to_numpy(name, dtype=None).dtype == want[name].dtype
            np.testing.assert_array_equal(c.to_numpy(name, idx, dtype=None), want[name][idx])
            np.testing.assert_array_equal(c.to_numpy(name, np.array(idx), dtype=None), want[name][idx])
            assert c.to_numpy(name, [], dtype=None).shape == (0, *want[name].shape[1:])
        with pytest.raises(CacheError, match="no array 'nope'"):
            c.to_numpy("nope")

    def test_rows_raise_or_mask_and_split_rows(self, tmp_path):
        c = self.complete_reader(tmp_path)
        ids = np.asarray(c.ids)
        assert c.rows([ids[7], ids[2]]).tolist() == [7, 2]
        assert c.rows(str(ids[4])).tolist() == [4]
        assert c.rows(["nope", ids[1]], missing="mask").tolist() == [-1, 1]
        with pytest.raises(CacheError, match="1 of 2 ids are not in .*nope"):
            c.rows(["nope", ids[1]])
        perm = np.random.default_rng(0).permutation(N)
        assert c.rows(ids[perm]).tolist() == perm.tolist() == c.rows(ids[perm].tolist()).tolist()
        assert c.rows([]).tolist() == [] and c.rows(np.array([], dtype=str)).tolist() == []
        assert c.rows(np.array([ids[3], "zz", "a"]), missing="mask").tolist() == [3, -1, -1]
        assert c.split_rows("test").tolist() == [0, 4, 8]
        assert c.split_rows("dev").tolist() == [1, 2, 3, 5, 6, 7, 9]
        assert c.split_rows("train").tolist() == []
