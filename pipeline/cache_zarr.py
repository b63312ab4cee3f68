"""Zarr v3 backend of the embedding cache (the default, ``*.zarr``).

Layout of ``C.zarr`` (a plain Zarr v3 hierarchy, readable with zarr alone)::

    zarr.json                 group; attributes["avfuse"] = the cache header
                              (format, layout, provenance, fingerprint, n_rows, ...)
    audio/clip ... duration   data arrays; chunk = one shard of rows x the full tail
                              dims, so no two shards share a chunk (no concurrent
                              writes into one chunk); every chunk is written, even
                              all-zero ones, so a missing chunk file is damage
    ids, speakers, splits     vlen-utf8 string arrays (written once at creation)
    _avfuse/markers           vlen-utf8 array of shape (n_shards,), chunk (1,): the
                              done marker of shard k is chunk file
                              ``_avfuse/markers/c/<k>`` (JSON with checksums +
                              failures), written atomically (temp + rename by
                              zarr's LocalStore, then fsync), after the shard's
                              data chunks are written and fsynced

Writers in several processes may write different shards concurrently. Creation
builds the store in a temp folder beside it and renames it into place.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from pathlib import Path

import numpy as np

from pipeline.cache_base import ROW_META, ArraySpec, CacheBackend, fsync_dir, tree_bytes
from pipeline.errors import CacheError

MARKERS = "_avfuse/markers"
ROW_CHUNK = 65536
PARTIAL_MAX_AGE_S = 300.0


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_POOL = None


def _fsync_pool():
    global _POOL
    if _POOL is None:
        from concurrent.futures import ThreadPoolExecutor
        _POOL = ThreadPoolExecutor(8, thread_name_prefix="avfuse-fsync")
    return _POOL


def _zarr():
    import zarr
    return zarr


class ZarrBackend(CacheBackend):
    kind = "zarr"

    def __init__(self, path: Path):
        super().__init__(path)
        self._read_arrays: dict = {}
        self._write_arrays: dict = {}
        self._markers_arr = None

    # ---- creation / removal ----------------------------------------------
    @classmethod
    def create(cls, path: Path, header: dict, rows: dict[str, np.ndarray],
               specs: dict[str, ArraySpec], shard_size: int) -> bool:
        zarr = _zarr()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.creating-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        try:
            g = zarr.open_group(str(tmp), mode="w-", zarr_format=3)
            for name, spec in specs.items():
                fill = False if spec.dtype == "bool" else 0
                g.create_array(name, shape=spec.shape, chunks=spec.chunks, dtype=spec.dtype,
                               fill_value=fill)
            n = int(header["n_rows"])
            n_shards = -(-n // shard_size)
            g.create_array(MARKERS, shape=(n_shards,), chunks=(1,), dtype=str, fill_value="")
            for key in ROW_META:
                a = g.create_array(key, shape=(n,), chunks=(min(n, ROW_CHUNK),), dtype=str,
                                   fill_value="")
                a[:] = np.asarray(rows[key], dtype=object).astype(str)
            g.attrs["avfuse"] = header  # last: a store without it is not a cache
            for root, _, files in os.walk(tmp):
                for f in files:
                    _fsync_file(Path(root) / f)
            try:
                os.rename(tmp, path)
            except OSError:
                if path.exists():
                    return False
                raise
            fsync_dir(path.parent)
            return True
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)

    @classmethod
    def remove_store(cls, path: Path) -> None:
        if not path.exists():
            return
        gone = path.with_name(f".{path.name}.removing-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        os.rename(path, gone)
        shutil.rmtree(gone)

    # ---- metadata -------------------------------------------------------
    def read_header(self) -> dict:
        zarr = _zarr()
        try:
            g = zarr.open_group(str(self.path), mode="r", zarr_format=3)
        except Exception as e:
            raise CacheError(f"not a readable Zarr v3 store ({type(e).__name__}: {e})",
                             path=self.path) from e
        return dict(g.attrs.get("avfuse", {}))

    def read_rows(self) -> dict[str, np.ndarray]:
        zarr = _zarr()
        out = {}
        for key in ROW_META:
            try:
                a = zarr.open_array(str(self.path), path=key, mode="r")
                out[key] = np.array(a[:].tolist(), dtype=str)
            except Exception as e:
                raise CacheError(f"row metadata {key!r} is unreadable ({type(e).__name__}: {e})",
                                 path=self.path) from e
        return out

    # ---- markers --------------------------------------------------------
    def _marker_file(self, k: int) -> Path:
        return self.path / MARKERS / "c" / str(k)

    def _markers(self, write: bool = False):
        if write:
            if "\0markers" not in self._write_arrays:
                self._write_arrays["\0markers"] = _zarr().open_array(str(self.path), path=MARKERS,
                                                                     mode="r+")
            return self._write_arrays["\0markers"]
        if self._markers_arr is None:
            self._markers_arr = _zarr().open_array(str(self.path), path=MARKERS, mode="r")
        return self._markers_arr

    def done_shards(self) -> set[int]:
        try:
            names = os.listdir(self.path / MARKERS / "c")
        except FileNotFoundError:
            return set()
        return {int(x) for x in names if x.isdigit() and int(x) < self.n_shards}

    def read_markers(self, ks: list[int]) -> dict[int, dict]:
        m = self._markers()
        out: dict[int, dict] = {}
        if len(ks) > 8:
            try:
                vals = m[:].tolist()
                for k in ks:
                    if vals[k]:
                        out[k] = json.loads(vals[k])
                return out
            except Exception:
                out.clear()  # one unreadable marker: fall back to one by one
        for k in ks:
            try:
                v = str(m[k])
                if v:
                    out[k] = json.loads(v)
            except Exception:
                continue
        return out

    def remove_marker(self, k: int) -> None:
        try:
            self._marker_file(k).unlink()
        except FileNotFoundError:
            return
        fsync_dir(self._marker_file(k).parent)

    # ---- data -----------------------------------------------------------
    def _rarr(self, name: str):
        a = self._read_arrays.get(name)
        if a is None:
            a = self._read_arrays[name] = _zarr().open_array(str(self.path), path=name, mode="r")
        return a

    def _warr(self, name: str):
        a = self._write_arrays.get(name)
        if a is None:
            zarr = _zarr()
            with zarr.config.set({"array.write_empty_chunks": True}):
                a = zarr.open_array(str(self.path), path=name, mode="r+")
            self._write_arrays[name] = a
        return a

    def _chunk_file(self, name: str, k: int) -> Path:
        ndim = len(self.specs[name].shape)
        key = self._rarr(name).metadata.chunk_key_encoding.encode_chunk_key((k,) + (0,) * (ndim - 1))
        return self.path / name / key

    def write_shard(self, k: int, start: int, stop: int, arrays: dict[str, np.ndarray],
                    marker: dict) -> None:
        import asyncio

        from zarr.core.sync import sync
        self.remove_marker(k)

        targets = [(self._warr(n).async_array, a) for n, a in arrays.items()]

        async def put_all() -> None:  # all arrays' chunks encoded and written concurrently
            await asyncio.gather(*(t.setitem(slice(start, stop), a) for t, a in targets))
        sync(put_all())
        files = [self._chunk_file(name, k) for name in arrays]
        list(_fsync_pool().map(_fsync_file, files))  # concurrent fsyncs share journal commits
        self._markers(write=True)[k] = json.dumps(marker, sort_keys=True)
        _fsync_file(self._marker_file(k))
        fsync_dir(self._marker_file(k).parent)

    def read(self, name: str, start: int, stop: int) -> np.ndarray:
        return np.asarray(self._rarr(name)[start:stop])

    def shard_problems(self, k: int) -> list[str]:
        out = []
        for name in self.specs:
            f = self._chunk_file(name, k)
            if not f.is_file():
                out.append(f"shard {k}: chunk file of {name} is missing ({f.relative_to(self.path)})")
        return out

    def finalize(self) -> None:
        """Remove temp files of chunk writes killed midway (older than 5 min, so never a live one)."""
        now = time.time()
        for root, _, files in os.walk(self.path):
            for f in files:
                if f.endswith(".partial"):
                    p = os.path.join(root, f)
                    try:
                        if now - os.stat(p).st_mtime > PARTIAL_MAX_AGE_S:
                            os.unlink(p)
                    except FileNotFoundError:
                        pass

    # ---- sizes ------------------------------------------------------------
    def array_info(self) -> dict[str, dict]:
        return {name: {"shape": list(s.shape), "dtype": s.dtype, "chunks": list(s.chunks),
                       "bytes_on_disk": tree_bytes(self.path / name)}
                for name, s in self.specs.items()}

    def disk_bytes(self) -> int:
        return tree_bytes(self.path)

    def close(self) -> None:
        self._read_arrays.clear()
        self._write_arrays.clear()
        self._markers_arr = None
