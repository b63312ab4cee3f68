"""Row-wise L2 normalisation: the one normaliser of avfuse (in place when asked)."""

from __future__ import annotations

import numpy as np


def l2_normalize(x: np.ndarray, eps: float = 1e-12, *, inplace: bool = False, dtype=np.float32) -> np.ndarray:
    """Vectors along the last axis divided by their L2 norm (as ``dtype``); all-zero ones
    stay zero. ``inplace``: divide ``x`` itself when it already is a writeable array of
    ``dtype`` (no second table in memory)."""
    x = np.asarray(x, dtype=dtype)
    n = np.sqrt(np.einsum("...i,...i->...", x, x))[..., None]
    np.maximum(n, eps, out=n)
    if inplace and x.flags.writeable:
        return np.divide(x, n, out=x)
    return x / n
