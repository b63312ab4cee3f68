"""Fusion heads, batch, losses, registry and checkpoints on in-memory tensors."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner

from fusion import EmbeddingBatch, build_head, check_provenance, get_head, list_heads, load_head, make_loss, save_head
from fusion.losses import AAMSoftmax, SoftmaxLoss
from pipeline.core import ConfigError, HeadError
from tests.fusion.synthetic import make_arrays, to_batch

ALL_HEADS = ["score_avg", "mean", "mlp", "multiview", "cross_attention", "jca", "dca"]
SMALL = {"cross_attention": {"d_model": 32, "n_heads": 2, "dim": 48},
         "jca": {"d_model": 32, "n_heads": 2, "dim": 48},
         "dca": {"d_model": 32, "n_heads": 2, "dim": 48},
         "mean": {"dim": 32, "hidden": 64}, "mlp": {"dim": 32, "hidden": 64},
         "multiview": {"dim": 32, "hidden": 64}, "score_avg": {}}


@pytest.fixture(scope="module")
def data():
    return to_batch(make_arrays(n_ids=6, clips_per_id=5, da=24, dv=32, seed=3, p_missing=0.15))


def small_head(name, seed=0):
    torch.manual_seed(seed)
    return build_head(name, 24, 32, **SMALL[name]).eval()


# --------------------------------------------------------------------- batch
def test_batch_index_select_mask_cat(data):
    b, _ = data
    sub = b[torch.tensor([3, 1, 3])]
    assert len(sub) == 3 and torch.equal(sub.audio_clip[0], b.audio_clip[3])
    assert torch.equal(sub.face_seq[1], b.face_seq[1])
    assert len(b[b.has_face]) == int(b.has_face.sum())
    only_a = b.select(("A",))
    assert not only_a.has_face.any() and torch.equal(only_a.has_audio, b.has_audio)
    drop = torch.zeros(len(b), dtype=torch.bool)
    drop[:4] = True
    m = b.masked(drop, torch.zeros_like(drop))
    assert not m.has_audio[:4].any() and torch.equal(m.has_audio[4:], b.has_audio[4:])
    assert torch.equal(m.audio_clip, b.audio_clip)           # vectors untouched: the flag decides
    both = EmbeddingBatch.cat([b[:5], b[5:]])
    assert torch.equal(both.face_clip, b.face_clip)
    h = b.to(dtype=torch.float16)
    assert h.audio_seq.dtype == torch.float16 and h.audio_seq_valid.dtype == torch.bool
    assert h.float().audio_clip.dtype == torch.float32
    with pytest.raises(ValueError, match="rows"):
        EmbeddingBatch(audio_clip=torch.zeros(3, 4), face_clip=torch.zeros(2, 4))
    with pytest.raises(HeadError, match="modality selection"):
        b.select(("X",))


def test_batch_without_a_modality_has_false_flags():
    b = EmbeddingBatch(audio_clip=torch.randn(4, 8))
    assert not b.has_audio.any() and not b.has_face.any() and len(b) == 4


# ------------------------------------------------------------------ registry
def test_registry_lists_all_heads_and_rejects_unknown():
    assert [e.name for e in list_heads()] == ALL_HEADS
    with pytest.raises(HeadError) as e:
        get_head("transformer9000")
    assert "dca" in str(e.value) and "mean" in str(e.value)
    with pytest.raises(HeadError, match="no option"):
        build_head("mean", 24, 32, depth=3)
    with pytest.raises(HeadError, match="fixes"):
        build_head("jca", 24, 32, gate=True)
    assert get_head("dca").needs_sequences and not get_head("mlp").needs_sequences
    assert not get_head("score_avg").trainable


def test_head_config_is_complete_json():
    h = small_head("dca")
    cfg = json.loads(json.dumps(h.config))
    assert cfg["gate"] is True and cfg["attention"] == "joint" and cfg["temperature"] == 0.1
    assert cfg["audio_dim"] == 24 and cfg["face_dim"] == 32 and cfg["d_model"] == 32


# ----------------------------------------------------------------- embedding
@pytest.mark.parametrize("name", ALL_HEADS)
def test_embed_shapes_and_all_modes(name, data):
    b, _ = data
    h = small_head(name)
    with torch.no_grad():
        for use in (("A", "V"), ("A",), ("V",)):
            e = h.embed(b, use)
            assert e.shape == (len(b), h.embedding_dim)
            assert torch.isfinite(e).all()
    assert h.score_kind == ("dot" if name == "score_avg" else "cosine")


@pytest.mark.parametrize("name", ALL_HEADS)
def test_absent_modality_is_never_read(name, data):
    """Garbage in an absent modality's vectors (missing, masked or not in ``use``) changes nothing."""
    b, _ = data
    h = small_head(name)
    garbage = dataclasses.replace(b, face_clip=torch.randn_like(b.face_clip) * 100,
                                  face_seq=torch.randn_like(b.face_seq) * 100)
    noface = ~b.has_face
    assert noface.any()
    with torch.no_grad():
        e0, e1 = h.embed(b), h.embed(garbage)
        assert torch.allclose(e0[noface], e1[noface], atol=1e-5)
        # use=("A",) == the same rows with the face flagged absent
        ea = h.embed(garbage, ("A",))
        masked = garbage.masked(torch.zeros_like(b.has_face), torch.ones_like(b.has_face))
        assert torch.allclose(ea, h.embed(masked), atol=1e-5)
        assert torch.allclose(ea, h.embed(b, ("A",)), atol=1e-5)


