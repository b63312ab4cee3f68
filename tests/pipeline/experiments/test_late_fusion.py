"""``avfuse ablate`` system ``cal_fusion``: its AVxAV cell equals score -> calibrate fit -> apply -> evaluate by hand."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pipeline.core.errors import ConfigError
from tests.pipeline.score.test_scoring import all_pairs_trials, make_cache, toy_data


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("calfusion")
    ids, speakers, audio, face = toy_data(n_spk=8, per_spk=6, noise=1.4)
    cache = make_cache(tmp / "c.zarr", ids, speakers, ["test"] * len(ids), audio, face)
    all_pairs_trials(tmp / "dev.txt", ids, speakers, n=400, seed=3)
    all_pairs_trials(tmp / "test.txt", ids, speakers, n=300, seed=4)
    return dict(cache=cache, tmp=tmp, dev=tmp / "dev.txt", test=tmp / "test.txt")


def test_cal_fusion_cell_equals_the_cli_pipeline(toy, invoke, tmp_path):
    from pipeline.experiments.ablate import run_ablation

    res = run_ablation(toy["cache"], toy["test"], ["none", "cal_fusion"], ["AxA", "VxV", "AVxAV"], tmp_path / "abl",
                       dev_trials=toy["dev"], missing=(), lengths=(), progress=False)
    row = [r for r in res["table"] if r["system"] == "cal_fusion"]
    assert len(row) == 1 and row[0]["mode"] == "AVxAV" and row[0]["n_skipped"] == 0
    c = toy["cache"].path
    files = {}
    for split in ("dev", "test"):
        for mode in ("AxA", "VxV"):
            files[split, mode] = tmp_path / f"{split}_{mode}.tsv"
            code, _, se = invoke(["score", "--cache", c, "--trials", toy[split], "--mode", mode, "--out",
                                  files[split, mode], "--quiet"])
            assert code == 0, se
    cal, llr = tmp_path / "cal.json", tmp_path / "llr.tsv"
    assert invoke(["calibrate", "fit", "--scores", files["dev", "AxA"], "--scores", files["dev", "VxV"],
                   "--out", cal, "--quiet"])[0] == 0
    assert invoke(["calibrate", "apply", "--model", cal, "--scores", files["test", "AxA"], "--scores",
                   files["test", "VxV"], "--out", llr, "--quiet"])[0] == 0
    code, so, se = invoke(["evaluate", "--scores", llr, "--json"])
    m = json.loads(so)
    for k in ("eer_percent", "min_dcf_p0.01", "min_dcf_p0.05", "n_trials", "n_target"):
        assert row[0][k] == pytest.approx(m[k], rel=1e-4, abs=1e-6), k
    # the trained fusion is at least as good as the better modality here, and is in the table with it
    none_av = [r for r in res["table"] if r["system"] == "none" and r["mode"] == "AVxAV"][0]
    assert row[0]["eer_percent"] <= none_av["eer_percent"] + 3.0
    assert any("cal_fusion" in n for n in res["notes"])


def test_cal_fusion_falls_back_to_one_modality_and_needs_dev(toy, tmp_path):
    from data_manifests.trials import read_trials
    from pipeline.experiments.late_fusion import fit_fusion, fused_llr, modality_scores

    models = fit_fusion(toy["cache"], read_trials(toy["dev"]))
    a, v = modality_scores(toy["cache"], read_trials(toy["test"]))
    v2 = v.copy()
    v2[:10] = np.nan                       # those trials lost the face
    out = fused_llr(models, a, v2)
    w, b = models["A"]
    np.testing.assert_allclose(out[:10], w[0] * a[:10] + b)
    wf, bf = models["AV"]
    np.testing.assert_allclose(out[10:], wf[0] * a[10:] + wf[1] * v[10:] + bf)
    from pipeline.experiments.ablate import run_ablation
    with pytest.raises(ConfigError, match="--dev-trials"):
        run_ablation(toy["cache"], toy["test"], ["none", "cal_fusion"], ["AVxAV"], tmp_path / "x",
                     missing=(), lengths=(), progress=False)
