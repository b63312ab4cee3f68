"""S-norm / AS-norm: brute-force references, top-k = cohort size, EER gains, cohorts from real caches."""

from __future__ import annotations

import json

import numpy as np
import pytest

from data_manifests import read_trials
from pipeline.core import ScoringError, eer, l2_normalize
from pipeline.score import (
    Channel,
    cohort_stats,
    normalize_channel,
    resolve_cohort,
    score_channels,
    score_from_cache,
    sidecar_path,
)
from pipeline.score.norm import cohort_from_cache, speaker_means
from tests.pipeline.score.test_scoring import DA, DV, all_pairs_trials, cos, make_cache, toy_data


def brute_norm(s, e_vec, t_vec, cohort_e, cohort_t, k):
    """One trial, written plainly: cohort scores, sort, top k, mean/std (ddof 0), symmetric z."""
    def stats(x, cohort):
        sc = sorted((float(np.dot(x, c)) for c in cohort), reverse=True)[:k]
        mu = sum(sc) / len(sc)
        sd = (sum((v - mu) ** 2 for v in sc) / len(sc)) ** 0.5
        return mu, max(sd, 1e-6)
    me, se = stats(e_vec, cohort_e)
    mt, st = stats(t_vec, cohort_t)
    return 0.5 * ((s - me) / se + (s - mt) / st)


def test_cohort_stats_against_brute_force_and_chunking():
    rng = np.random.default_rng(0)
    X = l2_normalize(rng.normal(size=(23, 6)))
    C = l2_normalize(rng.normal(size=(40, 6)))
    for k in (1, 5, 39, 40, None):
        mu, sd = cohort_stats(X, C, k, chunk=4)
        kk = 40 if k is None else k
        for i in range(len(X)):
            top = np.sort(C @ X[i])[::-1][:kk].astype(np.float64)
            assert mu[i] == pytest.approx(top.mean(), abs=1e-5)
            assert sd[i] == pytest.approx(max(top.std(), 1e-6), abs=1e-5)
        mu2, sd2 = cohort_stats(X, C, k, chunk=1000)
        np.testing.assert_allclose(mu, mu2, atol=1e-6)
        np.testing.assert_allclose(sd, sd2, atol=1e-6)


def test_asnorm_with_top_k_equal_to_cohort_size_is_snorm():
    rng = np.random.default_rng(1)
    X = l2_normalize(rng.normal(size=(30, 8)))
    C = l2_normalize(rng.normal(size=(25, 8)))
    ei, ti = rng.integers(0, 30, 200), rng.integers(0, 30, 200)
    ok = np.ones(30, bool)
    out = []
    for k in (None, 25, 1000):
        ch = Channel("A", X, X, ok, ok)
        normalize_channel(ch, C, None, k)
        out.append(score_channels([ch], ei, ti)[0])
    np.testing.assert_allclose(out[0], out[1], atol=1e-6)
    np.testing.assert_allclose(out[0], out[2], atol=1e-6)
    ch = Channel("A", X, X, ok, ok)
    normalize_channel(ch, C, None, 5)
    assert not np.allclose(score_channels([ch], ei, ti)[0], out[0], atol=1e-3)


@pytest.mark.parametrize("k", [3, None])
def test_per_trial_brute_force_two_sides_two_cohorts(k):
    rng = np.random.default_rng(2)
    E = l2_normalize(rng.normal(size=(11, 5)))
    T = l2_normalize(rng.normal(size=(13, 5)))
    Ce = l2_normalize(rng.normal(size=(9, 5)))
    Ct = l2_normalize(rng.normal(size=(7, 5)))
    ei, ti = rng.integers(0, 11, 50), rng.integers(0, 13, 50)
    ch = Channel("head", E, T, np.ones(11, bool), np.ones(13, bool))
    normalize_channel(ch, Ce, Ct, k, chunk=2)
    got = score_channels([ch], ei, ti)[0]
    for i in range(50):
        s = float(np.dot(E[ei[i]], T[ti[i]]))
        ref = brute_norm(s, E[ei[i]], T[ti[i]], Ce, Ct, 9 if k is None else k)
        assert got[i] == pytest.approx(ref, abs=1e-4)


