"""Storage backends of the cache behind one interface (``base.CacheBackend``): Zarr v3
(the default, ``.zarr``) and HDF5 (``.h5``/``.hdf5``)."""

from pathlib import Path

from pipeline.cache.backends.base import CacheBackend
from pipeline.cache.backends.hdf5_store import H5Backend
from pipeline.cache.backends.zarr_store import ZarrBackend
from pipeline.core.errors import CacheError


def backend_for(path: Path, *, creating: bool) -> type[CacheBackend]:
    """The backend class of a cache path: by suffix, or (opening) by what is on disk."""
    suffix = path.suffix.lower()
    if suffix in (".h5", ".hdf5"):
        return H5Backend
    if suffix in (".zarr", ""):
        return ZarrBackend
    if not creating and path.is_dir() and (path / "zarr.json").exists():
        return ZarrBackend
    if not creating and path.is_file():
        with open(path, "rb") as f:
            if f.read(8) == b"\x89HDF\r\n\x1a\n":
                return H5Backend
    raise CacheError(f"unknown cache suffix {path.suffix!r}", path=path,
                     hint="name the cache *.zarr (default backend) or *.h5 / *.hdf5")


__all__ = ["CacheBackend", "H5Backend", "ZarrBackend", "backend_for"]
