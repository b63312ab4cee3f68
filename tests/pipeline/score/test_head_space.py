"""A head applies to any cache in the embedding space it was trained in: trained on one corpus's
cache (VoxCeleb2 dev in real use), it scores another corpus's cache (VoxCeleb1) of the same
backbones and segment/frame settings without ``--force``; other backbones, another checkpoint or
other segment settings are refused with what differs. Real caches, the real ``avfuse train`` and
``avfuse score``."""

from __future__ import annotations

import copy

import pytest

from fusion.checkpoint import space_differences
from tests.pipeline.score.test_scoring import all_pairs_trials, make_cache, toy_data

BACKBONE = {"name": "ecapa_tdnn", "weights": "/gpu-box/ckpt/ecapa.ckpt", "sha256": "ab" * 32, "seed": 0,
            "spec": {"sample_rate": 16000}}
PROV = {"avfuse_version": "test", "manifest_fingerprint": "vox2-dev", "config": {"segments": 1, "frames": 1},
        "audio_backbone": BACKBONE, "face_backbone": {"name": "iresnet18", "weights": "random", "sha256": None,
                                                      "seed": 0}}


def variant(**changes) -> dict:
    p = copy.deepcopy(PROV)
    for key, value in changes.items():
        *path, last = key.split(".")
        d = p
        for k in path:
            d = d[k]
        d[last] = value
    return p


def test_what_counts_as_the_embedding_space():
    assert space_differences(PROV, variant(manifest_fingerprint="vox1-test", avfuse_version="0.2")) == []
    assert space_differences(PROV, variant(**{"config.compute_precision": "bf16", "config.dtype": "float16",
                                              "config.resize_on": "device", "config.shard_size": 64})) == []
    moved = variant(**{"audio_backbone.weights": "/home/me/ecapa.ckpt"})    # same file elsewhere
    assert space_differences(PROV, moved) == []
    assert space_differences(PROV, variant(**{"audio_backbone.sha256": "cd" * 32})) == ["audio_backbone"]
    assert space_differences(PROV, variant(**{"face_backbone.seed": 1})) == ["face_backbone"]   # other random init
    assert space_differences(PROV, variant(**{"audio_backbone.seed": 1})) == []   # a checkpoint: the seed seeds nothing
    part = variant(**{"audio_backbone.load_notes": {"classifier": "embedding layer left at seeded random init"}})
    assert space_differences(part, variant(**{"audio_backbone.load_notes": part["audio_backbone"]["load_notes"],
                                              "audio_backbone.seed": 1})) == ["audio_backbone"]   # ... unless it does
    assert space_differences(PROV, variant(**{"config.segments": 8})) == ["config.segments"]
    assert space_differences(PROV, variant(**{"config.segment_windows": "centre"})) == ["config.segment_windows"]
    # imported embeddings: the model name given at import, else the source files
    imp = {"name": "imported", "embedding_dim": 256, "weights": "imported", "sources": [{"path": "vox2/x.scp"}]}
    named = variant(audio_backbone=imp | {"model": "wespeaker_r34"})
    assert space_differences(named, variant(audio_backbone=imp | {"model": "wespeaker_r34",
                                                                   "sources": [{"path": "vox1/x.scp"}]})) == []
    assert space_differences(named, variant(audio_backbone=imp | {"model": "wespeaker_r221"})) == ["audio_backbone"]
    assert space_differences(variant(audio_backbone=imp), variant(audio_backbone=imp | {
        "sources": [{"path": "vox1/x.scp"}]})) == ["audio_backbone"]


@pytest.fixture(scope="module")
def caches(tmp_path_factory):
    root = tmp_path_factory.mktemp("space")
    ids, spk, a, v = toy_data(n_spk=6, per_spk=6, seed=0)
    train = make_cache(root / "vox2.zarr", ids, spk, ["train"] * len(ids), a, v, provenance=PROV)
    ids2, spk2, a2, v2 = toy_data(n_spk=4, per_spk=5, seed=3)
    other = {"vox1": PROV | {"manifest_fingerprint": "vox1-test"},
             "other_ckpt": variant(**{"audio_backbone.sha256": "cd" * 32, "manifest_fingerprint": "vox1-test"})}
    made = {k: make_cache(root / f"{k}.zarr", ids2, spk2, ["test"] * len(ids2), a2, v2, provenance=p)
            for k, p in other.items()}
    trials = root / "trials.txt"
    all_pairs_trials(trials, ids2, spk2, n=40)
    return root, train, made, trials


def test_trained_on_one_corpus_scores_another(caches, invoke):
    root, train, made, trials = caches
    assert made["vox1"].fingerprint != train.fingerprint
    head = root / "mlp.pt"
    code, _, err = invoke(["train", "--cache", train.path, "--head", "mlp", "--epochs", "2", "--device", "cpu",
                           "--out", head, "--quiet"])
    assert code == 0, err
    code, _, err = invoke(["score", "--cache", made["vox1"].path, "--trials", trials, "--mode", "AVxAV",
                           "--head", head, "--out", root / "vox1.tsv", "--quiet"])
    assert code == 0, err                                                   # no --force needed
    code, _, err = invoke(["score", "--cache", made["other_ckpt"].path, "--trials", trials, "--mode", "AVxAV",
                           "--head", head, "--out", root / "other.tsv", "--quiet"])
    assert code == 2 and "another embedding space" in err and "audio_backbone" in err and "--force" in err
    code, _, err = invoke(["score", "--cache", made["other_ckpt"].path, "--trials", trials, "--mode", "AVxAV",
                           "--head", head, "--out", root / "other.tsv", "--quiet", "--force"])
    assert code == 0, err


def test_a_cohort_from_another_cache_must_share_the_space(caches, invoke):
    """S-norm/AS-norm and --mean-sub sources from another cache follow the same rule."""
    root, train, made, trials = caches
    base = ["score", "--cache", made["vox1"].path, "--trials", trials, "--mode", "AxA", "--quiet"]
    code, _, err = invoke(base + ["--norm", "snorm", "--cohort", f"{train.path}:train", "--out", root / "sn.tsv"])
    assert code == 0, err                                                   # another corpus, same space
    code, _, err = invoke(base + ["--norm", "snorm", "--cohort", f"{made['other_ckpt'].path}:test",
                                  "--out", root / "sn2.tsv"])
    assert code == 2 and "audio_backbone" in err and "--force" in err
    code, _, err = invoke(base + ["--mean-sub", f"{made['other_ckpt'].path}:test", "--out", root / "ms.tsv"])
    assert code == 2 and "audio_backbone" in err
