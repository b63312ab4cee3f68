"""Write side of the embedding cache: ``create_cache``, ``CacheWriter``, ``open_writer``.

Import these from ``pipeline.cache`` (re-exported there). See ``pipeline/cache/``
for the on-disk contract (shards, markers, checksums, lock, failures.jsonl).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Iterable

import numpy as np

from pipeline import __version__
from pipeline.cache.backends import backend_for
from pipeline.cache.backends.base import CacheBackend
from pipeline.cache.layout import (
    _MODALITY_ARRAYS,
    FAILURE_MODALITIES,
    FORMAT,
    FORMAT_VERSION,
    STAGES,
    CacheLayout,
    array_specs,
    crc32,
    dict_diff,
    rows_fingerprint,
)
from pipeline.cache.lock import CacheLock, lock_path
from pipeline.cache.reader import EmbeddingCache
from pipeline.core.config import canonical_json, fingerprint, to_dict
from pipeline.core.errors import CacheError
from pipeline.core.fsio import atomic_write_text, pid_alive


class CacheWriter(EmbeddingCache):
    """Write access: whole shards, markers, lock, finalize (``create_cache``/``open_writer``).

    Several processes may hold writers of one cache and write *different* shards
    concurrently (Dask workers); the driver holds ``lock()`` and calls ``finalize()``.
    """

    def __init__(self, path: str | Path):
        super().__init__(path)
        self._lock = CacheLock(lock_path(self.path))

    def lock(self) -> CacheLock:
        """Context manager holding ``<store>.lock``; a second writer gets CacheError."""
        return self._lock

    def pending_shards(self) -> list[int]:
        """Shards not done yet (rescans the store first)."""
        self.refresh()
        return [k for k in range(self.n_shards) if k not in self._done]

    def write_shard(self, k: int, arrays: dict[str, np.ndarray], failures: list[dict] = ()) -> None:
        """Write all arrays of shard ``k`` (its rows only), then mark it done atomically.

        ``arrays`` must hold exactly ``self.names``, each ``(rows_in_shard, *tail)``.
        Floats are stored as ``layout.dtype``. Rows with ``has_audio``/``has_face``
        False are stored as all-zero vectors with False validity, whatever was
        passed. ``failures``: dicts with ``clip_id`` (a clip of this shard), ``stage``
        (decode|backbone|write), ``error`` (str), ``modality`` (audio|face|both|None).
        """
        s = self.shard_slice(k)
        n = s.stop - s.start
        missing = [x for x in self.specs if x not in arrays]
        extra = [x for x in arrays if x not in self.specs]
        if missing or extra:
            raise CacheError(f"write_shard({k}): arrays do not match the cache layout"
                             + (f"; missing {missing}" if missing else "")
                             + (f"; unexpected {extra}" if extra else ""), path=self.path)
        stored: dict[str, np.ndarray] = {}
        for name, spec in self.specs.items():
            a = np.asarray(arrays[name])
            want = (n, *spec.shape[1:])
            if a.shape != want:
                raise CacheError(f"write_shard({k}): {name} has shape {a.shape}, expected {want}",
                                 path=self.path)
            stored[name] = np.ascontiguousarray(a.astype(spec.dtype, copy=True))
        for modality, names in _MODALITY_ARRAYS.items():
            flag = stored[f"has_{modality}"]
            if not any(x in stored for x in names):
                if flag.any():
                    raise CacheError(f"write_shard({k}): has_{modality} is True but the cache has no "
                                     f"{modality} arrays", path=self.path)
                continue
            for x in names:
                stored[x][~flag] = 0
        marker = {"shard": k, "rows": [s.start, s.stop],
                  "checksums": {name: crc32(a) for name, a in stored.items()},
                  "failures": self._check_failures(k, s, failures)}
        try:
            self._backend.write_shard(k, s.start, s.stop, stored, marker)
        except OSError as e:  # ENOSPC, EFBIG, EDQUOT...: one clear line, the done shards stay valid
            raise CacheError(f"cannot write shard {k}: {e.strerror or e}", path=self.path,
                             hint=f"free disk space (or raise the file-size limit) and rerun: the "
                                  f"{len(self._done)} done shard(s) are kept and the run resumes") from e
        self._done.add(k)
        self._markers[k] = json.loads(json.dumps(marker))

    def _check_failures(self, k: int, s: slice, failures: Iterable[dict]) -> list[dict]:
        failures = [dict(to_dict(f)) for f in failures]
        if not failures:
            return []
        local = {c: i for i, c in enumerate(self.ids[s].tolist())}
        for f in failures:
            for key in ("clip_id", "stage", "error", "modality"):
                if key not in f:
                    raise CacheError(f"write_shard({k}): failure entry lacks {key!r}: {f}", path=self.path)
            if f["clip_id"] not in local:
                raise CacheError(f"write_shard({k}): failure for clip {f['clip_id']!r}, which is not "
                                 f"in shard {k}", path=self.path)
            if f["stage"] not in STAGES:
                raise CacheError(f"write_shard({k}): failure stage must be one of {STAGES}, got "
                                 f"{f['stage']!r}", path=self.path)
            if f["modality"] not in FAILURE_MODALITIES:
                raise CacheError(f"write_shard({k}): failure modality must be one of {FAILURE_MODALITIES}, "
                                 f"got {f['modality']!r}", path=self.path)
            f["error"] = str(f["error"])
        return sorted(failures, key=lambda f: local[f["clip_id"]])

    def invalidate_shard(self, k: int) -> None:
        """Mark shard ``k`` not done (its marker is removed), so extraction recomputes it."""
        self.shard_slice(k)
        self._backend.remove_marker(k)
        self._done.discard(k)
        self._markers.pop(k, None)

    def finalize(self) -> None:
        """Make the store complete on disk (HDF5: merge staged shards into the .h5) and
        regenerate ``failures.jsonl`` from the markers. Safe to call any time, repeatedly."""
        self._backend.finalize()
        self.refresh()
        self.write_failures_file()

    def write_failures_file(self) -> Path:
        """Atomically rewrite ``<store>.failures.jsonl`` from the done markers (row order)."""
        self.refresh()
        lines = [json.dumps(f, sort_keys=True) + "\n" for f in self.failures()]
        atomic_write_text(self.failures_path, "".join(lines))
        return self.failures_path

    def __reduce__(self):
        return (open_writer, (str(self.path),))


def _store_header(layout: CacheLayout, n_rows: int, provenance: dict, rows_fp: str) -> dict:
    prov = json.loads(canonical_json(provenance))
    return {"format": FORMAT, "format_version": FORMAT_VERSION, "avfuse_version": __version__,
            "n_rows": n_rows, "layout": to_dict(layout), "provenance": prov,
            "fingerprint": fingerprint(prov), "rows_fingerprint": rows_fp}


def create_cache(path: str | Path, *, ids, speakers, splits, layout: CacheLayout,
                 provenance: dict, overwrite: bool = False) -> CacheWriter:
    """Create a cache, or reopen it for resuming when one with the same provenance,
    layout and rows exists. A different one -> CacheError naming what differs,
    unless ``overwrite`` (then it is removed and recreated). Backend by suffix."""
    path = Path(path)
    layout.validate()
    cls = backend_for(path, creating=True)
    rows = {"ids": [str(x) for x in ids], "speakers": [str(x) for x in speakers],
            "splits": [str(x) for x in splits]}
    n = len(rows["ids"])
    if n == 0:
        raise CacheError("cannot create a cache with no rows", path=path, hint="check the manifest")
    if len(rows["speakers"]) != n or len(rows["splits"]) != n:
        raise CacheError(f"ids, speakers and splits differ in length ({n}, {len(rows['speakers'])}, "
                         f"{len(rows['splits'])})", path=path)
    if len(set(rows["ids"])) != n:
        seen, dups = set(), []
        for x in rows["ids"]:
            if x in seen and len(dups) < 5:
                dups.append(x)
            seen.add(x)
        raise CacheError(f"duplicate clip ids ({n - len(set(rows['ids']))} duplicates, first: "
                         f"{', '.join(dups)})", path=path, hint="clip ids must be unique in the manifest")
    try:
        json.dumps(to_dict(provenance))
    except (TypeError, ValueError) as e:
        raise CacheError(f"provenance must be JSON-able: {e}", path=path) from e
    header = _store_header(layout, n, provenance, rows_fingerprint(rows))
    if path.exists():
        if not overwrite:
            _check_same(path, header, rows)
            return CacheWriter(path)
        CacheLock(lock_path(path)).check_not_held()
        remove_existing(path, cls)
    _remove_stale_temps(path)
    arrays = np.asarray(rows["ids"]), np.asarray(rows["speakers"]), np.asarray(rows["splits"])
    created = cls.create(path, header, dict(zip(("ids", "speakers", "splits"), arrays)),
                         array_specs(layout, n), layout.shard_size)
    if not created:  # another process created it first: same rules as an existing cache
        _check_same(path, header, rows)
    return CacheWriter(path)


def _remove_stale_temps(path: Path) -> None:
    """Remove ``.NAME.creating-PID-*`` / ``.NAME.removing-PID-*`` left by killed processes."""
    for kind in ("creating", "removing"):
        for tmp in path.parent.glob(f".{path.name}*.{kind}-*"):
            pid = tmp.name.rsplit(f".{kind}-", 1)[1].split("-", 1)[0]
            if pid.isdigit() and not pid_alive(int(pid)):
                if tmp.is_dir():
                    shutil.rmtree(tmp, ignore_errors=True)
                else:
                    tmp.unlink(missing_ok=True)


def _check_same(path: Path, header: dict, rows: dict) -> None:
    try:
        old = EmbeddingCache(path)
    except CacheError as e:
        raise CacheError(f"cannot reuse the existing path: {e.message}", path=path,
                         hint="pass overwrite=True (`--overwrite`) to replace it, or pick another path") from e
    diffs = dict_diff({"layout": old.header["layout"], "provenance": old.provenance},
                      {"layout": header["layout"], "provenance": header["provenance"]})
    if old.header.get("rows_fingerprint") != header["rows_fingerprint"]:
        diffs.append(_rows_diff(old, rows))
    old.close()
    if diffs:
        shown = "; ".join(diffs[:8]) + (f"; ... {len(diffs) - 8} more" if len(diffs) > 8 else "")
        raise CacheError(f"an existing cache was made differently ({shown})", path=path,
                         hint="pass overwrite=True (`--overwrite`) to replace it, or pick another path")


def _rows_diff(old: EmbeddingCache, rows: dict) -> str:
    for key in ("ids", "speakers", "splits"):
        a, b = old._row_meta(key).tolist(), rows[key]
        if a != b:
            if len(a) != len(b):
                return f"{key}: {len(a)} rows (cache) != {len(b)} rows (requested)"
            i = next(i for i, (x, y) in enumerate(zip(a, b)) if x != y)
            return f"{key}[{i}]: {a[i]!r} (cache) != {b[i]!r} (requested)"
    return "row metadata differs"


def remove_existing(path: Path, cls: type[CacheBackend]) -> None:
    """Remove an existing cache (only if it is one; never an arbitrary folder)."""
    try:
        old = EmbeddingCache(path)
        old.close()
    except CacheError as e:
        if not (path.is_dir() and not any(path.iterdir())):
            raise CacheError(f"refusing to overwrite: {e.message}", path=path,
                             hint="remove it yourself if it really should go") from e
    cls.remove_store(path)
    for extra in (path.with_name(path.name + ".failures.jsonl"),):
        extra.unlink(missing_ok=True)
    if path.is_dir():
        shutil.rmtree(path)


def open_writer(path: str | Path) -> CacheWriter:
    """Open an existing cache for writing shards (e.g. in a Dask worker); no provenance check."""
    return CacheWriter(path)
