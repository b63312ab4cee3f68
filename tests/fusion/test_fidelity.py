"""The attention heads' structure as the DCA authors' code defines it, and the per-head training recipes.

Reference: github.com/praveena2j/DCAforPersonVerification (``dca_cam.py``, ``av_crossatten.py``,
``dense_coattn.py``, ``layer.py``, ``trainer.py``, ``run_train.sh``); docs/FIDELITY.md.
"""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner

from fusion.batch import EmbeddingBatch
from fusion.checkpoint import load_head
from fusion.recipes import CLIP_RECIPE, DCA_RECIPE
from fusion.registry import build_head, get_head
from pipeline.core.errors import HeadError
from tests.fusion.synthetic import make_arrays, to_batch

DA, DV, T = 192, 512, 8      # the authors' widths (ECAPA-TDNN, IResNet-18) and steps


def seq_batch(n=6, da=DA, dv=DV, s=T, f=T, seed=0):
    g = torch.Generator().manual_seed(seed)
    valid_a = torch.ones(n, s, dtype=torch.bool)
    valid_a[1, 5:] = False                    # a short clip: repeat-padded tail
    valid_a[2, 3] = False                     # an invalid step in the middle
    return EmbeddingBatch(audio_seq=torch.randn(n, s, da, generator=g), face_seq=torch.randn(n, f, dv, generator=g),
                          audio_seq_valid=valid_a, face_seq_valid=torch.ones(n, f, dtype=torch.bool),
                          has_audio=torch.ones(n, dtype=torch.bool), has_face=torch.ones(n, dtype=torch.bool))


@pytest.fixture(scope="module")
def dca():
    torch.manual_seed(0)
    return build_head("dca", DA, DV).eval()


def test_dca_gate_reads_the_attended_features_alone(dca):
    # dca_cam.py:47,50: Linear(192, 2) / Linear(512, 2) on the attended audio / video
    assert (dca.gate_a.in_features, dca.gate_a.out_features) == (DA, 2)
    assert (dca.gate_v.in_features, dca.gate_v.out_features) == (DV, 2)
    old = build_head("dca", DA, DV, gate_input="x_and_att")
    assert old.gate_a.in_features == 2 * DA and old.gate_v.in_features == 2 * DV
    b = seq_batch()
    g = dca.gate_weights(b)
    assert torch.allclose(g["A"].sum(-1), torch.ones(len(b), T))
    # the gate is a function of X_att only: feed the gate layer X_att by hand
    captured = {}
    hook = dca.gate_a.register_forward_hook(lambda m, i, o: captured.__setitem__("in", i[0]))
    with torch.no_grad():
        dca.embed(b)
    hook.remove()
    assert captured["in"].shape == (len(b), T, DA)
    with torch.no_grad():                               # and it is exactly the attended audio X_A^att
        a_seq, a_valid, v_seq, v_valid = dca._steps(b, ("A", "V"))
        xa = torch.where(a_valid[..., None], dca.enc_a(a_seq, a_valid), dca.step_filler_a)
        xv = torch.where(v_valid[..., None], dca.enc_v(v_seq, v_valid), dca.step_filler_v)
        assert torch.equal(captured["in"], dca._attend(xa, a_valid, xv, v_valid)[0])


def test_gated_sum_goes_through_relu(dca):
    """``ReLU(g0 X + g1 X_att)`` (dca_cam.py:117-118,126-127): every pooled step is >= 0."""
    b = seq_batch()
    seen = {}

    def grab(head):
        return head.pool.register_forward_hook(lambda m, i, o: seen.__setitem__(head, i[0]))

    no_relu = build_head("dca", DA, DV, gate_relu=False).eval()
    no_relu.load_state_dict(dca.state_dict())           # same weights: only the ReLU differs
    hooks = [grab(dca), grab(no_relu)]
    with torch.no_grad():
        dca.embed(b), no_relu.embed(b)
    for h in hooks:
        h.remove()
    assert seen[dca].shape == (len(b), T, DA + DV)      # per-step concatenation, 704 wide
    assert seen[dca].min() >= 0 and (seen[dca] > 0).any()
    assert seen[no_relu].min() < 0                       # the check can fail: without ReLU it does