@pytest.mark.parametrize("name", ["cross_attention", "jca", "dca"])
def test_invalid_steps_are_ignored(name, data):
    b, _ = data
    h = small_head(name)
    seq = b.audio_seq.clone()
    seq[~b.audio_seq_valid] = torch.randn(int((~b.audio_seq_valid).sum()), seq.shape[-1]) * 50
    assert (~b.audio_seq_valid).any()
    with torch.no_grad():
        assert torch.allclose(h.embed(b), h.embed(dataclasses.replace(b, audio_seq=seq)), atol=1e-5)


def test_dca_gates_are_softmax_and_sharpen_with_temperature(data):
    b, _ = data
    torch.manual_seed(0)
    hot = build_head("dca", 24, 32, d_model=32, n_heads=2, dim=48, temperature=1.0).eval()
    cold = build_head("dca", 24, 32, d_model=32, n_heads=2, dim=48, temperature=0.1).eval()
    cold.load_state_dict(hot.state_dict())      # same weights, only T differs
    g_hot, g_cold = hot.gate_weights(b), cold.gate_weights(b)
    assert g_cold["A"].shape == (len(b), 8, 2) and g_cold["V"].shape == (len(b), 8, 2)
    assert torch.allclose(g_cold["A"].sum(-1), torch.ones(len(b), 8))
    valid = g_cold["A_valid"]
    assert g_cold["A"][valid].max(-1).values.mean() > g_hot["A"][valid].max(-1).values.mean()
    with pytest.raises(ValueError, match="no gate"):
        small_head("jca").gate_weights(b)


def test_multiview_trains_each_view_and_mean_trains_fusion(data):
    b, _ = data
    mv = small_head("multiview")
    views = mv.train_views(b)
    assert [v[0] for v in views] == ["A", "V"]
    assert torch.equal(views[0][2], b.has_audio) and torch.equal(views[1][2], b.has_face)
    mean_views = small_head("mean").train_views(b)
    assert [v[0] for v in mean_views] == ["AV"]


def test_mean_head_averages_available_modalities(data):
    b, _ = data
    h = small_head("mean")
    with torch.no_grad():
        ea, ev, eav = h.embed(b, ("A",)), h.embed(b, ("V",)), h.embed(b)
    both = b.has_audio & b.has_face
    assert torch.allclose(eav[both], (ea[both] + ev[both]) / 2, atol=1e-5)
    only_a = b.has_audio & ~b.has_face
    assert torch.allclose(eav[only_a], ea[only_a], atol=1e-5)


