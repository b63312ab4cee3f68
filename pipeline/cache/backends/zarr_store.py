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

from pipeline.cache.backends.base import CacheBackend
from pipeline.cache.layout import ROW_META, ArraySpec
from pipeline.core.errors import CacheError
from pipeline.core.fsio import fsync_dir, fsync_file, tree_bytes

MARKERS = "_avfuse/markers"
ROW_CHUNK = 65536
PARTIAL_MAX_AGE_S = 300.0



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
                    fsync_file(Path(root) / f)
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
        header = g.attrs.get("avfuse", {})
        if not isinstance(header, dict):
            raise CacheError(f"the cache header is damaged (the 'avfuse' attribute is a "
                             f"{type(header).__name__}, not an object)", path=self.path,
                             hint="re-extract into a new cache")
        return dict(header)

    def read_rows(self) -> dict[str, np.ndarray]:
        return {key: self.read_row_meta(key) for key in ROW_META}

    def row_count(self) -> int | None:
        """The stored ids' length, from the array metadata alone (no data read)."""
        try:
            return int(_zarr().open_array(str(self.path), path="ids", mode="r").shape[0])
        except Exception:  # noqa: BLE001 - reported as unreadable row metadata on first use
            return None

    def read_row_meta(self, key: str) -> np.ndarray:
        """One row-metadata array as a fixed-width numpy str (``<U``) array."""
        try:
            a = _zarr().open_array(str(self.path), path=key, mode="r")[:]
            if a.dtype.kind == "T":  # numpy StringDType: cast to the longest id's width
                width = int(np.strings.str_len(a).max()) if a.size else 1
                return a.astype(f"<U{max(width, 1)}")
            return np.array(a.tolist(), dtype=str)
        except Exception as e:
            raise CacheError(f"row metadata {key!r} is unreadable ({type(e).__name__}: {e})",
                             path=self.path) from e

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

    def _marker_codecs(self):
        """``(bytes -> bytes, bytes -> str)`` decoders of the marker chunks when they use the
        codecs avfuse creates them with (``vlen-utf8`` + ``zstd``, as numcodecs, which
        zarr itself uses for both); None for any other encoding (then read through zarr)."""
        if not hasattr(self, "_mcodecs"):
            self._mcodecs = None
            try:
                meta = json.loads((self.path / MARKERS / "zarr.json").read_text())
                names = [c.get("name") for c in meta.get("codecs", [])]
                if names == ["vlen-utf8", "zstd"]:
                    from numcodecs import VLenUTF8, Zstd
                    zstd, vlen = Zstd(), VLenUTF8()
                    self._mcodecs = (zstd.decode, lambda b: str(vlen.decode(b)[0]))
            except Exception:
                self._mcodecs = None
        return self._mcodecs

    def read_markers(self, ks: list[int]) -> dict[int, dict]:
        """Markers of shards ``ks``: each chunk file read and decoded directly (no zarr
        call per chunk); unreadable ones are left out."""
        out: dict[int, dict] = {}
        codecs = self._marker_codecs()
        if codecs is None:
            m = self._markers()
            for k in ks:
                try:
                    v = str(m[k])
                    if v:
                        out[k] = json.loads(v)
                except Exception:
                    continue
            return out
        unzstd, unvlen = codecs
        for k in ks:
            try:
                with open(self._marker_file(k), "rb") as f:
                    v = unvlen(unzstd(f.read()))
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
        list(_fsync_pool().map(fsync_file, files))  # concurrent fsyncs share journal commits
        self._markers(write=True)[k] = json.dumps(marker, sort_keys=True)
        fsync_file(self._marker_file(k))
        fsync_dir(self._marker_file(k).parent)

    def read(self, name: str, start: int, stop: int) -> np.ndarray:
        k = start // self.shard_size
        if self._direct(name) is not None:
            return self.read_shards(name, k, k + 1)[start - k * self.shard_size:stop - k * self.shard_size]
        return np.asarray(self._rarr(name)[start:stop])

    def read_shards(self, name: str, k0: int, k1: int) -> np.ndarray:
        """Shards ``k0 .. k1-1`` of ``name`` (stored dtype) in one array.

        Arrays stored the way avfuse creates them (``bytes`` little-endian + ``zstd``,
        one chunk per shard, default chunk keys) are read chunk file by chunk file and
        decoded with numcodecs' Zstd, the codec zarr itself uses, into one preallocated
        array: the same bytes as a zarr read, without zarr's per-chunk overhead. A
        missing chunk file reads as the fill value, as in zarr. Other encodings: one
        zarr call for the whole run."""
        spec = self.specs[name]
        ss, n = self.shard_size, spec.shape[0]
        stop = min(k1 * ss, n)
        direct = self._direct(name)
        if direct is None:
            return np.asarray(self._rarr(name)[k0 * ss:stop])
        decode, fill = direct
        dtype = np.dtype(spec.dtype).newbyteorder("<")
        out = np.empty(((k1 - k0) * ss, *spec.shape[1:]), dtype=spec.dtype)
        per_chunk = int(np.prod(spec.chunks, dtype=np.int64))
        tail = "/0" * (len(spec.shape) - 1)
        base = str(self.path / name / "c") + "/"
        for i, k in enumerate(range(k0, k1)):
            dst = out[i * ss:(i + 1) * ss]
            try:
                with open(f"{base}{k}{tail}", "rb") as f:
                    raw = f.read()
            except FileNotFoundError:
                dst[...] = fill
                continue
            data = np.frombuffer(decode(raw), dtype=dtype)
            if data.size != per_chunk:
                raise ValueError(f"chunk {k} of {name} decodes to {data.size} values, "
                                 f"expected {per_chunk}")
            dst[...] = data.reshape(spec.chunks)
        return out[:stop - k0 * ss]

    def _direct(self, name: str):
        """``(zstd_decode, fill_value)`` when ``name`` can be read directly (see
        ``read_shards``), else None. Decided once per array from its ``zarr.json``."""
        cache = self.__dict__.setdefault("_direct_cache", {})
        if name not in cache:
            cache[name] = None
            try:
                meta = json.loads((self.path / name / "zarr.json").read_text())
                codecs = meta.get("codecs", [])
                spec = self.specs[name]
                ok = (len(codecs) == 2 and codecs[0].get("name") == "bytes"
                      and (codecs[0].get("configuration") or {}).get("endian", "little") == "little"
                      and codecs[1].get("name") == "zstd"
                      and meta.get("chunk_grid", {}).get("configuration", {}).get("chunk_shape")
                      == list(spec.chunks)
                      and meta.get("chunk_key_encoding") == {"name": "default",
                                                             "configuration": {"separator": "/"}}
                      and list(meta.get("shape", [])) == list(spec.shape)
                      and meta.get("fill_value") in (0, 0.0, False)
                      and np.dtype(spec.dtype) == np.dtype(meta.get("data_type")))
                if ok:
                    from numcodecs import Zstd
                    cache[name] = (Zstd().decode, np.zeros((), dtype=spec.dtype))
            except Exception:
                cache[name] = None
        return cache[name]

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