def test_jca_has_two_sublayers_with_their_own_parameters():
    torch.manual_seed(0)
    h = build_head("jca", DA, DV)
    assert len(h.sublayers) == 2                         # DCNLayer(512, 192, num_seq=2, dropout=0.6)
    s0, s1 = h.sublayers
    assert s0.query.in_features == s0.query.out_features == DA + DV == 704   # joint features on the feature axis
    assert s0.key_a.in_features == T                      # Linear(8, 8) over the time axis
    assert s0.drop_a.p == 0.6
    p0, p1 = dict(s0.named_parameters()), dict(s1.named_parameters())
    assert p0.keys() == p1.keys()
    for k in p0:
        assert p0[k].data_ptr() != p1[k].data_ptr(), k
        assert k.endswith("bias") or not torch.equal(p0[k], p1[k]), k    # biases start at 0 (xavier init)
    keys = h.state_dict().keys()
    assert any(k.startswith("sublayers.0.") for k in keys) and any(k.startswith("sublayers.1.") for k in keys)


def test_correlation_sublayer_is_the_authors_formula():
    """One sublayer recomputed from its weights: C = tanh(K J / sqrt(704)), H = ReLU(tanh(V C)), residual."""
    torch.manual_seed(1)
    h = build_head("jca", DA, DV).eval()
    layer = h.sublayers[0]
    xa, xv = torch.randn(3, T, DA), torch.randn(3, T, DV)
    with torch.no_grad():
        ya, yv = layer(xa, xv)
        j = F.linear(torch.cat([xa, xv], -1), layer.query.weight, layer.query.bias)
        for x, y, key, val, back in ((xa, ya, layer.key_a, layer.value_a, layer.back_a[0]),
                                     (xv, yv, layer.key_v, layer.value_v, layer.back_v[0])):
            k = torch.einsum("btd,st->bds", x, key.weight) + key.bias[None, None, :]
            corr = torch.tanh(torch.einsum("bds,bsj->bdj", k, j) / math.sqrt(DA + DV))
            att = torch.relu(torch.tanh(torch.einsum("btd,bdj->btj", F.linear(x, val.weight, val.bias), corr)))
            want = x + torch.relu(F.linear(att, back.weight, back.bias))
            assert torch.allclose(y, want, atol=1e-4)


def test_bilstm_encoder_at_native_widths_unit_norm_packed(dca):
    for enc, d in ((dca.enc_a, DA), (dca.enc_v, DV)):
        assert enc.rnn.num_layers == 2 and enc.rnn.bidirectional and enc.rnn.hidden_size == d // 2
        assert enc.rnn.input_size == d and (enc.out.in_features, enc.out.out_features) == (2 * d, d)
    b = seq_batch()
    with torch.no_grad():
        y = dca.enc_a(b.audio_seq, b.audio_seq_valid)
        assert y.shape == (len(b), T, DA)
        norms = y.norm(dim=-1)
        v = b.audio_seq_valid
        assert torch.allclose(norms[v], torch.ones(int(v.sum())), atol=1e-5) and (norms[~v] == 0).all()
        # invalid steps (tail and middle) never reach a valid one (packed over the valid steps)
        junk = b.audio_seq.clone()
        junk[~v] = 1e4
        assert torch.allclose(dca.enc_a(junk, v)[v], y[v], atol=1e-5)
        # the middle gap is skipped: row 2 equals its valid steps run as one shorter sequence
        keep = v[2]
        short = dca.enc_a(b.audio_seq[2:3, keep], torch.ones(1, int(keep.sum()), dtype=torch.bool))
        assert torch.allclose(short[0], y[2, keep], atol=1e-5)


def test_one_pooling_over_the_concatenation_projected_to_512(dca):
    assert not hasattr(dca, "pool_a") and dca.out.in_features == 2 * (DA + DV) == 1408 and dca.out.out_features == 512
    assert (dca.default_margin, dca.default_scale) == (0.4, 64.0)
    sep = build_head("dca", DA, DV, pooling="separate")
    assert sep.pool_a is not None and sep.out.in_features == 2 * DA + 2 * DV


