"""Calibration / late fusion: recovery of the known LLR of Gaussian scores, fusion beating each system,
quality measures from a real Zarr cache, the model file, and the CLI end to end (fit -> apply -> evaluate)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pipeline.cache.layout import CacheLayout
from pipeline.cache.reader import open_cache
from pipeline.cache.writer import create_cache
from pipeline.core.errors import ConfigError
from pipeline.core.llr_metrics import act_dcf, cllr, min_cllr
from pipeline.core.metrics import eer, min_dcf
from pipeline.score.calibrate import CalibrationModel, fit, load_aligned, quality_features, train_logreg
from pipeline.score.files import Scores, read_scores, sidecar_path, write_scores


def gaussian_trials(n, p_tar, mu1, mu0, sigma, seed):
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < p_tar).astype(np.int8)
    s = np.where(y == 1, rng.normal(mu1, sigma, n), rng.normal(mu0, sigma, n))
    return y, s


def true_llr_line(mu1, mu0, sigma):
    """Equal-variance Gaussians: llr(s) = a s + b."""
    return (mu1 - mu0) / sigma ** 2, -(mu1 ** 2 - mu0 ** 2) / (2 * sigma ** 2)


def ids(n, tag):
    return np.array([f"id{i % 97:05d}/{tag}/{i:06d}" for i in range(n)])


def write(path, y, s, enrol=None, test=None):
    n = len(y)
    write_scores(path, Scores(np.asarray(y, np.int8), ids(n, "e") if enrol is None else enrol,
                              ids(n, "t") if test is None else test, np.asarray(s, np.float32)))
    return path


# ---------------------------------------------------------------- reading aligned files
@pytest.mark.parametrize("variant", ["header", "no_header", "no_final_newline", "spaces", "crlf"])
def test_fast_columns_reader_equals_read_scores(tmp_path, variant):
    from pipeline.score.align import read_columns
    rng = np.random.default_rng(3)
    n = 500
    lab = rng.integers(-1, 2, n).astype(np.int8)
    s = (rng.normal(size=n) * 10.0 ** rng.integers(-8, 8, n)).astype(np.float32)
    s[:3] = [0.0, -1e-30, 3.4e38]
    p = tmp_path / "s.tsv"
    write_scores(p, Scores(lab, ids(n, "e"), ids(n, "t"), s))
    text = p.read_text()
    text = {"header": text, "no_header": text.split("\n", 1)[1], "no_final_newline": text.rstrip("\n"),
            "spaces": text.replace("\t", " "), "crlf": text.replace("\n", "\r\n")}[variant]
    p.write_bytes(text.encode())
    ref, col = read_scores(p), read_columns(p)
    assert (col.labels == ref.labels).all() and (col.scores == ref.scores).all()
    e, t = col.ids()
    assert (e == ref.enrol).all() and (t == ref.test).all()
    assert col.head == (0 if variant == "no_header" else 1)
    from pipeline.score.align import _fast  # the fast path served these files itself
    body = text.split("\n", 1)[1] if col.head else text
    assert _fast(body.encode()) is not None


# ---------------------------------------------------------------- the fit itself
@pytest.mark.parametrize("p_tar,prior", [(0.5, 0.5), (0.1, 0.5), (0.1, 0.05), (0.7, 0.2)])
def test_logreg_recovers_the_gaussian_llr_whatever_the_class_balance_and_prior(p_tar, prior):
    mu1, mu0, sigma = 1.0, -0.5, 0.7
    y, s = gaussian_trials(200_000, p_tar, mu1, mu0, sigma, seed=1)
    w, b, info = train_logreg(s[:, None], y, prior=prior)
    a_true, b_true = true_llr_line(mu1, mu0, sigma)        # 3.06, -0.77
    assert info["converged"]
    assert w[0] == pytest.approx(a_true, rel=0.03)
    assert b == pytest.approx(b_true, abs=0.05)


def test_logreg_gradient_is_the_derivative_of_the_objective():
    from scipy.optimize import check_grad

    from pipeline.score.calibrate import _objective
    rng = np.random.default_rng(0)
    F = rng.normal(size=(300, 3))
    y = (rng.random(300) < 0.3).astype(float)
    a = np.where(y == 1, 0.2 / y.sum(), 0.8 / (300 - y.sum()))
    for theta in (np.zeros(4), rng.normal(size=4)):
        err = check_grad(lambda t: _objective(t, F, y, a, -1.3, 0.01)[0],
                         lambda t: _objective(t, F, y, a, -1.3, 0.01)[1], theta)
        assert err < 1e-6


def test_calibration_makes_act_dcf_meet_min_dcf(tmp_path):
    # cosine-like scores: informative but badly calibrated (actDCF ~ 1)
    y, s = gaussian_trials(60_000, 0.2, 0.6, 0.1, 0.12, seed=2)
    ye, se = gaussian_trials(60_000, 0.2, 0.6, 0.1, 0.12, seed=3)
    model = fit([write(tmp_path / "dev.tsv", y, s)])
    llr = model.llr(se[:, None].astype(np.float32))
    assert act_dcf(se, ye, 0.05) > 0.9
    for p in (0.01, 0.05):
        assert act_dcf(llr, ye, p) < min_dcf(se, ye, p) + 0.05
    assert cllr(llr, ye) < min_cllr(se, ye) + 0.01 and cllr(se, ye) > cllr(llr, ye) + 0.3
    assert eer(llr, ye) == pytest.approx(eer(se, ye), abs=1e-9)   # monotone: same ranking


def test_late_fusion_of_two_files_beats_either(tmp_path):
    def two_systems(n, seed):
        rng = np.random.default_rng(seed)
        y = (rng.random(n) < 0.3).astype(np.int8)
        a = np.where(y == 1, rng.normal(0.55, 0.1, n), rng.normal(0.3, 0.1, n))     # "AxA" cosines
        v = np.where(y == 1, rng.normal(0.4, 0.2, n), rng.normal(0.1, 0.2, n))      # "VxV", weaker
        return y, a, v
    y, a, v = two_systems(40_000, 5)
    dev = [write(tmp_path / "dev_A.tsv", y, a), write(tmp_path / "dev_V.tsv", y, v)]
    model = fit(dev)
    # independent Gaussians: llr = 25 a + 7.5 v + const
    assert model.weights[0] == pytest.approx(0.25 / 0.01, rel=0.05)
    assert model.weights[1] == pytest.approx(0.3 / 0.04, rel=0.08)
    ye, ae, ve = two_systems(40_000, 6)
    fused = model.llr(np.column_stack([ae, ve]).astype(np.float32))
    cal_a = fit([dev[0]]).llr(ae[:, None].astype(np.float32))
    cal_v = fit([dev[1]]).llr(ve[:, None].astype(np.float32))
    assert eer(fused, ye) < 0.8 * min(eer(ae, ye), eer(ve, ye))
    assert cllr(fused, ye) < min(cllr(cal_a, ye), cllr(cal_v, ye)) - 0.05
    assert min_dcf(fused, ye, 0.05) < min(min_dcf(ae, ye, 0.05), min_dcf(ve, ye, 0.05))


def test_model_json_round_trip_and_tampering(tmp_path):
    y, s = gaussian_trials(2000, 0.3, 1.0, 0.0, 1.0, seed=4)
    model = fit([write(tmp_path / "d.tsv", y, s)], prior=0.1)
    model.save(tmp_path / "cal.json")
    back = CalibrationModel.load(tmp_path / "cal.json")
    assert back.params() == model.params() and back.fingerprint == model.fingerprint
    assert back.train["n_target"] == int(y.sum()) and back.prior == 0.1
    data = json.loads((tmp_path / "cal.json").read_text())
    data["weights"][0] += 1.0
    (tmp_path / "bad.json").write_text(json.dumps(data))
    with pytest.raises(ConfigError, match="fingerprint"):
        CalibrationModel.load(tmp_path / "bad.json")
    (tmp_path / "other.json").write_text(json.dumps({"format": "x"}))
    with pytest.raises(ConfigError, match="not an avfuse calibration"):
        CalibrationModel.load(tmp_path / "other.json")


# ---------------------------------------------------------------- quality measures, real cache
def quality_cache(path, n_utt=120, seed=0):
    rng = np.random.default_rng(seed)
    uid = [f"id{i % 12:05d}/v{i % 3}/{i:05d}" for i in range(n_utt)]
    dur = rng.uniform(1.0, 20.0, n_utt).astype(np.float32)
    audio = (rng.normal(size=(n_utt, 6)) * rng.uniform(0.5, 3.0, (n_utt, 1))).astype(np.float32)
    face = rng.normal(size=(n_utt, 4)).astype(np.float32)
    layout = CacheLayout(audio_dim=6, face_dim=4, segments=1, frames=1, dtype="float32", shard_size=32)
    prov = {"avfuse_version": "test", "manifest_fingerprint": "m", "config": {},
            "audio_backbone": {"name": "a"}, "face_backbone": {"name": "v"}}
    w = create_cache(path, ids=uid, speakers=[u.split("/")[0] for u in uid], splits=["test"] * n_utt,
                     layout=layout, provenance=prov)
    for k in range(w.n_shards):
        s = w.shard_slice(k)
        m = s.stop - s.start
        w.write_shard(k, {"has_audio": np.ones(m, bool), "has_face": np.ones(m, bool), "duration": dur[s],
                          "audio/clip": audio[s], "audio/segments": audio[s][:, None],
                          "audio/segment_valid": np.ones((m, 1), bool), "face/clip": face[s],
                          "face/frames": face[s][:, None], "face/frame_valid": np.ones((m, 1), bool)})
    w.finalize()
    return open_cache(path), np.array(uid), dur, audio, face


def test_cohort_quality_measure_is_the_top_k_mean_cosine_to_speaker_means(tmp_path):
    cache, uid, dur, audio, face = quality_cache(tmp_path / "q.zarr")
    e, t = uid[[0, 5, 7, 50]], uid[[3, 5, 100, 1]]
    q = quality_features(cache, e, t, ["cohort"], cohort="test", top_k=3)
    spk = np.array([u.split("/")[0] for u in uid])

    def unit(x):
        return x / np.linalg.norm(x, axis=-1, keepdims=True)
    for mat, cols in ((audio, slice(0, 2)), (face, slice(2, 4))):
        means = unit(np.stack([unit(mat[spk == s_]).mean(axis=0) for s_ in np.unique(spk)]))
        top = np.sort(unit(mat) @ means.T, axis=1)[:, -3:].mean(axis=1)
        ie, it = [0, 5, 7, 50], [3, 5, 100, 1]
        np.testing.assert_allclose(q[:, cols], np.column_stack([np.minimum(top[ie], top[it]),
                                                                np.maximum(top[ie], top[it])]), rtol=1e-5, atol=1e-6)
    with pytest.raises(ConfigError, match="--cohort"):
        quality_features(cache, e, t, ["cohort"])


def duration_trials(uid, dur, n, seed):
    """Scores whose mean shifts with the shorter clip's log duration (the same for both classes)."""
    rng = np.random.default_rng(seed)
    e, t = rng.integers(0, len(uid), n), rng.integers(0, len(uid), n)
    y = (rng.random(n) < 0.3).astype(np.int8)
    q = np.log(np.minimum(dur[e], dur[t]))
    s = np.where(y == 1, 1.0, 0.0) + 1.5 * q + rng.normal(0, 0.5, n)
    return y, s, uid[e], uid[t], q


