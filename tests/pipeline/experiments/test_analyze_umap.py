"""`avfuse analyze` additions on the shared real toy cache: the UMAP figure, the within/between-speaker
variance table (against a plain numpy computation), and fixed-length pieces (`--clip-seconds`) built from
the cached segment and frame embeddings (against a per-clip loop over the cache arrays)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from tests.pipeline.experiments.toy_corpus import build_toy


@pytest.fixture(scope="session")
def toy(tmp_path_factory):
    return build_toy(tmp_path_factory.getbasetemp())


def _hand_variance(x, spk):
    x = np.asarray(x, dtype=np.float64)
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    grand = x.mean(axis=0)
    within = between = 0.0
    for s in np.unique(spk):
        xs = x[spk == s]
        m = xs.mean(axis=0)
        within += ((xs - m) ** 2).sum()
        between += len(xs) * ((m - grand) ** 2).sum()
    return within / len(x), between / len(x), ((x - grand) ** 2).sum() / len(x)


def test_speaker_variance_equals_numpy_by_hand():
    from pipeline.experiments.variance import speaker_variance

    rng = np.random.default_rng(0)
    spk = rng.integers(0, 6, 50).astype(str)
    x = rng.standard_normal((50, 7)) + 3 * rng.standard_normal((6, 7))[spk.astype(int)]
    got = speaker_variance(x, spk)
    w, b, t = _hand_variance(x, spk)
    assert got["within"] == pytest.approx(w, rel=1e-12) and got["between"] == pytest.approx(b, rel=1e-12)
    assert got["total"] == pytest.approx(t, rel=1e-12) == pytest.approx(w + b, rel=1e-12)
    assert got["ratio"] == pytest.approx(b / w) and got["n_identities"] == 6


def _hand_pieces(cache, rows, length):
    """Per clip, per piece: the mean of the segments / frames whose time centre falls in the piece."""
    dur = cache.to_numpy("duration", rows)
    seg, sv = cache.to_numpy("audio/segments", rows), cache.to_numpy("audio/segment_valid", rows)
    frm, fv = cache.to_numpy("face/frames", rows), cache.to_numpy("face/frame_valid", rows)
    out = []
    for i in range(len(rows)):
        n = max(1, int(sv[i].sum()))
        for j in range(int(np.floor(dur[i] / length + 1e-9))):
            lo, hi, mid = j * length, (j + 1) * length, (j + 0.5) * length
            pieces = []
            for emb, count, keep in ((seg[i], n, np.arange(seg.shape[1]) < n),
                                     (frm[i], frm.shape[1], fv[i])):
                step = dur[i] / count
                centres = (np.arange(len(emb)) + 0.5) * step
                take = [k for k in range(len(emb)) if keep[k] and lo <= centres[k] < hi]
                if not take:                      # the step that covers the piece's centre
                    take = [min((k for k in range(len(emb)) if keep[k]), key=lambda k: abs(centres[k] - mid))]
                pieces.append(emb[take].mean(axis=0))
            out.append((cache.ids[rows[i]], j, *pieces))
    return out


@pytest.mark.parametrize("length", [0.4, 0.1])
def test_clip_seconds_pieces_take_the_right_segments(toy, length):
    from pipeline.cache.reader import open_cache
    from pipeline.cache.view import CacheView
    from pipeline.experiments.pieces import piece_view

    cache = open_cache(toy["cache"])
    rows = cache.split_rows("test")
    view = CacheView.load(cache, rows)
    pv, prow = piece_view(view, view.rows(cache.ids[rows]), length)
    want = _hand_pieces(cache, rows, length)
    assert len(prow) == len(want) > len(rows) if length == 0.1 else len(prow) == len(want) >= len(rows) // 2
    a, f = pv.to_numpy("audio/clip", prow), pv.to_numpy("face/clip", prow)
    for k, (cid, j, wa, wf) in enumerate(want):
        assert pv.ids[k] == f"{cid}#{j}" and pv.speakers[k] == cid.split("/")[0]
        np.testing.assert_allclose(a[k], wa, rtol=1e-5, atol=1e-5)   # piece means are float32
        np.testing.assert_allclose(f[k], wf, rtol=1e-5, atol=1e-5)
    sv = pv.to_numpy("audio/segment_valid", prow)
    assert sv[:, 0].all() and (pv.to_numpy("duration", prow) == np.float32(length)).all()


def test_cli_umap_variance_and_pieces(toy, tmp_path):
    from pipeline.cache.reader import open_cache
    from pipeline.cli.analyze import analyze_cmd

    out = tmp_path / "report"
    res = CliRunner().invoke(analyze_cmd, ["-c", str(toy["cache"]), "-o", str(out), "--umap", "--clip-seconds",
                                           "0.4", "--quiet"])
    assert res.exit_code == 0, res.output
    data = (out / "umap_none.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    html = (out / "index.html").read_text()
    assert 'src="umap_none.png"' in html and "between-speaker variance" in html
    meta = json.loads((out / "analysis.json").read_text())["meta"]
    assert meta["clip_seconds"] == 0.4 and meta["n_pieces"] >= meta["n_clips"] // 2
    rows = {(r["system"], r["space"]): r for r in json.loads((out / "variance.json").read_text())["rows"]}
    cache = open_cache(toy["cache"])
    test = cache.split_rows("test")
    w, b, _ = _hand_variance(cache.to_numpy("face/clip", test), cache.speakers[test])   # whole clips: differs
    piece = rows[("none", "face (e_V)")]
    assert piece["n_clips"] == meta["n_pieces"] and piece["within"] > 0 and piece["within"] != pytest.approx(w)
    res = CliRunner().invoke(analyze_cmd, ["-c", str(toy["cache"]), "-o", str(tmp_path / "r2"), "--clip-seconds",
                                           "30", "--quiet"])
    assert res.exit_code != 0 and "at least 30 s long" in str(res.exception)


def test_variance_rows_of_a_whole_clip_analysis(toy, tmp_path):
    from pipeline.cache.reader import open_cache
    from pipeline.experiments.analyze import run_analysis

    result = run_analysis(toy["cache"], tmp_path, progress=False)
    cache = open_cache(toy["cache"])
    test = cache.split_rows("test")
    rows = {r["space"]: r for r in result["variance"] if r["system"] == "none"}
    for space, name in (("audio (e_A)", "audio/clip"), ("face (e_V)", "face/clip")):
        w, b, t = _hand_variance(cache.to_numpy(name, test), cache.speakers[test])
        assert rows[space]["within"] == pytest.approx(w, rel=1e-9)
        assert rows[space]["between"] == pytest.approx(b, rel=1e-9)
    assert not (tmp_path / "umap_none.png").exists()
