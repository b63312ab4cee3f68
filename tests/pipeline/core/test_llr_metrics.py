"""LLR metrics against independent computations: PAV vs an exhaustive isotonic fit, minCllr vs an
exhaustive monotone recalibration, Cllr / actDCF / thresholds worked by hand."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from pipeline.core.errors import ConfigError, ScoringError
from pipeline.core.llr_metrics import (
    act_dcf,
    cllr,
    compute_llr_metrics,
    min_cllr,
    parse_operating_point,
    pav,
    pav_posteriors,
    threshold_at,
)
from pipeline.core.metrics import error_curves, min_dcf


def partitions(n):
    """Every split of ``range(n)`` into contiguous blocks, as lists of (start, stop)."""
    for cuts in itertools.product((0, 1), repeat=n - 1):
        bounds = [0] + [i + 1 for i, c in enumerate(cuts) if c] + [n]
        yield list(zip(bounds[:-1], bounds[1:]))


def brute_isotonic(y, w):
    """Exact weighted isotonic least squares: the optimum is constant on contiguous blocks at
    each block's weighted mean, so try every partition whose block means do not decrease."""
    best, best_x = math.inf, None
    for part in partitions(len(y)):
        means = [np.dot(w[a:b], y[a:b]) / w[a:b].sum() for a, b in part]
        if any(m2 < m1 - 1e-12 for m1, m2 in zip(means, means[1:])):
            continue
        x = np.concatenate([np.full(b - a, m) for (a, b), m in zip(part, means)])
        sse = float(np.dot(w, (x - y) ** 2))
        if sse < best - 1e-12:
            best, best_x = sse, x
    return best_x


@pytest.mark.parametrize("seed", range(40))
def test_pav_equals_exhaustive_isotonic_fit(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 10))
    y = rng.integers(0, 4, n).astype(float) if seed % 2 else rng.normal(size=n)   # ties in y too
    w = rng.integers(1, 5, n).astype(float) if seed % 3 else np.ones(n)
    np.testing.assert_allclose(pav(y, w), brute_isotonic(y, w), atol=1e-10)


def test_pav_posteriors_pool_tied_scores():
    # tied scores (0.3 twice, one target one non-target) must get one posterior
    s = np.array([0.1, 0.3, 0.3, 0.5, 0.6])
    y = np.array([0, 1, 0, 1, 0])
    p = pav_posteriors(s, y)
    # blocks (by score): 0/1, 1/2, 1/1, 0/1 -> PAV pools the last two: 0, .5, .5, .5
    np.testing.assert_allclose(p, [0.0, 0.5, 0.5, 0.5, 0.5])
    # input order does not matter
    perm = np.array([3, 0, 4, 2, 1])
    np.testing.assert_allclose(pav_posteriors(s[perm], y[perm]), p[perm])


def cllr_of(llr, y):
    llr, y = np.asarray(llr, float), np.asarray(y).astype(bool)
    with np.errstate(over="ignore"):
        ct = [0.0 if l == np.inf else math.log2(1 + math.exp(-l)) for l in llr[y]]
        cn = [0.0 if l == -np.inf else math.log2(1 + math.exp(l)) for l in llr[~y]]
    return 0.5 * (sum(ct) / len(ct) + sum(cn) / len(cn))


def brute_min_cllr(s, y):
    """min over every monotone (non-decreasing) block-constant recalibration of the distinct scores,
    each block at its own posterior (the log-loss optimum for a block), of the Cllr."""
    s, y = np.asarray(s, float), np.asarray(y)
    v = np.unique(s)
    tar = np.array([y[s == x].sum() for x in v], float)
    cnt = np.array([(s == x).sum() for x in v], float)
    n_tar, n_non = y.sum(), len(y) - y.sum()
    best = math.inf
    for part in partitions(len(v)):
        post = [tar[a:b].sum() / cnt[a:b].sum() for a, b in part]
        if any(p2 < p1 for p1, p2 in zip(post, post[1:])):
            continue
        llr_v = np.concatenate([np.full(b - a, (math.log(p / (1 - p)) if 0 < p < 1 else (np.inf if p == 1 else -np.inf))
                                        - math.log(n_tar / n_non)) for (a, b), p in zip(part, post)])
        best = min(best, cllr_of(llr_v[np.searchsorted(v, s)], y))
    return best


@pytest.mark.parametrize("seed", range(25))
def test_min_cllr_equals_exhaustive_monotone_recalibration(seed):
    rng = np.random.default_rng(100 + seed)
    n = int(rng.integers(4, 12))
    y = rng.integers(0, 2, n)
    y[0], y[1] = 0, 1
    s = rng.integers(0, 6, n).astype(float) + rng.normal(size=n) * (seed % 2)   # ties half the time
    assert min_cllr(s, y) == pytest.approx(brute_min_cllr(s, y), abs=1e-10)
    assert min_cllr(s, y) <= cllr(s, y) + 1e-12


def test_min_cllr_hand_worked():
    # targets 0.5, 0.3; non-targets 0.1, 0.3, 0.6 -> PAV posteriors 0 | .5 .5 .5 (see above);
    # LLR of p = .5 is log(3/2) (the list's prior 2/5 removed), the 0.1 block -inf (free)
    s = [0.5, 0.3, 0.1, 0.3, 0.6]
    y = [1, 1, 0, 0, 0]
    ref = 0.5 * (math.log2(1 + 2 / 3) + (0 + 2 * math.log2(1 + 3 / 2)) / 3)
    assert min_cllr(s, y) == pytest.approx(ref, rel=1e-12)
    assert min_cllr([1, 2, 3, 4], [0, 0, 1, 1]) == 0.0          # separable: perfect after PAV
    assert min_cllr([2, 2, 2, 2, 2], [0, 1, 0, 1, 1]) == pytest.approx(1.0)   # no information


