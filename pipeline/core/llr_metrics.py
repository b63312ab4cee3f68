"""Metrics of scores taken as log-likelihood ratios: actDCF, Cllr, minCllr (PAV), thresholds.

Exact definitions (also in ``docs/metrics.md``)
-----------------------------------------------
Scores ``s_i`` are read as natural-log likelihood ratios ``log p(s|target) / p(s|non-target)``;
labels ``y_i`` are 1 (target) / 0 (non-target), ``N_tar``, ``N_non`` > 0.

actDCF (actual detection cost, normalised) at target prior ``p`` with costs ``Cmiss``, ``Cfa``:
the Bayes decision for LLRs is *accept iff s > eta* with ``eta = log(Cfa (1-p) / (Cmiss p))``
(``log((1-p)/p)`` for unit costs)::

    Pmiss = #{targets with s <= eta} / N_tar,    Pfa = #{non-targets with s > eta} / N_non
    actDCF = (Cmiss p Pmiss + Cfa (1-p) Pfa) / min(Cmiss p, Cfa (1-p))

so actDCF >= minDCF, with equality when the scores are well calibrated at that prior.

Cllr (cost of the log-likelihood ratio, bits, prior 0.5 as BOSARIS/PYLLR)::

    Cllr = 1/(2 N_tar) sum_tar log2(1 + e^-s) + 1/(2 N_non) sum_non log2(1 + e^s)

0 for perfect LLRs, 1 for the uninformative ``s = 0``; unbounded for confident errors.

minCllr: the Cllr of the best monotone recalibration of the scores. PAV (isotonic
regression of the labels on the scores, tied scores pooled into one block first) gives
the posterior ``P_b`` of each block ``b`` of equal scores; its LLR is
``logit(P_b) - log(N_tar / N_non)`` (the dev list's own prior removed: BOSARIS'
``opt_loglr``, PYLLR's ``PAV``); minCllr is the Cllr of those LLRs (blocks with
``P_b`` 0 or 1 cost nothing). ``0 <= minCllr <= Cllr`` and ``minCllr <= 1``.

Threshold at an operating point, on the error curves of ``pipeline.core.metrics`` (accept iff
``s > t``): ``far=x`` gives the lowest threshold ``t_j`` with ``Pfa[j] <= x`` (the fewest
misses that keep the false acceptances at or under ``x``); ``frr=x`` the highest
threshold with ``Pmiss[j] <= x``.

Everything is vectorised: actDCF and Cllr are O(n); minCllr reuses the one sort of
``error_curves`` (per-block counts) and scipy's linear-time PAV.
"""

from __future__ import annotations

import math
import re

import numpy as np

from pipeline.core.errors import ConfigError, ScoringError
from pipeline.core.metrics import P_TARGETS, ErrorCurves, _check, error_curves

LOG2 = math.log(2.0)


# ---------------------------------------------------------------- PAV
def pav(y, weights=None) -> np.ndarray:
    """Isotonic (non-decreasing) least-squares fit of the sequence ``y`` with ``weights``:
    minimises ``sum w_i (x_i - y_i)^2`` subject to ``x_1 <= ... <= x_n``. Linear time
    (scipy's pool-adjacent-violators)."""
    from scipy.optimize import isotonic_regression

    y = np.asarray(y, dtype=np.float64).reshape(-1)
    if weights is None:
        return isotonic_regression(y).x
    w = np.asarray(weights, dtype=np.float64).reshape(-1)
    if len(w) != len(y):
        raise ValueError(f"{len(y)} values but {len(w)} weights")
    return isotonic_regression(y, weights=w).x


def _block_counts(c: ErrorCurves) -> tuple[np.ndarray, np.ndarray]:
    """Targets and non-targets per block of equal scores (ascending) from the error curves."""
    cum_tar = np.rint(c.pmiss[1:] * c.n_target)
    cum_non = c.n_nontarget - np.rint(c.pfa[1:] * c.n_nontarget)
    tar = np.diff(cum_tar, prepend=0.0)
    non = np.diff(cum_non, prepend=0.0)
    return tar, non


def pav_posteriors(scores, labels) -> np.ndarray:
    """Per trial (input order): the PAV posterior ``P(target | s)`` of its block of tied scores."""
    s, y = _check(scores, labels)
    c = error_curves(s, y)
    tar, non = _block_counts(c)
    p = pav(tar / (tar + non), tar + non)
    v = np.unique(s)                      # the same distinct values, ascending
    return p[np.searchsorted(v, s)]


def _opt_llr_blocks(c: ErrorCurves) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    tar, non = _block_counts(c)
    p = pav(tar / (tar + non), tar + non)
    with np.errstate(divide="ignore"):
        llr = np.log(p) - np.log1p(-p) - math.log(c.n_target / c.n_nontarget)
    return llr, tar, non