def test_quality_features_read_from_the_cache(tmp_path):
    cache, uid, dur, audio, face = quality_cache(tmp_path / "q.zarr")
    e, t = uid[[0, 5, 7]], uid[[3, 5, 100]]
    q = quality_features(cache, e, t, ["durations", "norms"])
    ie, it = [0, 5, 7], [3, 5, 100]
    na, nv = np.linalg.norm(audio, axis=1), np.linalg.norm(face, axis=1)
    ref = np.column_stack([np.log(np.minimum(dur[ie], dur[it])), np.log(np.maximum(dur[ie], dur[it])),
                           np.minimum(na[ie], na[it]), np.maximum(na[ie], na[it]),
                           np.minimum(nv[ie], nv[it]), np.maximum(nv[ie], nv[it])])
    np.testing.assert_allclose(q, ref, rtol=1e-5)


def test_duration_quality_measure_helps_when_scores_shift_with_duration(tmp_path):
    cache, uid, dur, _, _ = quality_cache(tmp_path / "q.zarr")
    y, s, e, t, _ = duration_trials(uid, dur, 30_000, 1)
    dev = write(tmp_path / "dev.tsv", y, s, e, t)
    plain = fit([dev])
    qmf = fit([dev], quality=["durations"], cache=cache)
    assert qmf.features == ["score[0]", "log_dur_min", "log_dur_max"]
    # truth: llr = (s - 1.5 q - 0.5) / 0.25  ->  w_s = 4, w_q = -6, w_max = 0
    assert qmf.weights[0] == pytest.approx(4.0, rel=0.05)
    assert qmf.weights[1] == pytest.approx(-6.0, rel=0.05)
    assert abs(qmf.weights[2]) < 0.2
    ye, se, ee, te, _ = duration_trials(uid, dur, 30_000, 2)
    ev = write(tmp_path / "ev.tsv", ye, se, ee, te)
    from pipeline.score.calibrate import apply
    assert cllr(apply(qmf, [ev], cache=cache).scores, ye) < cllr(apply(plain, [ev]).scores, ye) - 0.2


