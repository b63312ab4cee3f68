"""Embedding-geometry statistics for `avfuse analyze` (numpy only, vectorised).

Definitions (also in docs/metrics.md):

* angle(a, v): the angle in degrees between the L2-normalised audio and face
  embeddings of one clip in a shared space, ``degrees(arccos(clip(a.v, -1, 1)))``.
  The 2311.05071 paper reads a large angle under mean fusion as the flexibility
  the arc-margin loss leaves to each modality.
* silhouette: the mean over samples of ``(b - a) / max(a, b)``, with cosine
  distance ``1 - cos``; ``a`` the mean distance to the other members of the
  sample's own identity, ``b`` the smallest mean distance to another identity.
  Samples whose identity has one member get 0 (as scikit-learn does).
* pca2: the projection on the first two principal components (SVD of the
  centred data), with the explained-variance ratios.
"""

from __future__ import annotations

import numpy as np

from pipeline.core.linalg import l2_normalize


def l2n(x: np.ndarray) -> np.ndarray:
    """L2-normalised rows in float64 (the analysis works in double precision)."""
    return l2_normalize(x, dtype=np.float64)


def angles_deg(a: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Row-wise angle in degrees between two (N, D) arrays in one space."""
    if a.shape != v.shape:
        raise ValueError(f"angle needs one shared space: got {a.shape} and {v.shape}")
    cos = np.sum(l2n(a) * l2n(v), axis=1)
    return np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))


def silhouette_cosine(x: np.ndarray, labels: np.ndarray, chunk: int = 2048) -> float:
    """Mean silhouette with cosine distance, in row chunks (memory O(chunk x N))."""
    x = l2n(x)
    labels = np.asarray(labels)
    uniq, lab = np.unique(labels, return_inverse=True)
    n, k = len(x), len(uniq)
    if k < 2 or n < 3:
        return float("nan")
    counts = np.bincount(lab, minlength=k).astype(np.float64)
    onehot = np.zeros((n, k))
    onehot[np.arange(n), lab] = 1.0
    s = np.empty(n)
    for lo in range(0, n, chunk):
        d = 1.0 - x[lo:lo + chunk] @ x.T                      # (c, n) cosine distances
        np.clip(d, 0.0, 2.0, out=d)
        sums = d @ onehot                                      # (c, k) distance sums per identity
        own = lab[lo:lo + chunk]
        rows = np.arange(len(own))
        own_n = counts[own] - 1.0
        a = np.where(own_n > 0, sums[rows, own] / np.maximum(own_n, 1.0), 0.0)
        mean_other = sums / counts[None, :]
        mean_other[rows, own] = np.inf
        b = mean_other.min(axis=1)
        denom = np.maximum(a, b)
        si = np.where(denom > 0, (b - a) / np.where(denom > 0, denom, 1.0), 0.0)
        s[lo:lo + chunk] = np.where(own_n > 0, si, 0.0)
    return float(s.mean())


def pca2(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """First two principal components of (N, D) data: (N, 2) coordinates, (2,) variance ratios."""
    x = np.asarray(x, dtype=np.float64)
    xc = x - x.mean(axis=0, keepdims=True)
    _, s, vt = np.linalg.svd(xc, full_matrices=False)
    var = s ** 2
    ratio = var[:2] / max(var.sum(), 1e-30)
    return xc @ vt[:2].T, ratio


def per_identity_mean(x: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean of each identity's rows: (identities, (K, D) means)."""
    uniq, lab = np.unique(np.asarray(labels), return_inverse=True)
    sums = np.zeros((len(uniq), x.shape[1]))
    np.add.at(sums, lab, np.asarray(x, dtype=np.float64))
    return uniq, sums / np.bincount(lab)[:, None]
