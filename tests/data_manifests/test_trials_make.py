"""``avfuse trials make`` / ``data_manifests.trials_make.sample_trials``: labelled trial lists drawn from
a split, checked pair by pair against the clips' speakers and videos (the real VoxCeleb2-test ids
when ``../shared`` is there), and through the real CLI from a manifest and from a cache."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import pytest

from data_manifests.manifest import ClipRecord, write_manifest
from data_manifests.trials import read_trials
from data_manifests.trials_make import sample_trials

SHARED = Path(os.environ.get("AVFUSE_SHARED", Path(__file__).resolve().parents[3] / "shared"))


def toy(n_spk=6, vids=3, utts=4):
    ids = [f"id{s:05d}/vid{v:02d}xxxxxx/{u:05d}" for s in range(n_spk) for v in range(vids) for u in range(utts)]
    return ids, [i.split("/")[0] for i in ids]


def check(res, ids, cross_video=True):
    """Every trial's label is the truth, targets cross videos, no pair twice, lower id enrols, sorted."""
    known = set(ids)
    pairs = list(zip(res.enrol.tolist(), res.test.tolist()))
    assert all(e in known and t in known and e < t for e, t in pairs)
    assert len(set(pairs)) == len(pairs)
    for (e, t), lab in zip(pairs, res.labels.tolist()):
        assert lab == int(e.split("/")[0] == t.split("/")[0])
        if lab and cross_video:
            assert e.split("/")[1] != t.split("/")[1]
    key = [(e, -lab, t) for (e, t), lab in zip(pairs, res.labels.tolist())]
    assert key == sorted(key)


def test_labels_are_the_truth_and_the_clip_order_does_not_matter():
    ids, spk = toy()
    res = sample_trials(ids, spk, 40, 60, seed=3)
    assert res.labels.sum() == 40 and len(res.labels) == 100 and res.short == [] and res.cross_video
    flat = [f"spk{s}-{k}" for s in range(3) for k in range(3)]
    assert not sample_trials(flat, [i[:4] for i in flat], 3, 3).cross_video      # no id names a video
    check(res, ids)
    again = sample_trials(ids[::-1], spk[::-1], 40, 60, seed=3)
    assert (again.enrol == res.enrol).all() and (again.test == res.test).all()
    other = sample_trials(ids, spk, 40, 60, seed=4)
    assert not ((other.enrol == res.enrol).all() and (other.test == res.test).all())


def test_asking_for_more_pairs_than_exist_gives_all_of_them_and_says_so():
    ids, spk = toy(n_spk=3, vids=2, utts=2)          # per speaker 2 videos x 2 clips: 4 cross-video pairs
    res = sample_trials(ids, spk, 1000, 10, seed=0)
    assert res.labels.sum() == 3 * 4 and "12 distinct target pairs found of the 1,000" in res.short[0]
    check(res, ids)
    same = sample_trials(ids, spk, 1000, 0, seed=0, cross_video=False)   # also the 2 same-video pairs each
    assert same.labels.sum() == 3 * 6
    check(same, ids, cross_video=False)
    one_video = [f"id{s:05d}/onlyvideo00/{u:05d}" for s in range(3) for u in range(3)]
    res = sample_trials(one_video, [i[:7] for i in one_video], 5, 5)
    assert res.labels.sum() == 0 and len(res.short) == 1             # no cross-video target exists


def test_bad_requests_are_refused():
    from pipeline.core.errors import ConfigError
    ids, spk = toy()
    with pytest.raises(ConfigError, match="some trials"):
        sample_trials(ids, spk, 0, 0)
    with pytest.raises(ConfigError, match="duplicate"):
        sample_trials(ids + ids[:1], spk + spk[:1], 5)
    with pytest.raises(ConfigError, match="one entry per clip"):
        sample_trials(ids, spk[:-1], 5)


@pytest.mark.skipif(not (SHARED / "voxceleb" / "vox2_tst_duration.txt.gz").exists(), reason="needs ../shared")
def test_on_the_real_voxceleb2_test_ids():
    with gzip.open(SHARED / "voxceleb" / "vox2_tst_duration.txt.gz", "rt") as f:
        ids = [line.split()[0] for line in f]
    res = sample_trials(ids, [i.split("/")[0] for i in ids], 5000, seed=1)
    assert res.labels.sum() == 5000 and len(res.labels) == 10000 and res.short == []
    check(res, ids)
    assert len(set(res.enrol[res.labels == 1].tolist())) > 4000     # enrolments spread, not a few clips reused


def test_cli_from_a_manifest_split_and_from_a_cache(tmp_path, invoke):
    ids, spk = toy(n_spk=8)
    man = tmp_path / "m.jsonl"
    write_manifest(man, [ClipRecord(clip_id=i, speaker=s, video=i.split("/")[1], duration=4.0,
                                    split="test" if s >= "id00005" else "dev") for i, s in zip(ids, spk)])
    out = tmp_path / "t.txt.gz"
    code, stdout, err = invoke(["trials", "make", "-m", man, "--split", "test", "--targets", "30",
                                "--nontargets", "50", "--ext", ".wav", "--out", out])
    assert code == 0, err
    assert "80 trials (30 target, 50 non-target)" in stdout and "3 speakers of split test" in stdout
    tl = read_trials(out)
    assert tl.summary()["n_target"] == 30 and gzip.open(out, "rt").readline().split()[1].endswith(".wav")
    assert {u.split("/")[0] for u in tl.utterances()} <= {"id00005", "id00006", "id00007"}
    code, _, err = invoke(["trials", "make", "-m", man, "--split", "train", "--out", tmp_path / "x.txt"])
    assert code == 2 and "no clips of split 'train'" in err and "dev, test" in err
    code, _, err = invoke(["trials", "make", "--out", tmp_path / "x.txt"])
    assert code == 2 and "--manifest or --cache" in err

    from tests.pipeline.score.test_scoring import make_cache, toy_data
    cids, cspk, a, v = toy_data(n_spk=5, per_spk=6, seed=0)
    cache = make_cache(tmp_path / "c.zarr", cids, cspk, ["test"] * len(cids), a, v)
    code, stdout, err = invoke(["trials", "make", "-c", cache.path, "--targets", "10", "--same-video-ok",
                                "--out", tmp_path / "c.txt"])
    assert code == 0, err
    tl = read_trials(tmp_path / "c.txt")
    assert tl.summary()["n_target"] == 10 and set(tl.utterances()) <= set(cids)
    code, _, err = invoke(["score", "--cache", cache.path, "--trials", tmp_path / "c.txt", "--mode", "AxA",
                           "--out", tmp_path / "s.tsv", "--quiet"])
    assert code == 0, err                                   # a drawn list scores like any other
    code, _, err = invoke(["trials", "make", "-c", cache.path, "--targets", "10", "--out", tmp_path / "d.txt"])
    assert code == 0 and "no clip names its video" not in err     # ids spk/vid/utt: targets cross videos
    flat = make_cache(tmp_path / "flat.zarr", [f"{s}-{k:03d}" for k, s in enumerate(cspk)], cspk,
                      ["test"] * len(cids), a, v)
    code, _, err = invoke(["trials", "make", "-c", flat.path, "--targets", "10", "--out", tmp_path / "f.txt"])
    assert code == 0 and "no clip names its video" in err        # said, not silently same-video
