"""Dask clusters for ``avfuse extract``: start a pinned ``LocalCluster`` or connect to one.

``open_cluster(ClusterOptions(cluster="local", workers=N, devices=("0", "1")))`` starts a
``LocalCluster`` of N worker processes (spawned by Nannies), worker ``j`` pinned to GPU
``devices[j % len(devices)]`` through ``CUDA_VISIBLE_DEVICES`` in its environment (set
before the process starts, kept across Nanny restarts); ``ClusterOptions(scheduler=
"tcp://HOST:8786")`` connects to a running scheduler instead. The local scheduler,
workers and dashboard bind to ``bind_host`` (default 127.0.0.1). Used by
``pipeline.extract.dask.run_distributed``.
"""

from __future__ import annotations

import copy
import logging
import os
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

from pipeline.core.errors import ClusterError, ConfigError

__all__ = ["ClusterOptions", "open_cluster"]

_LOG = logging.getLogger("avfuse.distributed")


@dataclass
class ClusterOptions:
    """Where to run. ``cluster="local"``: a LocalCluster of ``workers`` processes, worker i
    pinned to GPU ``devices[i % len(devices)]``; ``scheduler``: the address of a running
    scheduler instead. ``threads_per_worker``: shard tasks one worker runs at once (2 on
    GPU lets one shard decode while another is in the backbones). ``allowed_failures``:
    worker deaths a task may cause before it is given up (then: clip-by-clip fallback).
    ``wait_workers_s``: how long a run waits for a worker to (re)join a running cluster;
    ``connect_timeout_s``: how long connecting to ``scheduler`` may take."""
    cluster: str = "none"
    workers: int | None = None
    devices: tuple[str, ...] | None = None
    threads_per_worker: int | None = None
    scheduler: str | None = None
    dashboard: bool = True
    bind_host: str = "127.0.0.1"
    allowed_failures: int = 2
    wait_workers_s: float = 1800.0
    connect_timeout_s: float = 20.0

    @property
    def enabled(self) -> bool:
        return self.cluster == "local" or bool(self.scheduler)

    def default_decoders(self, device: str) -> int | None:
        """Decode processes per shard task when ``--num-workers`` is not given, for a ``--cluster
        local`` on CUDA: the usable cores but one per worker, shared by its concurrent tasks (one
        GPU, 16 cores, 2 tasks: 7 each; ``default_workers``' 4 left 8 cores idle on the GPU box).
        None elsewhere (the caller's default: a running cluster's cores are not known here, and on
        the CPU the backbones need them)."""
        if self.cluster != "local" or not device.startswith("cuda"):
            return None
        from pipeline.extract.config import usable_cores
        _, n, threads = self.local_layout(device)
        return max(1, (usable_cores() - n) // (n * threads))

    def local_layout(self, device: str) -> tuple[list[str] | None, int, int]:
        """``(GPUs the workers are pinned to or None, worker processes, threads per worker)`` of a
        ``--cluster local`` on ``device``: the options given, else one worker per visible GPU with 2
        threads on CUDA, a few single-threaded workers on the CPU."""
        devices = list(self.devices) if self.devices else None
        if device.startswith("cuda") and devices is None:
            devices = [str(i) for i in range(_default_local_workers(device, None))]
        n = self.workers or _default_local_workers(device, devices)
        return devices, n, self.threads_per_worker or (2 if device.startswith("cuda") else 1)

    def validate(self, device: str) -> "ClusterOptions":
        """Check the combination; raises ``ConfigError`` with a hint. Returns self."""
        if self.cluster not in ("local", "none"):
            raise ConfigError(f"--cluster must be 'local' or 'none', got {self.cluster!r}")
        if self.cluster == "local" and self.scheduler:
            raise ConfigError("--cluster local and --scheduler both given",
                              hint="--cluster local starts a cluster here; --scheduler connects to a running one")
        if not self.enabled:
            for flag, v in (("--workers", self.workers), ("--devices", self.devices),
                            ("--threads-per-worker", self.threads_per_worker)):
                if v:
                    raise ConfigError(f"{flag} needs --cluster local",
                                      hint="add --cluster local (or --scheduler ADDRESS for a running cluster)")
        if self.scheduler and (self.workers or self.devices):
            raise ConfigError("--workers/--devices apply to --cluster local only",
                              hint="workers of a running cluster are started (and pinned) where they run")
        if self.devices is not None and not device.startswith("cuda"):
            raise ConfigError("--devices pins workers to GPUs, but --device is " + device,
                              hint="add --device cuda")
        if self.cluster == "local" and device.startswith("cuda:"):
            raise ConfigError(f"--device {device} with --cluster local: each local worker sees only the GPU it "
                              "is pinned to, as cuda:0",
                              hint=f"use --device cuda --devices {device.split(':', 1)[1]} to run on that GPU")
        if self.devices is not None and (not self.devices or any(not d.strip() for d in self.devices)):
            raise ConfigError(f"--devices must list GPU indices like 0,1,2,3, got {self.devices!r}")
        for key in ("workers", "threads_per_worker"):
            v = getattr(self, key)
            if v is not None and v < 1:
                raise ConfigError(f"--{key.replace('_', '-')} must be >= 1, got {v}")
        if self.allowed_failures < 0:
            raise ConfigError(f"allowed_failures must be >= 0, got {self.allowed_failures}")
        return self


def _local_cluster_class():
    from distributed import LocalCluster

    class PinnedLocalCluster(LocalCluster):
        """LocalCluster whose worker ``j`` runs with ``CUDA_VISIBLE_DEVICES=devices[j % n]``
        (set by its Nanny before the process starts; kept when the Nanny restarts it)."""

        def __init__(self, *, devices: Sequence[str] | None, **kwargs):
            self._devices = list(devices) if devices else []
            super().__init__(n_workers=0, **kwargs)

        def new_worker_spec(self):
            j = 0
            while self._slot_name(j) in self.worker_spec:
                j += 1
            spec = {"cls": self.new_spec["cls"], "options": copy.copy(self.new_spec["options"])}
            env = {"AVFUSE_WORKER_SLOT": str(j)}
            if self._devices:
                env["CUDA_VISIBLE_DEVICES"] = str(self._devices[j % len(self._devices)])
            spec["options"]["env"] = env
            return {self._slot_name(j): spec}

        def _slot_name(self, j: int) -> str:
            if self._devices:
                return f"w{j}-gpu{self._devices[j % len(self._devices)]}"
            return f"w{j}"

    return PinnedLocalCluster


def _default_local_workers(device: str, devices: Sequence[str] | None) -> int:
    if devices:
        return len(devices)
    if device.startswith("cuda"):
        import torch
        return max(1, torch.cuda.device_count())
    return max(1, min(4, (os.cpu_count() or 1) // 2))


@contextmanager
def open_cluster(opts: ClusterOptions, device: str = "cpu", *, log: Callable[[str], None] | None = None
                 ) -> Iterator[Any]:
    """A connected ``distributed.Client`` (closed on exit; a local cluster is shut down,
    a running one is left running). Raises ``ClusterError`` when it cannot start/connect."""
    import dask
    from distributed import Client
    from distributed.worker_memory import parse_memory_limit
    log = log or log_stderr
    opts.validate(device)
    cluster = None
    if opts.scheduler:
        address = opts.scheduler if "://" in opts.scheduler else "tcp://" + opts.scheduler
        try:
            client = Client(address, timeout=opts.connect_timeout_s)
        except (OSError, TimeoutError) as e:
            raise ClusterError(f"cannot reach the Dask scheduler at {address} ({type(e).__name__}: {e})",
                               hint="start it with `dask scheduler` (docs/distributed.md), and check the "
                                    "host, port and firewall") from e
    else:
        devices, n, threads = opts.local_layout(device)
        if opts.dashboard and not _has_bokeh():
            log("avfuse: no Dask dashboard (it needs bokeh: pip install bokeh)")
        # the scheduler always serves HTTP (health, metrics; the dashboard when asked and
        # bokeh is there): on bind_host, at 8787 for the dashboard, else any free port
        dashboard = f"{opts.bind_host}:{8787 if opts.dashboard else 0}"
        # non-daemonic workers may fork decode processes (shard_task uses them when allowed)
        config = {"distributed.worker.daemon": False,
                  "distributed.scheduler.allowed-failures": opts.allowed_failures,
                  "distributed.scheduler.worker-saturation": 1.0}
        try:
            with dask.config.set(config):
                cluster = _local_cluster_class()(devices=devices, host=opts.bind_host, processes=True,
                                                 threads_per_worker=threads, dashboard_address=dashboard,
                                                 scheduler_kwargs={"dashboard": bool(opts.dashboard and _has_bokeh())},
                                                 memory_limit=parse_memory_limit("auto", 1, n, logger=_LOG))
                cluster.scale(n)
                client = Client(cluster)
            client.wait_for_workers(n, timeout=600)
        except (OSError, TimeoutError, RuntimeError) as e:
            if cluster is not None:
                cluster.close()
            raise ClusterError(f"cannot start a local Dask cluster of {n} workers ({type(e).__name__}: {e})",
                               hint=f"check that {opts.bind_host} can be bound, and the worker logs above") from e
        log(f"avfuse: local Dask cluster of {n} worker process(es) x {threads} thread(s)"
            + (f", pinned to GPUs {','.join(devices)}" if devices else "") + f" at {client.scheduler.address}")
    try:
        if opts.dashboard and client.run_on_scheduler(_has_bokeh):
            log(f"avfuse: Dask dashboard at {client.dashboard_link}")
        yield client
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def _has_bokeh() -> bool:
    """Whether this process can serve the Dask dashboard (it needs bokeh)."""
    import importlib.util
    return importlib.util.find_spec("bokeh") is not None


def log_stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)
