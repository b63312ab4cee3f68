"""The trainer (``fusion.trainer``): config round trip, modality masking, seeding, learning
identities, on synthetic embeddings. (Training from a cache: ``tests/pipeline/train``.)"""

from __future__ import annotations

import json

import pytest
import torch

from fusion import EmbeddingBatch, TrainConfig, dev_eer, pseudo_dev_set
from fusion.trainer import _mask_modalities
from pipeline.core import ConfigError, from_dict, to_dict
from pipeline.train import train_head
from tests.fusion.synthetic import make_arrays, to_batch

SMALL_DCA = {"d_model": 32, "n_heads": 2, "dim": 48}
SMALL_MLP = {"dim": 32, "hidden": 64}


@pytest.fixture(scope="module")
def arrays():
    return make_arrays(n_ids=10, clips_per_id=8, da=24, dv=32, seed=11, p_missing=0.1)


# --------------------------------------------------------------------- config
def test_train_config_json_round_trip_and_validation():
    cfg = TrainConfig(epochs=3, mask_prob=0.5, head_options={"d_model": 64}, temperature=0.2)
    back = from_dict(TrainConfig, json.loads(json.dumps(to_dict(cfg))))
    assert back == cfg
    with pytest.raises(ConfigError, match="unknown TrainConfig"):
        from_dict(TrainConfig, {"epoch": 3})
    for bad in ({"epochs": 0}, {"mask_prob": 1.0}, {"loss": "triplet"}, {"lr": 0.0}):
        with pytest.raises(ConfigError):
            TrainConfig(**bad).validate()


# ------------------------------------------------------------------ training
def test_masking_drops_one_modality_of_samples_that_have_both():
    n = 20000
    b = EmbeddingBatch(audio_clip=torch.zeros(n, 2), face_clip=torch.zeros(n, 2),
                       has_audio=torch.rand(n) < 0.9, has_face=torch.rand(n) < 0.9)
    g = torch.Generator().manual_seed(0)
    m = _mask_modalities(b, 0.3, g)
    both = b.has_audio & b.has_face
    assert (m.has_audio | m.has_face)[b.has_audio | b.has_face].all()        # never both
    assert torch.equal(m.has_audio[~both], b.has_audio[~both])               # single-modality rows untouched
    assert torch.equal(m.has_face[~both], b.has_face[~both])
    rate = 1 - (m.has_audio & m.has_face)[both].float().mean().item()
    assert abs(rate - 0.3) < 0.02
    lost_a = (~m.has_audio & b.has_audio).sum().item()
    lost_v = (~m.has_face & b.has_face).sum().item()
    assert abs(lost_a - lost_v) < 0.1 * (lost_a + lost_v)


@pytest.mark.parametrize("name,opts", [("mlp", SMALL_MLP), ("dca", SMALL_DCA)])
def test_same_seed_same_head_other_seed_other_head(name, opts, arrays):
    data = to_batch(arrays)
    cfg = TrainConfig(epochs=2, batch_size=16, head_options=opts, seed=3)
    h1, hist1 = train_head(data, name, cfg, progress=False)
    h2, hist2 = train_head(data, name, cfg, progress=False)
    s1, s2 = h1.state_dict(), h2.state_dict()
    assert all(torch.equal(s1[k], s2[k]) for k in s1)
    assert hist1[-1]["loss"] == hist2[-1]["loss"]
    h3, _ = train_head(data, name, TrainConfig(epochs=2, batch_size=16, head_options=opts, seed=4), progress=False)
    assert any(not torch.equal(s1[k], h3.state_dict()[k]) for k in s1)


def test_training_learns_identities_and_generalises(arrays):
    train = to_batch(arrays)
    test_b, test_y = to_batch(make_arrays(n_ids=8, clips_per_id=8, da=24, dv=32, seed=12, id_offset=100))
    dev = pseudo_dev_set(test_b, test_y, n_pairs=2000, seed=0)
    untrained, _ = train_head(train, "mlp", TrainConfig(epochs=1, lr=1e-9, head_options=SMALL_MLP), progress=False)
    head, hist = train_head(train, "mlp", TrainConfig(epochs=15, batch_size=16, head_options=SMALL_MLP),
                            progress=False)
    assert hist[-1]["loss"] < hist[0]["loss"] and hist[-1]["acc"] > 0.8
    assert {"epoch", "loss", "acc", "seconds", "clips_per_s", "lr"} <= set(hist[-1])
    assert dev_eer(head, dev) < dev_eer(untrained, dev)


@pytest.mark.parametrize("head", ["mean", "mlp", "multiview", "dca"])
def test_a_training_step_never_waits_for_the_device(head):
    """No op of a step reads a value back or makes a data-dependent shape (what makes the host wait
    for a GPU): counted on the CPU by op (``benchmarks/train_step_speed.py``), per step, set-up and
    per-epoch checks cancelled out. Before: 5 per step (mean, mlp), 7 (multiview), 3 (dca). The
    attention heads' BiLSTM still reads its lengths on the host (a copy, not counted here)."""
    from benchmarks.train_step_speed import syncs_per_step
    assert syncs_per_step(head) == 0


def test_non_finite_embeddings_are_refused_before_training():
    """Absent rows go through the head weighed 0, so a NaN in one would reach the gradients: refused."""
    from fusion.trainer import fit_head
    from pipeline.core import TrainingError
    b = EmbeddingBatch(audio_clip=torch.randn(8, 4), face_clip=torch.randn(8, 4),
                       has_audio=torch.ones(8, dtype=torch.bool), has_face=torch.ones(8, dtype=torch.bool))
    b.face_clip[3] = float("nan")
    b.has_face[3] = False
    with pytest.raises(TrainingError, match="NaN/inf values \\(face_clip\\)"):
        fit_head(b, torch.arange(8) % 2, "mlp", TrainConfig(epochs=1, batch_size=4, device="cpu"), progress=False)
