"""Verification metrics: EER, normalised minDCF and DET curve points.

Everything is computed from one sort of the scores (O(n log n)) and cumulative
counts; there is no loop over thresholds or trials.

Exact definitions (also in ``docs/metrics.md``)
-----------------------------------------------
Let the trials have scores ``s_i`` and labels ``y_i`` (1 target, 0 non-target),
``N_tar`` targets and ``N_non`` non-targets (both must be > 0). Let
``v_1 < v_2 < ... < v_m`` be the *distinct* score values. The decision rule is
"accept iff score > t". Only thresholds between distinct values change a
decision, so the operating points are indexed by ``j = 0..m``::

    t_0 = -inf,  t_j = (v_j + v_{j+1}) / 2  (0 < j < m),  t_m = +inf

At ``t_j`` the trials with the ``j`` lowest distinct values are rejected and all
others accepted. Trials with equal scores are therefore always accepted or
rejected together (ties are grouped; no tie-breaking by trial order).

    Pmiss[j] = #{targets with s <= v_j} / N_tar          (Pmiss[0] = 0)
    Pfa[j]   = #{non-targets with s > v_j} / N_non       (Pfa[0]  = 1)

``Pmiss`` is non-decreasing and ``Pfa`` non-increasing in ``j``;
``Pmiss[m] = 1`` and ``Pfa[m] = 0``.

EER. Let ``j*`` be the first ``j`` with ``Pmiss[j] >= Pfa[j]`` (it exists and is
>= 1, because ``Pmiss[0] - Pfa[0] = -1`` and ``Pmiss[m] - Pfa[m] = 1``). The two
operating points ``a = j*-1`` and ``b = j*`` bracket the crossing. The EER is where
the straight segment joining ``(Pfa[a], Pmiss[a])`` and ``(Pfa[b], Pmiss[b])``
meets the diagonal ``Pmiss = Pfa``::

    d_a = Pfa[a] - Pmiss[a] > 0,   d_b = Pfa[b] - Pmiss[b] <= 0
    alpha = d_a / (d_a - d_b)                       # in (0, 1]
    EER = Pmiss[a] + alpha * (Pmiss[b] - Pmiss[a])  # = Pfa[a] + alpha * (Pfa[b] - Pfa[a])

(the error rate of the randomised rule that uses ``t_b`` with probability
``alpha`` and ``t_a`` otherwise). If some operating point has ``Pmiss == Pfa``
exactly, the EER is that value. Reported in percent.

minDCF (normalised detection cost, NIST SRE style) with costs ``Cmiss``,
``Cfa`` and target prior ``p``::

    DCF[j]  = (Cmiss * Pmiss[j] * p + Cfa * Pfa[j] * (1 - p)) / min(Cmiss * p, Cfa * (1 - p))
    minDCF  = min_j DCF[j]

over the same ``m + 1`` operating points (so minDCF <= 1, reached by accepting
or rejecting everything). avfuse reports ``Cmiss = Cfa = 1`` at ``p = 0.01``
and ``p = 0.05``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.core.errors import ScoringError

P_TARGETS = (0.01, 0.05)


@dataclass
class ErrorCurves:
    """Operating points ``j = 0..m`` (see the module docstring).

    ``thresholds[j]`` is ``t_j`` (``-inf`` .. ``+inf``); ``pmiss``/``pfa`` are float64.
    """

    thresholds: np.ndarray
    pmiss: np.ndarray
    pfa: np.ndarray
    n_target: int
    n_nontarget: int


def _check(scores, labels) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    y = np.asarray(labels).reshape(-1)
    if len(s) != len(y):
        raise ScoringError(f"{len(s)} scores but {len(y)} labels")
    if len(s) == 0:
        raise ScoringError("no trials to evaluate")
    if (y < 0).any():
        raise ScoringError(f"{int((y < 0).sum())} of {len(y)} trials are unlabeled",
                           hint="EER/minDCF need a labeled trial list ('label enrol test')")
    if not np.isin(y, (0, 1)).all():
        raise ScoringError("labels must be 1 (target) or 0 (non-target)")
    if not np.isfinite(s).all():
        bad = int((~np.isfinite(s)).sum())
        raise ScoringError(f"{bad} scores are NaN or infinite", hint="rescore; check the embeddings")
    n_tar = int(np.count_nonzero(y == 1))
    n_non = len(y) - n_tar
    if n_tar == 0 or n_non == 0:
        raise ScoringError(f"need both target and non-target trials (got {n_tar} targets, "
                           f"{n_non} non-targets)")
    return s, y.astype(bool)


def error_curves(scores, labels) -> ErrorCurves:
    """``Pmiss``/``Pfa`` at every threshold between distinct scores (ties grouped).

    ``labels``: 1 target, 0 non-target (``-1`` raises ``ScoringError``). O(n log n).
    """
    s, y = _check(scores, labels)
    order = np.argsort(s, kind="stable")
    s_sorted = s[order]
    tar_sorted = y[order]
    # last index of each group of equal scores
    last = np.flatnonzero(np.append(s_sorted[1:] != s_sorted[:-1], True))
    cum_tar = np.cumsum(tar_sorted, dtype=np.int64)[last]          # targets with s <= v_j
    cum_all = last.astype(np.int64) + 1
    cum_non = cum_all - cum_tar                                    # non-targets with s <= v_j
    n_tar = int(cum_tar[-1])
    n_non = int(cum_non[-1])
    pmiss = np.concatenate(([0.0], cum_tar / n_tar))
    pfa = np.concatenate(([1.0], (n_non - cum_non) / n_non))
    v = s_sorted[last]
    thr = np.concatenate(([-np.inf], (v[:-1] + v[1:]) / 2.0, [np.inf]))
    return ErrorCurves(thresholds=thr, pmiss=pmiss, pfa=pfa, n_target=n_tar, n_nontarget=n_non)


def eer_from_curves(c: ErrorCurves) -> tuple[float, float]:
    """``(eer, threshold)``: EER as a fraction (interpolated as in the module docstring)
    and the threshold ``t_b`` of the bracketing point at or past the crossing."""
    d = c.pfa - c.pmiss
    b = int(np.argmax(d <= 0))      # first j with Pmiss >= Pfa (exists: d[m] = -1)
    a = b - 1
    da, db = d[a], d[b]
    alpha = da / (da - db)
    eer = c.pmiss[a] + alpha * (c.pmiss[b] - c.pmiss[a])
    return float(eer), float(c.thresholds[b])


def min_dcf_from_curves(c: ErrorCurves, p_target: float, c_miss: float = 1.0,
                        c_fa: float = 1.0) -> tuple[float, float]:
    """``(minDCF, threshold)``: normalised minimum detection cost (module docstring)."""
    if not 0.0 < p_target < 1.0:
        raise ScoringError(f"p_target must be in (0, 1), got {p_target}")
    dcf = (c_miss * c.pmiss * p_target + c_fa * c.pfa * (1.0 - p_target))
    dcf /= min(c_miss * p_target, c_fa * (1.0 - p_target))
    j = int(np.argmin(dcf))
    return float(dcf[j]), float(c.thresholds[j])


def eer(scores, labels) -> float:
    """Equal error rate as a fraction in [0, 0.5] (see the module docstring)."""
    return eer_from_curves(error_curves(scores, labels))[0]


def min_dcf(scores, labels, p_target: float, c_miss: float = 1.0, c_fa: float = 1.0) -> float:
    """Normalised minDCF (see the module docstring)."""
    return min_dcf_from_curves(error_curves(scores, labels), p_target, c_miss, c_fa)[0]


def compute_metrics(scores, labels, p_targets=P_TARGETS) -> dict:
    """All reported numbers from one sort: ``eer_percent``, ``min_dcf_p0.01``,
    ``min_dcf_p0.05`` (one key per ``p_targets`` entry), ``eer_threshold``,
    ``n_trials``, ``n_target``, ``n_nontarget``."""
    c = error_curves(scores, labels)
    e, thr = eer_from_curves(c)
    out = {"eer_percent": 100.0 * e}
    for p in p_targets:
        out[f"min_dcf_p{p:g}"] = min_dcf_from_curves(c, p)[0]
    out.update(eer_threshold=thr, n_trials=c.n_target + c.n_nontarget,
               n_target=c.n_target, n_nontarget=c.n_nontarget)
    return out


def det_points(c: ErrorCurves, max_points: int = 4000) -> tuple[np.ndarray, np.ndarray]:
    """``(pfa, pmiss)`` of the DET curve, thinned for plotting.

    Keeps the first and last points and at most about ``max_points`` operating
    points, evenly spaced along the curve's length on the probit scale, so the
    shape is kept where the curve moves (the staircase of a 500k-trial list has
    as many points as distinct scores).
    """
    pfa, pmiss = c.pfa, c.pmiss
    n = len(pfa)
    if n <= max_points:
        return pfa.copy(), pmiss.copy()
    x, y = probit(pfa), probit(pmiss)
    step = np.hypot(np.diff(x), np.diff(y))
    arc = np.concatenate(([0.0], np.cumsum(step)))
    targets = np.linspace(0.0, arc[-1], max_points)
    keep = np.unique(np.concatenate(([0, n - 1], np.searchsorted(arc, targets).clip(0, n - 1))))
    return pfa[keep], pmiss[keep]


def probit(p, eps: float = 1e-6) -> np.ndarray:
    """Normal deviate (inverse standard normal CDF) of ``p`` clipped to ``[eps, 1-eps]``."""
    from scipy.special import ndtri
    return ndtri(np.clip(np.asarray(p, dtype=np.float64), eps, 1.0 - eps))


