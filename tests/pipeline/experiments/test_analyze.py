"""``avfuse analyze`` on a real toy corpus + cache: figures and report written, numbers equal to
``pipeline.analysis_stats`` computed directly on embeddings read and embedded here."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from tests.pipeline.experiments.toy_corpus import build_toy


@pytest.fixture(scope="session")
def toy(tmp_path_factory):
    return build_toy(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="module")
def mean_head(toy, tmp_path_factory):
    from fusion import TrainConfig, save_head
    from pipeline.cache import open_cache
    from pipeline.train import checkpoint_meta, train_head

    cache = open_cache(toy["cache"])
    cfg = TrainConfig(epochs=2, batch_size=8, device="cpu")
    head, history = train_head(cache, "mean", cfg, progress=False)
    path = tmp_path_factory.mktemp("heads") / "mean.pt"
    save_head(path, head, checkpoint_meta(cfg, cache, history))
    return path


@pytest.fixture(scope="module")
def analysis(toy, mean_head, tmp_path_factory):
    from pipeline.experiments import run_analysis

    out = tmp_path_factory.mktemp("analysis")
    return run_analysis(toy["cache"], out, heads=[mean_head], trials=toy["test"], progress=False), out


def test_figures_and_report_written(analysis):
    result, out = analysis
    want = ["silhouette.png", "angles.png", "pca_none.png", "pca_mean.png", "scores_none.png", "scores_mean.png",
            "det_none.png", "det_mean.png", "det_AVxAV.png"]
    html = (out / "index.html").read_text()
    for png in want:
        data = (out / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000, png
        assert f'src="{png}"' in html, png
    for src in re.findall(r'src="([^"]+)"', html):      # every image link is relative and resolves
        assert not src.startswith("/") and (out / src).is_file()
    for stem in ("geometry", "metrics"):
        for ext in ("md", "csv", "json"):
            assert (out / f"{stem}.{ext}").is_file()
    assert json.loads((out / "analysis.json").read_text())["meta"]["n_clips"] == result["meta"]["n_clips"]


def test_geometry_equals_analysis_stats_computed_directly(analysis, toy, mean_head):
    import torch

    from fusion import load_head
    from pipeline.cache import open_cache
    from pipeline.experiments import angles_deg, per_identity_mean, silhouette_cosine
    from pipeline.train import batch_from_cache

    result, out = analysis
    cache = open_cache(toy["cache"])
    rows = cache.split_rows("test")
    spk = cache.speakers[rows]
    has_a = cache.to_numpy("has_audio", rows).astype(bool)
    has_v = cache.to_numpy("has_face", rows).astype(bool)
    assert has_a.all() and has_v.all()          # the toy corpus has no failed clips
    geo = {r["system"]: r for r in json.loads((out / "geometry.json").read_text())["rows"]}
    html = (out / "index.html").read_text()

    a, v = cache.to_numpy("audio/clip", rows), cache.to_numpy("face/clip", rows)
    fused = np.concatenate([a / np.linalg.norm(a, axis=1, keepdims=True),
                            v / np.linalg.norm(v, axis=1, keepdims=True)], axis=1)
    want_none = {"silhouette_audio": silhouette_cosine(a, spk), "silhouette_face": silhouette_cosine(v, spk),
                 "silhouette_fused": silhouette_cosine(fused, spk)}
    head, _ = load_head(mean_head)
    with torch.no_grad():
        batch = batch_from_cache(cache, rows)
        ea, ev = head.embed(batch, use=("A",)).numpy(), head.embed(batch, use=("V",)).numpy()
        eav = head.embed(batch, use=("A", "V")).numpy()
    ang = angles_deg(ea, ev)
    _ids, ma = per_identity_mean(ea, spk)
    _ids, mv = per_identity_mean(ev, spk)
    want_mean = {"silhouette_audio": silhouette_cosine(ea, spk), "silhouette_face": silhouette_cosine(ev, spk),
                 "silhouette_fused": silhouette_cosine(eav, spk), "angle_clip_mean_deg": ang.mean(),
                 "angle_clip_median_deg": np.median(ang), "angle_identity_mean_deg": angles_deg(ma, mv).mean()}
    for system, want in (("none", want_none), ("mean", want_mean)):
        for key, val in want.items():
            assert geo[system][key] == pytest.approx(float(val), abs=1e-5), (system, key)
            assert geo[system][key] == result["geometry"][["none", "mean"].index(system)][key]
            shown = f"{val:.4f}" if key.startswith("silhouette") else f"{val:.2f}"
            assert f">{shown}</td>" in html, (system, key, shown)
    assert geo["none"]["angle_clip_mean_deg"] is None and "no shared" in geo["none"]["note"]
    assert geo["mean"]["n_clips"] == len(rows) and geo["mean"]["n_identities"] == len(np.unique(spk))


def test_metrics_equal_scoring_from_the_cache(analysis, toy):
    from data_manifests import read_trials
    from pipeline.cache import open_cache
    from pipeline.core import compute_metrics
    from pipeline.score import score_from_cache

    result, _ = analysis
    cache, trials = open_cache(toy["cache"]), read_trials(toy["test"])
    assert {(r["system"], r["mode"]) for r in result["metrics"]} == \
        {(s, m) for s in ("none", "mean") for m in ("AxA", "VxV", "AVxAV", "AVxA", "AVxV")}
    res = score_from_cache(cache, trials, "VxV", skip_missing=True)
    ref = compute_metrics(res.scores, res.labels)
    got = next(r for r in result["metrics"] if r["system"] == "none" and r["mode"] == "VxV")
    for k in ("eer_percent", "min_dcf_p0.01", "min_dcf_p0.05", "n_trials"):
        assert got[k] == pytest.approx(ref[k], abs=1e-12)


def test_cli_analyze_and_errors(toy, tmp_path, invoke):
    run = invoke
    code, so, se = run(["analyze", "-c", toy["cache"], "-o", tmp_path / "r", "--split", "train",
                        "--max-clips", "10", "-q"])
    assert code == 0, se
    assert so.splitlines()[0].split()[:4] == ["system", "sil", "A", "sil"] and "no shared" in so
    assert (tmp_path / "r" / "index.html").is_file() and not (tmp_path / "r" / "angles.png").exists()
    assert json.loads((tmp_path / "r" / "analysis.json").read_text())["meta"]["n_clips"] == 10
    code, _so, se = run(["analyze", "-c", toy["cache"], "-o", tmp_path / "s", "--head", toy["test"]])
    assert code == 2 and "*.pt" in se
    code, _so, se = run(["analyze", "-c", toy["cache"], "-o", tmp_path / "t", "--split", "nosuch"])
    assert code == 2 and "splits in this cache" in se