def test_steps_must_pair_up():
    h = build_head("dca", 24, 32, d_model=16)
    with pytest.raises(HeadError, match="segments"):
        h.embed(seq_batch(da=24, dv=32, s=8, f=6))
    with pytest.raises(HeadError, match="steps="):
        h.embed(seq_batch(da=24, dv=32, s=10, f=10))
    # fewer steps (a shorter clip): padded with invalid steps, the same as those steps flagged invalid
    short = seq_batch(da=24, dv=32, s=6, f=6)
    pad = dataclasses.replace(short, audio_seq=torch.cat([short.audio_seq, torch.randn(6, 2, 24)], 1),
                              face_seq=torch.cat([short.face_seq, torch.randn(6, 2, 32)], 1),
                              audio_seq_valid=torch.cat([short.audio_seq_valid, torch.zeros(6, 2, dtype=torch.bool)], 1),
                              face_seq_valid=torch.cat([short.face_seq_valid, torch.zeros(6, 2, dtype=torch.bool)], 1))
    h.eval()
    with torch.no_grad():
        assert torch.allclose(h.embed(short), h.embed(pad), atol=1e-5)
    soft = build_head("dca", 24, 32, formulation="softmax", pooling="separate", d_model=16, n_heads=2)
    assert soft.embed(seq_batch(da=24, dv=32, s=8, f=6)).shape == (6, 512)


def test_l2_input_has_nothing_to_fit():
    b, _ = to_batch(make_arrays(n_ids=4, clips_per_id=4, da=24, dv=32, seed=1))
    h = build_head("dca", 24, 32, d_model=16)
    h.fit_inputs(b)
    assert (h.enc_a.norm_in.mean == 0).all()
    s = build_head("dca", 24, 32, d_model=16, input_norm="standardize")
    s.fit_inputs(b)
    assert s.enc_a.norm_in.mean.abs().sum() > 0


# ------------------------------------------------------------------ recipes
def test_heads_carry_their_recipes_and_heads_json_shows_them():
    for name in ("cross_attention", "jca", "dca"):
        r = get_head(name).train_recipe()
        assert r == DCA_RECIPE
        assert (r["optimizer"], r["lr"], r["weight_decay"], r["schedule"], r["lr_decay"], r["batch_size"],
                r["mask_prob"]) == ("adam", 1e-3, 2e-5, "step", 0.65, 100, 0.0)
    assert get_head("mean").train_recipe() == CLIP_RECIPE and CLIP_RECIPE["mask_prob"] == 0.3
    from pipeline.cli.train import heads_cmd
    r = CliRunner().invoke(heads_cmd, ["--json", "--clips", "8", "--repeats", "1", "--audio-dim", "24",
                                       "--face-dim", "32"])
    assert r.exit_code == 0, r.output
    by = {x["name"]: x for x in json.loads(r.output)["heads"]}
    assert by["dca"]["recipe"] == DCA_RECIPE and by["mlp"]["recipe"] == CLIP_RECIPE
    assert by["score_avg"]["recipe"] is None
    r = CliRunner().invoke(heads_cmd, ["--clips", "8", "--repeats", "1", "--audio-dim", "24", "--face-dim", "32"])
    assert r.exit_code == 0 and "adam 0.001 x0.65/ep wd 2e-05 b100 20ep" in r.output


@pytest.fixture(scope="module")
def small_cache(tmp_path_factory):
    import numpy as np

    from tests.pipeline.train.test_train import write_cache
    arr = make_arrays(n_ids=6, clips_per_id=6, da=24, dv=32, seed=5, p_missing=0.0)
    splits = np.array(["train"] * len(arr["ids"]))
    return write_cache(tmp_path_factory.mktemp("fid") / "emb.zarr", arr, splits)


def _train(cache, out, *extra):
    from pipeline.cli.train import train_cmd
    args = ["--cache", str(cache.path), "--out", str(out), "--epochs", "2", "--quiet", *extra]
    r = CliRunner().invoke(train_cmd, args)
    assert r.exit_code == 0, r.output
    return load_head(out)[1]