def test_score_avg_dot_equals_fused_znorm_score(data):
    b, labels = data
    h = small_head("score_avg")
    from fusion import pseudo_dev_set
    dev = pseudo_dev_set(b, labels, n_pairs=400, seed=0)
    info = h.calibrate(b, dev.enrol_idx, dev.test_idx, dev.labels)
    assert 0.0 <= info["w"] <= 1.0 and 0.0 <= info["dev_eer"] <= 0.5
    assert info["dev_eer"] <= min(info["dev_eer_audio"], info["dev_eer_face"]) + 1e-12  # w=0/1 on the grid
    both = b.has_audio & b.has_face
    e_i, t_i = dev.enrol_idx, dev.test_idx
    keep = both[e_i] & both[t_i]
    e_i, t_i = e_i[keep], t_i[keep]
    emb = h.embed(b)
    dot = (emb[e_i] * emb[t_i]).sum(1)
    a, v = F.normalize(b.audio_clip, dim=-1), F.normalize(b.face_clip, dim=-1)
    s_a, s_v = (a[e_i] * a[t_i]).sum(1), (v[e_i] * v[t_i]).sum(1)
    w = info["w"]
    fused = w * (s_a - info["mu_a"]) / info["sd_a"] + (1 - w) * (s_v - info["mu_v"]) / info["sd_v"]
    offset = dot - fused
    assert torch.allclose(offset, offset[0].expand_as(offset), atol=1e-4)
    # AVxA reduces to the scaled audio score
    ea = h.embed(b, ("A",))
    assert torch.allclose((emb[e_i] * ea[t_i]).sum(1), w / info["sd_a"] * s_a, atol=1e-5)


def test_input_norm_centres_and_scales():
    from fusion.heads.base import InputNorm, spaced_rows
    torch.manual_seed(0)
    x = torch.randn(500, 16) + 8.0 * torch.ones(16)     # a large common direction, as backbone outputs have
    n = InputNorm(16)
    assert torch.allclose(n(x), F.normalize(x, dim=-1) * 4.0)   # before fit: sqrt(D) x / |x|
    n.fit(x.half())
    y = n(x)
    assert y.mean(0).abs().max() < 1e-3
    assert abs(y.pow(2).mean().sqrt().item() - 1.0) < 1e-3
    raw_cos = F.cosine_similarity(x[:250], x[250:]).mean()
    assert raw_cos > 0.9 and F.cosine_similarity(y[:250], y[250:]).mean().abs() < 0.1
    m = torch.zeros(10, dtype=torch.bool)
    m[[1, 3, 4, 8, 9]] = True
    assert spaced_rows(m, 10).tolist() == [1, 3, 4, 8, 9] and spaced_rows(m, 2).tolist() == [1, 9]


@pytest.mark.parametrize("name", ["mean", "dca"])
def test_fit_inputs_uses_present_rows_and_valid_steps_only(name, data):
    b, _ = data
    # dca: only input_norm="standardize" has statistics to fit (the default "l2" has none)
    h = small_head(name) if name == "mean" else build_head(name, 24, 32, **SMALL[name], input_norm="standardize")
    h.fit_inputs(b)
    norm = h.norm_v if name == "mean" else h.enc_v.norm_in
    before = norm.mean.clone()
    garbage = dataclasses.replace(b, face_clip=torch.where(b.has_face[:, None], b.face_clip, 1e3),
                                  face_seq=torch.where(b.face_seq_valid[..., None], b.face_seq, 1e3))
    h.fit_inputs(garbage)
    assert torch.allclose(norm.mean, before) and before.abs().sum() > 0


# --------------------------------------------------------------------- losses
def test_aam_softmax_margin_and_scale():
    torch.manual_seed(0)
    x, y = torch.randn(16, 8), torch.randint(0, 5, (16,))
    plain = AAMSoftmax(8, 5, margin=0.0, scale=30.0)
    aam = AAMSoftmax(8, 5, margin=0.4, scale=30.0)
    aam.load_state_dict(plain.state_dict())
    l0, z0 = plain(x, y)
    cos = F.linear(F.normalize(x), F.normalize(plain.weight))
    assert torch.allclose(z0, 30 * cos, atol=1e-4)
    assert torch.allclose(l0, F.cross_entropy(30 * cos, y), atol=1e-5)
    l1, z1 = aam(x, y)
    theta = torch.acos(cos.gather(1, y[:, None]).clamp(-1, 1))
    want = torch.where(theta + 0.4 < torch.pi, torch.cos(theta + 0.4),
                       torch.cos(theta) - 0.4 * np.sin(np.pi - 0.4))
    assert torch.allclose(z1.gather(1, y[:, None]), 30 * want, atol=1e-3)
    off = torch.ones_like(z1, dtype=torch.bool).scatter(1, y[:, None], False)
    assert torch.allclose(z1[off], z0[off]) and l1 > l0
    l1.backward()
    assert torch.isfinite(aam.weight.grad).all()
    sm = make_loss("softmax", 8, 5)
    assert isinstance(sm, SoftmaxLoss) and sm(x, y)[1].shape == (16, 5)
    with pytest.raises(ConfigError, match="unknown loss"):
        make_loss("triplet", 8, 5)
    with pytest.raises(ConfigError, match="margin"):
        AAMSoftmax(8, 5, margin=2.0)


