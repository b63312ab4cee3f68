"""avfuse pipeline: CLI, config, embedding cache, extraction orchestration, Dask."""

__version__ = "0.1.0"
