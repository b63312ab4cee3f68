"""Health checks and summaries of an embedding cache (``verify``, ``info``).

``verify_cache`` reports, one line each: a header whose provenance no longer
hashes to its recorded fingerprint (edited attributes), row metadata that does
not match its fingerprint, duplicate ids, shards not done, and for every done
shard: missing/unwritten chunks, unreadable chunks, checksum mismatches
(damage), NaN/Inf values, zero-norm vectors where the modality is present
(``has_audio``/``has_face``, per valid segment/frame), non-zero vectors where it
is absent, and markers that do not fit their shard.
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Iterable

import numpy as np

from pipeline.cache.layout import rows_fingerprint
from pipeline.cache.lock import CacheLock, lock_path
from pipeline.core.config import fingerprint
from pipeline.core.errors import CacheError
from pipeline.core.progress import progress as progress_

if TYPE_CHECKING:  # pragma: no cover
    from pipeline.cache.reader import EmbeddingCache

# vector array -> (presence flag, per-item validity or None)
_VECTORS = {"audio/clip": ("has_audio", None), "audio/segments": ("has_audio", "audio/segment_valid"),
            "face/clip": ("has_face", None), "face/frames": ("has_face", "face/frame_valid")}


def ranges(ks: Iterable[int]) -> str:
    """``[1, 2, 3, 7]`` -> ``"1-3, 7"``."""
    ks = sorted(ks)
    out, i = [], 0
    while i < len(ks):
        j = i
        while j + 1 < len(ks) and ks[j + 1] == ks[j] + 1:
            j += 1
        out.append(str(ks[i]) if i == j else f"{ks[i]}-{ks[j]}")
        i = j + 1
    return ", ".join(out)


def _first_ids(cache: "EmbeddingCache", rows: np.ndarray, n: int = 3) -> str:
    return ", ".join(cache.ids[rows[:n]].tolist())


def check_shard(cache: "EmbeddingCache", k: int) -> tuple[list[str], list[str]]:
    """(storage problems = damage, content problems) of done shard ``k``."""
    s = cache.shard_slice(k)
    storage = list(cache._backend.shard_problems(k))
    try:
        marker = cache.marker(k)
    except CacheError as e:
        return storage + [f"shard {k}: {e.message}"], []
    if marker.get("shard") != k or marker.get("rows") != [s.start, s.stop]:
        storage.append(f"shard {k}: its marker describes shard {marker.get('shard')} rows "
                       f"{marker.get('rows')}, expected rows {[s.start, s.stop]}")
    blocks: dict[str, np.ndarray] = {}
    for name in cache.names:
        try:
            blocks[name] = cache.read_shard(name, k, check=True)
        except CacheError as e:
            storage.append(e.message)
    content: list[str] = []
    for name, b in blocks.items():
        if b.dtype.kind == "f":
            bad = ~np.isfinite(b.reshape(len(b), -1)).all(axis=1)
            if bad.any():
                rows = np.flatnonzero(bad) + s.start
                content.append(f"shard {k}: {len(rows)} rows of {name} hold NaN/Inf "
                               f"(first: {_first_ids(cache, rows)})")
    for name, (flag, valid) in _VECTORS.items():
        if name not in blocks or flag not in blocks:
            continue
        v = blocks[name].astype(np.float32)
        present = blocks[flag]
        norms = np.sqrt((v * v).sum(axis=-1))  # (n,) or (n, S)
        if valid is not None and valid in blocks:
            want = present[:, None] & blocks[valid]
        else:
            want = present if norms.ndim == 1 else np.broadcast_to(present[:, None], norms.shape)
        zero = want & (norms == 0)
        if zero.any():
            rows = np.flatnonzero(zero.reshape(len(v), -1).any(axis=1)) + s.start
            content.append(f"shard {k}: {len(rows)} rows with {flag} but a zero-norm {name} "
                           f"(first: {_first_ids(cache, rows)})")
        absent = ~present & (norms.reshape(len(v), -1) != 0).any(axis=1)
        if absent.any():
            rows = np.flatnonzero(absent) + s.start
            content.append(f"shard {k}: {len(rows)} rows without {flag} but a non-zero {name} "
                           f"(first: {_first_ids(cache, rows)})")
    local = set(cache.ids[s].tolist())
    strays = [f.get("clip_id") for f in marker.get("failures", []) if f.get("clip_id") not in local]
    if strays:
        content.append(f"shard {k}: failures name clips outside the shard: {strays[:3]}")
    return storage, content


def _progress(it, progress: bool, desc: str):
    if not progress:
        return it
    return progress_(it, desc=desc, unit="shard")


def damaged_shards(cache: "EmbeddingCache", progress: bool = False) -> list[int]:
    """Done shards with storage problems (unreadable, missing or checksum-mismatched data)."""
    return [k for k in _progress(sorted(cache.done_shards()), progress, "checking shards")
            if check_shard(cache, k)[0]]


def verify_cache(cache: "EmbeddingCache", progress: bool = False) -> list[str]:
    """Every problem of ``cache`` as one line each; [] when healthy (see module doc)."""
    cache.refresh()
    out: list[str] = []
    h = cache.header
    got = fingerprint(h.get("provenance"))
    if got != h.get("fingerprint"):
        out.append(f"provenance fingerprint mismatch: the header records {h.get('fingerprint')} but "
                   f"the provenance hashes to {got} (were the store's attributes edited?)")
    try:
        rows = {key: cache._row_meta(key, check=False).tolist() for key in ("ids", "speakers", "splits")}
    except CacheError as e:
        return out + [e.message]
    if any(len(v) != cache.n_rows for v in rows.values()):
        out.append(f"row metadata lengths {[len(v) for v in rows.values()]} != n_rows {cache.n_rows}")
    if rows_fingerprint(rows) != h.get("rows_fingerprint"):
        out.append("row metadata (ids/speakers/splits) does not match its recorded fingerprint")
    dups = [i for i, c in Counter(rows["ids"]).items() if c > 1]
    if dups:
        out.append(f"{len(dups)} duplicate ids (first: {', '.join(dups[:3])})")
    try:
        actual = cache._backend.array_info()
    except Exception as e:  # a store whose arrays cannot even be listed
        return out + [f"array metadata unreadable: {type(e).__name__}: {e}"]
    for name, spec in cache.specs.items():
        a = actual.get(name)
        if a and (tuple(a["shape"]) != spec.shape or np.dtype(a["dtype"]) != np.dtype(spec.dtype)):
            out.append(f"{name}: stored as {a['shape']} {a['dtype']}, layout says "
                       f"{list(spec.shape)} {spec.dtype}")
    pending = [k for k in range(cache.n_shards) if k not in cache.done_shards()]
    if pending:
        out.append(f"{len(pending)} of {cache.n_shards} shards not done: {ranges(pending)}")
    for k in _progress(sorted(cache.done_shards()), progress, "verifying shards"):
        storage, content = check_shard(cache, k)
        out.extend(storage + content)
    return out


def _summary(v):
    if isinstance(v, dict):
        keep = {k: v[k] for k in ("name", "weights", "sha256", "embedding_dim", "seed") if k in v}
        if "sha256" in keep and keep["sha256"]:
            keep["sha256"] = str(keep["sha256"])[:16]
        return keep or {k: v[k] for k in list(v)[:6]}
    return v


def cache_info(cache: "EmbeddingCache") -> dict:
    """JSON-able summary: rows, shards, arrays (shape, dtype, bytes), provenance, failures."""
    cache.refresh()
    fails = cache.failures()
    arrays = cache._backend.array_info()
    prov = cache.provenance
    info = {
        "path": str(cache.path), "backend": cache.backend, "rows": cache.n_rows,
        "shard_size": cache.shard_size, "shards_done": len(cache.done_shards()),
        "shards_total": cache.n_shards, "complete": cache.is_complete, "dtype": cache.layout.dtype,
        "layout": dict(cache.header["layout"]), "arrays": arrays,
        "bytes_on_disk": cache._backend.disk_bytes(), "fingerprint": cache.fingerprint,
        "provenance_summary": {k: _summary(v) for k, v in prov.items()} if isinstance(prov, dict) else prov,
        "provenance": prov,
        "splits": dict(Counter(cache.splits.tolist())),
        "failures": {"count": len(fails), "clips": len({f["clip_id"] for f in fails}),
                     "by_stage": dict(Counter(f["stage"] for f in fails)),
                     "by_modality": dict(Counter(str(f["modality"]) for f in fails))},
        "failures_file": str(cache.failures_path),
        "lock": CacheLock(lock_path(cache.path)).holder(),
    }
    staged = getattr(cache._backend, "staged_shards", None)
    if staged is not None:
        info["shards_staged_not_merged"] = len(staged())
    return info