def test_cllr_hand_worked():
    # targets 0 and log 3, non-target 0: (1 + log2(4/3)) / 2 for targets, 1 for the non-target
    assert cllr([0.0, math.log(3), 0.0], [1, 1, 0]) == pytest.approx(0.5 * ((1 + math.log2(4 / 3)) / 2 + 1))
    assert cllr(np.zeros(7), [1, 0, 1, 0, 0, 1, 0]) == pytest.approx(1.0)
    # huge confident errors stay finite (no overflow): log2(1 + e^800) ~ 800/ln 2
    assert cllr([-800.0, -5.0], [1, 0]) == pytest.approx(0.5 * (800 / math.log(2) + math.log2(1 + math.exp(-5))))


def test_act_dcf_hand_worked():
    eta = math.log(99)                      # Bayes threshold at p = 0.01
    tar = [5.0, 4.0, 10.0, eta]             # 4.0 and eta itself (accept iff s > eta) are misses
    non = [-1.0, 4.6, 0.0]                  # 4.6 > 4.595: a false alarm
    s, y = tar + non, [1] * 4 + [0] * 3
    assert act_dcf(s, y, 0.01) == pytest.approx((0.01 * 2 / 4 + 0.99 * 1 / 3) / 0.01)
    assert act_dcf(s, y, 0.5) == pytest.approx((0.5 * 0 + 0.5 * 1 / 3) / 0.5)    # eta = 0
    # costs move the threshold: Cmiss=10 at p=0.01 -> eta = log(9.9) ~ 2.29
    assert act_dcf(s, y, 0.01, c_miss=10.0) == pytest.approx((0.1 * 0 + 0.99 * 1 / 3) / 0.1)


@pytest.mark.parametrize("seed", range(5))
def test_act_dcf_is_never_below_min_dcf(seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 3000)
    s = rng.normal(size=3000) + 2.0 * y + rng.normal() * 3
    s = np.round(s, 1)                      # many ties
    for p in (0.01, 0.05, 0.5):
        assert act_dcf(s, y, p) >= min_dcf(s, y, p) - 1e-12
    m = compute_llr_metrics(s, y, error_curves(s, y))
    assert set(m) == {"act_dcf_p0.01", "act_dcf_p0.05", "cllr", "min_cllr"}
    assert m["min_cllr"] == pytest.approx(min_cllr(s, y)) and m["cllr"] == pytest.approx(cllr(s, y))


def test_threshold_at_hand_worked():
    s = np.array([0.5, 0.3, 0.1, 0.3, 0.6])
    y = np.array([1, 1, 0, 0, 0])
    # operating points: Pfa 1, 2/3, 1/3, 1/3, 0; Pmiss 0, 0, .5, 1, 1
    assert threshold_at(s, y, far=1 / 3) == pytest.approx({"threshold": 0.4, "far": 1 / 3, "frr": 0.5})
    assert threshold_at(s, y, far=0.5) == pytest.approx({"threshold": 0.4, "far": 1 / 3, "frr": 0.5})
    assert threshold_at(s, y, frr=0.0) == pytest.approx({"threshold": 0.2, "far": 2 / 3, "frr": 0.0})
    t = threshold_at(s, y, far=0.0)
    assert t["threshold"] == np.inf and t["far"] == 0.0 and t["frr"] == 1.0


@pytest.mark.parametrize("kind", ["far", "frr"])
def test_threshold_rates_are_what_the_threshold_gives(kind):
    rng = np.random.default_rng(7)
    y = rng.integers(0, 2, 5000)
    s = np.round(rng.normal(size=5000) + 1.5 * y, 2)
    for target in (0.001, 0.01, 0.05, 0.2):
        t = threshold_at(s, y, **{kind: target})
        far = np.mean(s[y == 0] > t["threshold"])
        frr = np.mean(s[y == 1] <= t["threshold"])
        assert far == pytest.approx(t["far"]) and frr == pytest.approx(t["frr"])
        assert t[kind] <= target
        # the best such point: one step further would break the target
        step = 1e-9 if kind == "far" else -1e-9
        d = np.unique(s)
        nxt = d[d > t["threshold"]][:1] if kind == "frr" else d[d < t["threshold"]][-1:]
        if len(nxt):
            worse = (np.mean(s[y == 1] <= nxt[0]) if kind == "frr" else np.mean(s[y == 0] > nxt[0] - step))
            assert worse > target


def test_operating_point_parsing_and_bad_input():
    assert parse_operating_point("far=1%") == ("far", 0.01)
    assert parse_operating_point(" FRR = 0.05 ") == ("frr", 0.05)
    assert parse_operating_point("far=1e-3") == ("far", 0.001)
    for bad in ("fa=1%", "far=150%", "far=", "far=x"):
        with pytest.raises(ConfigError):
            parse_operating_point(bad)
    with pytest.raises(ConfigError):
        threshold_at([0.1, 0.2], [1, 0], far=-0.1)
    with pytest.raises(ConfigError):
        threshold_at([0.1, 0.2], [1, 0], far=0.1, frr=0.1)
    with pytest.raises(ScoringError, match="both target and non-target"):
        cllr([0.1, 0.2], [1, 1])
    with pytest.raises(ScoringError, match="NaN"):
        min_cllr([np.nan, 0.2], [1, 0])
