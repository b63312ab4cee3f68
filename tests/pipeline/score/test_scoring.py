"""Trial scoring from real Zarr/HDF5 caches, every mode, with and without a real head, and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from data_manifests import read_trials, write_trials
from pipeline.cache import CacheLayout, create_cache, open_cache
from pipeline.core import HeadError, ScoringError
from pipeline.score import (
    Channel,
    Scores,
    read_scores,
    row_dot,
    score_channels,
    score_from_cache,
    sidecar_path,
    write_scores,
)

DA, DV = 12, 8


# ---------------------------------------------------------------- helpers (also used by test_norm)
def make_cache(path: Path, ids, speakers, splits, audio=None, face=None, has_audio=None, has_face=None,
               *, shard_size: int = 4, dtype: str = "float32", provenance: dict | None = None):
    """A real cache with the given clip embeddings (segments/frames = the clip vector)."""
    n = len(ids)
    layout = CacheLayout(audio_dim=None if audio is None else audio.shape[1],
                         face_dim=None if face is None else face.shape[1], segments=1, frames=1,
                         dtype=dtype, shard_size=shard_size)
    prov = provenance or {"avfuse_version": "test", "manifest_fingerprint": "m", "config": {},
                          "audio_backbone": {"name": "a"}, "face_backbone": {"name": "v"}}
    w = create_cache(path, ids=ids, speakers=speakers, splits=splits, layout=layout, provenance=prov)
    ha = np.ones(n, bool) if has_audio is None else np.asarray(has_audio, bool)
    hf = np.ones(n, bool) if has_face is None else np.asarray(has_face, bool)
    if audio is None:
        ha = np.zeros(n, bool)
    if face is None:
        hf = np.zeros(n, bool)
    for k in range(w.n_shards):
        s = w.shard_slice(k)
        arrays = {"has_audio": ha[s], "has_face": hf[s], "duration": np.full(s.stop - s.start, 4.0, np.float32)}
        if audio is not None:
            arrays.update({"audio/clip": audio[s], "audio/segments": audio[s][:, None],
                           "audio/segment_valid": ha[s][:, None]})
        if face is not None:
            arrays.update({"face/clip": face[s], "face/frames": face[s][:, None],
                           "face/frame_valid": hf[s][:, None]})
        w.write_shard(k, arrays)
    w.finalize()
    return open_cache(path)


def toy_data(n_spk=6, per_spk=5, seed=0, noise=0.8):
    """Speaker-dependent audio/face embeddings + noise; ids spk/vid/utt."""
    rng = np.random.default_rng(seed)
    spk_a = rng.normal(size=(n_spk, DA))
    spk_v = rng.normal(size=(n_spk, DV))
    ids, speakers = [], []
    for s in range(n_spk):
        for u in range(per_spk):
            ids.append(f"id{s:05d}/vid{u % 2}/{u:05d}")
            speakers.append(f"id{s:05d}")
    spk = np.repeat(np.arange(n_spk), per_spk)
    audio = (spk_a[spk] + noise * rng.normal(size=(len(ids), DA))).astype(np.float32)
    face = (spk_v[spk] + noise * rng.normal(size=(len(ids), DV))).astype(np.float32)
    return ids, speakers, audio, face


def all_pairs_trials(path: Path, ids, speakers, n=60, seed=1, labeled=True):
    rng = np.random.default_rng(seed)
    e = rng.integers(0, len(ids), n)
    t = rng.integers(0, len(ids), n)
    lab = np.array([int(speakers[a] == speakers[b]) for a, b in zip(e, t)])
    write_trials(path, lab if labeled else None, [ids[i] for i in e], [ids[i] for i in t], ext=".wav")
    return e, t, lab


def cos(a, b):
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    return float(np.dot(a, b) / (na * nb)) if na > 0 and nb > 0 else 0.0


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("toy")
    ids, speakers, audio, face = toy_data()
    has_audio = np.ones(len(ids), bool)
    has_face = np.ones(len(ids), bool)
    has_audio[3] = False          # clip 3 lost its audio
    has_face[7] = False           # clip 7 lost its face
    splits = ["test"] * len(ids)
    cache = make_cache(tmp_path / "c.zarr", ids, speakers, splits, audio, face, has_audio, has_face)
    e, t, lab = all_pairs_trials(tmp_path / "trials.txt", ids, speakers)
    return dict(cache=cache, ids=ids, speakers=speakers, audio=audio, face=face, has_audio=has_audio,
                has_face=has_face, e=e, t=t, lab=lab, trials=tmp_path / "trials.txt")


# ---------------------------------------------------------------- array level
def test_row_dot_matches_per_trial_dot_for_any_chunk():
    rng = np.random.default_rng(0)
    E, T = rng.normal(size=(9, 5)).astype(np.float32), rng.normal(size=(7, 5)).astype(np.float32)
    ei, ti = rng.integers(0, 9, 100), rng.integers(0, 7, 100)
    ref = np.array([np.dot(E[a], T[b]) for a, b in zip(ei, ti)], dtype=np.float32)
    for chunk in (1, 7, 100, 4096):
        np.testing.assert_allclose(row_dot(E, T, ei, ti, chunk=chunk), ref, rtol=1e-5, atol=1e-6)


def test_score_channels_averages_usable_channels_and_flags_unscorable():
    A = np.eye(3, dtype=np.float32)
    V = np.eye(3, dtype=np.float32)[::-1].copy()
    av = np.array([True, False, True])          # utt 1 has no audio
    vv = np.array([True, True, False])          # utt 2 has no face
    chans = [Channel("A", A, A, av, av), Channel("V", V, V, vv, vv)]
    ei = np.array([0, 0, 1, 1])
    ti = np.array([0, 1, 0, 2])
    s, ok = score_channels(chans, ei, ti)
    # (0,0): mean(1, 1) = 1; (0,1): audio unusable -> V only = 0; (1,0): V only = 0;
    # (1,2): utt1 lacks audio, utt2 lacks face -> nothing in common
    np.testing.assert_array_equal(ok, [True, True, True, False])
    np.testing.assert_allclose(s[:3], [1.0, 0.0, 0.0])
    assert np.isnan(s[3])


# ---------------------------------------------------------------- from the cache, no head
def _ref_scores(toy, mode):
    a, v, ha, hf = toy["audio"], toy["face"], toy["has_audio"], toy["has_face"]
    out = []
    for i, j in zip(toy["e"], toy["t"]):
        parts = []
        if mode in ("AxA", "AVxA", "AVxAV") and ha[i] and ha[j]:
            parts.append(cos(a[i], a[j]))
        if mode in ("VxV", "AVxV", "AVxAV") and hf[i] and hf[j]:
            parts.append(cos(v[i], v[j]))
        out.append(np.mean(parts) if parts else np.nan)
    return np.array(out)


@pytest.mark.parametrize("mode", ["AxA", "VxV", "AVxAV", "AVxA", "AVxV"])
def test_no_head_modes_match_per_trial_reference(toy, mode):
    trials = read_trials(toy["trials"])
    ref = _ref_scores(toy, mode)
    keep = ~np.isnan(ref)
    if not keep.all():
        with pytest.raises(ScoringError, match="cannot be scored"):
            score_from_cache(toy["cache"], trials, mode)
    res = score_from_cache(toy["cache"], trials, mode, skip_missing=True)
    np.testing.assert_allclose(res.scores, ref[keep], rtol=1e-5, atol=1e-6)
    # trial order kept, ids and labels follow the scored trials
    np.testing.assert_array_equal(res.enrol, trials.enrol[keep])
    np.testing.assert_array_equal(res.test, trials.test[keep])
    np.testing.assert_array_equal(res.labels, toy["lab"][keep])
    c = res.info["counts"]
    assert c["n_scored"] == keep.sum() and c["n_skipped_unscorable"] == (~keep).sum()
    assert c["n_skipped_missing"] == 0
    # AVxAV: the trials scored on one modality because a side lacks the other are counted
    e, t = toy["e"][keep], toy["t"][keep]
    both = (toy["has_audio"][e] & toy["has_audio"][t]).astype(int) + (toy["has_face"][e] & toy["has_face"][t])
    assert c["n_partial"] == (int((both == 1).sum()) if mode == "AVxAV" else 0)
    assert mode != "AVxAV" or c["n_partial"] > 0                 # the toy cache has such trials


def test_avxa_without_head_equals_axa(toy):
    trials = read_trials(toy["trials"])
    a = score_from_cache(toy["cache"], trials, "AxA", skip_missing=True)
    b = score_from_cache(toy["cache"], trials, "AVxA", skip_missing=True)
    np.testing.assert_array_equal(a.scores, b.scores)


def test_missing_utterances_error_and_skip(toy, tmp_path):
    tmp = tmp_path
    ids = toy["ids"]
    write_trials(tmp / "m.txt", [1, 0, 1, 0], [ids[0], "idX/ghost/00001", ids[2], ids[4]],
                 [ids[1], ids[5], "idY/ghost/00002", ids[6]])
    trials = read_trials(tmp / "m.txt")
    with pytest.raises(ScoringError) as ei:
        score_from_cache(toy["cache"], trials, "VxV")
    msg = str(ei.value)
    assert "2 of 4 trials name 2 utterance(s) missing" in msg
    assert "idX/ghost/00001" in msg and "--skip-missing" in msg and "m.txt" in msg
    res = score_from_cache(toy["cache"], trials, "VxV", skip_missing=True)
    assert len(res) == 2 and res.info["counts"]["n_skipped_missing"] == 2
    np.testing.assert_array_equal(res.enrol, [ids[0], ids[4]])


def test_bad_mode_and_missing_modality_array(toy, tmp_path):
    trials = read_trials(toy["trials"])
    with pytest.raises(ScoringError, match="unknown mode"):
        score_from_cache(toy["cache"], trials, "AxV")
    ids, speakers, audio, _ = toy_data()
    audio_only = make_cache(tmp_path / "a.zarr", ids, speakers, ["test"] * len(ids), audio=audio)
    with pytest.raises(ScoringError, match="face/clip"):
        score_from_cache(audio_only, trials, "VxV")
    assert len(score_from_cache(audio_only, trials, "AxA")) == len(trials)


def test_hdf5_cache_gives_same_scores(toy, tmp_path):
    ids, speakers = toy["ids"], toy["speakers"]
    h5 = make_cache(tmp_path / "c.h5", ids, speakers, ["test"] * len(ids), toy["audio"], toy["face"],
                    toy["has_audio"], toy["has_face"])
    trials = read_trials(toy["trials"])
    a = score_from_cache(toy["cache"], trials, "AVxAV", skip_missing=True)
    b = score_from_cache(h5, trials, "AVxAV", skip_missing=True)
    np.testing.assert_array_equal(a.scores, b.scores)


# ---------------------------------------------------------------- with a real head
def _head_ref(cache, head, e_ids, t_ids, enrol_use, test_use):
    from pipeline.train import batch_from_cache
    with torch.no_grad():
        E = head.embed(batch_from_cache(cache, cache.rows(e_ids)), use=enrol_use).numpy()
        T = head.embed(batch_from_cache(cache, cache.rows(t_ids)), use=test_use).numpy()
    if head.score_kind == "cosine":
        return np.array([cos(a, b) for a, b in zip(E, T)])
    return np.array([float(np.dot(a, b)) for a, b in zip(E, T)])


@pytest.mark.parametrize("name,mode", [("mean", "AVxA"), ("mean", "AVxAV"), ("mlp", "AVxV"),
                                       ("score_avg", "AVxAV")])
def test_head_scores_match_per_trial_embedding(toy, name, mode):
    from fusion import build_head
    from pipeline.core import MODES
    torch.manual_seed(0)
    head = build_head(name, DA, DV).eval()
    trials = read_trials(toy["trials"])
    res = score_from_cache(toy["cache"], trials, mode, head=head, batch_size=7, skip_missing=True)
    eu, tu = MODES[mode]
    ref = _head_ref(toy["cache"], head, res.enrol, res.test, eu, tu)
    np.testing.assert_allclose(res.scores, ref, rtol=1e-4, atol=1e-5)
    assert res.info["channels"] == ["head"] and res.info["score_kind"] == head.score_kind
    # the only trials skipped are those whose test side lacks the one modality it may use
    if mode == "AVxA":
        assert res.info["counts"]["n_skipped_unscorable"] == int((~toy["has_audio"][toy["t"]]).sum())


# ---------------------------------------------------------------- scores files
def test_scores_roundtrip_exact_and_na_labels(tmp_path):
    rng = np.random.default_rng(0)
    s = Scores(labels=np.array([1, 0, -1], np.int8), enrol=np.array(["a/b/1", "a/b/2", "c/d/3"]),
               test=np.array(["x/y/1", "x/y/2", "x/y/3"]), scores=rng.normal(size=3).astype(np.float32))
    write_scores(tmp_path / "s.tsv", s, {"k": 1})
    text = (tmp_path / "s.tsv").read_text().splitlines()
    assert text[0] == "label\tenrol\ttest\tscore" and text[3].startswith("NA\tc/d/3\tx/y/3\t")
    back = read_scores(tmp_path / "s.tsv")
    np.testing.assert_array_equal(back.scores, s.scores)          # bit-exact float32
    np.testing.assert_array_equal(back.labels, s.labels)
    assert back.info == {"k": 1} and sidecar_path(tmp_path / "s.tsv").name == "s.tsv.json"


def test_malformed_scores_file_names_the_line(tmp_path):
    p = tmp_path / "bad.tsv"
    p.write_text("label\tenrol\ttest\tscore\n1\ta\tb\t0.5\n0\ta\tc\tzero\n")
    with pytest.raises(ScoringError, match=r"bad.tsv:3: score is not a number"):
        read_scores(p)
    p.write_text("1 a b 0.5\n7 a c 0.1\n")
    with pytest.raises(ScoringError, match=r"bad.tsv:2: label must be 1, 0 or NA"):
        read_scores(p)
    p.write_text("1 a b 0.5\n0 a c\n")
    with pytest.raises(ScoringError, match=r"bad.tsv:2: expected 4 fields"):
        read_scores(p)


# ---------------------------------------------------------------- CLI
def test_cli_score_and_evaluate(toy, invoke, tmp_path):
    out = tmp_path / "s.tsv"
    code, so, se = invoke(["score", "--cache", str(toy["cache"].path), "--trials", str(toy["trials"]),
                           "--mode", "AVxAV", "--out", str(out), "--skip-missing"])
    assert code == 0, se
    assert "scored" in so and "EER" in so
    assert "trials were scored on one modality alone (AVxAV falls back" in se     # said, not silent
    s = read_scores(out)
    side = json.loads(sidecar_path(out).read_text())
    assert side["mode"] == "AVxAV" and side["cache"]["fingerprint"] == toy["cache"].fingerprint
    assert len(side["trials"]["sha256"]) == 64 and side["head"] is None
    assert side["norm"]["method"] == "none" and side["counts"]["n_scored"] == len(s)
    assert len(side["config_fingerprint"]) == 16 and side["avfuse_version"]
    code, so, se = invoke(["evaluate", "--scores", str(out), "--json"])
    assert code == 0, se
    m = json.loads(so)
    assert set(m) == {"eer_percent", "min_dcf_p0.01", "min_dcf_p0.05", "act_dcf_p0.01", "act_dcf_p0.05", "cllr",
                      "min_cllr", "n_trials", "n_target", "n_nontarget"}
    from pipeline.core import compute_metrics
    ref = compute_metrics(s.scores, s.labels)
    assert m["eer_percent"] == pytest.approx(ref["eer_percent"]) and m["n_trials"] == len(s)
    # several files -> several curves on one DET plot
    out2 = tmp_path / "a.tsv"
    code, _, se = invoke(["score", "--cache", str(toy["cache"].path), "--trials", str(toy["trials"]),
                          "--mode", "AxA", "--out", str(out2), "--skip-missing", "--quiet"])
    assert code == 0, se
    det = tmp_path / "det.png"
    code, so, se = invoke(["evaluate", "--scores", str(out), "--scores", str(out2), "--det-plot", str(det)])
    assert code == 0, se
    assert so.count("EER") == 1 and str(out) in so and str(out2) in so   # one table, a row per file
    assert f"not LLRs: {out.name} (cosine), {out2.name} (cosine)" in se   # actDCF/Cllr of raw cosines: said
    assert det.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_errors(toy, invoke, tmp_path):
    tmp = tmp_path
    write_trials(tmp / "u.txt", None, toy["ids"][:4], toy["ids"][8:12])
    out = tmp / "u.tsv"
    code, _, se = invoke(["score", "--cache", str(toy["cache"].path), "--trials", str(tmp / "u.txt"),
                          "--mode", "AVxAV", "--out", str(out), "--quiet"])
    assert code == 0, se
    assert read_scores(out).labels.tolist() == [-1] * 4
    assert (out.read_text().splitlines()[1]).startswith("NA\t")
    code, _, se = invoke(["evaluate", "--scores", str(out)])
    assert code == 2 and "unlabeled" in se and se.startswith("avfuse: error:")
    code, _, se = invoke(["score", "--cache", str(toy["cache"].path), "--trials", str(toy["trials"]),
                          "--mode", "AxA", "--out", str(out)])
    assert code == 2 and "cannot be scored" in se and "--skip-missing" in se
    code, _, se = invoke(["score", "--cache", str(toy["cache"].path), "--trials", str(toy["trials"]),
                          "--mode", "AxA", "--norm", "asnorm", "--out", str(out)])
    assert code == 2 and "--cohort" in se


def test_cli_head_fingerprint_check(toy, invoke, tmp_path):
    from fusion import build_head, save_head
    torch.manual_seed(0)
    head = build_head("mean", DA, DV)
    ck = tmp_path / "h.pt"
    save_head(ck, head, {"cache_fingerprint": "0123456789abcdef", "cache_provenance": {}})
    out = tmp_path / "h.tsv"
    args = ["score", "--cache", str(toy["cache"].path), "--trials", str(toy["trials"]), "--mode", "AVxAV",
            "--head", str(ck), "--out", str(out), "--quiet"]
    code, _, se = invoke(args)
    assert code == 2 and "0123456789abcdef" in se and "--force" in se
    code, _, se = invoke(args + ["--force"])
    assert code == 0, se
    side = json.loads(sidecar_path(out).read_text())
    assert side["head"]["name"] == "mean" and side["head"]["cache_fingerprint"] == "0123456789abcdef"
    assert side["force"] is True and len(side["head"]["sha256"]) == 64


def test_api_head_meta_fingerprint_check(toy):
    from fusion import build_head
    head = build_head("mean", DA, DV).eval()
    trials = read_trials(toy["trials"])
    meta = {"cache_fingerprint": "ffffffffffffffff"}
    with pytest.raises(HeadError, match="ffffffffffffffff"):
        score_from_cache(toy["cache"], trials, "AVxAV", head=head, head_meta=meta)
    ok = score_from_cache(toy["cache"], trials, "AVxAV", head=head, head_meta=meta, force=True)
    same = score_from_cache(toy["cache"], trials, "AVxAV", head=head,
                            head_meta={"cache_fingerprint": toy["cache"].fingerprint})
    np.testing.assert_array_equal(ok.scores, same.scores)
