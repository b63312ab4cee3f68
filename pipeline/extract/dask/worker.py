"""Worker side of distributed extraction: the tasks and the per-process backbones.

Everything here runs inside Dask worker processes (spawned, never forked: the Zarr
backend runs an event-loop thread). ``ExtractPlugin`` loads the backbones once per
worker process (``worker_models``: weights read from the path on that machine, sha256
checked against the cache's provenance); ``shard_task`` computes one shard with
``pipeline.extract.shard.compute_shard`` (decode processes where the worker is not daemonic,
one pool of them per worker process kept across tasks: ``worker_pool``; else threads:
``decode_backend``) and writes it whole with ``write_shard`` (which marks it done); the
clip-by-clip fallback of a poison shard runs ``decode_task`` then ``embed_task`` per clip.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import threading
import time
from typing import Any, Sequence

from pipeline.core.config import fingerprint
from pipeline.core.errors import AvfuseError, CacheError, ClusterError
from pipeline.extract.config import ExtractConfig

__all__ = ["ExtractPlugin", "PLUGIN_NAME", "close_pools", "decode_backend", "decode_task", "embed_task", "free_models",
           "shard_task", "worker_info", "worker_models", "worker_pool"]

PLUGIN_NAME = "avfuse-extract"
_RUNNING = ("executing", "long-running")
_WORKER_LOCK = threading.Lock()
_WORKER_MODELS: dict[str, Any] = {}
_MODEL_FIELDS = ("audio_backbone", "audio_weights", "face_backbone", "face_weights", "seed", "device",
                 "audio_preprocess")
_MODEL_LOADS = 0          # backbone loads in this process (one per run per worker process)


def _where() -> str:
    try:
        from distributed import get_worker
        w = get_worker()
        return f"worker {w.name} ({w.address}, pid {os.getpid()} on {socket.gethostname()})"
    except ValueError:
        return f"pid {os.getpid()} on {socket.gethostname()}"


def worker_models(cfg: ExtractConfig, expected: dict):
    """The backbones of ``cfg`` in this process, loaded once (one config at a time) from
    the weights path *on this machine*; their sha256 must equal ``expected`` ({"audio",
    "face"}: the cache provenance's), else ``ClusterError``."""
    global _MODEL_LOADS
    from pipeline.extract.models import clear_model_cache, get_models, resolve_config
    key = fingerprint([[getattr(cfg, f) for f in _MODEL_FIELDS], cfg.compute_precision(), expected])
    with _WORKER_LOCK:
        if key in _WORKER_MODELS:
            return _WORKER_MODELS[key]
        if _WORKER_MODELS:  # another run's models: free them first (GPU memory)
            _WORKER_MODELS.clear()
            clear_model_cache()
        if cfg.device.startswith("cuda"):
            import torch
            if not torch.cuda.is_available():
                raise ClusterError(f"{_where()}: --device {cfg.device}, but torch sees no CUDA device here",
                                   hint="check the worker's GPU allocation / CUDA_VISIBLE_DEVICES, or use "
                                        "--device cpu")
        local = resolve_config(cfg)
        try:
            models = get_models(local)
        except AvfuseError as e:
            raise type(e)(f"{_where()}: {e.message}", path=e.path, hint=e.hint) from e
        for mod in ("audio", "face"):
            info = getattr(models, f"{mod}_info")
            if info is not None and info.get("sha256") != expected.get(mod):
                raise ClusterError(f"{_where()}: the {mod} weights {info.get('weights')} have sha256 "
                                   f"{info.get('sha256')}, the cache was made with {expected.get(mod)}",
                                   hint="give every node the same checkpoint file at the same path")
        _MODEL_LOADS += 1
        _WORKER_MODELS[key] = models
        return models


try:
    from distributed.diagnostics.plugin import WorkerPlugin as _WorkerPluginBase
except ImportError:  # pragma: no cover - distributed is a dependency
    _WorkerPluginBase = object


class ExtractPlugin(_WorkerPluginBase):
    """Worker plugin: on each worker (and each restarted or newly joined one) set torch
    threads and load the backbones once (``worker_models``; kept for the next run with the
    same config, freed by ``free_models``)."""

    name = PLUGIN_NAME

    def __init__(self, cfg: ExtractConfig, expected: dict, torch_threads: int | None = None):
        self.cfg, self.expected, self.torch_threads = cfg, expected, torch_threads

    def setup(self, worker) -> None:
        if self.torch_threads:
            import torch
            torch.set_num_threads(self.torch_threads)
        worker_models(self.cfg, self.expected)


def free_models() -> int:
    """Drop this process's backbones (and empty the CUDA cache); returns how many model
    sets were held. The driver runs it on the workers of a running cluster at the end."""
    from pipeline.extract.models import clear_model_cache
    close_pools()
    with _WORKER_LOCK:
        n = len(_WORKER_MODELS)
        _WORKER_MODELS.clear()
        clear_model_cache()
    import gc
    gc.collect()
    import torch
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return n


def _worker_name() -> str:
    try:
        from distributed import get_worker
        return str(get_worker().name)
    except ValueError:
        return f"pid{os.getpid()}"


def shard_task(cache_path: str, k: int, records: Sequence, cfg: ExtractConfig, cache_fp: str,
               expected: dict) -> dict:
    """One Dask task: compute shard ``k`` (its ``records``, in row order) and write it whole
    into the cache, which marks it done. A shard already done (by an earlier attempt whose
    worker died after writing) is not written again. Returns a small report dict."""
    from pipeline.cache.writer import open_writer
    from pipeline.extract.shard import compute_shard
    t0 = time.time()
    out = {"shard": k, "clips": 0, "failed_clips": 0, "worker": _worker_name(), "pid": os.getpid(),
           "host": socket.gethostname(), "skipped": True, "stats": {}, "start": t0}
    writer = open_writer(cache_path)
    try:
        if writer.fingerprint != cache_fp:
            raise CacheError("the cache was replaced during this run (its provenance fingerprint changed)",
                             path=cache_path, hint="do not run two extractions on one cache path")
        if k in writer.done_shards():
            return out
        models = worker_models(cfg, expected)
        res = compute_shard(records, cfg, models=models, backend=decode_backend(), pool=worker_pool(cfg, models))
        writer.refresh()
        if k in writer.done_shards():
            return out
        writer.write_shard(k, res.arrays, res.failures)
    finally:
        writer.close()
    out.update(clips=len(records), failed_clips=len({f["clip_id"] for f in res.failures}), skipped=False,
               stats=dataclasses.asdict(res.stats), end=time.time())
    return out


def decode_backend() -> str:
    """How this worker decodes a shard: in forked processes handing over through shared memory
    (``pipeline.extract.shm_ring``, as in-process extraction) when the worker process is not
    daemonic (``distributed.worker.daemon: False``: ``--cluster local`` sets it; elsewhere
    ``DASK_DISTRIBUTED__WORKER__DAEMON=False`` in the workers' environment), else in threads (a
    daemonic process may not have children). Threads hold the GIL for PyAV's per-packet Python
    code and contend with the CUDA launches: on the GPU box one worker with 2 x 14 decode
    threads fed the GPU 32 clips/s."""
    import multiprocessing as mp
    from pipeline.extract.shm_ring import available
    return "process" if available() and not mp.current_process().daemon else "thread"


_POOL_LOCK = threading.Lock()
_POOLS: dict[Any, Any] = {}


def worker_pool(cfg: ExtractConfig, models):
    """This worker process's decode pool (``pipeline.extract.decode_pool.ring_pool``), made once and
    shared by its concurrent shard tasks: ``cfg.num_workers`` processes per worker thread, a slot
    for every clip of a shard per thread. None where the worker decodes in threads or inline; a
    pool a dead decoder broke is replaced."""
    if decode_backend() != "process" or cfg.num_workers <= 0:
        return None
    from pipeline.extract.decode_pool import decode_spec, ring_pool
    spec = decode_spec(cfg, models)
    try:
        from distributed import get_worker
        nthreads = max(1, int(get_worker().state.nthreads))
    except (ImportError, ValueError, AttributeError):
        nthreads = 1
    key = (spec, cfg.num_workers * nthreads, nthreads * cfg.shard_size)
    with _POOL_LOCK:
        pool = _POOLS.get(key)
        if pool is not None and pool.broken is None:
            return pool
        for k, old in list(_POOLS.items()):  # a broken pool, or an idle one of another run (not one in use)
            if old.broken is not None or not old.jobs:
                old.close()
                del _POOLS[k]
        # forked from this task thread: the decoders' parent-death signal follows the thread that forked
        # them, and Dask's task threads live as long as the worker (they end with it, and so do the decoders)
        _POOLS[key] = pool = ring_pool(spec, key[1], key[2])
        return pool


def close_pools() -> int:
    """Close this process's decode pools; returns how many there were."""
    with _POOL_LOCK:
        n = len(_POOLS)
        for pool in _POOLS.values():
            pool.close()
        _POOLS.clear()
    return n


def decode_task(rec, spec):
    """Fallback, step 1: decode one clip alone."""
    from pipeline.extract.decode_pool import decode_clip
    return decode_clip(rec, spec)


def embed_task(decoded, cfg: ExtractConfig, expected: dict) -> tuple[dict, list]:
    """Fallback, step 2: embed one decoded clip alone -> (arrays with 1 row, failures)."""
    from pipeline.extract.shard import embed_shard
    res = embed_shard([decoded], cfg, worker_models(cfg, expected))
    return res.arrays, res.failures


def running_keys(prefix: str, dask_worker=None) -> list[str]:
    """Keys starting with ``prefix`` that this worker is executing now, including ones
    whose run was cancelled (an interrupted driver) but whose thread still runs."""
    out = []
    for ts in list(dask_worker.state.tasks.values()):
        key = str(ts.key)
        if not key.startswith(prefix):
            continue
        if ts.state in _RUNNING or (ts.state in ("cancelled", "resumed") and ts.previous in _RUNNING):
            out.append(key)
    return out


def worker_info(dask_worker=None) -> dict:
    """This worker process, for diagnostics (``client.run(worker_info)``): name, pid, host,
    backbone loads so far, the avfuse task keys it is executing now, how it decodes and the pids
    of its decode pool's processes."""
    return {"name": str(dask_worker.name) if dask_worker is not None else None, "pid": os.getpid(),
            "host": socket.gethostname(), "model_loads": _MODEL_LOADS,
            "running": running_keys("avfuse-", dask_worker) if dask_worker is not None else [],
            "decode": decode_backend(), "decode_pids": sorted(q.pid for pool in _POOLS.values() for q in pool.procs)}


def probe_worker(cache_path: str, media: list[str]) -> dict:
    """Run on each worker before submitting: can it see the cache and the corpus?"""
    import importlib.util
    return {"host": socket.gethostname(), "pid": os.getpid(), "cache": os.path.exists(cache_path),
            "missing_media": [m for m in media if not os.path.exists(m)],
            "cuda": bool(importlib.util.find_spec("torch")) and _cuda_count() > 0}


def _cuda_count() -> int:
    import torch
    return torch.cuda.device_count() if torch.cuda.is_available() else 0
