"""2-D UMAP projection for ``avfuse analyze --umap`` (umap-learn, imported only when used:
its import and first fit compile numba code, tens of seconds on a small CPU box).

``umap2(x, seed)``: UMAP of the L2-normalised rows with cosine distance (the space cosine
scoring sees), 2 components, ``n_neighbors = min(15, N - 1)``, ``min_dist = 0.1`` and a
fixed ``random_state`` (umap-learn then runs single-threaded and is reproducible).
Fewer than 4 rows cannot be embedded meaningfully: a ``ValueError``.
"""

from __future__ import annotations

import warnings

import numpy as np

from pipeline.experiments.stats import l2n

N_NEIGHBORS = 15
MIN_DIST = 0.1


def umap2(x: np.ndarray, seed: int = 0) -> np.ndarray:
    """(N, 2) UMAP coordinates of (N, D) embeddings (module doc)."""
    x = l2n(np.asarray(x, dtype=np.float64))
    if len(x) < 4:
        raise ValueError(f"UMAP needs at least 4 points, got {len(x)}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")            # n_jobs overridden by random_state; tiny-graph notes
        import umap

        model = umap.UMAP(n_components=2, n_neighbors=min(N_NEIGHBORS, len(x) - 1), min_dist=MIN_DIST,
                          metric="cosine", random_state=seed, init="spectral" if len(x) > 16 else "random")
        return np.asarray(model.fit_transform(x), dtype=np.float64)


__all__ = ["umap2"]
