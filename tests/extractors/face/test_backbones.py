"""Face backbones: InsightFace IResNet (r18/r50/r100) and torchvision ResNet (18/50).

Layouts are checked against data read from the reference implementations
(deepinsight/insightface recognition/arcface_torch/backbones/iresnet.py, and
torchvision.models.resnet itself), checkpoints go through real ``torch.save`` files and
``load_backbone`` (random-init embeddings and inference: ``test_inference``).
"""

from __future__ import annotations

import logging

import pytest
import torch
import torchvision
from torch import nn

from extractors import get_backbone, load_backbone
from extractors.checkpoints import add_prefix, strip_prefixes, unwrap_state_dict
from extractors.face.iresnet import blocks_per_stage, build_iresnet, iresnet_to_published
from extractors.face.resnet import build_resnet, guess_resnet_arch, resnet_to_published
from pipeline.core import BackboneError

# --------------------------------------------------------------------------- reference data
# Tensor counts of the reference state dicts (arcface_torch iresnet.py: stem 7 tensors,
# 18 per block + 6 per downsample, one downsample per stage, tail bn2+fc+features 12).
REF_IRESNET_TENSORS = {"iresnet18": 187, "iresnet50": 475, "iresnet100": 925}
REF_IRESNET_BLOCKS = {"iresnet18": (2, 2, 2, 2), "iresnet50": (3, 4, 14, 3), "iresnet100": (3, 13, 30, 3)}
# Representative keys and shapes of the InsightFace backbone.pth layout (common to all depths).
REF_IRESNET_KEYS = {
    "conv1.weight": (64, 3, 3, 3),
    "bn1.weight": (64,), "bn1.running_var": (64,), "bn1.num_batches_tracked": (),
    "prelu.weight": (64,),
    "layer1.0.bn1.weight": (64,),
    "layer1.0.conv1.weight": (64, 64, 3, 3),
    "layer1.0.bn2.running_mean": (64,),
    "layer1.0.prelu.weight": (64,),
    "layer1.0.conv2.weight": (64, 64, 3, 3),
    "layer1.0.bn3.bias": (64,),
    "layer1.0.downsample.0.weight": (64, 64, 1, 1),
    "layer1.0.downsample.1.running_mean": (64,),
    "layer2.0.bn1.weight": (64,),
    "layer2.0.conv1.weight": (128, 64, 3, 3),
    "layer2.0.downsample.0.weight": (128, 64, 1, 1),
    "layer3.1.conv2.weight": (256, 256, 3, 3),
    "layer4.0.downsample.0.weight": (512, 256, 1, 1),
    "layer4.1.prelu.weight": (512,),
    "bn2.weight": (512,), "bn2.running_var": (512,),
    "fc.weight": (512, 512 * 7 * 7), "fc.bias": (512,),
    "features.weight": (512,), "features.bias": (512,),
    "features.running_mean": (512,), "features.running_var": (512,),
}
REF_IRESNET_LAST_BLOCK = {"iresnet18": "layer3.1.bn3.weight", "iresnet50": "layer3.13.conv2.weight",
                          "iresnet100": "layer3.29.conv2.weight"}
# torchvision layouts (with the classifier): counts and representative keys.
REF_TV_TENSORS = {"resnet18": 122, "resnet50": 320}
REF_TV_KEYS = {
    "resnet18": {"conv1.weight": (64, 3, 7, 7), "layer1.0.conv1.weight": (64, 64, 3, 3),
                 "layer2.0.downsample.0.weight": (128, 64, 1, 1), "layer4.1.bn2.running_var": (512,),
                 "fc.weight": (1000, 512)},
    "resnet50": {"conv1.weight": (64, 3, 7, 7), "layer1.0.conv1.weight": (64, 64, 1, 1),
                 "layer1.0.conv3.weight": (256, 64, 1, 1), "layer1.0.downsample.0.weight": (256, 64, 1, 1),
                 "layer4.2.bn3.weight": (2048,), "fc.weight": (1000, 2048)},
}
EMB = {"iresnet18": 512, "iresnet50": 512, "iresnet100": 512, "resnet18": 512, "resnet50": 2048}


