"""Stage 1 orchestration: a manifest in, a provenance-stamped embedding cache out.

``run_extract`` reads the manifest (rows = manifest order), loads the backbones once,
creates or reopens the cache (a cache made with a different provenance is refused unless
``overwrite``), holds the cache's writer lock for the whole run (a second extract on the
same cache gets ``CacheError("cache is locked by pid ...")``), and computes the pending
shards in order: decoding runs ahead in ``num_workers`` worker processes (the next
shard is decoded while the current one is in the backbones), each shard is embedded by
``pipeline.extract.shard.embed_shard`` and written whole with ``write_shard``, which
marks it done atomically. A rerun after Ctrl-C or kill -9 skips the done shards; since a
shard's embeddings depend only on its clips and the embedding config, the finished cache
equals an uninterrupted run's. ``failures.jsonl`` is regenerated at the end.
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from pipeline import __version__
from pipeline.core.errors import ManifestError
from pipeline.core.progress import progress as progress_
from pipeline.extract.config import ExtractConfig
from pipeline.extract.decode_pool import decode_spec, iter_decoded
from pipeline.extract.models import Models, get_models, resolve_config
from pipeline.extract.shard import ShardStats, embed_shard
from pipeline.extract.shm_ring import available as ring_available, in_ring

__all__ = ["ExtractConfig", "ExtractSummary", "build_provenance", "compute_pending", "follow_cache",
           "prepare_extract", "run_extract", "summarize"]


@dataclass
class ExtractSummary:
    """What a run did. ``failed_share`` = clips with at least one failure record / rows."""
    cache: str
    n_rows: int
    n_shards: int
    shards_skipped: int
    shards_computed: int
    clips_computed: int
    failed_clips: int
    failed_share: float
    failures_by: dict = field(default_factory=dict)   # "stage/modality" -> count
    seconds: float = 0.0
    stats: ShardStats = field(default_factory=ShardStats)
    failures_path: str | None = None

    @property
    def clips_per_s(self) -> float:
        return self.clips_computed / self.seconds if self.seconds > 0 else 0.0

    def within(self, max_failures: float) -> bool:
        return self.failed_share <= max_failures

    def decode_bound_hint(self) -> str | None:
        """A line when waiting for decoded clips took over a quarter of a run of at least 10 s: the
        backbones were not the bound, the decoding was (as on the GPU box, docs/BENCHMARKS.md)."""
        if self.seconds < 10 or self.stats.wait_seconds < 0.25 * self.seconds:
            return None
        return (f"decoding bound this run: the backbones waited {self.stats.wait_seconds:.0f} s of "
                f"{self.seconds:.0f} s for decoded clips; with cores to spare raise --num-workers, else "
                f"this is the machine's decode rate (`avfuse preflight` measures it without the backbones)")

    def text(self) -> str:
        lines = [f"cache {self.cache}: {self.n_rows} rows in {self.n_shards} shards; "
                 f"{self.shards_computed} computed now, {self.shards_skipped} already done",
                 f"{self.clips_computed} clips in {self.seconds:.1f} s ({self.clips_per_s:.2f} clips/s; "
                 f"decode {self.stats.decode_seconds:.1f} s summed over workers, backbones "
                 f"{self.stats.compute_seconds:.1f} s, waiting for decode {self.stats.wait_seconds:.1f} s)"]
        hint = self.decode_bound_hint()
        if hint:
            lines.append(hint)
        if self.failed_clips:
            by = ", ".join(f"{k}: {v}" for k, v in sorted(self.failures_by.items()))
            lines.append(f"{self.failed_clips} failed clips ({100 * self.failed_share:.2f}% of rows; {by}); "
                         f"see {self.failures_path}")
            if any(k.endswith("/overflow") for k in self.failures_by):
                lines.append("some embeddings overflow float16 (|x| > 65504) and were not stored: rerun with "
                             "--dtype float32 (and --overwrite)")
        else:
            lines.append("no failures")
        return "\n".join(lines)


def build_provenance(records: Sequence, cfg: ExtractConfig, models: Models) -> dict:
    """The cache provenance: version, manifest fingerprint, backbone infos (names, weights
    and their sha256, input specs), and the embedding-relevant config."""
    from data_manifests.manifest import manifest_fingerprint
    return {"avfuse_version": __version__,
            "manifest_fingerprint": manifest_fingerprint(records),
            "audio_backbone": models.audio_info,
            "face_backbone": models.face_info,
            "config": cfg.embedding_config()}


def summarize(writer, *, shards_computed: int, stats: ShardStats, seconds: float) -> ExtractSummary:
    """The run summary from the cache's done markers (all failures so far, this run's stats)."""
    failures = writer.failures()
    failed = {f["clip_id"] for f in failures}
    by = Counter(f"{f['stage']}/{f['modality']}" + ("/overflow" if "--dtype float32" in f["error"] else "")
                 for f in failures)
    return ExtractSummary(cache=str(writer.path), n_rows=writer.n_rows, n_shards=writer.n_shards,
                          shards_skipped=writer.n_shards - shards_computed, shards_computed=shards_computed,
                          clips_computed=stats.clips, failed_clips=len(failed),
                          failed_share=len(failed) / writer.n_rows, failures_by=dict(by),
                          seconds=seconds, stats=stats, failures_path=str(writer.failures_path))


def follow_cache(cfg: ExtractConfig, cache: str | Path, overwrite: bool = False) -> ExtractConfig:
    """``cfg`` with ``resize_on="auto"`` resolved as the existing ``cache`` was made (its
    provenance's ``config.resize_on``; absent = ``cpu``), so a cache begun on one device resumes
    with ``auto`` on another (both resizes give the same embeddings to cosine > 0.9999, but a
    cache holds one of them). Unchanged when ``resize_on`` is explicit, with ``overwrite``, or
    when ``cache`` is not a readable cache (creating it then says what is wrong)."""
    import dataclasses

    if cfg.resize_on != "auto" or overwrite or not Path(cache).exists():
        return cfg
    from pipeline.cache.reader import EmbeddingCache
    from pipeline.core.errors import AvfuseError
    try:
        old = EmbeddingCache(cache)
    except (AvfuseError, OSError):
        return cfg
    try:
        recorded = (old.provenance.get("config") or {}).get("resize_on", "cpu")
    finally:
        old.close()
    return dataclasses.replace(cfg, resize_on=recorded) if recorded in ("cpu", "device") else cfg


def prepare_extract(manifest: str | Path, cache: str | Path, cfg: ExtractConfig, *, overwrite: bool = False,
                    models: Models | None = None):
    """Resolve and check the config, read the manifest, load the backbones and create or
    reopen the cache (``resize_on="auto"`` follows an existing cache: :func:`follow_cache`).
    Returns ``(cfg, records, models, writer)``. Shared with the Dask runner:
    a driver without the workers' device passes ``models=get_models(replace(cfg, device="cpu"))``
    (the backbone infos do not depend on the device; the provenance's compute precision
    comes from ``cfg``)."""
    from data_manifests.manifest import read_manifest
    from pipeline.cache.layout import CacheLayout
    from pipeline.cache.writer import create_cache
    cfg = follow_cache(resolve_config(cfg), cache, overwrite)
    cfg.validate()
    records = read_manifest(manifest)
    if not records:
        raise ManifestError("the manifest holds no clips", path=manifest, hint="check how it was made")
    models = models or get_models(cfg)
    layout = CacheLayout(audio_dim=models.audio_info["embedding_dim"] if models.audio_info else None,
                         face_dim=models.face_info["embedding_dim"] if models.face_info else None,
                         segments=cfg.segments, frames=cfg.frames, dtype=cfg.dtype, shard_size=cfg.shard_size)
    writer = create_cache(cache, ids=[r.clip_id for r in records], speakers=[r.speaker for r in records],
                          splits=[r.split or "" for r in records], layout=layout,
                          provenance=build_provenance(records, cfg, models), overwrite=overwrite)
    return cfg, records, models, writer


def _pickled(d) -> bool:
    """Whether a decoded clip's arrays came pickled rather than as views into the hand-off ring."""
    arrays = [a for a in (d.audio, d.faces) if a is not None]
    return bool(arrays) and not in_ring(arrays[0])


def _group(stream, sizes: Sequence[int]):
    """Yield lists of ``sizes[k]`` consecutive items of ``stream`` and the wall time waited."""
    it = iter(stream)
    for size in sizes:
        items, waited = [], 0.0
        for _ in range(size):
            t0 = time.perf_counter()
            items.append(next(it))
            waited += time.perf_counter() - t0
        yield items, waited


def run_extract(manifest: str | Path, cache: str | Path, cfg: ExtractConfig, *, overwrite: bool = False,
                progress: bool = True, decode_backend: str = "process",
                on_shard: Callable[[int, ShardStats], None] | None = None) -> ExtractSummary:
    """Extract every pending shard of ``cache`` from ``manifest`` (see the module docstring).

    ``decode_backend``: "process" (DataLoader worker processes) or "thread". ``on_shard(k,
    stats)`` is called after shard k is written. Raises ``ConfigError``/``ManifestError``/
    ``BackboneError``/``CacheError`` for problems a user can fix; bad media never raise.
    """
    t_start = time.perf_counter()
    cfg, records, models, writer = prepare_extract(manifest, cache, cfg, overwrite=overwrite)
    try:
        with writer.lock():
            pending = repair_and_pending(writer, progress)
            todo_rows = sum(writer.shard_slice(k).stop - writer.shard_slice(k).start for k in pending)
            if progress:
                print(f"avfuse: extract {todo_rows:,} of {writer.n_rows:,} clips ({len(pending):,} of "
                      f"{writer.n_shards:,} shards): {cfg.describe()}", file=sys.stderr)
            with progress_(total=writer.n_rows, initial=writer.n_rows - todo_rows, unit="clip", enabled=progress,
                           tty_only=False, leave=True, desc="extract", smoothing=0.1) as bar:
                try:
                    total = compute_pending(writer, records, cfg, models, pending, progress=bar,
                                            decode_backend=decode_backend, on_shard=on_shard)
                except KeyboardInterrupt:
                    writer.finalize()  # failures.jsonl consistent with the shards done so far
                    raise
            writer.finalize()
        return summarize(writer, shards_computed=len(pending), stats=total,
                         seconds=time.perf_counter() - t_start)
    finally:
        writer.close()


def repair_and_pending(writer, progress: bool = False) -> list[int]:
    """The shards to compute: the not-done ones plus done shards whose stored data is damaged
    (a deleted or corrupted chunk, a clobbered marker), which are invalidated first. Reads each
    done shard once to check its checksums: on a fresh cache this costs nothing."""
    pending = writer.pending_shards()
    bad = writer.damaged_shards(progress=progress) if writer.done_shards() else []
    if bad:
        print(f"avfuse: {len(bad)} damaged shard(s) will be recomputed: {bad[:8]}"
              f"{' ...' if len(bad) > 8 else ''}", file=sys.stderr)
        for k in bad:
            writer.invalidate_shard(k)
    return sorted(set(pending) | set(bad))


def compute_pending(writer, records: Sequence, cfg: ExtractConfig, models: Models, shards: Sequence[int], *,
                    progress=None, decode_backend: str = "process",
                    on_shard: Callable[[int, ShardStats], None] | None = None) -> ShardStats:
    """Compute and write ``shards`` (in order) of ``writer`` in this process. Decoding runs
    ahead in ``cfg.num_workers`` workers across shard boundaries. ``progress``: a tqdm bar
    (or anything with ``update(n)`` and ``set_postfix_str``). Returns the summed stats."""
    slices = [writer.shard_slice(k) for k in shards]
    todo = [records[r] for s in slices for r in range(s.start, s.stop)]
    stream = iter_decoded(todo, decode_spec(cfg, models), num_workers=cfg.num_workers, backend=decode_backend,
                          prefetch=max(2 * cfg.num_workers, min(cfg.shard_size, 256)))
    ring = decode_backend == "process" and cfg.num_workers > 0 and ring_available()
    total = ShardStats()
    update = progress.update if progress is not None else None
    try:
        groups = _group(stream, [s.stop - s.start for s in slices])
        for k in shards:     # not zip(): it keeps its last tuple, and with it the last shard's clips
            items, waited = next(groups)
            res = embed_shard(items, cfg, models, progress=update)
            writer.write_shard(k, res.arrays, res.failures)
            res.stats.wait_seconds = waited
            res.stats.pickled_clips = sum(_pickled(d) for d in items) if ring else 0
            total.add(res.stats)
            n_fail = len({f["clip_id"] for f in res.failures})
            if n_fail and progress is not None:
                progress.set_postfix_str(f"shard {k}: {n_fail} failed", refresh=False)
            if on_shard is not None:
                on_shard(k, res.stats)
            # drop the shard's clips before the next is collected: their arrays are views into the
            # hand-off ring, and held they kept its slots, so every other shard travelled pickled
            del items, res
    finally:
        close = getattr(stream, "close", None)
        if close is not None:
            close()
    return total
