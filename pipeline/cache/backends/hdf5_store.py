"""HDF5 backend of the embedding cache (``*.h5`` / ``*.hdf5``).

HDF5 is single-writer and not crash-safe when written in place, so the live
``C.h5`` is never opened for writing:

* ``write_shard`` stages the shard beside it: ``C.h5.parts/000012.npz`` (the
  arrays, written to a temp file, fsynced, renamed), then the marker
  ``C.h5.parts/000012.json`` (same way). Any number of processes may stage
  different shards at once (Dask workers).
* ``finalize()`` (extraction calls it at the end of a run, and may call it now
  and then) copies ``C.h5`` to a temp file, writes the staged shards into the
  copy (checksums verified first; a damaged part is left staged and warned
  about), fsyncs it and renames it over ``C.h5``; only then are the merged part
  files removed. Finalizers are serialised by an flock on
  ``C.h5.parts/.finalize.lock``. A finalizer also removes what killed runs left:
  merge copies, and part temp files (``.000012.HOST-PID-XXXXXXXX.tmp``) of this
  host whose PID no longer exists.
* ``C.h5`` holds the header JSON in root attribute ``avfuse``, the data arrays
  (uncompressed, chunk = one shard of rows, readable by any HDF5 tool), the
  ``ids``/``speakers``/``splits`` string datasets and ``_avfuse/markers``
  (one JSON string per shard, "" = not merged).

Done shards = merged markers + staged markers, minus merged shards invalidated
by a tombstone ``C.h5.parts/000012.invalid``. Readers read staged shards from
their part files, so a shard is readable as soon as ``write_shard`` returns;
``finalize`` only makes the .h5 self-contained. Kill -9 at any point leaves the
old or the new ``C.h5`` plus valid parts: nothing half-written is ever read.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import uuid
import warnings
from pathlib import Path

import numpy as np

from pipeline.cache.backends.base import CacheBackend
from pipeline.cache.layout import ROW_META, ArraySpec, crc32
from pipeline.core.errors import CacheError
from pipeline.core.fsio import atomic_write_bytes, fsync_dir, fsync_file, is_dead_local_writer, tree_bytes, writer_tag

MARKERS = "_avfuse/markers"
_PART_TEMP = re.compile(r"\.\d{6}\.(.+)\.tmp$")   # a part being staged: .NNNNNN.HOST-PID-XXXXXXXX.tmp


def _h5py():
    import h5py
    return h5py


def _key(name: str) -> str:
    return name.replace("/", "__")



def _stat_id(path: Path) -> tuple | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)


class H5Backend(CacheBackend):
    kind = "hdf5"

    def __init__(self, path: Path):
        super().__init__(path)
        self.parts = path.with_name(path.name + ".parts")
        self._fh = None
        self._fh_id: tuple | None = None

    # ---- creation / removal ---------------------------------------------
    @classmethod
    def create(cls, path: Path, header: dict, rows: dict[str, np.ndarray],
               specs: dict[str, ArraySpec], shard_size: int) -> bool:
        h5py = _h5py()
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists():  # parts without their .h5 belong to a removed cache: never adopt them
            cls.remove_store(path)
        tmp = path.with_name(f".{path.name}.creating-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        n = int(header["n_rows"])
        try:
            with h5py.File(tmp, "w") as f:
                for name, spec in specs.items():
                    chunks = (min(spec.chunks[0], n), *spec.chunks[1:])
                    f.create_dataset(name, shape=spec.shape, dtype=spec.dtype, chunks=chunks,
                                     fillvalue=False if spec.dtype == "bool" else 0)
                for key in ROW_META:
                    f.create_dataset(key, data=np.asarray(rows[key], dtype=object),
                                     dtype=h5py.string_dtype())
                f.create_dataset(MARKERS, shape=(-(-n // shard_size),), dtype=h5py.string_dtype())
                f.attrs["avfuse"] = json.dumps(header, sort_keys=True)
            fsync_file(tmp)
            try:
                os.link(tmp, path)  # no-clobber: another creator may have won
            except FileExistsError:
                return False
            fsync_dir(path.parent)
            return True
        finally:
            tmp.unlink(missing_ok=True)

    @classmethod
    def remove_store(cls, path: Path) -> None:
        path.unlink(missing_ok=True)
        parts = path.with_name(path.name + ".parts")
        if parts.exists():
            gone = path.with_name(f".{parts.name}.removing-{os.getpid()}-{uuid.uuid4().hex[:8]}")
            os.rename(parts, gone)
            shutil.rmtree(gone)

    # ---- the .h5 file -----------------------------------------------------
    def _file(self):
        """A read handle on the current C.h5 (reopened after finalize renamed a new one in)."""
        sid = _stat_id(self.path)
        if sid is None:
            raise CacheError("the HDF5 cache file is gone", path=self.path)
        if self._fh is None or self._fh_id is None or self._fh_id[0] != sid[0]:
            self.close()
            try:
                self._fh = _h5py().File(self.path, "r")
            except OSError as e:
                raise CacheError(f"not a readable HDF5 file ({e})", path=self.path) from e
            self._fh_id = sid
        return self._fh

    def read_header(self) -> dict:
        raw = self._file().attrs.get("avfuse")
        if raw is None:
            return {}
        try:
            return json.loads(raw)
        except ValueError as e:
            raise CacheError(f"the avfuse header attribute is not valid JSON ({e})", path=self.path) from e

    def read_rows(self) -> dict[str, np.ndarray]:
        f = self._file()
        try:
            return {key: np.array(f[key].asstr()[:].tolist(), dtype=str) for key in ROW_META}
        except (KeyError, OSError) as e:
            raise CacheError(f"row metadata is unreadable ({e})", path=self.path) from e

    def _merged(self) -> dict[int, str]:
        vals = self._file()[MARKERS].asstr()[:]
        return {k: v for k, v in enumerate(vals.tolist()) if v}

    # ---- staged parts -------------------------------------------------------
    def _part(self, k: int, ext: str) -> Path:
        return self.parts / f"{k:06d}.{ext}"

    def _listing(self, ext: str) -> set[int]:
        try:
            names = os.listdir(self.parts)
        except FileNotFoundError:
            return set()
        suffix = "." + ext
        return {int(x[:-len(suffix)]) for x in names
                if x.endswith(suffix) and x[:-len(suffix)].isdigit()}

    def done_shards(self) -> set[int]:
        staged = self._listing("json")
        merged = set(self._merged()) - self._listing("invalid")
        return {k for k in staged | merged if k < self.n_shards}

    def read_markers(self, ks: list[int]) -> dict[int, dict]:
        merged = None
        out: dict[int, dict] = {}
        for k in ks:
            try:
                try:
                    out[k] = json.loads(self._part(k, "json").read_text())
                    continue
                except FileNotFoundError:
                    pass
                merged = self._merged() if merged is None else merged
                if k in merged:
                    out[k] = json.loads(merged[k])
            except (OSError, ValueError):
                continue
        return out

    def write_shard(self, k: int, start: int, stop: int, arrays: dict[str, np.ndarray],
                    marker: dict) -> None:
        self.parts.mkdir(parents=True, exist_ok=True)
        self._part(k, "json").unlink(missing_ok=True)
        tmp = self.parts / f".{k:06d}.{writer_tag()}-{uuid.uuid4().hex[:8]}.tmp"
        try:
            with open(tmp, "wb") as f:
                np.savez(f, **{_key(n): a for n, a in arrays.items()})
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self._part(k, "npz"))
        finally:
            tmp.unlink(missing_ok=True)
        atomic_write_bytes(self._part(k, "json"), json.dumps(marker, sort_keys=True).encode())
        fsync_dir(self.parts)

    def remove_marker(self, k: int) -> None:
        self._part(k, "json").unlink(missing_ok=True)
        self._part(k, "npz").unlink(missing_ok=True)
        if k in self._merged():
            atomic_write_bytes(self._part(k, "invalid"), b"invalidated\n")
        if self.parts.exists():
            fsync_dir(self.parts)

    def _read_part(self, k: int, name: str) -> np.ndarray:
        with np.load(self._part(k, "npz"), allow_pickle=False) as z:
            return z[_key(name)]

    def read(self, name: str, start: int, stop: int) -> np.ndarray:
        k = start // self.shard_size
        base = k * self.shard_size
        if self._part(k, "json").exists():
            try:
                return self._read_part(k, name)[start - base:stop - base]
            except FileNotFoundError:
                pass  # merged and removed by a finalize meanwhile: read the new C.h5
        return self._file()[name][start:stop]

    def shard_problems(self, k: int) -> list[str]:
        if self._part(k, "json").exists():
            if not self._part(k, "npz").is_file():
                return [f"shard {k}: staged part file {self._part(k, 'npz').name} is missing"]
            return []
        f = self._file()
        out = []
        for name, spec in self.specs.items():
            coord = (k * self.shard_size,) + (0,) * (len(spec.shape) - 1)
            if f[name].id.get_chunk_info_by_coord(coord).byte_offset is None:
                out.append(f"shard {k}: the chunk of {name} was never written to {self.path.name}")
        return out

    # ---- merging ----------------------------------------------------------
    def finalize(self) -> None:
        if not self.parts.is_dir():
            return
        fd = os.open(self.parts / ".finalize.lock", os.O_CREAT | os.O_RDWR, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            self._merge()
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def _merge(self) -> None:
        for stale in self.path.parent.glob(f".{self.path.name}.finalize-*"):
            stale.unlink(missing_ok=True)  # a finalize killed midway (we hold the flock)
        for name in os.listdir(self.parts):  # part files of stagers killed midway (this host, pid gone)
            m = _PART_TEMP.match(name)
            if m and is_dead_local_writer(m.group(1)):
                (self.parts / name).unlink(missing_ok=True)
        staged = {k: (_stat_id(self._part(k, "json")), _stat_id(self._part(k, "npz")))
                  for k in sorted(self._listing("json")) if k < self.n_shards}
        tombs = {k: _stat_id(self._part(k, "invalid")) for k in self._listing("invalid")}
        if not staged and not tombs:
            return
        h5py = _h5py()
        tmp = self.path.with_name(f".{self.path.name}.finalize-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        merged: list[int] = []
        try:
            shutil.copyfile(self.path, tmp)
            with h5py.File(tmp, "r+") as f:
                for k in staged:
                    if self._merge_one(f, k):
                        merged.append(k)
                for k in tombs:  # invalidated and not replaced by a good staged shard
                    if k not in merged and k < self.n_shards:
                        f[MARKERS][k] = ""
            fsync_file(tmp)
            os.replace(tmp, self.path)
            fsync_dir(self.path.parent)
        finally:
            tmp.unlink(missing_ok=True)
        for k in merged:  # marker first, so a part never looks staged without its data
            if _stat_id(self._part(k, "json")) == staged[k][0]:
                self._part(k, "json").unlink(missing_ok=True)
                if _stat_id(self._part(k, "npz")) == staged[k][1]:
                    self._part(k, "npz").unlink(missing_ok=True)
        for k, sid in tombs.items():
            if _stat_id(self._part(k, "invalid")) == sid:
                self._part(k, "invalid").unlink(missing_ok=True)
        fsync_dir(self.parts)

    def _merge_one(self, f, k: int) -> bool:
        start = k * self.shard_size
        try:
            text = self._part(k, "json").read_text()
            marker = json.loads(text)
            with np.load(self._part(k, "npz"), allow_pickle=False) as z:
                data = {name: z[_key(name)] for name in self.specs}
            for name, a in data.items():
                if marker["checksums"].get(name) != crc32(a):
                    raise ValueError(f"checksum mismatch in {name}")
        except (OSError, ValueError, KeyError) as e:
            warnings.warn(f"{self.parts}: staged shard {k} is damaged and was not merged ({e}); "
                          f"`avfuse cache verify` lists it", stacklevel=4)
            return False
        for name, a in data.items():
            f[name][start:start + len(a)] = a
        f[MARKERS][k] = text
        return True

    # ---- sizes --------------------------------------------------------------
    def array_info(self) -> dict[str, dict]:
        f = self._file()
        return {name: {"shape": list(s.shape), "dtype": s.dtype, "chunks": list(f[name].chunks),
                       "bytes_on_disk": int(f[name].id.get_storage_size())}
                for name, s in self.specs.items()}

    def disk_bytes(self) -> int:
        return tree_bytes(self.path) + (tree_bytes(self.parts) if self.parts.exists() else 0)

    def staged_shards(self) -> set[int]:
        return self._listing("json")

    def close(self) -> None:
        if self._fh is not None:
            try:
                self._fh.close()
            except Exception:
                pass
        self._fh = None
        self._fh_id = None
