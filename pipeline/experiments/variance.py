"""Within- and between-speaker variance of an embedding space (``avfuse analyze``).

For L2-normalised embeddings ``x_i`` (the space cosine scoring sees) with speaker
labels, speaker means ``m_c`` (``n_c`` clips) and the grand mean ``m``:

* within  = (1/N) sum_i |x_i - m_c(i)|^2     (spread of a speaker's clips)
* between = (1/N) sum_c n_c |m_c - m|^2      (spread of the speakers' means)
* total   = (1/N) sum_i |x_i - m|^2 = within + between

summed over dimensions (traces of the scatter matrices over N), and the ratio
between / within (higher: identities further apart relative to their own spread;
the Fisher criterion of LDA in trace form). Numpy only, vectorised.
"""

from __future__ import annotations

import numpy as np

from pipeline.experiments.stats import l2n, per_identity_mean

VARIANCE_COLUMNS = ["system", "space", "within", "between", "total", "ratio", "n_clips", "n_identities"]
VARIANCE_HEADERS = ["system", "embedding", "within-speaker variance", "between-speaker variance", "total variance",
                    "between / within", "clips", "identities"]
SPACES = (("A", "audio (e_A)"), ("V", "face (e_V)"), ("AV", "fused (e_AV)"))


def speaker_variance(x: np.ndarray, labels: np.ndarray) -> dict:
    """``{"within", "between", "total", "ratio", "n_clips", "n_identities"}`` of (N, D) ``x`` (module doc)."""
    x = l2n(x)
    labels = np.asarray(labels)
    ids, means = per_identity_mean(x, labels)
    lab = np.searchsorted(ids, labels)
    counts = np.bincount(lab, minlength=len(ids)).astype(np.float64)
    grand = x.mean(axis=0)
    n = len(x)
    within = float(np.sum((x - means[lab]) ** 2) / n)
    between = float(np.sum(counts[:, None] * (means - grand) ** 2) / n)
    total = float(np.sum((x - grand) ** 2) / n)
    return {"within": within, "between": between, "total": total,
            "ratio": between / within if within > 0 else float("inf"), "n_clips": int(n), "n_identities": len(ids)}


def variance_rows(embs: dict, speakers: np.ndarray) -> list[dict]:
    """One row per system and embedding space of ``run_analysis``'s ``embs`` (label -> {key: (rows, x)})."""
    out = []
    for label, emb in embs.items():
        for key, name in SPACES:
            if key in emb and len(emb[key][0]) >= 2:
                rows, x = emb[key]
                out.append({"system": label, "space": name, **speaker_variance(x, np.asarray(speakers)[rows])})
    return out


__all__ = ["speaker_variance", "variance_rows", "VARIANCE_COLUMNS", "VARIANCE_HEADERS"]
