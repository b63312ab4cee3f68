"""The embedding cache: the contract between stage 1 (extraction) and stage 2 (fusion, scoring).

``layout`` (format, arrays, checksums), ``reader`` (``EmbeddingCache``, ``open_cache``),
``arrays`` (lazy ``CacheArray`` views), ``writer`` (``create_cache``, ``open_writer``),
``lock`` (one writer at a time), ``verify`` (``cache verify``/``info``), ``view`` (the
in-memory ``CacheView`` that ablations degrade), ``backends/`` (Zarr v3, HDF5) and
``testing`` (the contract test base class every implementation subclasses).
"""

from pipeline.cache.arrays import CacheArray
from pipeline.cache.layout import FORMAT, FORMAT_VERSION, CacheLayout, array_specs
from pipeline.cache.reader import EmbeddingCache, open_cache
from pipeline.cache.verify import cache_info, damaged_shards, verify_cache
from pipeline.cache.view import CacheView
from pipeline.cache.writer import CacheWriter, create_cache, open_writer

__all__ = ["FORMAT", "FORMAT_VERSION", "CacheArray", "CacheLayout", "CacheView", "CacheWriter", "EmbeddingCache",
           "array_specs", "cache_info", "create_cache", "damaged_shards", "open_cache", "open_writer", "verify_cache"]
