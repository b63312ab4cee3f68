"""``avfuse ablate`` on a real toy corpus + cache: cells against `avfuse score`/`evaluate` run by hand,
the degradations against independent computations, files, sweeps and the DCA gates."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from tests.pipeline.experiments.toy_corpus import SEGMENTS, build_toy

HEADS = ["none", "score_avg", "mean", "dca"]


@pytest.fixture(scope="session")
def toy(tmp_path_factory):
    return build_toy(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="module")
def ablation(toy, tmp_path_factory):
    from fusion import TrainConfig
    from pipeline.experiments import run_ablation

    out = tmp_path_factory.mktemp("ablation")
    cfg = TrainConfig(epochs=2, batch_size=8, device="cpu", patience=0)
    result = run_ablation(toy["cache"], toy["test"], HEADS, out_dir=out, train=True, dev_trials=toy["dev"],
                          train_cfg=cfg, missing=(0.0, 0.5, 1.0), lengths=None,
                          sweeps=["dca.temperature=1", "mean.dim=32,256"], corpus_dir=toy["corpus"], progress=False)
    return result, out


def cell(rows, system, mode="AVxAV", **match):
    found = [r for r in rows if r["system"] == system and r["mode"] == mode
             and all(r.get(k) == v for k, v in match.items())]
    assert len(found) == 1, (system, mode, match)
    return found[0]


METRICS = ("eer_percent", "min_dcf_p0.01", "min_dcf_p0.05", "n_trials", "n_target", "n_nontarget")


def same_metrics(a, b):
    for k in METRICS:
        assert a[k] == pytest.approx(b[k], abs=1e-12), k


# ------------------------------------------------------------------ (a) the table
@pytest.mark.parametrize("system,mode", [("none", "AxA"), ("none", "AVxAV"), ("mean", "AVxA"), ("dca", "AVxV")])
def test_table_cell_equals_score_then_evaluate(ablation, toy, invoke, tmp_path, system, mode):
    result, out = ablation
    scores = tmp_path / "s.tsv"
    args = ["score", "--cache", toy["cache"], "--trials", toy["test"], "--mode", mode, "--out", scores,
            "--skip-missing", "--quiet"]
    if system != "none":
        args += ["--head", out / "heads" / f"{system}.pt"]
    code, _so, se = invoke(args)
    assert code == 0, se
    code, so, se = invoke(["evaluate", "--scores", scores, "--json"])
    assert code == 0, se
    same_metrics(cell(result["table"], system, mode), json.loads(so))


def test_table_has_every_system_and_mode(ablation):
    result, _ = ablation
    assert [(r["system"], r["mode"]) for r in result["table"]] == \
        [(s, m) for s in HEADS for m in ("AxA", "VxV", "AVxAV", "AVxA", "AVxV")]
    for r in result["table"]:
        assert 0 <= r["eer_percent"] <= 100 and 0 <= r["min_dcf_p0.01"] <= 1
        assert r["n_target"] + r["n_nontarget"] == r["n_trials"] > 0
    # without a head AVxA compares audio only: the same numbers as AxA
    same_metrics(cell(result["table"], "none", "AVxA"), cell(result["table"], "none", "AxA"))


# ------------------------------------------------------------------ (b) missing modality
def test_zero_missing_equals_plain_cell(ablation):
    result, _ = ablation
    for s in HEADS:
        plain = cell(result["table"], s)
        for dropped in ("face", "audio"):
            r = cell(result["missing"], s, dropped=dropped, share=0.0)
            assert r["n_dropped"] == 0
            same_metrics(r, plain)


def test_all_faces_dropped_equals_audio_only(ablation):
    """Dropping every face turns AVxAV into audio-only scoring (none: the audio channel; mean: e_A)."""
    result, _ = ablation
    for s in ("none", "mean"):
        r = cell(result["missing"], s, dropped="face", share=1.0)
        assert r["n_dropped"] == r["n_candidates"] > 0
        same_metrics(r, cell(result["table"], s, "AxA"))
        same_metrics(cell(result["missing"], s, dropped="audio", share=1.0), cell(result["table"], s, "VxV"))
    half = cell(result["missing"], "none", dropped="face", share=0.5)
    assert half["n_dropped"] == round(0.5 * half["n_candidates"])


def test_drop_modality_makes_clips_look_failed(toy):
    from pipeline.cache import CacheView, open_cache
    from pipeline.experiments import drop_modality, drop_order

    cache = open_cache(toy["cache"])
    view = CacheView.load(cache)
    order = drop_order(view, seed=3)
    assert np.array_equal(order, drop_order(view, seed=3)) and len(set(order.tolist())) == len(order)
    v = drop_modality(view, order[:5], "face")
    hf = v.to_numpy("has_face", dtype=bool)
    assert (~hf).sum() == 5 and not hf[order[:5]].any()
    assert np.all(v.to_numpy("face/clip", order[:5]) == 0) and np.all(v.to_numpy("face/frames", order[:5]) == 0)
    assert not v.to_numpy("face/frame_valid", order[:5]).any()
    # the untouched rows and the source view are unchanged
    keep = np.setdiff1d(np.arange(view.n_rows), order[:5])
    assert np.array_equal(v.to_numpy("face/clip", keep), view.to_numpy("face/clip", keep))
    assert view.to_numpy("has_face", dtype=bool).all()
    # the view reads the same values as the cache
    rows = np.array([7, 2, 2, 30])
    for name in ("audio/segments", "face/clip", "has_audio", "audio/segment_valid"):
        assert np.array_equal(view.to_numpy(name, rows), cache.to_numpy(name, rows))


# ------------------------------------------------------------------ (c) clip length
def _by_hand_none_avxav(cache, trials, k):
    """AVxAV of the raw embeddings with clip = mean of the valid steps among the first k (numpy only)."""
    from pipeline.core import compute_metrics

    utts, ei, ti = trials.index()
    rows = cache.rows(utts)
    embs = []
    for seq_name, valid_name in (("audio/segments", "audio/segment_valid"), ("face/frames", "face/frame_valid")):
        seq = cache.to_numpy(seq_name, rows).astype(np.float32)
        valid = cache.to_numpy(valid_name, rows).astype(bool)
        out = np.zeros(seq.shape[::2], dtype=np.float32)
        for i in range(len(rows)):
            w = valid[i, :k] if valid[i, :k].any() else np.ones(k, bool)
            out[i] = seq[i, :k][w].mean(axis=0)
        out = out.astype(np.float16).astype(np.float32)          # stored back in the cache dtype
        embs.append(out / np.linalg.norm(out, axis=1, keepdims=True))
    score = 0.5 * sum((e[ei] * e[ti]).sum(axis=1) for e in embs)
    return compute_metrics(score, trials.labels)


def test_length_cells(ablation, toy):
    from data_manifests import read_trials
    from pipeline.cache import open_cache

    result, _ = ablation
    rows = result["length"]
    assert sorted({r["steps"] for r in rows if r["steps"] != "full"}) == [1, 2, 4]   # auto for S = 4
    cache, trials = open_cache(toy["cache"]), read_trials(toy["test"])
    for k in (1, SEGMENTS):
        ref = _by_hand_none_avxav(cache, trials, k)
        got = cell(rows, "none", steps=k)
        for key in METRICS:
            assert got[key] == pytest.approx(ref[key], abs=1e-6), (k, key)
    # the reference for "none" at k = S is the mean of the segments, not the cached whole-utterance clip:
    audio_clip = cache.to_numpy("audio/clip")
    seg_mean = cache.to_numpy("audio/segments").mean(axis=1)
    assert not np.allclose(audio_clip, seg_mean, atol=1e-2)
    # sequence heads see all steps at k = S: the plain cell; "full" is the plain cell for everyone
    same_metrics(cell(rows, "dca", steps=SEGMENTS), cell(result["table"], "dca"))
    for s in HEADS:
        same_metrics(cell(rows, s, steps="full"), cell(result["table"], s))


def test_lengths_beyond_cached_steps_is_an_error(toy, tmp_path):
    from pipeline.core import ConfigError
    from pipeline.experiments import run_ablation

    with pytest.raises(ConfigError, match="exceed the cached steps"):
        run_ablation(toy["cache"], toy["test"], ["none"], ["AxA"], tmp_path, missing=(), lengths=(1, 8),
                     progress=False)


# ------------------------------------------------------------------ files
def test_files_are_written_and_consistent(ablation):
    from pipeline.report import read_csv

    result, out = ablation
    for stem in ("table", "missing", "length", "sweeps", "gates"):
        for ext in ("md", "csv", "json"):
            assert (out / f"{stem}.{ext}").is_file(), (stem, ext)
    for png in ("missing.png", "length.png", "sweeps.png", "gates.png"):
        data = (out / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    csv_rows = read_csv(out / "table.csv")
    js = json.loads((out / "table.json").read_text())
    assert len(csv_rows) == len(js["rows"]) == len(result["table"])
    for c, j, r in zip(csv_rows, js["rows"], result["table"]):
        for k in ("system", "mode") + METRICS:
            assert c[k] == j[k] == r[k], k
    md = (out / "table.md").read_text()
    for s in HEADS:
        line = next(x for x in md.splitlines() if x.startswith(f"| {s} |"))   # the EER table comes first
        eers = [f"{cell(result['table'], s, m)['eer_percent']:.2f}" for m in ("AxA", "VxV", "AVxAV", "AVxA", "AVxV")]
        assert [x.strip() for x in line.strip("|").split("|")][1:] == eers
    html = (out / "index.html").read_text()
    for png in ("missing.png", "length.png", "sweeps.png", "gates.png"):
        assert f'src="{png}"' in html
    full = json.loads((out / "ablation.json").read_text())
    assert full["meta"]["cache"]["fingerprint"] and len(full["table"]) == len(result["table"])
    assert (out / "heads" / "mean.pt").is_file() and (out / "heads" / "dca_temperature=1.pt").is_file()


def test_format_table_text(ablation):
    from pipeline.experiments import format_table

    result, _ = ablation
    text = format_table(result)
    lines = text.splitlines()
    assert "AVxAV" in lines[1] and len(lines) == 3 + len(HEADS)
    r = cell(result["table"], "mean", "VxV")
    assert f"{r['eer_percent']:.2f} / {r['min_dcf_p0.01']:.3f}" in next(x for x in lines if x.startswith("mean"))


# ------------------------------------------------------------------ sweeps and gates
def test_sweeps_retrain_per_value(ablation):
    from fusion import load_head

    result, out = ablation
    rows = result["sweeps"]
    modes = ("AxA", "VxV", "AVxAV", "AVxA", "AVxV")
    assert [(r["system"], r["mode"]) for r in rows] == \
        [(s, m) for s in ("dca[temperature=1]", "mean[dim=32]", "mean[dim=256]") for m in modes]
    head, _meta = load_head(out / "heads" / "dca_temperature=1.pt")
    assert head.temperature == 1.0
    assert load_head(out / "heads" / "mean_dim=32.pt")[0].embedding_dim == 32
    # dim = 256 is mean's default: same in-memory data, same seed -> the same head and the same numbers
    for m in modes:
        same_metrics(cell(rows, "mean[dim=256]", m), cell(result["table"], "mean", m))


def test_gate_stats_match_a_direct_computation(ablation, toy):
    import torch

    from data_manifests import read_trials
    from fusion import load_head
    from pipeline.cache import open_cache
    from pipeline.train import batch_from_cache

    result, out = ablation
    gates = result["gates"]
    assert {r["system"] for r in gates} == {"dca", "dca[temperature=1]"}
    trials = read_trials(toy["test"])
    cache = open_cache(toy["cache"])
    head, _ = load_head(out / "heads" / "dca.pt")
    utts, ei, ti = trials.index()
    with torch.no_grad():
        g = head.gate_weights(batch_from_cache(cache, cache.rows(utts), True), use=("A", "V"))
    picks = {m: ((g[m][..., 1] > 0.5) & g[f"{m}_valid"]).sum(1).numpy() for m in "AV"}
    steps = {m: g[f"{m}_valid"].sum(1).numpy() for m in "AV"}
    allc = next(r for r in gates if r["system"] == "dca" and r["group"] == "all clips")
    assert allc["audio_cross_share"] == pytest.approx(picks["A"].sum() / steps["A"].sum())
    assert allc["face_cross_share"] == pytest.approx(picks["V"].sum() / steps["V"].sum())
    tgt = next(r for r in gates if r["system"] == "dca" and r["value"] == "target")
    m = trials.labels == 1
    assert tgt["n"] == int(m.sum())
    want = (picks["A"][ei[m]].sum() + picks["A"][ti[m]].sum()) / (steps["A"][ei[m]].sum() + steps["A"][ti[m]].sum())
    assert tgt["audio_cross_share"] == pytest.approx(want)
    dec = [r for r in gates if r["system"] == "dca" and r["group"].startswith("decision")]
    assert sum(r["n"] for r in dec) == trials.n_trials
    conds = {r["value"] for r in gates if r["system"] == "dca" and r["group"] == "audio condition"}
    assert conds and conds <= {"clean", "noisy"}
    for r in gates:
        for k in ("audio_cross_share", "face_cross_share", "audio_mean_gate", "face_mean_gate"):
            assert r[k] is None or 0.0 <= r[k] <= 1.0


# ------------------------------------------------------------------ sweep parsing and errors
@pytest.mark.parametrize("text,target,values", [
    ("dca.temperature=0.05,0.1,0.5,1", "train", [0.05, 0.1, 0.5, 1.0]),
    ("mlp.dropout=0,0.2,0.5", "head", [0.0, 0.2, 0.5]),
    ("multiview.dim=128,256,512", "head", [128, 256, 512]),
    ("mean.mask_prob=0,0.25,0.5", "train", [0.0, 0.25, 0.5]),
    ("mean.epochs=1, 3", "train", [1, 3]),
])
def test_parse_sweep(text, target, values):
    from pipeline.experiments import parse_sweep

    sw = parse_sweep(text)
    assert sw.target == target and sw.values == values
    assert all(type(v) is type(values[0]) for v in sw.values)


@pytest.mark.parametrize("text,match", [
    ("dca.temperature", "bad --sweep"),
    ("temperature=0.1", "bad --sweep"),
    ("nohead.dim=1,2", "unknown head"),
    ("mlp.temperature=0.1", "valid fields for mlp:.*dropout"),
    ("mlp.bogus=1", "not a sweepable field"),
    ("dca.gate=false", "not a sweepable field"),
    ("multiview.dim=1.5", "not a valid int"),
    ("mlp.dropout=0,,1", "empty value"),
    ("mlp.dropout=0.1,0.1", "repeated"),
    ("mean.lr=fast", "not a valid float"),
])
def test_parse_sweep_errors(text, match):
    from pipeline.core import ConfigError
    from pipeline.experiments import parse_sweep

    with pytest.raises(ConfigError, match=match) as e:
        parse_sweep(text)
    assert e.value.hint


def test_cli_bad_sweep_and_missing_head(invoke, toy, tmp_path):
    code, _so, se = invoke(["ablate", "-c", toy["cache"], "-t", toy["test"], "-o", tmp_path / "a",
                            "--heads", "none", "--sweep", "mlp.bogus=1", "-q"])
    assert code == 2 and "avfuse: error:" in se and "valid fields for mlp" in se
    code, _so, se = invoke(["ablate", "-c", toy["cache"], "-t", toy["test"], "-o", tmp_path / "b",
                            "--heads", "none,mean", "--runs", tmp_path, "-q"])
    assert code == 2 and "mean.pt" in se and "--train" in se


def test_cli_reuses_runs_and_prints_table(invoke, ablation, toy, tmp_path):
    result, out = ablation
    code, so, se = invoke(["ablate", "-c", toy["cache"], "-t", toy["test"], "-o", tmp_path / "c",
                           "--heads", "none,mean", "--runs", out / "heads", "--modes", "AxA,AVxAV",
                           "--missing", "none", "--lengths", "none", "-q"])
    assert code == 0, se
    assert so.splitlines()[0].startswith("EER (%) / minDCF")
    again = json.loads((tmp_path / "c" / "table.json").read_text())["rows"]
    for r in again:                      # the checkpoint gives the numbers of the run that trained it
        same_metrics(r, cell(result["table"], r["system"], r["mode"]))
    assert not (tmp_path / "c" / "missing.csv").exists() and not (tmp_path / "c" / "heads").exists()
    assert math.isfinite(again[0]["eer_percent"])
