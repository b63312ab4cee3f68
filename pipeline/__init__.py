"""avfuse's application: the stages a user runs, over the libraries.

``core`` is the ground every package may import (errors, config, file I/O, registry,
modes, metrics, progress). The rest is the application, by concern: ``cache``,
``extract`` (with ``dask``), ``train``, ``score``, ``experiments``, ``report``, ``cli``.
The libraries ``data_manifests``, ``extractors`` and ``fusion`` import ``pipeline.core``
and nothing else of ``pipeline`` (``tests/test_layering.py``).
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