# ---------------------------------------------------------------- CLI
def test_cli_fit_apply_evaluate_end_to_end(tmp_path, invoke):
    cache, uid, dur, _, _ = quality_cache(tmp_path / "q.zarr")
    y, s, e, t, _ = duration_trials(uid, dur, 8000, 3)
    rng = np.random.default_rng(9)
    v = np.where(y == 1, 0.6, 0.0) + rng.normal(0, 0.5, len(y))
    dev = [write(tmp_path / "dA.tsv", y, s, e, t), write(tmp_path / "dV.tsv", y, v, e, t)]
    ye, se, ee, te, _ = duration_trials(uid, dur, 8000, 4)
    ve = np.where(ye == 1, 0.6, 0.0) + rng.normal(0, 0.5, len(ye))
    ev = [write(tmp_path / "eA.tsv", ye, se, ee, te), write(tmp_path / "eV.tsv", ye, ve, ee, te)]
    cal, out = tmp_path / "cal.json", tmp_path / "llr.tsv"
    code, so, se_ = invoke(["calibrate", "fit", "--scores", dev[0], "--scores", dev[1], "--quality",
                            "durations,cohort", "--cohort", "test", "--top-k", "5",
                            "--cache", cache.path, "--prior", "0.05", "--out", cal])
    assert code == 0, se_
    assert "llr =" in so and "dev calibrated: Cllr" in so
    code, so, se_ = invoke(["calibrate", "apply", "--model", cal, "--scores", ev[0], "--scores", ev[1],
                            "--cache", cache.path, "--out", out])
    assert code == 0, se_
    llr = read_scores(out)
    assert (llr.enrol == ee).all() and (llr.labels == ye).all()
    side = json.loads(sidecar_path(out).read_text())
    model = CalibrationModel.load(cal)
    assert side["score_kind"] == "llr" and side["calibration"]["fingerprint"] == model.fingerprint
    assert side["calibration"]["path"] == str(cal.resolve()) and len(side["inputs"]) == 2
    X = load_aligned(ev).X
    assert model.quality_options == {"cohort": "test", "top_k": 5} and model.features[-1] == "cohort_V_max"
    q = quality_features(cache, ee, te, ["durations", "cohort"], cohort="test", top_k=5)
    np.testing.assert_allclose(llr.scores, model.llr(np.hstack([X, q])), rtol=1e-5, atol=1e-5)
    code, so, se_ = invoke(["evaluate", "--scores", out])
    assert code == 0 and "not LLRs" not in se_                     # its sidecar says LLRs: nothing to note
    code, so, se_ = invoke(["evaluate", "--scores", out, "--json", "--threshold-at", "far=1%"])
    assert code == 0, se_
    m = json.loads(so)
    assert m["cllr"] == pytest.approx(cllr(llr.scores, ye)) and m["min_cllr"] == pytest.approx(min_cllr(llr.scores, ye))
    assert m["act_dcf_p0.05"] == pytest.approx(act_dcf(llr.scores, ye, 0.05))
    assert m["cllr"] < 0.5 * cllr(se, ye) and m["thresholds"]["far=1%"]["far"] <= 0.01
    # several files: one table, a row per file, threshold column
    code, so, se_ = invoke(["evaluate", "--scores", ev[0], "--scores", ev[1], "--scores", out,
                            "--label", "A", "--label", "V", "--label", "A+V cal", "--threshold-at", "frr=5%"])
    assert code == 0, se_
    lines = so.strip().splitlines()
    assert len(lines) == 5 and "minCllr" in lines[0] and "threshold frr=5%" in lines[0]
    assert [ln.split()[0] for ln in lines[2:]] == ["A", "V", "A+V"]
    code, so, se_ = invoke(["evaluate", "--scores", out, "--threshold-at", "frr=5%"])
    assert code == 0 and "actDCF(p=0.05)" in so and "threshold at frr=5%:" in so


