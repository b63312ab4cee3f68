"""``StoreContract``: the write side of the cache contract, for a store backend (see
``pipeline.cache.testing``, which holds ``ReaderContract`` and the helpers)."""

from __future__ import annotations

import concurrent.futures
import json
import multiprocessing
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from pipeline.cache.layout import CacheLayout
from pipeline.cache.reader import open_cache
from pipeline.cache.testing import (
    KILL_SCRIPT,
    LAYOUT,
    PROV,
    N,
    ReaderContract,
    corrupt_chunk,
    edit_header,
    edit_ids,
    expected,
    lose_chunk,
    make_rows,
    run_writer,
    shard_data,
    write_shards,
)
from pipeline.cache.writer import create_cache, open_writer
from pipeline.core.errors import CacheError

REPO = Path(__file__).resolve().parents[2]


class StoreContract(ReaderContract):
    """Write side of the contract, for a store backend (``suffix`` picks it)."""

    #: the kill -9 writer finalizes every this many shards (0: only at the end)
    kill_finalize_every = 0

    @property
    def backend(self) -> str:
        return "zarr" if self.suffix == ".zarr" else "hdf5"

    def test_create_reopen_resume(self, tmp_path):
        suffix = self.suffix
        dead = subprocess.Popen(["true"])
        dead.wait()
        stale = tmp_path / f".c{suffix}.creating-{dead.pid}-0badf00d"  # a creation killed midway
        stale.mkdir()
        w = self.make(tmp_path)
        assert not stale.exists() and [p.name for p in tmp_path.iterdir()] == [f"c{suffix}"]
        assert (w.n_rows, w.n_shards, w.backend) == (N, 3, self.backend)
        assert w.pending_shards() == [0, 1, 2] and not w.is_complete
        self.fill(w, [0, 2])
        w.close()
        w2 = self.make(tmp_path)  # same provenance + rows: reopened for resume
        assert w2.done_shards() == {0, 2} and w2.pending_shards() == [1]
        self.fill(w2, w2.pending_shards())
        w2.finalize()
        c = open_cache(w2.path)
        assert c.is_complete and c.fingerprint == w2.fingerprint
        want = expected(c.layout, c.ids.tolist())
        for name in c.names:
            np.testing.assert_array_equal(c.to_numpy(name, dtype=None), want[name])
        assert c.verify() == []

    def test_round_trip_and_shard_boundaries(self, tmp_path):
        w = self.make(tmp_path)
        self.fill(w)
        c = open_cache(w.path)
        rows = make_rows()
        want = expected(c.layout, rows["ids"])
        assert c.ids.tolist() == rows["ids"] and c.speakers.tolist() == rows["speakers"]
        assert c.names == list(want) and c.has("face/clip") and not c.has("nope")
        assert [c.shard_slice(k) for k in range(3)] == [slice(0, 4), slice(4, 8), slice(8, 10)]
        for name in c.names:
            assert c.to_numpy(name).dtype == (bool if want[name].dtype == bool else np.float32)
            idx = [9, 0, 5, 5, 3, 8]  # unsorted, repeated, across all three shards
            np.testing.assert_array_equal(c.to_numpy(name, idx, dtype=None), want[name][idx])
            a = c.array(name)
            np.testing.assert_array_equal(a[3:9], want[name][3:9])
            np.testing.assert_array_equal(a[-1], want[name][-1])
            np.testing.assert_array_equal(a[[7, 1]], want[name][[7, 1]])
            np.testing.assert_array_equal(np.asarray(a), want[name])
        np.testing.assert_array_equal(c.array("audio/segments")[2:6, 1], want["audio/segments"][2:6, 1])
        assert c.rows([rows["ids"][7], rows["ids"][2]]).tolist() == [7, 2]
        assert c.rows(["nope", rows["ids"][1]], missing="mask").tolist() == [-1, 1]
        with pytest.raises(CacheError, match="1 of 2 ids are not in the cache .*nope"):
            c.rows(["nope", rows["ids"][1]])
        assert c.split_rows("test").tolist() == [0, 4, 8]

    def test_not_done_shard_is_never_read(self, tmp_path):
        w = self.make(tmp_path)
        self.fill(w, [0, 2])
        c = open_cache(w.path)
        want = expected(c.layout, c.ids.tolist())
        with pytest.raises(CacheError, match=r"shard 1 \(rows 4-7\) is not done"):
            c.to_numpy("audio/clip")
        with pytest.raises(CacheError, match="shard 1"):
            c.to_numpy("face/clip", [0, 9, 5])
        with pytest.raises(CacheError, match="shard 1"):
            c.array("duration")[3:5]
        with pytest.raises(CacheError, match="shard 1"):
            c.to_dask("audio/clip").compute()
        np.testing.assert_array_equal(c.to_numpy("face/clip", [9, 0], dtype=None), want["face/clip"][[9, 0]])
        part = c.to_numpy("audio/clip", allow_incomplete=True)
        done = c.done_mask()
        assert done.tolist() == [True] * 4 + [False] * 4 + [True] * 2
        assert (part[~done] == 0).all()
        np.testing.assert_allclose(part[done], want["audio/clip"][done].astype(np.float32))

    def test_write_shard_validation(self, tmp_path):
        w = self.make(tmp_path)
        arrays, failures = shard_data(w.layout, w.ids.tolist(), 2)
        with pytest.raises(CacheError, match="shape"):
            w.write_shard(1, arrays, [])  # shard 2's 2 rows into 4-row shard 1
        with pytest.raises(CacheError, match="missing.*duration"):
            w.write_shard(2, {k: v for k, v in arrays.items() if k != "duration"}, [])
        with pytest.raises(CacheError, match="not in shard 2"):
            w.write_shard(2, arrays, [{"clip_id": w.ids[0], "stage": "decode", "error": "x", "modality": "audio"}])
        with pytest.raises(CacheError, match="stage"):
            w.write_shard(2, arrays, [{**failures[0], "stage": "lunch"}])
        with pytest.raises(CacheError, match="out of range"):
            w.write_shard(3, arrays, [])
        assert w.pending_shards() == [0, 1, 2]
        dirty = {k: v.copy() for k, v in arrays.items()}
        dirty["has_audio"][:] = False
        dirty["audio/clip"][:] = 5.0  # vectors of a missing modality are stored as zeros
        w.write_shard(2, dirty, [])
        assert (w.to_numpy("audio/clip", [8, 9]) == 0).all()
        assert not w.to_numpy("audio/segment_valid", [8, 9]).any()

    def test_provenance_mismatch_refused_and_overwrite(self, tmp_path):
        suffix = self.suffix
        w = self.make(tmp_path)
        self.fill(w, [0])
        other = json.loads(json.dumps(PROV))
        other["audio_backbone"]["sha256"] = "ab" * 32
        with pytest.raises(CacheError, match=r"provenance\.audio_backbone\.sha256: null \(cache\) != "
                                             r"\"abab.*\(requested\)") as e:
            self.make(tmp_path, prov=other)
        assert "--overwrite" in str(e.value)
        with pytest.raises(CacheError, match=r"layout\.dtype: \"float16\" \(cache\) != \"float32\""):
            self.make(tmp_path, dtype="float32")
        rows = make_rows()
        rows["ids"][6] = "other/clip/00006"
        with pytest.raises(CacheError, match=r"ids\[6\]"):
            create_cache(w.path, layout=w.layout, provenance=PROV, **rows)
        assert open_cache(w.path).done_shards() == {0}  # nothing was touched
        w2 = create_cache(w.path, layout=w.layout, provenance=other, overwrite=True, **make_rows())
        assert w2.done_shards() == set() and w2.provenance == other
        junk = tmp_path / f"junk{suffix}"
        if suffix == ".zarr":
            junk.mkdir()
            (junk / "thesis.tex").write_text("precious")
        else:
            junk.write_text("not a cache")
        with pytest.raises(CacheError, match="refusing to overwrite"):  # never delete a non-cache
            create_cache(junk, layout=w.layout, provenance=PROV, overwrite=True, **make_rows())
        assert junk.exists()

    def test_duplicate_ids_refused(self, tmp_path):
        rows = make_rows()
        rows["ids"][5] = rows["ids"][2]
        with pytest.raises(CacheError, match=f"duplicate clip ids .*{rows['ids'][2]}"):
            create_cache(tmp_path / f"d{self.suffix}", layout=CacheLayout(**LAYOUT), provenance=PROV, **rows)
        assert not (tmp_path / f"d{self.suffix}").exists()

    def test_lock_contention_and_stale_lock(self, tmp_path):
        w = self.make(tmp_path)
        other = open_writer(w.path)
        with w.lock():
            with pytest.raises(CacheError, match=f"cache is locked by pid {os.getpid()} on "
                                                 f"{socket.gethostname()} since") as e:
                with other.lock():
                    pass
            assert "remove" in e.value.hint
            with w.lock():  # re-entrant for its holder
                pass
            assert Path(str(w.path) + ".lock").exists()
        with other.lock():  # released: the other writer may take it now
            pass
        dead = subprocess.Popen([sys.executable, "-c", "pass"])
        dead.wait()
        lock = Path(str(w.path) + ".lock")
        lock.write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname(), "since": "then"}))
        with pytest.warns(UserWarning, match=f"stale cache lock of pid {dead.pid}"):
            with w.lock():
                assert json.loads(lock.read_text())["pid"] == os.getpid()
        assert not lock.exists()
        lock.write_text(json.dumps({"pid": dead.pid, "host": "elsewhere", "since": "then"}))
        with pytest.raises(CacheError, match="locked by pid .* on elsewhere"):
            with w.lock():
                pass

    def test_concurrent_writers_different_shards(self, tmp_path):
        w = self.make(tmp_path, shard_size=2)  # 5 shards
        ctx = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(2, mp_context=ctx) as pool:
            futs = [pool.submit(write_shards, str(w.path), ks) for ks in ([0, 2, 4], [1, 3])]
            assert sorted(k for f in futs for k in f.result()) == [0, 1, 2, 3, 4]
        with w.lock():
            w.finalize()
        c = open_cache(w.path)
        assert c.is_complete
        want = expected(c.layout, c.ids.tolist())
        for name in c.names:
            np.testing.assert_array_equal(c.to_numpy(name, dtype=None), want[name])
        assert c.verify() == []
        assert len(c.failures()) == len(open(c.failures_path).read().splitlines()) > 0

    def test_float16_storage_matches_float32(self, tmp_path):
        rng = np.random.default_rng(7)
        emb = rng.normal(size=(N, 192)) * rng.uniform(0.1, 30, size=(N, 1))
        got = {}
        for dtype in ("float16", "float32"):
            w = self.make(tmp_path, name=dtype, dtype=dtype, audio_dim=192, face_dim=None)
            for k in range(w.n_shards):
                s = w.shard_slice(k)
                a, _ = shard_data(w.layout, w.ids.tolist(), k)
                a["has_audio"][:] = True
                a["audio/clip"] = emb[s]
                w.write_shard(k, a, [])
            got[dtype] = open_cache(w.path).to_numpy("audio/clip")
        np.testing.assert_array_equal(got["float32"], emb.astype(np.float32))
        a, b = got["float16"], got["float32"]
        cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
        assert cos.min() >= 0.9999, cos.min()

    @pytest.mark.parametrize("run_bytes", [1, 48, 1 << 24])  # 1 shard, 2 shards, all per run
    def test_runs_of_shards_read_like_shard_by_shard(self, tmp_path, run_bytes, monkeypatch):
        import pipeline.cache.reader as cache_mod
        monkeypatch.setattr(cache_mod, "RUN_BYTES", run_bytes)
        w = self.make(tmp_path, shard_size=2)  # 5 shards; audio/clip shard = 24 bytes
        self.fill(w)
        w.finalize()
        c = open_cache(w.path)
        want = expected(c.layout, c.ids.tolist())
        rng = np.random.default_rng(0)
        idx = rng.integers(0, N, 25)  # unsorted, repeated, every shard
        for name in c.names:
            np.testing.assert_array_equal(c.to_numpy(name, dtype=None), want[name])
            np.testing.assert_array_equal(c.to_numpy(name, idx, dtype=None), want[name][idx])
            np.testing.assert_array_equal(c.to_numpy(name, np.sort(idx), dtype=None), want[name][np.sort(idx)])
            np.testing.assert_array_equal(c.array(name)[1:9], want[name][1:9])
            blocks = list(c.read_shards(name, 0, c.n_shards))
            assert [(a, b) for a, b, _ in blocks][0][0] == 0 and blocks[-1][1] == N
            np.testing.assert_array_equal(np.concatenate([x for _, _, x in blocks]), want[name])
        perm = rng.permutation(N)
        ids = np.asarray(c.ids)
        assert c.rows(ids[perm]).tolist() == perm.tolist() == c.rows(ids[perm].tolist()).tolist()
        assert c.rows([]).tolist() == [] and c.rows(np.array([], dtype=str)).tolist() == []
        assert c.rows(np.array([ids[3], "zz", "a"]), missing="mask").tolist() == [3, -1, -1]
        for damage in (lose_chunk, corrupt_chunk):  # shard 3 sits inside a run of two
            with w.lock():
                damage(w.path, "audio/clip", 3, 2)
            c = open_cache(w.path)
            with pytest.raises(CacheError, match="shard 3 .*audio/clip"):
                c.to_numpy("audio/clip")
            with pytest.raises(CacheError, match="shard 3 .*audio/clip"):
                c.to_numpy("audio/clip", [9, 6, 1])
            ok = [0, 1, 2, 3, 4, 5, 8, 9]
            np.testing.assert_array_equal(c.to_numpy("audio/clip", ok, dtype=None), want["audio/clip"][ok])
            with w.lock():
                w.invalidate_shard(3)
                self.fill(w, [3])
                w.finalize()

    def test_to_dask_equals_to_numpy(self, tmp_path):
        w = self.make(tmp_path)
        self.fill(w)
        c = open_cache(w.path)
        for name in c.names:
            d = c.to_dask(name)
            assert d.chunks[0] == (4, 4, 2) and d.shape == c.specs[name].shape
            np.testing.assert_array_equal(d.compute(), c.to_numpy(name))
        assert float(c.to_dask("audio/clip").sum().compute()) == pytest.approx(
            float(c.to_numpy("audio/clip").sum()), rel=1e-5)

    def test_failures_jsonl_regenerated_in_row_order(self, tmp_path):
        w = self.make(tmp_path, shard_size=2)
        with w.lock():
            self.fill(w, [4, 1, 3, 0, 2])
            w.finalize()
        lines = w.failures_path.read_text().splitlines()
        entries = [json.loads(x) for x in lines]
        order = [int(e["clip_id"].rsplit("/", 1)[1]) for e in entries]
        assert order == sorted(order) and len(entries) == 2 + 2  # rows 3, 8 lack audio; 2, 9 lack face
        assert {e["stage"] for e in entries} == {"decode", "backbone"}
        first = w.failures_path.read_bytes()
        w.failures_path.unlink()
        w.finalize()
        assert w.failures_path.read_bytes() == first
        w.invalidate_shard(1)  # rows 2, 3: both of its failures go with it
        w.finalize()
        assert [json.loads(x)["clip_id"] for x in w.failures_path.read_text().splitlines()] == \
            [e["clip_id"] for e in entries if not e["clip_id"].endswith(("/00002", "/00003"))]

    @pytest.mark.parametrize("damage", ["lost", "corrupt"])
    def test_verify_catches_damaged_chunk(self, tmp_path, damage):
        w = self.make(tmp_path)
        with w.lock():
            self.fill(w)
            w.finalize()
        assert open_cache(w.path).verify() == []
        (lose_chunk if damage == "lost" else corrupt_chunk)(w.path, "audio/clip", 1, 4)
        c = open_cache(w.path)
        problems = c.verify()
        assert any("shard 1" in p and "audio/clip" in p for p in problems), problems
        assert c.damaged_shards() == [1]
        with pytest.raises(CacheError, match="shard 1 .*audio/clip"):
            c.to_numpy("audio/clip")
        np.testing.assert_array_equal(c.to_numpy("audio/clip", [0, 9]),
                                      expected(c.layout, c.ids.tolist())["audio/clip"][[0, 9]])
        with w.lock():  # repair: invalidate, recompute, finalize
            w.invalidate_shard(1)
            assert w.pending_shards() == [1]
            self.fill(w, [1])
            w.finalize()
        assert open_cache(w.path).verify() == []

    def test_verify_catches_nan_zero_norm_and_edited_header(self, tmp_path):
        w = self.make(tmp_path)
        self.fill(w, [0, 1])
        arrays, failures = shard_data(w.layout, w.ids.tolist(), 2)
        arrays["audio/clip"][1, 1] = np.nan  # row 9 (row 8 has no audio: it would be zeroed)
        arrays["face/clip"][0] = 0.0  # row 8 has a face: a zero-norm vector is a problem
        w.write_shard(2, arrays, failures)
        with w.lock():
            w.finalize()
        c = open_cache(w.path)
        problems = c.verify()
        ids = w.ids
        assert any("NaN/Inf" in p and "audio/clip" in p and ids[9] in p for p in problems), problems
        assert any("zero-norm face/clip" in p and ids[8] in p for p in problems), problems
        assert len(problems) == 2
        c.close()
        w.close()  # HDF5 cannot open a file for writing that this process has open for reading
        edit_header(w.path, lambda h: h["provenance"]["face_backbone"].update(name="resnet50"))
        problems = open_cache(w.path).verify()
        assert any("fingerprint mismatch" in p for p in problems), problems
        edit_ids(w.path, 3, str(ids[2]))  # a duplicate id edited into the row metadata
        problems = open_cache(w.path).verify()
        assert any(f"1 duplicate ids (first: {ids[2]})" in p for p in problems), problems
        assert any("does not match its recorded fingerprint" in p for p in problems), problems

    def test_kill9_then_resume_equals_uninterrupted(self, tmp_path):
        suffix = self.suffix
        seed = int(os.environ.get("AVFUSE_KILL_SEED", random.randrange(2**31)))
        rnd = random.Random(seed)
        n = 40  # 14 shards of 3 rows
        fin = str(self.kill_finalize_every)
        run = [sys.executable, "-c", KILL_SCRIPT]
        ref = tmp_path / f"ref{suffix}"
        run_writer(str(ref), int(fin), n)
        path = tmp_path / f"killed{suffix}"
        for _ in range(2):  # kill at a random point, resume, kill again, then finish
            p = subprocess.Popen(run + [str(path), fin, str(n), "step"], cwd=REPO, stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            target = rnd.randrange(1, 6)
            seen = 0
            for line in p.stdout:
                seen += line.startswith("wrote")
                if line.startswith("done"):
                    break
                p.stdin.write("\n")         # go on (past the target: into the next finalize/write)
                p.stdin.flush()
                if seen >= target:
                    break
            time.sleep(rnd.uniform(0, 0.02))  # land anywhere in the next write or finalize
            p.send_signal(signal.SIGKILL)
            p.wait()
            p.stdout.close()
            p.stdin.close()
            assert p.returncode == -signal.SIGKILL, f"seed {seed}: writer finished before the kill"
        with open_cache(path) as c:
            assert 0 < len(c.done_shards()) < c.n_shards, f"seed {seed}"
        assert Path(str(path) + ".lock").exists()  # left behind by the killed writer
        done = subprocess.run(run + [str(path), fin, str(n)], cwd=REPO, capture_output=True, text=True)
        assert done.returncode == 0, f"seed {seed}: {done.stderr}"
        assert "stale cache lock" in done.stderr
        a, b = open_cache(ref), open_cache(path)
        assert b.is_complete and b.verify() == [], f"seed {seed}"
        for name in a.names:
            np.testing.assert_array_equal(a.to_numpy(name, dtype=None), b.to_numpy(name, dtype=None),
                                          err_msg=f"seed {seed}")
        assert a.failures_path.read_bytes() == b.failures_path.read_bytes() != b""
        assert not Path(str(path) + ".lock").exists()
