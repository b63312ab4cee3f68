"""The ``cal_fusion`` system of ``avfuse ablate``: calibrated linear late fusion of A and V scores.

Beside ``score_avg`` (the untrained equal-weight mean of the A and V cosines), the trained
special case: on the labelled dev trials, the AxA and VxV cosines of the backbone
embeddings (``score_from_cache`` without a head) are fused by the prior-weighted
logistic regression of ``pipeline.score.calibrate`` (``llr = wA a + wV v + b``). A trial with
only one modality usable on both sides falls back, as ``score_avg`` does, to that
modality alone, through its own calibration fitted on the dev trials that have it. The
system gives one cell, mode AVxAV, evaluated on the ablation's trial list like every
other cell (``compute_metrics``), plus its weights in ``info``.
"""

from __future__ import annotations

import numpy as np

from pipeline.core.errors import ConfigError, ScoringError

LABEL = "cal_fusion"


def modality_scores(cache, trials) -> tuple[np.ndarray, np.ndarray]:
    """``(a, v)`` cosine per trial (NaN where that modality cannot be compared)."""
    from pipeline.score.engine import score_from_cache
    from pipeline.score.multi import kept_mask

    out = []
    for mode in ("AxA", "VxV"):
        full = np.full(len(trials), np.nan)
        try:
            res = score_from_cache(cache, trials, mode, skip_missing=True)
        except ScoringError:
            if cache.has("audio/clip" if mode == "AxA" else "face/clip"):
                raise
            out.append(full)                 # the cache lacks that modality
            continue
        full[kept_mask(res, trials)] = res.scores
        out.append(full)
    return out[0], out[1]


def _fit(F: np.ndarray, y: np.ndarray, prior: float) -> tuple[np.ndarray, float] | None:
    from pipeline.score.calibrate import train_logreg
    if len(y) == 0 or y.all() or not y.any():
        return None
    w, b, _ = train_logreg(F, y, prior=prior)
    return w, b


def fit_fusion(cache, dev_trials, prior: float = 0.5) -> dict:
    """The three linear maps (A+V, A only, V only) fitted on the dev trials."""
    a, v = modality_scores(cache, dev_trials)
    y = np.asarray(dev_trials.labels) == 1
    both, only_a, only_v = ~np.isnan(a) & ~np.isnan(v), ~np.isnan(a), ~np.isnan(v)
    models = {"AV": _fit(np.column_stack([a, v])[both], y[both], prior),
              "A": _fit(a[only_a, None], y[only_a], prior), "V": _fit(v[only_v, None], y[only_v], prior)}
    if models["AV"] is None:
        raise ScoringError("the dev trials give no target and non-target trials with both modalities",
                           path=dev_trials.path, hint="pass a labelled dev list whose clips have audio and faces")
    return models


def fused_llr(models: dict, a: np.ndarray, v: np.ndarray) -> np.ndarray:
    """LLR per trial: fused where both scores exist, else the single-modality map (NaN if none)."""
    out = np.full(len(a), np.nan)
    both, ha, hv = ~np.isnan(a) & ~np.isnan(v), ~np.isnan(a), ~np.isnan(v)
    w, b = models["AV"]
    out[both] = w[0] * a[both] + w[1] * v[both] + b
    for key, has, x in (("A", ha & ~both, a), ("V", hv & ~both, v)):
        if has.any() and models[key] is not None:
            w1, b1 = models[key]
            out[has] = w1[0] * x[has] + b1
    return out


def fusion_cell(cache, view, dev_trials, trials, *, prior: float = 0.5) -> dict:
    """The AVxAV table row of ``cal_fusion``: fitted on ``dev_trials`` (from ``cache``), scored on
    ``trials`` (from ``view``, the ablation's in-memory copy)."""
    from pipeline.core.metrics import compute_metrics

    if dev_trials is None:
        raise ConfigError(f"system {LABEL} needs --dev-trials", hint="pass a labelled dev list to fit the fusion on")
    if isinstance(dev_trials, (str, bytes)) or hasattr(dev_trials, "__fspath__"):
        from data_manifests.trials import read_trials
        dev_trials = read_trials(dev_trials)
    models = fit_fusion(cache, dev_trials, prior)
    a, v = modality_scores(view, trials)
    llr = fused_llr(models, a, v)
    ok = ~np.isnan(llr)
    m = compute_metrics(llr[ok], np.asarray(trials.labels)[ok])
    cell = {k: m[k] for k in ("eer_percent", "min_dcf_p0.01", "min_dcf_p0.05", "n_trials", "n_target",
                              "n_nontarget")}
    cell["n_skipped"] = int((~ok).sum())
    return {"system": LABEL, "mode": "AVxAV", **cell}, {
        "label": LABEL, "kind": "calibrated late fusion (A + V)", "dev_trials": str(dev_trials.path),
        "weights": {k: None if mv is None else [float(x) for x in mv[0]] + [float(mv[1])] for k, mv in models.items()}}
