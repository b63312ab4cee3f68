"""``avfuse score`` with several --trials: one pass, one file per list, each equal to scoring the list alone."""

from __future__ import annotations

import json

import numpy as np
import pytest

from data_manifests.trials import write_trials
from pipeline.score.files import read_scores, sidecar_path
from tests.pipeline.score.test_scoring import all_pairs_trials, make_cache, toy_data


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("multi")
    ids, speakers, audio, face = toy_data()
    has_face = np.ones(len(ids), bool)
    has_face[7] = False
    cache = make_cache(tmp / "c.zarr", ids, speakers, ["test"] * len(ids), audio, face, None, has_face)
    lists = []
    for k in range(3):
        all_pairs_trials(tmp / f"l{k}.txt", ids, speakers, n=40 + 10 * k, seed=10 + k)
        lists.append(tmp / f"l{k}.txt")
    # a list with an utterance the cache lacks, and an unlabeled one
    write_trials(tmp / "miss.txt", [1, 0, 1], [ids[0], "idX/none/00001", ids[2]], [ids[1], ids[3], ids[4]], ext=".wav")
    write_trials(tmp / "unl.txt", None, ids[:5], ids[5:10], ext=".wav")
    return dict(cache=cache, lists=lists, tmp=tmp, ids=ids)


@pytest.mark.parametrize("mode,extra", [("AxA", []), ("VxV", ["--skip-missing"]), ("AVxAV", ["--norm", "snorm",
                                                                                              "--cohort", "test"])])
def test_several_lists_equal_each_list_scored_alone(setup, invoke, tmp_path, mode, extra):
    lists = setup["lists"] + ([setup["tmp"] / "miss.txt", setup["tmp"] / "unl.txt"] if "--skip-missing" in extra else [])
    args = ["score", "--cache", setup["cache"].path, "--mode", mode, *extra]
    multi = []
    for i, lst in enumerate(lists):
        args += ["--trials", lst, "--out", tmp_path / f"m{i}.tsv"]
        multi.append(tmp_path / f"m{i}.tsv")
    code, so, se = invoke(args)
    assert code == 0, se
    assert so.count(" -> ") == len(lists)
    for i, lst in enumerate(lists):
        alone = tmp_path / f"a{i}.tsv"
        code, _, se = invoke(["score", "--cache", setup["cache"].path, "--mode", mode, *extra, "--trials", lst,
                              "--out", alone, "--quiet"])
        assert code == 0, se
        a, m = read_scores(alone), read_scores(multi[i])
        assert (a.enrol == m.enrol).all() and (a.test == m.test).all() and (a.labels == m.labels).all()
        np.testing.assert_array_equal(a.scores, m.scores)
        sa, sm = json.loads(sidecar_path(alone).read_text()), json.loads(sidecar_path(multi[i]).read_text())
        assert sm["trials"] == sa["trials"] and sm["config_fingerprint"] == sa["config_fingerprint"]
        for k in ("n_trials_in_list", "n_scored", "n_skipped", "n_skipped_missing", "n_skipped_unscorable",
                  "n_target", "n_nontarget"):
            assert sm["counts"][k] == sa["counts"][k], k
        assert sm["multi"]["lists"] == [str(p.resolve()) for p in lists]
    if "--skip-missing" in extra:
        side = json.loads(sidecar_path(multi[3]).read_text())
        assert side["counts"]["n_skipped_missing"] == 1 and side["counts"]["n_scored"] == 2
        # the pass embeds each utterance once: no more than the union of the lists' utterances
        assert side["multi"]["counts"]["n_embedded"] <= len(setup["ids"])


def test_trials_and_out_counts_must_match(setup, invoke, tmp_path):
    code, _, se = invoke(["score", "--cache", setup["cache"].path, "--mode", "AxA", "--trials", setup["lists"][0],
                          "--trials", setup["lists"][1], "--out", tmp_path / "x.tsv"])
    assert code == 2 and "2 --trials but 1 --out" in se and se.count("\n") == 1
    code, _, se = invoke(["score", "--cache", setup["cache"].path, "--mode", "AxA", "--trials", setup["lists"][0],
                          "--trials", setup["lists"][1], "--out", tmp_path / "x.tsv", "--out", tmp_path / "x.tsv"])
    assert code == 2 and "same file" in se
    assert not (tmp_path / "x.tsv").exists()


def test_evaluate_by_list_table(setup, invoke, tmp_path):
    from pipeline.core.metrics import compute_metrics
    files = []
    for mode in ("AxA", "VxV"):
        args = ["score", "--cache", setup["cache"].path, "--mode", mode, "--skip-missing", "--quiet"]
        for i, lst in enumerate(setup["lists"]):
            args += ["--trials", lst, "--out", tmp_path / f"{mode}{i}.tsv"]
            files.append(tmp_path / f"{mode}{i}.tsv")
        code, _, se = invoke(args)
        assert code == 0, se
    code, so, se = invoke(["evaluate", "--by-list"] + [x for f in files for x in ("--scores", f)])
    assert code == 0, se
    lines = so.strip().splitlines()
    assert lines[0].split()[:4] == ["system", "l0", "EER", "(%)"] and "l2 minDCF .05" in lines[0]
    assert [ln.split()[0] for ln in lines[2:]] == ["AxA", "VxV"]
    s = read_scores(files[4])                   # VxV on l1
    m = compute_metrics(s.scores, s.labels)
    vxv = lines[3].split()
    assert vxv[3] == f"{m['eer_percent']:.2f}" and vxv[4] == f"{m['min_dcf_p0.05']:.4f}"
    code, so, se = invoke(["evaluate", "--by-list", "--scores", files[0], "--scores", files[3],
                           "--label", "sysA:Vox1-O", "--label", "sysV:Vox1-O"])
    assert code == 0 and "Vox1-O EER (%)" in so and "sysV" in so, se
    code, _, se = invoke(["evaluate", "--by-list", "--scores", files[0], "--label", "nocolon"])
    assert code == 2 and "SYSTEM:LIST" in se