def _cllr_blocks(llr: np.ndarray, tar: np.ndarray, non: np.ndarray, n_tar: int, n_non: int) -> float:
    """Cllr of blocks with LLR ``llr`` holding ``tar`` targets and ``non`` non-targets
    (an infinite LLR costs nothing where it is right; weight-0 terms are dropped)."""
    ct = np.where(tar > 0, np.logaddexp(0.0, -np.where(tar > 0, llr, 0.0)), 0.0)
    cn = np.where(non > 0, np.logaddexp(0.0, np.where(non > 0, llr, 0.0)), 0.0)
    dot = np.einsum("i,i->", tar, ct) / n_tar + np.einsum("i,i->", non, cn) / n_non
    return float(dot / (2.0 * LOG2))


def cllr(scores, labels) -> float:
    """Cllr in bits of scores taken as natural-log LLRs (module docstring). O(n)."""
    s, y = _check(scores, labels)
    tar, non = s[y], s[~y]
    return float((np.logaddexp(0.0, -tar).mean() + np.logaddexp(0.0, non).mean()) / (2.0 * LOG2))


def min_cllr_from_curves(c: ErrorCurves) -> float:
    """minCllr from the error curves' per-block counts (no second sort)."""
    llr, tar, non = _opt_llr_blocks(c)
    return _cllr_blocks(llr, tar, non, c.n_target, c.n_nontarget)


def min_cllr(scores, labels) -> float:
    """Cllr after the optimal monotone (PAV) calibration, prior 0.5 (module docstring)."""
    return min_cllr_from_curves(error_curves(scores, labels))


def bayes_threshold(p_target: float, c_miss: float = 1.0, c_fa: float = 1.0) -> float:
    """``log(Cfa (1-p) / (Cmiss p))``: the LLR above which accepting costs less."""
    if not 0.0 < p_target < 1.0:
        raise ScoringError(f"p_target must be in (0, 1), got {p_target}")
    return math.log(c_fa * (1.0 - p_target) / (c_miss * p_target))


def act_dcf(scores, labels, p_target: float, c_miss: float = 1.0, c_fa: float = 1.0) -> float:
    """Normalised actual DCF, deciding *accept iff s > log(Cfa(1-p)/(Cmiss p))*. O(n)."""
    s, y = _check(scores, labels)
    eta = bayes_threshold(p_target, c_miss, c_fa)
    tar, non = s[y], s[~y]
    pmiss = np.count_nonzero(tar <= eta) / len(tar)
    pfa = np.count_nonzero(non > eta) / len(non)
    norm = min(c_miss * p_target, c_fa * (1.0 - p_target))
    return float((c_miss * p_target * pmiss + c_fa * (1.0 - p_target) * pfa) / norm)


# ---------------------------------------------------------------- operating points
_OP = re.compile(r"^\s*(far|frr)\s*=\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*(%?)\s*$", re.I)


def parse_operating_point(text: str) -> tuple[str, float]:
    """``"far=1%"`` -> ``("far", 0.01)``; ``"frr=0.05"`` -> ``("frr", 0.05)``."""
    m = _OP.match(text or "")
    if not m:
        raise ConfigError(f"bad operating point {text!r}", hint="write far=1% or frr=0.05 (a rate in [0, 1] or %)")
    kind, value = m.group(1).lower(), float(m.group(2)) / (100.0 if m.group(3) else 1.0)
    if not 0.0 <= value <= 1.0:
        raise ConfigError(f"operating point {text!r} is outside [0, 1]", hint="e.g. far=1% or far=0.01")
    return kind, value


def threshold_from_curves(c: ErrorCurves, *, far: float | None = None, frr: float | None = None) -> dict:
    """``{"threshold", "far", "frr"}`` at the operating point (module docstring); exactly one of
    ``far``/``frr``. ``far``/``frr`` in the result are the rates reached there."""
    if (far is None) == (frr is None):
        raise ConfigError("give exactly one of far= and frr=")
    rate = far if far is not None else frr
    if not 0.0 <= rate <= 1.0:
        raise ConfigError(f"operating point rate {rate} is outside [0, 1]", hint="e.g. far=0.01")
    if far is not None:
        j = int(np.argmax(c.pfa <= far))                        # Pfa[m] = 0: always found
    else:
        j = len(c.pmiss) - 1 - int(np.argmax(c.pmiss[::-1] <= frr))   # Pmiss[0] = 0: always found
    return {"threshold": float(c.thresholds[j]), "far": float(c.pfa[j]), "frr": float(c.pmiss[j])}


def threshold_at(scores, labels, *, far: float | None = None, frr: float | None = None) -> dict:
    """Score threshold (accept iff ``s > threshold``) at a false-acceptance or false-rejection rate."""
    return threshold_from_curves(error_curves(scores, labels), far=far, frr=frr)


def compute_llr_metrics(scores, labels, curves: ErrorCurves | None = None, p_targets=P_TARGETS) -> dict:
    """``act_dcf_p0.01``, ``act_dcf_p0.05`` (one per ``p_targets``), ``cllr``, ``min_cllr``;
    ``curves`` (from ``error_curves`` of the same trials) saves the sort."""
    s, y = _check(scores, labels)
    c = curves if curves is not None else error_curves(s, y)
    out = {f"act_dcf_p{p:g}": act_dcf(s, y, p) for p in p_targets}
    out["cllr"] = cllr(s, y)
    out["min_cllr"] = min_cllr_from_curves(c)
    return out