# ---------------------------------------------------------------- checkpoints
@pytest.mark.parametrize("name", ALL_HEADS)
def test_save_load_identical_embeddings(name, data, tmp_path):
    b, labels = data
    h = small_head(name, seed=5)
    h.fit_inputs(b)
    if name == "score_avg":
        from fusion import pseudo_dev_set
        d = pseudo_dev_set(b, labels, n_pairs=200)
        h.calibrate(b, d.enrol_idx, d.test_idx, d.labels)
    path = tmp_path / f"{name}.pt"
    save_head(path, h, {"cache_fingerprint": "abc", "note": [1, 2]})
    h2, meta = load_head(path)
    assert meta == {"cache_fingerprint": "abc", "note": [1, 2]}
    assert h2.name == name and h2.config == h.config and not h2.training
    with torch.no_grad():
        for use in (("A", "V"), ("A",), ("V",)):
            assert torch.equal(h.embed(b, use), h2.embed(b, use))


def test_load_head_errors(tmp_path):
    with pytest.raises(HeadError, match="no such"):
        load_head(tmp_path / "nope.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint at all")
    with pytest.raises(HeadError, match="cannot read avfuse head checkpoint") as e:
        load_head(junk)
    assert str(junk) in str(e.value)
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(3)}, other)
    with pytest.raises(HeadError, match="not an avfuse head"):
        load_head(other)
    # weights that do not fit the config they claim
    h = small_head("mlp")
    save_head(tmp_path / "ok.pt", h, {})
    blob = torch.load(tmp_path / "ok.pt", weights_only=True)
    blob["config_json"] = json.dumps({**h.config, "hidden": 16})
    torch.save(blob, tmp_path / "bad.pt")
    with pytest.raises(HeadError, match="do not fit"):
        load_head(tmp_path / "bad.pt")


def test_check_provenance():
    class C:  # the two attributes check_provenance reads from an EmbeddingCache
        fingerprint = "f00"
        provenance = {"audio_backbone": {"name": "ge2e_lstm"}, "face_backbone": {"name": "iresnet18"}}
    meta = {"cache_fingerprint": "bar", "cache_provenance": {"audio_backbone": {"name": "ecapa"},
                                                             "face_backbone": {"name": "iresnet18"}}}
    with pytest.raises(HeadError, match="audio_backbone") as e:
        check_provenance(meta, C())
    assert "--force" in str(e.value)
    check_provenance(meta, C(), force=True)
    check_provenance({"cache_fingerprint": "f00"}, C())


# ------------------------------------------------------------------------ CLI
def test_heads_cli_json():
    from pipeline.cli.train import heads_cmd
    r = CliRunner().invoke(heads_cmd, ["--json", "--clips", "50", "--repeats", "1", "--audio-dim", "32",
                                       "--face-dim", "48"])
    assert r.exit_code == 0, r.output
    rows = json.loads(r.output)["heads"]
    assert [x["name"] for x in rows] == ALL_HEADS
    by = {x["name"]: x for x in rows}
    assert by["score_avg"]["parameters"] == 0 and by["dca"]["parameters"] > by["jca"]["parameters"]
    assert by["dca"]["mflops_per_clip"] > by["mlp"]["mflops_per_clip"] > 0
    assert all(x["ms_per_1000_clips"] > 0 for x in rows)
    r = CliRunner().invoke(heads_cmd, ["--clips", "20", "--repeats", "1"])
    assert r.exit_code == 0 and "dca" in r.output and "MFLOPs" in r.output
    # the options `train --option` takes, listed without timing anything; each one builds the head
    assert by["dca"]["options"]["gate"] is True and by["jca"]["options"]["gate"] is False
    r = CliRunner().invoke(heads_cmd, ["--options", "--json"])
    opts = json.loads(r.output)
    assert list(opts) == ALL_HEADS and opts["mlp"] == {"dim": 256, "hidden": 512, "dropout": 0.1}
    from fusion.registry import build_head
    for name, o in opts.items():
        build_head(name, 32, 48, **{k: v for k, v in o.items() if k not in ("gate", "attention")})
    r = CliRunner().invoke(heads_cmd, ["--options"])
    assert r.exit_code == 0 and "d_model=0" in r.output and "MFLOPs" not in r.output