pytestmark = pytest.mark.usefixtures("one_thread")


# --------------------------------------------------------------------------- helpers
def synth_faces(n: int, size: int, seed: int = 0) -> torch.Tensor:
    """``n`` different cartoon faces (RGB in [0, 1]): background, skin ellipse, eyes, mouth."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")

    def r(a: float, b: float) -> float:
        return a + (b - a) * torch.rand((), generator=g).item()

    out = []
    for _ in range(n):
        img = torch.rand(3, generator=g)[:, None, None].expand(3, size, size).clone()
        skin = torch.tensor([r(.5, .95), r(.35, .75), r(.25, .6)])[:, None, None]
        cx, cy, ax, ay = r(-.15, .15), r(-.1, .1), r(.45, .65), r(.6, .8)
        img = torch.where(((xx - cx) / ax) ** 2 + ((yy - cy) / ay) ** 2 < 1, skin, img)
        ey, ex, er = cy - r(.15, .3), r(.18, .3), r(.05, .1)
        for sx in (-1, 1):
            img = torch.where((xx - cx - sx * ex) ** 2 + (yy - ey) ** 2 < er ** 2, torch.full((3, 1, 1), .1), img)
        my, mw = cy + r(.3, .45), r(.15, .3)
        img = torch.where(((xx - cx).abs() < mw) & ((yy - my).abs() < .04),
                          torch.tensor([.6, .1, .1])[:, None, None], img)
        out.append((img + 0.02 * torch.randn(3, size, size, generator=g)).clamp(0, 1))
    return torch.stack(out)


def normalised(name: str, x: torch.Tensor) -> torch.Tensor:
    spec = get_backbone(name).spec
    return (x - torch.tensor(spec.mean)[:, None, None]) / torch.tensor(spec.std)[:, None, None]


def trained_like(model: nn.Module, seed: int) -> nn.Module:
    """Perturb every tensor, BN running statistics and counters included, so a loaded copy
    can only match if every tensor was carried over (1-d tensors randomly, weights by a
    cheap scale; callers also build ``model`` under a seed other than load_backbone's 0)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for k, t in model.state_dict().items():
            if k.endswith("num_batches_tracked"):
                t.fill_(1000 + seed)
            elif k.endswith("running_var"):
                t.copy_(0.5 + torch.rand(t.shape, generator=g))
            elif k.endswith("running_mean"):
                t.copy_(0.05 * torch.randn(t.shape, generator=g))
            elif t.dim() <= 1:
                t.add_(0.01 * torch.randn(t.shape, generator=g))
            else:
                t.mul_(1.0 + 0.01 * (seed + 1))
    return model.eval()


def same_state(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def reference_iresnet_params(blocks) -> int:
    """Parameter count of the reference IResNet, from its structure (BN: weight+bias)."""
    n = 3 * 64 * 9 + 2 * 64 + 64  # conv1, bn1, prelu
    cin = 64
    for planes, nb in zip((64, 128, 256, 512), blocks):
        for b in range(nb):
            n += 2 * cin + cin * planes * 9 + 2 * planes + planes + planes * planes * 9 + 2 * planes
            if b == 0:
                n += cin * planes + 2 * planes  # downsample conv1x1 + BN
            cin = planes
    return n + 2 * 512 + (512 * 49 * 512 + 512) + 2 * 512  # bn2, fc, features


def assert_state_equal(model: nn.Module, state: dict) -> None:
    own = model.state_dict()
    assert set(own) == set(state)
    for k, v in state.items():
        assert torch.equal(own[k].cpu(), v), k


# --------------------------------------------------------------------------- layouts
@pytest.mark.parametrize("name", ["iresnet18", "iresnet50", "iresnet100"])
def test_iresnet_layout_matches_insightface_reference(name):
    model = build_iresnet(name)
    published = iresnet_to_published(model)
    assert len(published) == REF_IRESNET_TENSORS[name]
    for k, shape in REF_IRESNET_KEYS.items():
        assert tuple(published[k].shape) == shape, k
    assert REF_IRESNET_LAST_BLOCK[name] in published
    assert blocks_per_stage(published) == REF_IRESNET_BLOCKS[name]
    # the reference freezes features.weight at 1.0
    assert not model.features.weight.requires_grad and torch.all(model.features.weight == 1)
    spec = get_backbone(name).spec
    assert (spec.modality, spec.crop, spec.embedding_dim) == ("face", 112, 512)
    assert spec.mean == (0.5, 0.5, 0.5) and spec.std == (0.5, 0.5, 0.5)


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_resnet_layout_matches_torchvision(name):
    tv = getattr(torchvision.models, name)(weights=None).state_dict()
    assert len(tv) == REF_TV_TENSORS[name]
    for k, shape in REF_TV_KEYS[name].items():
        assert tuple(tv[k].shape) == shape, k
    ours = build_resnet(name).state_dict()
    assert set(tv) - set(ours) == {"fc.weight", "fc.bias"} and set(ours) <= set(tv)
    assert all(ours[k].shape == tv[k].shape for k in ours)
    assert guess_resnet_arch(tv) == name
    spec = get_backbone(name).spec
    assert (spec.crop, spec.embedding_dim) == (224, EMB[name])
    assert spec.mean == (0.485, 0.456, 0.406) and spec.std == (0.229, 0.224, 0.225)


# --------------------------------------------------------------------------- real files
@pytest.mark.parametrize("name", ["iresnet18", "iresnet50", "iresnet100"])
def test_iresnet_checkpoint_file_loads_bit_for_bit(name, tmp_path):
    torch.manual_seed(7)
    src = trained_like(build_iresnet(name), seed=1)
    state = iresnet_to_published(src)
    path = tmp_path / "backbone.pth"
    torch.save(state, path)
    model, info = load_backbone(name, path)
    assert not model.training
    assert_state_equal(model, state)
    assert info["sha256"] and len(info["sha256"]) == 64 and info["embedding_dim"] == 512
    assert info["checkpoint_format"] == "insightface backbone.pth" and "load_notes" not in info
    x = normalised(name, synth_faces(1, 112))
    with torch.inference_mode():
        emb, ref = model(x), src(x)
    assert emb.shape == (1, 512) and emb.dtype == torch.float32
    torch.testing.assert_close(emb, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_resnet_plain_torchvision_state_dict_loads_and_drops_fc(name, tmp_path, caplog):
    torch.manual_seed(3)
    tv = trained_like(getattr(torchvision.models, name)(weights=None), seed=2)
    path = tmp_path / f"{name}.pth"
    torch.save(tv.state_dict(), path)
    with caplog.at_level(logging.WARNING, logger="avfuse.extractors"):
        model, info = load_backbone(name, path)
    assert "fc.weight" in caplog.text and "dropped" in caplog.text
    assert info["checkpoint_format"] == "torchvision resnet"
    assert info["load_notes"]["dropped_classifier"][0].startswith("fc.weight (1000, ")
    assert_state_equal(model, {k: v for k, v in tv.state_dict().items() if not k.startswith("fc.")})
    # the embedding is torchvision's pooled layer4 output (the input of its fc)
    x = normalised(name, synth_faces(2, 224))
    feats = {}
    tv.fc.register_forward_hook(lambda m, inp, out: feats.setdefault("pooled", inp[0]))
    with torch.inference_mode():
        emb = model(x)
        tv(x)
    assert emb.shape == (2, EMB[name]) and info["embedding_dim"] == EMB[name]
    torch.testing.assert_close(emb, feats["pooled"], rtol=1e-5, atol=1e-5)
    # and back: our module + the classifier re-attached loads strictly into torchvision
    back = getattr(torchvision.models, name)(weights=None)
    back.load_state_dict(resnet_to_published(model, fc=(tv.fc.weight, tv.fc.bias)), strict=True)
    assert torch.equal(back.layer4[-1].conv1.weight, tv.layer4[-1].conv1.weight)


# --------------------------------------------------------------------------- conversions
@pytest.mark.parametrize("name", ["iresnet18", "resnet18"])
def test_prefix_and_nesting_conversions_both_ways(name, tmp_path):
    torch.manual_seed(1234)
    build = build_iresnet if name.startswith("i") else build_resnet
    to_pub = iresnet_to_published if name.startswith("i") else resnet_to_published
    src = trained_like(build(name), seed=5)
    plain = to_pub(src)
    # ours -> DataParallel layout: exactly what nn.DataParallel(model).state_dict() has
    dp = to_pub(src, prefix="module.")
    assert all(k.startswith("module.") for k in dp) and len(dp) == len(plain)
    wrapper = nn.DataParallel(build(name))
    wrapper.load_state_dict(dp, strict=True)
    assert set(wrapper.state_dict()) == set(dp)
    back, stripped = strip_prefixes(dp)
    assert stripped == ["module."] and same_state(back, plain)
    back, stripped = strip_prefixes(add_prefix(add_prefix(plain, "backbone."), "module."))
    assert stripped == ["module.", "backbone."] and same_state(back, plain)
    variants = {
        "dataparallel": dp,
        "backbone_prefix": add_prefix(plain, "backbone."),
        "stacked": add_prefix(add_prefix(plain, "backbone."), "module."),
        "compiled": add_prefix(plain, "_orig_mod."),
        "nested_state_dict": {"state_dict": dp, "epoch": 3},
        "nested_model": {"model": plain},
        "arcface_resume": {"epoch": 1, "global_step": 10, "state_dict_backbone": plain,
                           "state_dict_softmax_fc": {"weight": torch.zeros(4, 512)}},
    }
    if name == "iresnet18":  # keep the 96 MB file writes few; resnet18 runs every variant
        variants = {k: variants[k] for k in ("dataparallel", "stacked", "arcface_resume")}
    for label, ckpt in variants.items():
        path = tmp_path / f"{label}.pt"
        torch.save(ckpt, path)
        model, info = load_backbone(name, path)
        assert_state_equal(model, plain)
        if label == "stacked":
            assert info["load_notes"]["stripped_prefix"] == "module.backbone."
        if label == "arcface_resume":
            assert info["load_notes"]["nested_under"] == ["state_dict_backbone"]
        # and back to the published layout, unchanged
        assert to_pub(model).keys() == plain.keys()
    # keys that do not all share a prefix are left alone
    mixed = dict(plain)
    mixed["module.extra"] = torch.zeros(1)
    assert strip_prefixes(mixed)[1] == []


def test_missing_bn_counters_are_filled(tmp_path):
    torch.manual_seed(99)
    src = trained_like(build_iresnet("iresnet18"), seed=4)
    state = {k: v for k, v in iresnet_to_published(src).items() if not k.endswith("num_batches_tracked")}
    path = tmp_path / "old.pth"
    torch.save(state, path)
    model, _ = load_backbone("iresnet18", path)
    for k, v in state.items():
        assert torch.equal(model.state_dict()[k], v)


# --------------------------------------------------------------------------- bad checkpoints
def _ge2e_like_state() -> dict:
    """An audio (GE2E speaker encoder) checkpoint layout: 3-layer LSTM(40->256) + linear."""
    lstm, lin = nn.LSTM(40, 256, num_layers=3, batch_first=True), nn.Linear(256, 256)
    state = {f"lstm.{k}": v for k, v in lstm.state_dict().items()}
    state.update({f"linear.{k}": v for k, v in lin.state_dict().items()})
    state.update(similarity_weight=torch.tensor([10.0]), similarity_bias=torch.tensor([-5.0]))
    return state


def _expect_error(name, path, *needles):
    with pytest.raises(BackboneError) as ei:
        load_backbone(name, path)
    text = str(ei.value)
    assert str(path) in text, text
    for n in needles:
        assert n in text, text
    return text


def test_mismatched_checkpoints_raise_with_what_was_expected(tmp_path):
    p50 = tmp_path / "r50.pth"
    torch.save(iresnet_to_published(build_iresnet("iresnet50")), p50)
    _expect_error("iresnet18", p50, "[3, 4, 14, 3]", "iresnet50", "expects [2, 2, 2, 2]",
                  "--face-backbone iresnet50")
    audio = tmp_path / "audio.pt"
    torch.save(_ge2e_like_state(), audio)
    _expect_error("iresnet18", audio, "not an IResNet", "lstm.weight_ih_l0", "conv1.weight", "187 tensors")
    _expect_error("resnet50", audio, "not a torchvision ResNet", "conv1.weight", "audio")
    tv50 = tmp_path / "tv50.pth"
    torch.save(torchvision.models.resnet50(weights=None).state_dict(), tv50)
    _expect_error("resnet18", tv50, "resnet50", "BasicBlock blocks [2, 2, 2, 2]", "--face-backbone resnet50")
    _expect_error("iresnet18", tv50, "torchvision ResNet", "resnet18/resnet50")
    ir18 = tmp_path / "ir18.pth"
    torch.save(iresnet_to_published(build_iresnet("iresnet18")), ir18)
    _expect_error("resnet18", ir18, "InsightFace IResNet", "iresnet18")
    # a 256-d head: same keys, wrong shapes -> the registry's check lists the mismatch
    bad = iresnet_to_published(build_iresnet("iresnet18"))
    bad["fc.weight"], bad["fc.bias"] = torch.zeros(256, 25088), torch.zeros(256)
    pbad = tmp_path / "fc256.pth"
    torch.save(bad, pbad)
    _expect_error("iresnet18", pbad, "shape mismatch", "fc.weight", "(512, 25088)")
    # one tensor missing
    del bad["layer2.1.conv1.weight"]
    bad["fc.weight"], bad["fc.bias"] = torch.zeros(512, 25088), torch.zeros(512)
    torch.save(bad, pbad)
    _expect_error("iresnet18", pbad, "missing", "layer2.1.conv1.weight")


def test_unreadable_checkpoints_raise(tmp_path):
    good = tmp_path / "good.pth"
    torch.save(iresnet_to_published(build_iresnet("iresnet18")), good)
    data = good.read_bytes()
    trunc = tmp_path / "truncated.pth"
    trunc.write_bytes(data[: len(data) // 2])
    _expect_error("iresnet18", trunc, "cannot read checkpoint")
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"\x00not a torch file" * 100)
    _expect_error("resnet18", garbage, "checkpoint")
    notsd = tmp_path / "list.pt"
    torch.save([torch.zeros(3)], notsd)
    _expect_error("iresnet18", notsd, "not a state dict", "list")
    meta = tmp_path / "meta.pt"
    torch.save({"epoch": 3, "lr": 0.1}, meta)
    _expect_error("resnet50", meta, "not a state dict", "epoch")
    with pytest.raises(BackboneError, match="not found"):
        load_backbone("iresnet18", tmp_path / "nope.pth")
    with pytest.raises(BackboneError) as ei:
        unwrap_state_dict({}, "iresnet18")
    assert "empty dict" in str(ei.value)


def test_zero_byte_checkpoint_raises(tmp_path):
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    _expect_error("iresnet18", empty, "cannot read checkpoint")


# --------------------------------------------------------------------------- random init
