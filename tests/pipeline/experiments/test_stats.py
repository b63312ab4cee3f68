"""analysis_stats against plain brute-force definitions."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.experiments import angles_deg, pca2, per_identity_mean, silhouette_cosine


def _silhouette_brute(x, labels):
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    n = len(x)
    out = []
    for i in range(n):
        same = [j for j in range(n) if labels[j] == labels[i] and j != i]
        if not same:
            out.append(0.0)
            continue
        a = np.mean([1 - x[i] @ x[j] for j in same])
        b = min(np.mean([1 - x[i] @ x[j] for j in range(n) if labels[j] == lab])
                for lab in set(labels) if lab != labels[i])
        out.append((b - a) / max(a, b))
    return float(np.mean(out))


def test_silhouette_matches_brute_force_including_singletons():
    rng = np.random.default_rng(0)
    labels = np.array([0] * 5 + [1] * 4 + [2] * 1 + [3] * 3)
    centres = rng.normal(size=(4, 6))
    x = centres[labels] + 0.7 * rng.normal(size=(len(labels), 6))
    assert silhouette_cosine(x, labels, chunk=4) == pytest.approx(_silhouette_brute(x, labels), abs=1e-10)


def test_silhouette_orders_separated_above_mixed():
    rng = np.random.default_rng(1)
    labels = np.repeat(np.arange(5), 20)
    centres = rng.normal(size=(5, 16))
    tight = centres[labels] + 0.1 * rng.normal(size=(100, 16))
    loose = centres[labels] + 3.0 * rng.normal(size=(100, 16))
    assert silhouette_cosine(tight, labels) > 0.8 > silhouette_cosine(loose, labels)


def test_angles_and_pca():
    a = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 2.0]])
    v = np.array([[0.0, 3.0], [1.0, 1.0], [0.0, 1.0]])
    np.testing.assert_allclose(angles_deg(a, v), [90.0, 45.0, 0.0], atol=1e-9)
    with pytest.raises(ValueError):
        angles_deg(a, np.ones((3, 3)))
    rng = np.random.default_rng(2)
    x = rng.normal(size=(200, 5)) * np.array([10, 3, 0.1, 0.1, 0.1])
    coords, ratio = pca2(x)
    assert coords.shape == (200, 2) and ratio[0] > ratio[1] > 0 and ratio.sum() > 0.99
    ids, means = per_identity_mean(np.arange(8.0).reshape(4, 2), np.array(["b", "a", "b", "a"]))
    assert list(ids) == ["a", "b"]
    np.testing.assert_allclose(means, [[4.0, 5.0], [2.0, 3.0]])
