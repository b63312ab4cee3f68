"""Stage 1 on Dask distributed: one task per shard, on many GPUs or many nodes.

This module is the driver; ``cluster`` starts or joins a cluster, ``worker`` is what
runs in the workers, ``summary`` reports; ``pipeline.cli.dask_options`` holds the
``avfuse extract`` options.

Cluster: ``open_cluster(ClusterOptions(...))`` starts a ``LocalCluster`` with one worker
process per GPU (each pinned through ``CUDA_VISIBLE_DEVICES`` in its environment, with
its own decode threads), or connects to a running scheduler (``dask scheduler`` +
``dask worker``, dask-jobqueue, Kubernetes). Scheduler, workers and dashboard bind to
``127.0.0.1`` unless ``bind_host`` says otherwise.

Driver: ``run_distributed`` prepares the cache exactly like the in-process run
(``pipeline.extract.run.prepare_extract``: manifest, provenance, create-or-resume, writer
lock held for the whole run), then submits one task per *pending* shard (the cache's
done markers are the one and only resume state). At most one task per worker thread
is in flight (so a dying worker takes only what it was running with it). A task
(``shard_task``) computes its shard with ``pipeline.extract.shard.compute_shard`` and
writes it whole into the shared store with ``write_shard``, which marks it done atomically; HDF5 tasks stage per-shard
part files that the driver merges with ``finalize()`` at the end. Tasks never write a
shard that is already done, so a re-executed task cannot write twice.

Workers: ``ExtractPlugin`` (a worker plugin) builds and loads the backbones once per
worker process (weights read from the path *on the worker*, sha256 checked against the
cache's provenance); tasks reuse them. Failure handling:

* a worker that dies mid-shard: the scheduler reschedules the task (up to
  ``allowed_failures`` deaths per task); the shard is recomputed and written once;
* a shard that fails repeatedly (KilledWorker, or an exception after ``retries``) is
  recomputed *clip by clip in isolation* (one clip at a time: a decode task, then an
  embed task); a clip whose task fails again is flagged like any failed clip
  (``pipeline.extract.shard.failed_shard``: zero vectors, one failure record per modality, stage
  ``decode`` or ``backbone``) and the driver writes the shard. The run ends.
  More than ``max_fallback_shards`` such shards abort the run with ``ClusterError``
  (broken workers, not poison inputs);
* an ``AvfuseError`` raised in a task (changed cache, weights that differ on a node, no
  CUDA on a worker) aborts the run with that error; done shards are kept;
* no worker left for ``wait_workers_s``: ``ClusterError`` (never a hung run);
* tasks of an interrupted earlier run still executing on the workers are waited for
  before the pending shards are listed (local-cluster workers die with the driver:
  distributed's workers exit at once when their parent process is gone).
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections import Counter, deque
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from pipeline.core.config import fingerprint
from pipeline.core.errors import AvfuseError, CacheError, ClusterError
from pipeline.extract.config import ExtractConfig
from pipeline.extract.dask.cluster import ClusterOptions, log_stderr, open_cluster
from pipeline.extract.dask.summary import DaskProgress, DistributedSummary
from pipeline.extract.dask.worker import (
    PLUGIN_NAME,
    ExtractPlugin,
    decode_task,
    embed_task,
    free_models,
    probe_worker,
    running_keys,
    shard_task,
)
from pipeline.extract.models import worker_weights
from pipeline.extract.run import follow_cache, prepare_extract, repair_and_pending
from pipeline.extract.shard import ShardStats

__all__ = ["ClusterOptions", "DistributedSummary", "ExtractPlugin", "open_cluster", "run_distributed",
           "shard_task"]


def _wait_for_orphans(client, prefix: str, log, timeout: float = 3600.0) -> None:
    """Wait until no worker still executes a task of this cache from an interrupted run."""
    t0, told = time.time(), False
    while True:
        running = sum(len(v) for v in client.run(running_keys, prefix).values())
        if not running:
            return
        if not told:
            log(f"avfuse: waiting for {running} shard task(s) of an interrupted earlier run, still running "
                f"on the workers, to finish")
            told = True
        if time.time() - t0 > timeout:
            raise ClusterError(f"{running} task(s) of an earlier run on this cache are still running after "
                               f"{timeout:.0f} s", hint="restart the Dask workers, then rerun")
        time.sleep(0.5)


def _check_workers(client, cache_path: str, records: Sequence, device: str, log) -> None:
    media = []
    for r in records[:1]:
        media += [p for p in (r.audio_path, r.video_path, r.frames_dir) if p]
    replies = client.run(probe_worker, cache_path, media)
    for addr, rep in sorted(replies.items()):
        if not rep["cache"]:
            raise ClusterError(f"worker {addr} on {rep['host']} does not see the cache {cache_path}",
                               path=cache_path, hint="the cache must be on a filesystem every worker mounts at "
                                                     "the same path (docs/distributed.md)")
        if rep["missing_media"]:
            raise ClusterError(f"worker {addr} on {rep['host']} does not see the corpus (e.g. "
                               f"{rep['missing_media'][0]})", hint="the media must be on a shared filesystem, "
                                                                  "mounted at the same path on every node")
    if device == "cpu" and any(rep["cuda"] for rep in replies.values()):
        log("avfuse: note: the workers have GPUs but --device is cpu; pass --device cuda to use them")


def run_distributed(manifest: str | Path, cache: str | Path, cfg: ExtractConfig, *, client,
                    overwrite: bool = False, progress: bool = True, torch_threads: int | None = None,
                    max_fallback_shards: int | None = None,
                    window: int | None = None, wait_workers_s: float = 1800.0,
                    on_shard: Callable[[int, dict], None] | None = None,
                    log: Callable[[str], None] | None = None) -> DistributedSummary:
    """Extract every pending shard of ``cache`` on the Dask cluster of ``client`` (see the
    module docstring). ``cfg.device`` is the workers' device (the driver itself loads the
    backbones on the CPU, only for the provenance); ``cfg.num_workers`` = decode threads
    per task. ``window``: tasks in flight (default: the cluster's worker threads).
    ``on_shard(k, report)`` runs after shard k is done. Returns the run's summary."""
    log = log or log_stderr
    t_start = time.perf_counter()
    precision, cfg = cfg.compute_precision(), follow_cache(cfg, cache, overwrite)
    driver_cfg = dataclasses.replace(cfg, device="cpu", precision=precision, resize_on=cfg.compute_resize_on())
    # an absolute manifest path makes the records' media paths absolute: workers may run elsewhere
    rcfg, records, models, writer = prepare_extract(Path(manifest).resolve(), cache, driver_cfg,
                                                    overwrite=overwrite)

    wcfg = dataclasses.replace(rcfg, device=cfg.device, precision=precision,
                               audio_weights=worker_weights(cfg.audio_backbone, cfg.audio_weights, rcfg.audio_weights),
                               face_weights=worker_weights(cfg.face_backbone, cfg.face_weights, rcfg.face_weights))
    expected = {"audio": (models.audio_info or {}).get("sha256"), "face": (models.face_info or {}).get("sha256")}
    path = str(Path(cache).resolve())
    cache_fp = writer.fingerprint
    prefix = f"avfuse-{fingerprint([path, cache_fp])[:12]}-"
    from distributed import LocalCluster
    is_local = isinstance(getattr(client, "cluster", None), LocalCluster)
    if torch_threads is None and is_local and not cfg.device.startswith("cuda"):
        # CPU cores shared by the local workers (Dask's Nannies set OMP_NUM_THREADS=1)
        torch_threads = max(1, (os.cpu_count() or 1) // max(1, len(client.nthreads())))
    run = _Run(client, writer, records, wcfg, expected, path, cache_fp, prefix, log, on_shard)
    try:
        with writer.lock():
            if not client.scheduler_info(n_workers=0).get("n_workers", 1):
                log(f"avfuse: waiting for workers to join {client.scheduler.address} ...")
            try:
                client.wait_for_workers(1, timeout=wait_workers_s)
            except TimeoutError as e:
                raise ClusterError(f"no Dask worker joined {client.scheduler.address} within "
                                   f"{wait_workers_s:.0f} s", hint="start workers (`dask worker ADDRESS`, or "
                                   "your dask-jobqueue cluster's scale()), then rerun") from e
            _check_workers(client, path, records, cfg.device, log)
            _wait_for_orphans(client, prefix, log)
            pending = repair_and_pending(writer)
            if pending:
                client.register_plugin(ExtractPlugin(wcfg, expected, torch_threads),
                                       name=PLUGIN_NAME)
            t_setup = time.perf_counter() - t_start
            todo_rows = sum(_n(writer.shard_slice(k)) for k in pending)
            bar = DaskProgress(writer.n_rows, writer.n_rows - todo_rows, writer.n_shards,
                            writer.n_shards - len(pending), progress)
            run.bar = bar
            try:
                limit = max_fallback_shards if max_fallback_shards is not None else max(3, len(pending) // 100)
                run.loop(pending, window, limit, no_workers_s=wait_workers_s)
                _await_visible(writer, run.computed + run.skipped, log)
            except BaseException:
                run.cancel_all()
                writer.finalize()  # failures.jsonl consistent with the shards done so far
                raise
            finally:
                bar.close()
                if pending and not is_local:  # leave a running cluster's GPUs free
                    _quietly(client.unregister_worker_plugin, PLUGIN_NAME)
                    _quietly(client.run, free_models)
            writer.finalize()
        failures = writer.failures()
        failed = {f["clip_id"] for f in failures}
        by = Counter(f"{f['stage']}/{f['modality']}" for f in failures)
        return DistributedSummary(
            cache=str(cache), n_rows=writer.n_rows, n_shards=writer.n_shards,
            shards_skipped=writer.n_shards - len(pending), shards_computed=len(pending),
            clips_computed=run.stats.clips, failed_clips=len(failed), failed_share=len(failed) / writer.n_rows,
            failures_by=dict(by), seconds=time.perf_counter() - t_start, stats=run.stats,
            failures_path=str(writer.failures_path), computed_shards=sorted(run.computed),
            already_done_in_task=sorted(run.skipped), fallback_shards=sorted(run.fallback),
            per_worker=run.per_worker, n_workers=len(client.nthreads()), scheduler=client.scheduler.address,
            setup_seconds=t_setup)
    finally:
        writer.close()


def _await_visible(writer, shards: Sequence[int], log, timeout: float = 120.0) -> None:
    """Wait until every shard the workers reported written is done as seen from here (a
    shared filesystem with client-side caching may show other nodes' files late)."""
    t0, told = time.time(), False
    while True:
        missing = sorted(set(shards) & set(writer.pending_shards()))
        if not missing:
            return
        if not told:
            log(f"avfuse: {len(missing)} shard(s) written by the workers are not visible here yet; waiting")
            told = True
        if time.time() - t0 > timeout:
            raise CacheError(f"shards {missing[:10]} were written by the workers but are still not visible here "
                             f"after {timeout:.0f} s", path=writer.path,
                             hint="the shared filesystem hides other nodes' writes (client-side caching, see "
                                  "docs/distributed.md); rerun the same command to finish")
        time.sleep(1.0)


def _n(s: slice) -> int:
    return s.stop - s.start


def _quietly(fn, *args) -> None:
    try:
        fn(*args)
    except Exception:
        pass


class _Run:
    """The submission loop of one run: a window of shard tasks, results, fallbacks."""

    def __init__(self, client, writer, records, cfg, expected, path, cache_fp, prefix, log, on_shard):
        self.client, self.writer, self.records, self.cfg = client, writer, records, cfg
        self.expected, self.path, self.cache_fp, self.prefix = expected, path, cache_fp, prefix
        self.log, self.on_shard = log, on_shard
        self.futures: dict[str, tuple] = {}
        self.stats = ShardStats()
        self.computed: list[int] = []
        self.skipped: list[int] = []
        self.fallback: list[int] = []
        self.per_worker: dict[str, dict] = {}
        self.resubmits: Counter = Counter()
        self.pieces: dict[int, dict] = {}
        self.bar: DaskProgress | None = None

    def _rows(self, k: int) -> list:
        s = self.writer.shard_slice(k)
        return list(self.records[s.start:s.stop])

    def submit_shard(self, k: int) -> None:
        fut = self.client.submit(shard_task, self.path, k, self._rows(k), self.cfg, self.cache_fp,
                                 self.expected, key=f"{self.prefix}shard-{k}", retries=1)
        self.futures[fut.key] = ("shard", k, fut)

    def loop(self, pending: Sequence[int], window: int | None, max_fallback: int,
             no_workers_s: float = 1800.0) -> None:
        from distributed import wait
        todo = deque(pending)
        alone_since: float | None = None
        while todo or self.futures:
            # one task per worker thread: none waits on a worker, so a worker that dies takes
            # only the tasks it was running with it (the scheduler blames those alone)
            nthreads = sum(self.client.nthreads().values())
            while todo and len(self.futures) < (window or max(1, nthreads)):
                self.submit_shard(todo.popleft())
            live = {v[-1].key: v[-1] for v in self.futures.values()}
            try:
                done, _ = wait(list(live.values()), timeout=5, return_when="FIRST_COMPLETED")
            except TimeoutError:
                done = [f for f in live.values() if f.done()]
            if not done:
                if nthreads:
                    alone_since = None
                elif alone_since is None:
                    alone_since = time.time()
                    self._say("avfuse: no Dask worker is left; waiting for workers to come back")
                elif time.time() - alone_since > no_workers_s:
                    raise ClusterError(f"no Dask worker for {no_workers_s:.0f} s; the run cannot go on",
                                       hint="start workers again (or raise the job count), then rerun: done "
                                            "shards are kept")
                continue
            for fut in done:
                kind, k, *rest = self.futures.pop(fut.key)
                if kind == "shard":
                    self._shard_done(fut, k, max_fallback)
                else:
                    self._clip_done(fut, k, *rest)
                fut.release()

    def _shard_done(self, fut, k: int, max_fallback: int) -> None:
        if fut.status == "finished":
            rep = fut.result()
            if rep["skipped"]:
                self.skipped.append(k)
                self._count(k, _n(self.writer.shard_slice(k)), None, rep)
            else:
                self.computed.append(k)
                self.stats.add(ShardStats(**rep["stats"]))
                w = self.per_worker.setdefault(rep["worker"], {"shards": 0, "clips": 0, "seconds": 0.0})
                w["shards"] += 1
                w["clips"] += rep["clips"]
                w["seconds"] += rep["end"] - rep["start"]
                self._count(k, rep["clips"], rep["worker"], rep)
            return
        if fut.status == "cancelled" and self.resubmits[k] < 3:  # lost by the scheduler: once more
            self.resubmits[k] += 1
            self.submit_shard(k)
            return
        exc = fut.exception() if fut.status == "error" else RuntimeError(f"task {fut.status}")
        if isinstance(exc, AvfuseError):
            raise exc
        self.fallback.append(k)
        if len(self.fallback) > max_fallback:
            raise ClusterError(f"{len(self.fallback)} shards failed repeatedly on the workers (last: shard {k}: "
                               f"{_describe(exc)}); the workers look broken rather than a few inputs",
                               hint="read the worker logs (out of memory? GPU errors?); the done shards are "
                                    "kept, rerun to resume")
        self._say(f"avfuse: shard {k} failed repeatedly ({_describe(exc)}); recomputing it clip by clip")
        self._start_fallback(k)

    def _count(self, k: int, clips: int, worker: str | None, rep: dict) -> None:
        if self.bar is not None:
            self.bar.shard(clips, worker)
        if self.on_shard is not None:
            self.on_shard(k, rep)

    def _say(self, msg: str) -> None:
        (self.bar.write if self.bar is not None else self.log)(msg)

    # ---- clip-by-clip fallback -------------------------------------------------
    def _start_fallback(self, k: int) -> None:
        """Recompute shard ``k`` one clip at a time (a decode task, then an embed task), so
        a clip that kills its worker takes no other clip with it."""
        from pipeline.extract.decode_pool import decode_spec
        n = len(self._rows(k))
        self.pieces[k] = {"spec": decode_spec(self.cfg), "results": [None] * n}
        self._submit_clip(k, 0)

    def _submit_clip(self, k: int, i: int) -> None:
        piece, rec = self.pieces[k], self._rows(k)[i]
        dec = self.client.submit(decode_task, rec, piece["spec"], key=f"{self.prefix}decode-{k}-{i}", retries=0)
        emb = self.client.submit(embed_task, dec, self.cfg, self.expected, key=f"{self.prefix}embed-{k}-{i}",
                                 retries=0)
        self.futures[emb.key] = ("clip", k, i, dec, emb)

    def _clip_done(self, fut, k: int, i: int, dec, _emb) -> None:
        recs = self._rows(k)
        piece = self.pieces[k]
        if fut.status == "finished":
            arrays, failures = fut.result()
            piece["results"][i] = (arrays, failures, True)
        else:  # flagged like any failed clip: zero vectors, one record per modality in use
            from pipeline.extract.shard import failed_shard
            stage = "decode" if dec.status in ("error", "cancelled") else "backbone"
            exc = fut.exception() if fut.status == "error" else RuntimeError(f"task {fut.status}")
            res = failed_shard([recs[i]], self.cfg, audio_dim=self.writer.layout.audio_dim,
                               face_dim=self.writer.layout.face_dim, stage=stage,
                               error=f"failed alone on the cluster too: {_describe(exc)}")
            piece["results"][i] = (res.arrays, res.failures, False)
            self._say(f"avfuse: clip {recs[i].clip_id} failed at {stage} on the cluster; recorded as a failure")
        dec.release()
        if i + 1 < len(recs):
            self._submit_clip(k, i + 1)
        else:
            self._write_fallback(k, piece["results"])
            del self.pieces[k]

    def _write_fallback(self, k: int, results: list) -> None:
        recs = self._rows(k)
        arrays = {name: np.concatenate([np.asarray(r[0][name]) for r in results]).astype(spec.dtype)
                  for name, spec in self.writer.specs.items()}
        failures = [f for r in results for f in r[1]]
        self.writer.refresh()
        if k in self.writer.done_shards():
            self.skipped.append(k)
        else:
            self.writer.write_shard(k, arrays, failures)
            self.computed.append(k)
        self.stats.add(ShardStats(clips=len(recs)))
        w = self.per_worker.setdefault("(clip by clip)", {"shards": 0, "clips": 0, "seconds": 0.0})
        w["shards"] += 1
        w["clips"] += len(recs)
        self._count(k, len(recs), "(clip by clip)", {"shard": k, "clips": len(recs), "fallback": True,
                                                     "clips_ok": sum(1 for r in results if r[2])})

    def cancel_all(self) -> None:
        """Cancel every task of this run still pending (running ones finish on their worker;
        a rerun waits for them, see ``_wait_for_orphans``)."""
        futs = [f for v in self.futures.values() for f in (v[2:] if v[0] == "shard" else v[3:])]
        if futs:
            _quietly(self.client.cancel, futs)
        self.futures.clear()


def _describe(exc: BaseException) -> str:
    name = type(exc).__name__
    if name == "KilledWorker":
        return "KilledWorker: the worker process died each time it ran it (poison input? out of memory?)"
    text = str(exc).strip().splitlines()
    return f"{name}: {text[0][:300]}" if text else name
