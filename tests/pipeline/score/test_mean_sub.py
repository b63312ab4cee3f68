"""``avfuse score --mean-sub``: WeSpeaker's mean subtraction, checked trial by trial against numpy on real caches."""

from __future__ import annotations

import json

import numpy as np
import pytest

from data_manifests import read_trials
from pipeline.core import ScoringError, eer
from pipeline.score import embedding_means, resolve_cohort, score_from_cache, sidecar_path
from tests.pipeline.score.test_norm import brute_norm
from tests.pipeline.score.test_scoring import DA, DV, all_pairs_trials, cos, make_cache, toy_data


@pytest.fixture(scope="module")
def centred(tmp_path_factory):
    """The score tests' toy embeddings plus a shared offset per modality (as raw backbone embeddings
    have): 6 train speakers (the mean source), 4 test speakers (the trials)."""
    tmp = tmp_path_factory.mktemp("meansub")
    ids, speakers, audio, face = toy_data(n_spk=10, per_spk=6, seed=4)
    rng = np.random.default_rng(7)
    audio = (audio + 3.0 * rng.normal(size=DA)).astype(np.float32)
    face = (face + 2.0 * rng.normal(size=DV)).astype(np.float32)
    splits = ["train" if int(s[2:]) < 6 else "test" for s in speakers]
    has_face = np.ones(len(ids), bool)
    has_face[2] = False                     # a train clip without a face: not in the face mean
    face[2] = 1e3                           # (its stored vector would move the mean a lot)
    cache = make_cache(tmp / "c.zarr", ids, speakers, splits, audio, face, None, has_face)
    test_ids = [i for i, sp in zip(ids, splits) if sp == "test"]
    test_spk = [s for s, sp in zip(speakers, splits) if sp == "test"]
    all_pairs_trials(tmp / "t.txt", test_ids, test_spk, n=80, seed=5)
    train = np.array([sp == "train" for sp in splits])
    mu_a = audio[train].astype(np.float64).mean(0)
    mu_v = face[train & has_face].astype(np.float64).mean(0)
    return {"cache": cache, "ids": ids, "speakers": speakers, "splits": splits, "audio": audio, "face": face,
            "has_face": has_face, "trials": tmp / "t.txt", "tmp": tmp, "mu_a": mu_a, "mu_v": mu_v, "train": train}


def _row(d):
    return {u: i for i, u in enumerate(d["ids"])}


def test_means_are_the_raw_means_of_present_clips(centred):
    d = centred
    means, info = embedding_means(resolve_cohort("train", d["cache"]), "AVxAV")
    np.testing.assert_allclose(means["A"], d["mu_a"], atol=1e-5)
    np.testing.assert_allclose(means["V"], d["mu_v"], atol=1e-5)
    assert info["clips"] == {"A": 36, "V": 35} and info["split"] == "train"
    assert info["mean_norm"]["A"] == pytest.approx(np.linalg.norm(d["mu_a"]), abs=1e-4)
    whole, info = embedding_means(resolve_cohort(str(d["cache"].path), d["cache"]), "AxA")
    np.testing.assert_allclose(whole["A"], d["audio"].astype(np.float64).mean(0), atol=1e-5)
    assert list(whole) == ["A"] and info["split"] is None and info["clips"] == {"A": 60}


def test_mean_sub_scores_match_numpy_per_trial(centred):
    d = centred
    trials = read_trials(d["trials"])
    res = score_from_cache(d["cache"], trials, "AVxAV", mean_sub="train", chunk=7)
    plain = score_from_cache(d["cache"], trials, "AVxAV")
    row = _row(d)
    for n in range(len(res)):
        i, j = row[res.enrol[n]], row[res.test[n]]
        ref = 0.5 * (cos(d["audio"][i] - d["mu_a"], d["audio"][j] - d["mu_a"])
                     + cos(d["face"][i] - d["mu_v"], d["face"][j] - d["mu_v"]))
        assert res.scores[n] == pytest.approx(ref, abs=1e-5)
    # the offset compresses the plain cosines; removing it changes every score and helps the EER here
    assert np.mean(np.abs(res.scores - plain.scores) > 1e-3) > 0.9
    assert eer(res.scores, res.labels) < eer(plain.scores, plain.labels)
    assert res.info["mean_sub"]["source"] == "train" and plain.info["mean_sub"] is None
    # the same split named through the cache path gives the same scores
    other = score_from_cache(d["cache"], trials, "AVxAV", mean_sub=f"{d['cache'].path}:train")
    np.testing.assert_array_equal(other.scores, res.scores)


