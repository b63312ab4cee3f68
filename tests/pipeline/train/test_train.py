"""Stage-2 training from a cache (``pipeline.train``): ``load_split``, ``batch_from_cache``,
``train_head`` and ``avfuse train`` on small real Zarr/HDF5 caches of synthetic embeddings."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from fusion import EmbeddingBatch, TrainConfig, dev_eer, load_head
from pipeline.cache import CacheLayout, create_cache, open_cache
from pipeline.core import ConfigError, HeadError, TrainingError, from_dict
from pipeline.train import batch_from_cache, load_split, train_head
from tests.fusion.synthetic import make_arrays, to_batch

SMALL_MLP = {"dim": 32, "hidden": 64}

pytestmark = pytest.mark.usefixtures("one_thread")


def write_cache(path, arr: dict, splits, *, dtype="float16", shard_size=32, face=True, nan_rows=()):
    """A real cache (``create_cache`` + ``write_shard``) holding the synthetic arrays."""
    n = len(arr["ids"])
    layout = CacheLayout(audio_dim=arr["audio/clip"].shape[1], face_dim=arr["face/clip"].shape[1] if face else None,
                         segments=arr["audio/segments"].shape[1], frames=arr["face/frames"].shape[1],
                         dtype=dtype, shard_size=shard_size)
    prov = {"avfuse_version": "test", "manifest_fingerprint": "synthetic",
            "audio_backbone": {"name": "synthetic-a"}, "face_backbone": {"name": "synthetic-v"} if face else None,
            "config": {"kind": "tests.fusion"}}
    w = create_cache(path, ids=arr["ids"], speakers=arr["speakers"], splits=splits, layout=layout, provenance=prov)
    full = {k: v.copy() for k, v in arr.items() if k not in ("ids", "speakers")}
    full["duration"] = np.ones(n, dtype=np.float32)
    for r in nan_rows:
        full["audio/clip"][r, 0] = np.nan
    if not face:
        full = {k: v for k, v in full.items() if not k.startswith("face/")}
        full["has_face"] = np.zeros(n, dtype=bool)
    for k in range(w.n_shards):
        s = w.shard_slice(k)
        w.write_shard(k, {name: v[s] for name, v in full.items()})
    w.finalize()
    return open_cache(path)


@pytest.fixture(scope="module")
def arrays():
    return make_arrays(n_ids=10, clips_per_id=8, da=24, dv=32, seed=11, p_missing=0.1)


@pytest.fixture(scope="module")
def splits(arrays):
    spk = arrays["speakers"]
    ids = sorted(set(spk))
    return np.array(["train" if ids.index(s) < 7 else "test" for s in spk])


@pytest.fixture(scope="module")
def cache(tmp_path_factory, arrays, splits):
    return write_cache(tmp_path_factory.mktemp("c") / "emb.zarr", arrays, splits)


# ------------------------------------------------------------------- loading
def test_load_split_reads_the_cache_once_in_store_dtype(cache, arrays, splits):
    batch, labels, ids = load_split(cache, "train", need_sequences=True, device="cpu")
    rows = np.flatnonzero(splits == "train")
    assert list(ids) == list(arrays["ids"][rows])
    assert batch.audio_clip.dtype == torch.float16 and batch.face_seq.dtype == torch.float16
    np.testing.assert_allclose(batch.audio_clip.float().numpy(), arrays["audio/clip"][rows], rtol=1e-3, atol=1e-3)
    assert torch.equal(batch.has_face, torch.from_numpy(arrays["has_face"][rows]))
    assert labels.max().item() == 6 and labels.min().item() == 0
    # missing-modality rows are stored as zeros with False validity
    noface = ~batch.has_face
    assert noface.any() and (batch.face_clip[noface] == 0).all() and not batch.face_seq_valid[noface].any()
    b2, _, _ = load_split(cache, "train", need_sequences=False, device="cpu")
    assert b2.audio_seq is None and b2.face_seq is None


def test_batch_from_cache_any_order(cache, arrays):
    rows = np.array([5, 2, 5, 70])
    b = batch_from_cache(cache, rows, need_sequences=True)
    assert b.audio_clip.dtype == torch.float32 and len(b) == 4
    np.testing.assert_allclose(b.face_seq[1].numpy(), arrays["face/frames"][2], rtol=1e-3, atol=1e-3)
    assert torch.equal(b.audio_clip[0], b.audio_clip[2])


def test_bad_input_errors(tmp_path, arrays, splits, cache):
    bad = write_cache(tmp_path / "nan.zarr", arrays, splits, nan_rows=(3, 9))
    with pytest.raises(TrainingError) as e:
        load_split(bad, "train", device="cpu")
    msg = str(e.value)
    assert "2 of" in msg and arrays["ids"][3] in msg and "--drop-bad-rows" in msg
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        batch, labels, ids = load_split(bad, "train", device="cpu", drop_bad_rows=True)
    assert any("dropped" in str(x.message) for x in w)
    assert arrays["ids"][3] not in set(ids) and len(ids) == int((splits == "train").sum()) - 2
    with pytest.raises(TrainingError, match="no rows") as e:
        load_split(cache, "dev", device="cpu")
    assert "train" in str(e.value)          # the hint lists the splits that exist
    one = np.where(arrays["speakers"] == arrays["speakers"][0], "train", "test")
    single = write_cache(tmp_path / "one.zarr", arrays, one)
    with pytest.raises(TrainingError, match="at least 2"):
        load_split(single, "train", device="cpu")
    audio_only = write_cache(tmp_path / "a.zarr", arrays, splits, face=False)
    with pytest.raises(TrainingError, match="no face"):
        load_split(audio_only, "train", device="cpu")
    # a sequence head on data without per-step sequences
    b, y = to_batch(arrays)
    clip_only = EmbeddingBatch(audio_clip=b.audio_clip, face_clip=b.face_clip, has_audio=b.has_audio,
                               has_face=b.has_face)
    with pytest.raises(HeadError, match="--segments/--frames"):
        train_head((clip_only, y), "dca", TrainConfig(epochs=1))
    with pytest.raises(TrainingError, match="at least 2"):
        train_head((b, torch.zeros_like(y)), "mlp", TrainConfig(epochs=1))


def test_hdf5_cache_trains_too(tmp_path, arrays, splits):
    c = write_cache(tmp_path / "emb.h5", arrays, splits, dtype="float32")
    head, hist = train_head(c, "mean", TrainConfig(epochs=2, batch_size=16, head_options=SMALL_MLP), progress=False)
    assert len(hist) == 2 and np.isfinite(hist[-1]["loss"])



# ------------------------------------------------------------------ training
def test_dev_trials_early_stopping_keeps_best_epoch(cache, tmp_path):
    from data_manifests import write_trials
    rows = cache.split_rows("test")
    ids, spk = cache.ids[rows], cache.speakers[rows]
    e, t = np.triu_indices(len(rows), 1)
    lab = (spk[e] == spk[t]).astype(int)
    path = tmp_path / "dev.txt"
    write_trials(path, lab, ids[e], ids[t])
    cfg = TrainConfig(epochs=8, batch_size=16, patience=2, head_options=SMALL_MLP, lr=5e-2)
    head, hist = train_head(cache, "mlp", cfg, dev_trials=str(path), progress=False)
    eers = [h["dev_eer"] for h in hist]
    assert all(0 <= x <= 0.5 for x in eers)
    best = int(np.argmin(eers))
    assert hist[-1]["best_epoch"] == best + 1
    if len(hist) < 8:    # stopped early: exactly `patience` epochs after the best
        assert len(hist) == best + 1 + 2
    from pipeline.train import dev_set_from_trials
    assert dev_eer(head, dev_set_from_trials(cache, str(path), False)) == pytest.approx(eers[best])


def test_score_avg_calibrates_without_training(cache):
    head, hist = train_head(cache, "score_avg", TrainConfig(), progress=False)
    assert hist[0]["calibrated_on"].startswith("random pairs") and 0 <= hist[0]["w"] <= 1
    assert head.calibrated.item() == 1.0


# ------------------------------------------------------------------------ CLI
def test_train_cli_writes_a_loadable_checkpoint(cache, tmp_path):
    from pipeline.cli.train import train_cmd
    out = tmp_path / "runs" / "dca.pt"
    args = ["--cache", str(cache.path), "--head", "dca", "--epochs", "2", "--batch-size", "16",
            "--temperature", "0.2", "--option", "d_model=32", "--option", "n_heads=2", "--option", "dim=48",
            "--mask-prob", "0.4", "--seed", "1", "--out", str(out), "--quiet"]
    r = CliRunner().invoke(train_cmd, args)
    assert r.exit_code == 0, r.output
    assert "dca: 2 epochs" in r.output
    head, meta = load_head(out)
    assert head.config["temperature"] == 0.2 and head.config["d_model"] == 32
    assert meta["cache_fingerprint"] == cache.fingerprint
    cfg = from_dict(TrainConfig, meta["train_config"])
    assert cfg.mask_prob == 0.4 and cfg.seed == 1 and cfg.epochs == 2
    assert len(meta["history"]) == 2
    r = CliRunner().invoke(train_cmd, ["--cache", str(cache.path), "--head", "mlp", "--temperature", "0.2",
                                       "--out", str(tmp_path / "x.pt")])
    assert isinstance(r.exception, ConfigError) and "gated heads" in str(r.exception)


def test_a_voxceleb_cache_trains_on_dev_without_split(tmp_path, invoke):
    """VoxCeleb caches have splits dev and test: `train`/`ablate` without --split take dev and say so;
    an explicit --split (or a cache with a train split) is left alone."""
    from tests.pipeline.score.test_scoring import all_pairs_trials, make_cache, toy_data
    ids, spk, a, v = toy_data(n_spk=6, per_spk=6, seed=0)
    splits = ["test" if s >= "id00004" else "dev" for s in spk]
    cache = make_cache(tmp_path / "vox.zarr", ids, spk, splits, a, v)
    code, _, err = invoke(["train", "--cache", cache.path, "--head", "mean", "--epochs", "1", "--device", "cpu",
                           "--out", tmp_path / "m.pt", "-q"])
    assert code == 0, err
    assert "training on split 'dev'" in err
    from fusion.checkpoint import load_head
    assert load_head(tmp_path / "m.pt")[1]["train_config"]["split"] == "dev"
    code, _, err = invoke(["train", "--cache", cache.path, "--head", "mean", "--epochs", "1", "--device", "cpu",
                           "--split", "train", "--out", tmp_path / "x.pt", "-q"])
    assert code == 2 and "split 'train' has no rows" in err and "dev, test" in err     # asked for: not changed
    test_ids = [i for i, s in zip(ids, splits) if s == "test"]
    all_pairs_trials(tmp_path / "t.txt", test_ids, [i.split("/")[0] for i in test_ids], n=20)
    code, _, err = invoke(["ablate", "--cache", cache.path, "--trials", tmp_path / "t.txt", "--heads", "mean",
                           "--modes", "AxA", "--train", "--epochs", "1", "--device", "cpu", "--out", tmp_path / "abl",
                           "--quiet"])
    assert code == 0, err
    assert "training on split 'dev'" in err
