"""The ``mean`` head's ``modality_loss`` option (2311.05071's test of whether a shared space
breaks): an arc-margin loss on each modality's own embedding beside the fused one."""

from __future__ import annotations

import pytest
import torch

from fusion import TrainConfig, build_head, get_head, load_head, save_head
from fusion.heads.base import FusionHead
from fusion.heads.clip import MeanHead
from fusion.trainer import fit_head
from pipeline.core import HeadError
from tests.fusion.synthetic import make_arrays, to_batch

OPTS = {"dim": 32, "hidden": 64}


@pytest.fixture(scope="module")
def data():
    return to_batch(make_arrays(n_ids=8, clips_per_id=6, da=24, dv=32, seed=5, p_missing=0.2))


def _pair(**opts):
    torch.manual_seed(0)
    plain = build_head("mean", 24, 32, **OPTS).eval()
    torch.manual_seed(0)
    with_loss = build_head("mean", 24, 32, **OPTS, modality_loss=True, **opts).eval()
    return plain, with_loss


def test_option_registered_default_off():
    assert get_head("mean").options()["modality_loss"] is False
    with pytest.raises(HeadError, match="modality_loss"):
        build_head("mean", 24, 32, modality_loss="yes")


def test_default_views_are_the_fused_view_as_before(data):
    b, _ = data
    plain, _ = _pair()
    assert plain.modality_loss is False
    views = plain.train_views(b)
    assert [v for v, _, _ in views] == ["AV"]
    a_p, v_p = b.present()
    # the formula the head had before the option (embed written out): bit for bit
    with torch.no_grad():
        ref = torch.zeros(len(b), 32)
        ref = ref + plain.proj_a(plain.norm_a(b.audio_clip)) * a_p[:, None]
        ref = ref + plain.proj_v(plain.norm_v(b.face_clip)) * v_p[:, None]
        ref = ref / (a_p.float() + v_p.float()).clamp_min(1.0)[:, None]
        assert torch.equal(views[0][1], ref) and torch.equal(plain.embed(b), ref)
    assert torch.equal(views[0][2], a_p | v_p)


def test_option_adds_exactly_the_two_modality_views(data):
    b, _ = data
    plain, head = _pair()
    a_p, v_p = b.present()
    assert bool((~a_p).any()) and bool((~v_p).any()) and bool((a_p & v_p).any())   # the masks matter
    with torch.no_grad():
        views = head.train_views(b)
        assert [v for v, _, _ in views] == ["AV", "A", "V"]
        (_, e, rows), (_, e_a, rows_a), (_, e_v, rows_v) = views
        assert torch.equal(e, plain.train_views(b)[0][1]) and torch.equal(rows, a_p | v_p)
        assert torch.equal(rows_a, a_p) and torch.equal(rows_v, v_p)
        # each modality view is that modality's own embedding: the head seeing only it
        assert torch.equal(e_a[a_p], head.embed(b, use=("A",))[a_p])
        assert torch.equal(e_v[v_p], head.embed(b, use=("V",))[v_p])
        assert not torch.allclose(e_a[a_p & v_p], e[a_p & v_p])
        # a batch without faces: its face view has no present row (the step's loss leaves it out, by
        # weight: test_step_loss_is_the_mean_over_present_rows_and_non_empty_views)
        only_a = b.select(("A",))
        views_a = head.train_views(only_a)
        assert [v for v, _, _ in views_a] == ["AV", "A", "V"] and not bool(views_a[2][2].any())


@pytest.mark.parametrize("use", [("A", "V"), ("A",)])
def test_step_loss_is_the_mean_over_present_rows_and_non_empty_views(data, use):
    """The trainer weighs rows instead of indexing them (no wait for a GPU per step); its loss and
    accuracy counts are those of the indexed formula: each view's loss over its present rows, averaged
    over the views that have any."""
    from fusion.losses import make_loss
    from fusion.trainer import _views_loss
    b, y = data
    b = b.select(use)
    _, head = _pair()
    torch.manual_seed(1)
    loss_fn = make_loss("aam", 32, int(y.max()) + 1)
    with torch.no_grad():
        views = head.train_views(b)
        correct, seen = torch.zeros(()), torch.zeros(())
        got = _views_loss(views, y, loss_fn, correct, seen)
        kept = [(e[r], y[r]) for _, e, r in views if bool(r.any())]
        want = torch.stack([loss_fn(e, t)[0] for e, t in kept]).mean()
        rows0 = views[0][2]
        hits = (loss_fn(views[0][1][rows0], y[rows0])[1].argmax(1) == y[rows0]).sum()
    assert len(kept) == (3 if use == ("A", "V") else 2)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert int(seen) == int(rows0.sum()) and int(correct) == int(hits)


def test_default_training_equals_the_base_code_path(data):
    """The default head trains exactly as a mean head whose train_views is the base class's."""
    b, y = data

    class BaseViews(MeanHead):
        train_views = FusionHead.train_views

    cfg = TrainConfig(epochs=2, batch_size=16, head_options=OPTS, seed=4, device="cpu")
    h1, _ = fit_head(b, y, "mean", cfg, progress=False)
    from fusion.registry import HEADS, register_head
    register_head("mean_base_views_test", BaseViews, "test only")
    try:
        h2, _ = fit_head(b, y, "mean_base_views_test", cfg, progress=False)
    finally:
        HEADS._entries.pop("mean_base_views_test", None)
    s1, s2 = h1.state_dict(), h2.state_dict()
    assert s1.keys() == s2.keys() and all(torch.equal(s1[k], s2[k]) for k in s1)


def test_training_with_option_runs_differs_and_round_trips(data, tmp_path):
    b, y = data
    cfg = TrainConfig(epochs=3, batch_size=16, head_options=OPTS, seed=4, device="cpu")
    plain, _ = fit_head(b, y, "mean", cfg, progress=False)
    cfg_m = TrainConfig(epochs=3, batch_size=16, head_options={**OPTS, "modality_loss": True}, seed=4,
                        device="cpu")
    head, hist = fit_head(b, y, "mean", cfg_m, progress=False)
    assert head.config["modality_loss"] is True and plain.config["modality_loss"] is False
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in hist)
    assert not torch.equal(head.proj_a[0].weight, plain.proj_a[0].weight)   # the extra losses trained it
    path = tmp_path / "mean_ml.pt"
    save_head(path, head, {})
    back, _ = load_head(path)
    assert back.modality_loss is True and back.config == head.config
    with torch.no_grad():
        assert torch.equal(back.embed(b), head.embed(b))
        assert [v for v, _, _ in back.train_views(b)] == ["AV", "A", "V"]
