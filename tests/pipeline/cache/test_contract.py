"""The embedding-cache contract (``pipeline.cache.testing``) run against every implementation:
the Zarr v3 and HDF5 stores (read and write side), and the in-memory ``CacheView`` (read side)."""

from __future__ import annotations

from pipeline.cache import CacheView, open_cache
from pipeline.cache.testing import ReaderContract
from pipeline.cache.testing_store import StoreContract


class TestZarr(StoreContract):
    suffix = ".zarr"


class TestHDF5(StoreContract):
    suffix = ".h5"
    kill_finalize_every = 4  # the HDF5 writer merges staged parts at finalize: kill inside merges too


class TestMemoryView(ReaderContract):
    """A ``CacheView`` loaded from a complete Zarr cache reads like the cache."""

    suffix = ".zarr"

    def open_reader(self, path):
        view = CacheView.load(open_cache(path))
        assert view.backend == "memory"
        return view
