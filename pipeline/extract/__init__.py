"""Stage 1 orchestration: run frozen backbones over a manifest into an embedding cache.

``config`` (``ExtractConfig``), ``models`` (backbones once per process), ``decode_pool``
(clips to arrays, in worker processes), ``shm_ring`` (those processes' hand-off through
shared memory), ``staging`` (host buffers batches are filled in), ``embed`` (batched backbone passes), ``shard``
(one shard's clips end to end), ``run`` (the resumable single-process run) and
``dask/`` (the same work on a Dask cluster: ``cluster``, ``worker``, ``driver``).
"""

from pipeline.extract.config import DTYPES, PRECISIONS, ExtractConfig
from pipeline.extract.models import Models, clear_model_cache, get_models, resolve_config, resolve_weights
from pipeline.extract.run import ExtractSummary, follow_cache, run_extract
from pipeline.extract.shard import compute_shard, failed_shard

__all__ = ["DTYPES", "PRECISIONS", "ExtractConfig", "ExtractSummary", "Models", "clear_model_cache",
           "compute_shard", "failed_shard", "follow_cache", "get_models", "resolve_config", "resolve_weights", "run_extract"]
