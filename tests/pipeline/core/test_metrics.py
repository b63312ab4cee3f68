"""EER / minDCF / DET: hand-worked cases, a brute-force sweep, an independent ROC."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pipeline.core import ScoringError, compute_metrics, eer, error_curves, min_dcf
from pipeline.core.metrics import det_points, eer_from_curves, probit


# ---------------------------------------------------------------- brute force, written plainly
def brute_force(scores, labels, p_targets=(0.01, 0.05)):
    """O(n*m) sweep: every threshold between distinct scores, counted trial by trial."""
    scores = [float(s) for s in scores]
    labels = [int(y) for y in labels]
    values = sorted(set(scores))
    thresholds = [-math.inf] + [(a + b) / 2 for a, b in zip(values[:-1], values[1:])] + [math.inf]
    n_tar = sum(1 for y in labels if y == 1)
    n_non = sum(1 for y in labels if y == 0)
    pm, pf = [], []
    for t in thresholds:
        miss = 0
        fa = 0
        for s, y in zip(scores, labels):
            accepted = s > t
            if y == 1 and not accepted:
                miss += 1
            if y == 0 and accepted:
                fa += 1
        pm.append(miss / n_tar)
        pf.append(fa / n_non)
    # EER: the first point with pmiss >= pfa and the one before it; the segment between
    # them meets the diagonal pmiss == pfa
    k = 0
    while pm[k] < pf[k]:
        k += 1
    x0, y0, x1, y1 = pf[k - 1], pm[k - 1], pf[k], pm[k]
    # points on the segment: (x0 + a (x1 - x0), y0 + a (y1 - y0)); solve x == y for a
    a = (x0 - y0) / ((x0 - y0) - (x1 - y1))
    e = y0 + a * (y1 - y0)
    dcfs = {}
    for p in p_targets:
        best = math.inf
        for m, f in zip(pm, pf):
            best = min(best, (m * p + f * (1 - p)) / min(p, 1 - p))
        dcfs[p] = best
    return e, dcfs, pm, pf


def random_case(rng, n, n_levels):
    labels = (rng.random(n) < 0.3).astype(np.int8)
    labels[0], labels[1] = 0, 1
    # few distinct levels -> many ties, targets shifted up so the EER is not 50 %
    scores = rng.integers(0, n_levels, n).astype(np.float64) / n_levels + 0.25 * labels
    scores = np.round(scores, 3)
    return scores, labels


@pytest.mark.parametrize("seed,n,levels", [(0, 300, 7), (1, 800, 40), (2, 1500, 150),
                                           (3, 50, 3), (4, 1200, 1000)])
def test_matches_brute_force_with_ties(seed, n, levels):
    rng = np.random.default_rng(seed)
    scores, labels = random_case(rng, n, levels)
    assert len(np.unique(scores)) < n  # ties present
    e_ref, dcf_ref, pm_ref, pf_ref = brute_force(scores, labels)
    c = error_curves(scores, labels)
    np.testing.assert_allclose(c.pmiss, pm_ref, atol=1e-12)
    np.testing.assert_allclose(c.pfa, pf_ref, atol=1e-12)
    m = compute_metrics(scores, labels)
    assert m["eer_percent"] == pytest.approx(100 * e_ref, abs=1e-9)
    assert m["min_dcf_p0.01"] == pytest.approx(dcf_ref[0.01], abs=1e-9)
    assert m["min_dcf_p0.05"] == pytest.approx(dcf_ref[0.05], abs=1e-9)
    assert m["n_trials"] == n and m["n_target"] == int(labels.sum())
    assert m["n_nontarget"] == n - int(labels.sum())


def test_hand_worked_five_trials_with_a_tie():
    # targets 0.5, 0.3; non-targets 0.1, 0.3, 0.6. Sorted: 0.1N {0.3T 0.3N} 0.5T 0.6N
    # N_tar = 2, N_non = 3; rule "accept iff s > t"
    #   j  rejects         Pmiss  Pfa
    #   0  nothing          0     1
    #   1  0.1              0     2/3
    #   2  <= 0.3 (tie)     1/2   1/3     <- first Pmiss >= Pfa
    #   3  <= 0.5           1     1/3
    #   4  everything       1     0
    # d_a = 2/3 - 0 = 2/3, d_b = 1/3 - 1/2 = -1/6, alpha = (2/3) / (5/6) = 4/5
    # EER = 0 + 4/5 * (1/2 - 0) = 0.4 (check: 2/3 + 4/5 * (1/3 - 2/3) = 0.4)
    # minDCF p=0.5: min(Pmiss + Pfa) = min(1, 2/3, 5/6, 4/3, 1) = 2/3
    # minDCF p=0.75: min(3 Pmiss + Pfa) = min(1, 2/3, 11/6, 10/3, 3) = 2/3
    # minDCF p=0.01: min(Pmiss + 99 Pfa) = min(99, 66, 33.5, 34, 1) = 1
    scores = [0.5, 0.3, 0.1, 0.3, 0.6]
    labels = [1, 1, 0, 0, 0]
    c = error_curves(scores, labels)
    np.testing.assert_allclose(c.pmiss, [0, 0, 0.5, 1, 1])
    np.testing.assert_allclose(c.pfa, [1, 2 / 3, 1 / 3, 1 / 3, 0])
    np.testing.assert_allclose(c.thresholds, [-np.inf, 0.2, 0.4, 0.55, np.inf])
    assert eer(scores, labels) == pytest.approx(0.4)
    assert min_dcf(scores, labels, 0.5) == pytest.approx(2 / 3)
    assert min_dcf(scores, labels, 0.75) == pytest.approx(2 / 3)
    assert min_dcf(scores, labels, 0.01) == pytest.approx(1.0)


def test_hand_worked_four_trials():
    # target 0.5; non-targets 0.1, 0.3, 0.6. Points (Pmiss, Pfa): (0,1) (0,2/3) (0,1/3) (1,1/3) (1,0)
    # crossing between j=2 (0, 1/3) and j=3 (1, 1/3): alpha = (1/3) / (1/3 + 2/3) = 1/3 -> EER = 1/3
    scores = [0.5, 0.1, 0.3, 0.6]
    labels = [1, 0, 0, 0]
    assert eer(scores, labels) == pytest.approx(1 / 3)
    assert min_dcf(scores, labels, 0.5) == pytest.approx(1 / 3)


def test_perfect_separation_is_zero():
    scores = [0.9, 0.8, 0.8, 0.1, 0.2, 0.2, -1.0]
    labels = [1, 1, 1, 0, 0, 0, 0]
    m = compute_metrics(scores, labels)
    assert m["eer_percent"] == 0.0
    assert m["min_dcf_p0.01"] == 0.0 and m["min_dcf_p0.05"] == 0.0
    assert 0.2 < m["eer_threshold"] <= 0.8


def test_all_equal_scores_give_fifty_percent():
    labels = [1, 0, 0, 1, 0, 0, 0]
    m = compute_metrics(np.full(7, 0.3), labels)
    assert m["eer_percent"] == pytest.approx(50.0)
    assert m["min_dcf_p0.01"] == pytest.approx(1.0)
    assert m["min_dcf_p0.05"] == pytest.approx(1.0)


def test_reversed_scores_give_full_error():
    m = compute_metrics([0.1, 0.2, 0.8, 0.9], [1, 1, 0, 0])
    assert m["eer_percent"] == pytest.approx(100.0)


def test_against_independent_roc_and_auc():
    """ROC from two separately sorted arrays + searchsorted; AUC = Mann-Whitney with ties = 1/2."""
    rng = np.random.default_rng(7)
    tar = np.round(rng.normal(1.0, 1.0, 700), 1)
    non = np.round(rng.normal(0.0, 1.0, 2100), 1)
    scores = np.concatenate([tar, non])
    labels = np.concatenate([np.ones_like(tar), np.zeros_like(non)]).astype(np.int8)
    perm = rng.permutation(len(scores))
    c = error_curves(scores[perm], labels[perm])
    # independent: for each distinct value v (ascending) a threshold just above v
    v = np.unique(scores)
    tar_s, non_s = np.sort(tar), np.sort(non)
    pmiss = np.searchsorted(tar_s, v, side="right") / len(tar)
    pfa = 1.0 - np.searchsorted(non_s, v, side="right") / len(non)
    np.testing.assert_allclose(c.pmiss[1:], pmiss)
    np.testing.assert_allclose(c.pfa[1:], pfa)
    # area under ROC (TPR = 1 - Pmiss against FPR = Pfa) by trapezoids = P(s_t > s_n) + P(=)/2
    tpr, fpr = 1.0 - c.pmiss[::-1], c.pfa[::-1]
    auc = float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))
    gt = (tar[:, None] > non[None, :]).mean()
    eq = (tar[:, None] == non[None, :]).mean()
    assert auc == pytest.approx(gt + eq / 2, abs=1e-12)
    # the interpolated EER never exceeds the best "max(Pmiss, Pfa)" over operating points
    # and is at least the best "min" on the two bracketing points
    e, _ = eer_from_curves(c)
    assert e <= np.min(np.maximum(c.pmiss, c.pfa)) + 1e-12
    # Gaussian targets/non-targets one std apart: EER near Phi(-0.5) = 30.9 %
    assert 0.26 < e < 0.36


def test_invariant_to_order_and_monotone_transform():
    rng = np.random.default_rng(3)
    s = rng.normal(size=3000)
    y = (rng.random(3000) < 0.2).astype(int)
    s = s + y
    a = compute_metrics(s, y)
    p = rng.permutation(3000)
    b = compute_metrics(np.exp(s[p]), y[p])
    for k in ("eer_percent", "min_dcf_p0.01", "min_dcf_p0.05"):
        assert a[k] == pytest.approx(b[k], abs=1e-12)


def test_errors():
    with pytest.raises(ScoringError, match="unlabeled"):
        compute_metrics([0.1, 0.2], [-1, -1])
    with pytest.raises(ScoringError, match="both target and non-target"):
        compute_metrics([0.1, 0.2], [1, 1])
    with pytest.raises(ScoringError, match="NaN"):
        compute_metrics([0.1, float("nan"), 0.3], [1, 0, 0])
    with pytest.raises(ScoringError, match="no trials"):
        compute_metrics([], [])
    with pytest.raises(ScoringError, match="p_target"):
        min_dcf([0.1, 0.2], [1, 0], 1.5)


def test_det_points_thinned_keeps_ends_and_shape():
    rng = np.random.default_rng(5)
    y = (rng.random(100_000) < 0.1).astype(int)
    s = rng.normal(size=100_000) + 2 * y
    c = error_curves(s, y)
    pfa, pmiss = det_points(c, max_points=500)
    assert len(pfa) <= 502
    assert pfa[0] == 1.0 and pmiss[0] == 0.0 and pfa[-1] == 0.0 and pmiss[-1] == 1.0
    assert np.all(np.diff(pmiss) >= 0) and np.all(np.diff(pfa) <= 0)
    # probit is the inverse normal CDF
    assert probit(0.5) == pytest.approx(0.0)
    assert probit(0.8413447460685429) == pytest.approx(1.0, abs=1e-9)
