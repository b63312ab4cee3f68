"""``avfuse extract`` on a Dask cluster: the click options and the call that runs them.

``dask_options`` adds ``--cluster local|none``, ``--workers``, ``--devices``,
``--threads-per-worker``, ``--scheduler``, ``--dashboard/--no-dashboard`` and
``--bind-host`` to a click command (as the keyword arguments ``cluster``, ``workers``,
``devices``, ``threads_per_worker``, ``scheduler``, ``dashboard``, ``bind_host``);
``run_with_options(manifest, cache, cfg, ..., **those)`` runs the extraction on the
cluster they describe, or in-process (``pipeline.extract.run_extract``) when neither
``--cluster local`` nor ``--scheduler`` was given. Importing this module is cheap (no dask).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import click

from pipeline.core.errors import ConfigError

__all__ = ["DASK_OPTION_NAMES", "dask_options", "parse_devices", "run_with_options"]

DASK_OPTION_NAMES = ("cluster", "workers", "devices", "threads_per_worker", "scheduler", "dashboard", "bind_host")


def parse_devices(text: str | None) -> tuple[str, ...] | None:
    """``"0,1,2,3"`` -> ``("0", "1", "2", "3")`` (GPU indices or UUIDs, as CUDA_VISIBLE_DEVICES takes them)."""
    if text is None:
        return None
    items = tuple(x.strip() for x in str(text).split(","))
    if not items or any(not x for x in items) or len(set(items)) != len(items):
        raise ConfigError(f"--devices must be a comma-separated list of distinct GPUs like 0,1,2,3, got {text!r}")
    return items


def _devices_callback(ctx, param, value):
    try:
        return parse_devices(value)
    except ConfigError as e:
        raise click.BadParameter(e.message) from e


def dask_options(f: Callable) -> Callable:
    """Click decorator: the Dask options of ``avfuse extract`` (see the module docstring)."""
    options = [
        click.option("--cluster", type=click.Choice(["none", "local"]), default="none", show_default=True,
                     help="local: start a Dask LocalCluster on this machine, one worker process per GPU "
                          "(each pinned to its GPU, with its own decode processes). none: extract in this "
                          "process (or on --scheduler's cluster)."),
        click.option("--workers", type=click.IntRange(min=1), default=None,
                     help="Worker processes of --cluster local [default: one per --devices entry; on CUDA "
                          "one per visible GPU; on CPU half the cores, at most 4]. Not --num-workers, which "
                          "is the decode processes of each shard task."),
        click.option("--devices", default=None, callback=_devices_callback, metavar="0,1,2,3",
                     help="GPUs for --cluster local: worker i runs with CUDA_VISIBLE_DEVICES=devices[i % n] "
                          "(needs --device cuda) [default: all visible GPUs]."),
        click.option("--threads-per-worker", type=click.IntRange(min=1), default=None,
                     help="Shards one worker computes at once [default: 2 on CUDA, so one shard decodes "
                          "while another is in the backbones; 1 on CPU]."),
        click.option("--scheduler", default=None, metavar="tcp://HOST:8786",
                     help="Connect to a running Dask scheduler (workers from `dask worker`, dask-jobqueue "
                          "or Kubernetes) instead of starting one. The cache, the corpus and the weights "
                          "must be at the same paths on every worker (docs/distributed.md)."),
        click.option("--dashboard/--no-dashboard", default=True, show_default=True,
                     help="Serve the Dask dashboard of --cluster local (needs bokeh) and print its link."),
        click.option("--bind-host", default="127.0.0.1", show_default=True,
                     help="Interface the --cluster local scheduler, workers and dashboard listen on. "
                          "Only loopback by default; 0.0.0.0 (or a LAN address) exposes them to the network."),
    ]
    for opt in reversed(options):
        f = opt(f)
    return f


def run_with_options(manifest: str | Path, cache: str | Path, cfg, *, overwrite: bool = False,
                     progress: bool = True, cluster: str = "none", workers: int | None = None,
                     devices: tuple[str, ...] | str | None = None, threads_per_worker: int | None = None,
                     scheduler: str | None = None, dashboard: bool = True, bind_host: str = "127.0.0.1",
                     torch_threads: int | None = None, log: Callable[[str], None] | None = None):
    """Run ``avfuse extract`` as its options say: on a new local cluster (``cluster="local"``),
    on a running one (``scheduler``), else in this process. Returns the run's
    ``ExtractSummary`` (a ``DistributedSummary`` on a cluster). ``torch_threads``: torch
    threads per worker (``--threads``) [default: cores / workers on a CPU local cluster]."""
    if isinstance(devices, str):
        devices = parse_devices(devices)
    from pipeline.extract.dask.cluster import ClusterOptions
    opts = ClusterOptions(cluster=cluster, workers=workers, devices=devices, threads_per_worker=threads_per_worker,
                          scheduler=scheduler, dashboard=dashboard, bind_host=bind_host)
    opts.validate(cfg.device)
    if not opts.enabled:
        from pipeline.extract.run import run_extract
        return run_extract(manifest, cache, cfg, overwrite=overwrite, progress=progress)
    from pipeline.extract.dask.cluster import open_cluster
    from pipeline.extract.dask.driver import run_distributed
    with open_cluster(opts, cfg.device, log=log) as client:
        return run_distributed(manifest, cache, cfg, client=client, overwrite=overwrite, progress=progress,
                               torch_threads=torch_threads, wait_workers_s=opts.wait_workers_s, log=log)