@pytest.mark.parametrize("norm,k", [("snorm", None), ("asnorm", 3)])
def test_mean_sub_composes_with_score_norm(centred, norm, k):
    """Cohort clips are centred with the same mean before their speaker means (WeSpeaker's
    ``split_embedding(cohort, mean_vec)``), then the usual S-norm / AS-norm."""
    d = centred
    trials = read_trials(d["trials"])
    res = score_from_cache(d["cache"], trials, "AVxAV", norm=norm, cohort="train", top_k=k or 300,
                           mean_sub="train")
    spk = sorted({s for s, sp in zip(d["speakers"], d["splits"]) if sp == "train"})

    def cohort(X, mu, valid):
        out = []
        for s in spk:
            rows = [i for i, (s2, sp) in enumerate(zip(d["speakers"], d["splits"]))
                    if s2 == s and sp == "train" and valid[i]]
            m = np.mean([(X[i] - mu) / np.linalg.norm(X[i] - mu) for i in rows], axis=0)
            out.append(m / np.linalg.norm(m))
        return np.array(out)

    ca = cohort(d["audio"], d["mu_a"], np.ones(len(d["ids"]), bool))
    cv = cohort(d["face"], d["mu_v"], d["has_face"])
    row = _row(d)
    for n in range(len(res)):
        i, j = row[res.enrol[n]], row[res.test[n]]
        parts = []
        for X, mu, C in ((d["audio"], d["mu_a"], ca), (d["face"], d["mu_v"], cv)):
            a, b = X[i] - mu, X[j] - mu
            a, b = a / np.linalg.norm(a), b / np.linalg.norm(b)
            parts.append(brute_norm(float(a @ b), a, b, C, C, 6 if k is None else k))
        assert res.scores[n] == pytest.approx(np.mean(parts), abs=1e-4)
    uncentred = score_from_cache(d["cache"], trials, "AVxAV", norm=norm, cohort="train", top_k=k or 300)
    assert not np.allclose(res.scores, uncentred.scores, atol=1e-3)


def test_mean_sub_with_a_head_centres_each_side_in_its_space(centred):
    import torch

    from fusion import build_head
    from pipeline.train import batch_from_cache
    d = centred
    c = d["cache"]
    torch.manual_seed(0)
    head = build_head("mean", DA, DV).eval()
    trials = read_trials(d["trials"])
    res = score_from_cache(c, trials, "AVxA", head=head, mean_sub="train")
    train = c.split_rows("train")
    with torch.no_grad():
        mu_e = head.embed(batch_from_cache(c, train), use=("A", "V")).numpy().astype(np.float64).mean(0)
        mu_t = head.embed(batch_from_cache(c, train), use=("A",)).numpy().astype(np.float64).mean(0)
        E = head.embed(batch_from_cache(c, c.rows(res.enrol)), use=("A", "V")).numpy()
        T = head.embed(batch_from_cache(c, c.rows(res.test)), use=("A",)).numpy()
    assert set(res.info["mean_sub"]["clips"]) == {"AV", "A"}
    for n in range(len(res)):
        assert res.scores[n] == pytest.approx(cos(E[n] - mu_e, T[n] - mu_t), abs=1e-4)
    with pytest.raises(ScoringError, match="plain dot product"):
        score_from_cache(c, trials, "AVxAV", head=build_head("score_avg", DA, DV), mean_sub="train")


def test_cli_mean_sub_sidecar_and_errors(centred, invoke):
    d = centred
    base = ["score", "--cache", d["cache"].path, "--trials", d["trials"], "--mode", "AxA", "--quiet"]
    out, plain = d["tmp"] / "m.tsv", d["tmp"] / "p.tsv"
    code, _, err = invoke(base + ["--mean-sub", "train", "--norm", "asnorm", "--cohort", "train", "--top-k", "4",
                                  "--out", out])
    assert code == 0, err
    assert "fewer than --top-k" not in err
    assert invoke(base + ["--norm", "asnorm", "--cohort", "train", "--top-k", "4", "--out", plain])[0] == 0
    side, side_plain = (json.loads(sidecar_path(p).read_text()) for p in (out, plain))
    assert side["norm"]["top_k"] == 4 and side["norm"]["top_k_effective"] == 4
    # a --top-k beyond the cohort's speakers: every cohort score is used, and that is said
    code, _, err = invoke(base + ["--norm", "asnorm", "--cohort", "train", "--top-k", "300", "--out",
                                  d["tmp"] / "big_k.tsv"])
    n_spk = json.loads(sidecar_path(d["tmp"] / "big_k.tsv").read_text())["norm"]["top_k_effective"]
    assert code == 0 and n_spk < 300 and f"the cohort has {n_spk} speakers, fewer than --top-k 300" in err
    ms = side["mean_sub"]
    assert ms["source"] == "train" and ms["split"] == "train" and ms["clips"] == {"A": 36}
    assert ms["cache_fingerprint"] == d["cache"].fingerprint and side["norm"]["method"] == "asnorm"
    assert side_plain["mean_sub"] is None and side["config_fingerprint"] != side_plain["config_fingerprint"]
    # several lists in one pass carry it too
    o1, o2 = d["tmp"] / "m1.tsv", d["tmp"] / "m2.tsv"
    code, _, err = invoke(base + ["--trials", d["trials"], "--mean-sub", "train", "--out", o1, "--out", o2])
    assert code == 0, err
    assert json.loads(sidecar_path(o2).read_text())["mean_sub"]["clips"] == {"A": 36}
    # a bad source: one typed line, exit 2, nothing written
    bad = d["tmp"] / "bad.tsv"
    code, _, err = invoke(base + ["--mean-sub", "dev", "--out", bad])
    assert code == 2 and "--mean-sub split 'dev' has no rows" in err and len(err.strip().splitlines()) == 1
    code, _, err = invoke(base + ["--mean-sub", str(d["tmp"] / "none.zarr"), "--out", bad])
    assert code == 2 and "--mean-sub cache not found" in err
    assert not bad.exists()