def test_normalisation_improves_eer_with_per_utterance_offsets():
    """Enrol/test tables whose dot products carry an additive per-utterance offset.

    x_e = [z_e, o_e, 1], x_t = [z_t, 1, o_t] -> x_e . x_t = z_e . z_t + o_e + o_t. Each side's
    cohort [w, 1, 0] / [w, 0, 1] sees the same offset, so the z-normalisation removes it
    (the symmetric average halves the other side's offset).
    """
    rng = np.random.default_rng(3)
    n_spk, per, d = 40, 6, 16
    spk = rng.normal(size=(n_spk, d)) / np.sqrt(d)
    lab_spk = np.repeat(np.arange(n_spk), per)
    z = spk[lab_spk] + 0.25 * rng.normal(size=(len(lab_spk), d)) / np.sqrt(d)
    off = rng.normal(0, 0.6, size=len(z))                      # large per-utterance offsets
    E = np.hstack([z, off[:, None], np.ones((len(z), 1))]).astype(np.float32)
    T = np.hstack([z, np.ones((len(z), 1)), off[:, None]]).astype(np.float32)
    w = rng.normal(size=(200, d)) / np.sqrt(d)
    Ce = np.hstack([w, np.ones((200, 1)), np.zeros((200, 1))]).astype(np.float32)
    Ct = np.hstack([w, np.zeros((200, 1)), np.ones((200, 1))]).astype(np.float32)
    n = 3000                                   # ~half targets: same speaker, another clip
    ei = rng.integers(0, len(z), 2 * n)
    ti = np.concatenate([lab_spk[ei[:n]] * per + rng.integers(0, per, n), rng.integers(0, len(z), n)])
    keep = ei != ti
    ei, ti = ei[keep], ti[keep]
    y = (lab_spk[ei] == lab_spk[ti]).astype(int)
    ok = np.ones(len(z), bool)
    raw = score_channels([Channel("x", E, T, ok, ok, kind="dot")], ei, ti)[0]
    ch = Channel("x", E, T, ok, ok, kind="dot")
    normalize_channel(ch, Ce, Ct, None)
    sn = score_channels([ch], ei, ti)[0]
    ch = Channel("x", E, T, ok, ok, kind="dot")
    normalize_channel(ch, Ce, Ct, 50)
    asn = score_channels([ch], ei, ti)[0]
    e_raw, e_sn, e_as = eer(raw, y), eer(sn, y), eer(asn, y)
    assert y.sum() > 2000 and e_raw > 0.2
    # measured 0.29 -> 0.17 (S-norm) / 0.17 (AS-norm); over seeds 0-3 the ratio is 0.55-0.66
    assert e_sn < 0.75 * e_raw and e_as < 0.75 * e_raw


def test_speaker_means_definition():
    x = np.array([[3, 0], [0, 2], [1, 0], [0, 0]], np.float32)
    m = speaker_means(x, np.array([0, 0, 1, 2]), 3)
    r = np.sqrt(0.5)
    np.testing.assert_allclose(m, [[r, r], [1, 0], [0, 0]], atol=1e-6)