def test_cli_bad_input_is_one_line_exit_2(tmp_path, invoke):
    y, s = gaussian_trials(50, 0.3, 1.0, 0.0, 1.0, seed=5)
    a = write(tmp_path / "a.tsv", y, s)
    en, te = ids(50, "e"), ids(50, "t")
    te2 = te.copy()
    te2[17] = "id00000/x/zzz"
    b = write(tmp_path / "b.tsv", y, s, en, te2)
    short = write(tmp_path / "short.tsv", y[:40], s[:40])
    one = write(tmp_path / "one.tsv", np.ones(50), s)
    na = tmp_path / "na.tsv"
    write_scores(na, Scores(np.full(50, -1, np.int8), en, te, s.astype(np.float32)))
    broken = tmp_path / "broken.tsv"
    lines = a.read_text().splitlines()
    broken.write_text("\n".join(lines[:1] + ["1\tonly-two\t0.5"] + lines[2:]) + "\n")
    cal = tmp_path / "cal.json"
    cases = [
        (["calibrate", "fit", "--scores", a, "--scores", broken, "--out", cal], ["broken.tsv:2:", "4 fields"]),
        (["calibrate", "fit", "--scores", a, "--scores", b, "--out", cal], ["b.tsv:19:", "trial 18", "zzz"]),
        (["calibrate", "fit", "--scores", a, "--scores", short, "--out", cal], ["short.tsv", "40 trials"]),
        (["calibrate", "fit", "--scores", one, "--out", cal], ["one.tsv", "only target"]),
        (["calibrate", "fit", "--scores", na, "--out", cal], ["unlabeled"]),
        (["calibrate", "fit", "--scores", a, "--quality", "durations", "--out", cal], ["need --cache"]),
        (["calibrate", "fit", "--scores", a, "--quality", "snr", "--out", cal], ["unknown quality measure"]),
        (["calibrate", "fit", "--scores", a, "--cohort", "train", "--out", cal], ["without --quality cohort"]),
        (["calibrate", "apply", "--model", tmp_path / "none.json", "--scores", a, "--out", tmp_path / "o.tsv"],
         ["not found"]),
        (["evaluate", "--scores", a, "--threshold-at", "far=2"], ["outside [0, 1]"]),
    ]
    for args, needles in cases:
        code, so, se = invoke(args)
        assert code == 2, (args, se)
        assert se.startswith("avfuse: error:") and se.count("\n") == 1, se
        for needle in needles:
            assert needle in se, (needle, se)
    assert not cal.exists()
    code, _, se = invoke(["calibrate", "fit", "--scores", a, "--out", cal, "--quiet"])
    assert code == 0, se
    code, _, se = invoke(["calibrate", "apply", "--model", cal, "--scores", a, "--scores", a, "--out", tmp_path / "o.tsv"])
    assert code == 2 and "fuses 1 scores file" in se and not (tmp_path / "o.tsv").exists()