def test_checkpoint_records_the_recipe_and_user_flags_override_it(small_cache, tmp_path):
    small = ["--option", "d_model=16", "--option", "dim=32"]
    meta = _train(small_cache, tmp_path / "dca.pt", "--head", "dca", *small)
    rec = meta["recipe"]
    assert rec["head_recipe"] == DCA_RECIPE and rec["from_user"] == ["epochs"]
    assert rec["values"] == {**DCA_RECIPE, "epochs": 2}
    assert meta["train_config"]["lr"] is None              # as given: "the head's"
    lrs = [h["lr"] for h in meta["history"]]                 # the authors' step decay, x0.65 per epoch
    assert lrs == pytest.approx([1e-3, 6.5e-4])
    meta = _train(small_cache, tmp_path / "dca2.pt", "--head", "dca", *small, "--lr", "5e-3", "--mask-prob", "0.2",
                  "--batch-size", "8")
    vals = meta["recipe"]["values"]
    assert (vals["lr"], vals["mask_prob"], vals["batch_size"], vals["optimizer"]) == (5e-3, 0.2, 8, "adam")
    assert set(meta["recipe"]["from_user"]) == {"epochs", "lr", "mask_prob", "batch_size"}
    assert [h["lr"] for h in meta["history"]] == pytest.approx([5e-3, 3.25e-3])
    meta = _train(small_cache, tmp_path / "mean.pt", "--head", "mean", "--option", "dim=16")
    assert meta["recipe"]["values"] == {**CLIP_RECIPE, "epochs": 2}


def test_config_file_overrides_recipe_fields(small_cache, tmp_path):
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({"optimizer": "adamw", "schedule": "cosine", "weight_decay": 0.0}))
    meta = _train(small_cache, tmp_path / "jca.pt", "--head", "jca", "--config", str(cfg), "--option", "d_model=16")
    vals = meta["recipe"]["values"]
    assert (vals["optimizer"], vals["schedule"], vals["weight_decay"], vals["lr"]) == ("adamw", "cosine", 0.0, 1e-3)


def test_sweep_can_vary_formulation_and_recipe_fields():
    from fusion.trainer import TrainConfig
    from pipeline.experiments.systems import parse_sweep, variant_config
    sw = parse_sweep("dca.formulation=corr,softmax")
    assert sw.target == "head" and sw.values == ["corr", "softmax"]
    sw = parse_sweep("dca.optimizer=adam,adamw")
    cfg = variant_config(TrainConfig(), sw, "adamw")
    assert cfg.optimizer == "adamw" and cfg.lr is None
    assert dataclasses.asdict(variant_config(TrainConfig(), parse_sweep("dca.encoder=lstm,conv"), "conv"))[
        "head_options"] == {"encoder": "conv"}


def test_every_head_option_can_be_swept_with_its_type():
    from pipeline.experiments.systems import parse_sweep
    assert parse_sweep("dca.d_model=0,64").values == [0, 64]
    assert parse_sweep("jca.layers=1,2,3").values == [1, 2, 3]
    assert parse_sweep("dca.gate_relu=true,false").values == [True, False]
    assert parse_sweep("dca.att_dropout=0.3,0.6").values == [0.3, 0.6]


def test_heads_table_counts_the_lstm_flops():
    from pipeline.cli.train import rnn_flops
    h = build_head("dca", DA, DV)
    # two layers, two directions, 8 steps: 2 FLOPs x 4 gates x hidden x (input + hidden)
    want = sum(2 * 2 * 4 * (d // 2) * (d + d // 2) * 2 * T for d in (DA, DV))
    assert rnn_flops(h, T, T) == want
    assert rnn_flops(build_head("mean", DA, DV), T, T) == 0


def test_bilstm_unrolled_equals_packed_at_valid_steps():
    """The traceable step-by-step BiLSTM (used by the ONNX export) gives the packed one's outputs
    at every valid step, with invalid steps anywhere in a row (and a row with none valid)."""
    from fusion.heads.attention_layers import BiLSTMEncoder

    torch.manual_seed(0)
    enc = BiLSTMEncoder(12, 16).eval()
    x = torch.randn(5, 7, 12)
    valid = torch.rand(5, 7) > 0.35
    valid[0] = True
    valid[1] = False
    valid[2, :3] = False
    h = torch.nn.functional.normalize(enc.proj(enc.inp(x)), dim=-1) * valid[..., None]
    with torch.no_grad():
        a, b = enc.packed(h, valid), enc.unrolled(h, valid)
    assert torch.allclose(a[valid], b[valid], atol=1e-5), (a[valid] - b[valid]).abs().max()
    assert not torch.allclose(a[valid], enc.unrolled(h, torch.ones_like(valid))[valid], atol=1e-3)