# ---------------------------------------------------------------- cohorts from real caches
@pytest.fixture(scope="module")
def cached(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("norm")
    ids, speakers, audio, face = toy_data(n_spk=10, per_spk=6, seed=4)
    splits = ["train" if int(s[2:]) < 6 else "test" for s in speakers]
    has_face = np.ones(len(ids), bool)
    has_face[2] = False                          # a train clip without a face
    cache = make_cache(tmp / "c.zarr", ids, speakers, splits, audio, face, None, has_face)
    test_ids = [i for i, sp in zip(ids, splits) if sp == "test"]
    test_spk = [s for s, sp in zip(speakers, splits) if sp == "test"]
    all_pairs_trials(tmp / "t.txt", test_ids, test_spk, n=80, seed=5)
    return dict(cache=cache, ids=ids, speakers=speakers, splits=splits, audio=audio, face=face,
                has_face=has_face, trials=tmp / "t.txt", tmp=tmp)


def _manual_cohort(d, X, valid):
    spk = sorted({s for s, sp in zip(d["speakers"], d["splits"]) if sp == "train"})
    out = []
    for s in spk:
        rows = [i for i, (s2, sp) in enumerate(zip(d["speakers"], d["splits"]))
                if s2 == s and sp == "train" and valid[i]]
        m = np.mean([X[i] / np.linalg.norm(X[i]) for i in rows], axis=0)
        out.append(m / np.linalg.norm(m))
    return np.array(out)


def test_cohort_from_cache_through_dask_windows(cached):
    src = resolve_cohort("train", cached["cache"])
    assert src.split == "train" and len(src.rows) == 36
    for window in (5, 65536):
        means, speakers = cohort_from_cache(src, "V", window=window)
        ref = _manual_cohort(cached, cached["face"], cached["has_face"])
        np.testing.assert_allclose(means, ref, atol=1e-5)
        assert speakers.tolist() == [f"id{s:05d}" for s in range(6)]


def test_resolve_cohort_specs_and_errors(cached, tmp_path):
    c = cached["cache"]
    with pytest.raises(ScoringError, match="cohort split 'nope' has no rows") as ei:
        resolve_cohort("nope", c)
    assert "test, train" in str(ei.value)
    other = resolve_cohort(f"{c.path}:test", c)
    assert other.split == "test" and other.cache is not c and len(other.rows) == 24
    whole = resolve_cohort(str(c.path), c)
    assert whole.split is None and len(whole.rows) == 60


@pytest.mark.parametrize("norm,k", [("snorm", None), ("asnorm", 3)])
def test_score_from_cache_with_norm_matches_brute_force(cached, norm, k):
    d = cached
    trials = read_trials(d["trials"])
    res = score_from_cache(d["cache"], trials, "AVxAV", norm=norm, cohort="train", top_k=k or 300,
                           chunk=7)
    ca = _manual_cohort(d, d["audio"], np.ones(len(d["ids"]), bool))
    cv = _manual_cohort(d, d["face"], d["has_face"])
    kk = 6 if k is None else k
    row = {u: i for i, u in enumerate(d["ids"])}
    for n in range(len(res)):
        i, j = row[res.enrol[n]], row[res.test[n]]
        parts = []
        for X, C in ((d["audio"], ca), (d["face"], cv)):
            a, b = X[i] / np.linalg.norm(X[i]), X[j] / np.linalg.norm(X[j])
            parts.append(brute_norm(cos(a, b), a, b, C, C, kk))
        assert res.scores[n] == pytest.approx(np.mean(parts), abs=1e-4)
    info = res.info["norm"]
    assert info["method"] == norm and info["cohort_split"] == "train"
    assert info["cohort_speakers"] == {"A": 6, "V": 6} and info["top_k"] == k


def test_norm_with_head_uses_head_space_per_side(cached):
    import torch

    from fusion import build_head
    from pipeline.train import batch_from_cache
    d = cached
    torch.manual_seed(0)
    head = build_head("mean", DA, DV).eval()
    trials = read_trials(d["trials"])
    res = score_from_cache(d["cache"], trials, "AVxA", head=head, norm="asnorm", cohort="train", top_k=4)
    c = d["cache"]
    train = c.split_rows("train")
    spk = np.asarray(c.speakers)[train]

    def head_cohort(use):
        with torch.no_grad():
            X = head.embed(batch_from_cache(c, train), use=use).numpy()
        X = X / np.linalg.norm(X, axis=1, keepdims=True)
        means = np.array([X[spk == s].mean(0) for s in np.unique(spk)])
        return means / np.linalg.norm(means, axis=1, keepdims=True)

    ce, ct = head_cohort(("A", "V")), head_cohort(("A",))
    with torch.no_grad():
        E = head.embed(batch_from_cache(c, c.rows(res.enrol)), use=("A", "V")).numpy()
        T = head.embed(batch_from_cache(c, c.rows(res.test)), use=("A",)).numpy()
    for n in range(len(res)):
        a, b = E[n] / np.linalg.norm(E[n]), T[n] / np.linalg.norm(T[n])
        assert res.scores[n] == pytest.approx(brute_norm(float(a @ b), a, b, ce, ct, 4), abs=1e-3)


def test_cli_score_with_asnorm_writes_norm_provenance(cached, capsys):
    from pipeline.cli import main
    out = cached["tmp"] / "n.tsv"
    with pytest.raises(SystemExit) as ex:
        main(["score", "--cache", str(cached["cache"].path), "--trials", str(cached["trials"]),
              "--mode", "AxA", "--norm", "asnorm", "--cohort", "train", "--top-k", "4", "--out", str(out),
              "--quiet"])
    assert ex.value.code == 0, capsys.readouterr().err
    side = json.loads(sidecar_path(out).read_text())
    assert side["norm"]["method"] == "asnorm" and side["norm"]["top_k"] == 4
    assert side["norm"]["cohort_cache_fingerprint"] == cached["cache"].fingerprint
    with pytest.raises(SystemExit) as ex:
        main(["score", "--cache", str(cached["cache"].path), "--trials", str(cached["trials"]),
              "--mode", "AxA", "--norm", "snorm", "--cohort", "dev", "--out", str(out)])
    assert ex.value.code == 2 and "cohort split 'dev' has no rows" in capsys.readouterr().err


def test_spans_bound_each_window_and_cover_all_rows():
    from pipeline.score.norm import _spans
    rows = np.array([0, 1, 5, 9, 10, 30, 31, 95])
    got = list(_spans(rows, 10))
    assert got == [(0, 10, 0, 4), (10, 11, 4, 5), (30, 32, 5, 7), (95, 96, 7, 8)]
    for start, stop, i, j in got:
        assert stop - start <= 10 and np.all((rows[i:j] >= start) & (rows[i:j] < stop))
