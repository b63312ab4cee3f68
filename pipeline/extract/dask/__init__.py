"""Extraction on a Dask cluster: ``cluster`` (start or join one), ``worker`` (per-worker
models and shard tasks), ``driver`` (scheduling, resume, poison-shard fallback)."""

from pipeline.extract.dask.cluster import ClusterOptions, open_cluster
from pipeline.extract.dask.driver import DistributedSummary, run_distributed

__all__ = ["ClusterOptions", "DistributedSummary", "open_cluster", "run_distributed"]
