"""Face backbones with random init and in inference: deterministic per seed, usable
embeddings, channels-last and bf16 autocast, input checks, parameter and MAC counts.
(Layouts and checkpoints: ``test_backbones``, which holds the shared helpers.)"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision

from extractors import load_backbone
from extractors.counting import count_params, face_gmacs
from extractors.face.iresnet import IResNet, build_iresnet
from extractors.face.resnet import build_resnet
from pipeline.core import BackboneError
from tests.extractors.face.test_backbones import (
    EMB,
    REF_IRESNET_BLOCKS,
    normalised,
    reference_iresnet_params,
    same_state,
    synth_faces,
    trained_like,
)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("name", ["iresnet18", "iresnet50", "iresnet100", "resnet18", "resnet50"])
def test_random_init_is_deterministic_per_seed(name):
    a, ia = load_backbone(name, "random", seed=11)
    b, _ = load_backbone(name, "random", seed=11)
    assert ia["weights"] == "random" and ia["sha256"] is None and ia["seed"] == 11
    assert ia["checkpoint_format"] == "random"
    assert same_state(a.state_dict(), b.state_dict())
    if name in ("iresnet18", "resnet18"):  # a different seed gives different weights
        c, _ = load_backbone(name, "random", seed=12)
        assert not torch.equal(a.layer1[0].conv1.weight, c.layer1[0].conv1.weight)


@pytest.mark.parametrize("name", ["iresnet18", "iresnet50", "iresnet100"])
def test_random_iresnet_eval_embeddings_are_usable(name):
    """Eval-mode BN with fresh running stats is the identity; the init must keep the
    outputs finite, well scaled and image-dependent at every depth (one forward each)."""
    model, _ = load_backbone(name, "random", seed=0)
    n = 4 if name == "iresnet18" else 3
    faces = normalised(name, synth_faces(n, 112, seed=3))
    with torch.inference_mode():
        e = model(torch.cat([faces, faces[:1]]))  # the last row repeats the first image
    assert torch.isfinite(e).all()
    norms = e.norm(dim=1)
    assert (norms > 1.0).all() and (norms < 1e4).all(), norms
    en = F.normalize(e[:n], dim=1)
    cos = en @ en.T
    assert cos[~torch.eye(n, dtype=torch.bool)].max() < 0.95, cos  # different faces differ clearly
    torch.testing.assert_close(e[n], e[0], rtol=1e-4, atol=1e-4)  # same image, same embedding
    if name == "iresnet18":  # the demo's random face backbone: exact repeatability
        with torch.inference_mode():
            assert torch.equal(model(faces[1:2]), model(faces[1:2]))


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_random_resnet_eval_embeddings_are_image_dependent(name):
    model, _ = load_backbone(name, "random", seed=0)
    x = normalised(name, synth_faces(3, 224, seed=3))
    with torch.inference_mode():
        e = model(x)
    assert e.shape == (3, EMB[name]) and torch.isfinite(e).all()
    cos = F.normalize(e, dim=1) @ F.normalize(e, dim=1).T
    assert cos[~torch.eye(3, dtype=torch.bool)].max() < 0.9999


# --------------------------------------------------------------------------- precision, layout
def test_iresnet_channels_last_and_bf16_autocast():
    model, _ = load_backbone("iresnet18", "random", seed=1)
    model = trained_like(model, seed=9)
    x = normalised("iresnet18", synth_faces(3, 112, seed=4))
    with torch.inference_mode():
        ref = model(x)
        cl = model.to(memory_format=torch.channels_last)(x.contiguous(memory_format=torch.channels_last))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf = model(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(cl, ref, rtol=1e-4, atol=1e-3)
    assert bf.dtype == torch.float32  # fc + features run in float32, as in the reference
    cos = F.cosine_similarity(bf, ref, dim=1)
    assert (cos > 0.99).all(), cos


def test_resnet_bf16_autocast_returns_float32():
    model, _ = load_backbone("resnet18", "random", seed=2)
    model = model.to(memory_format=torch.channels_last)
    x = normalised("resnet18", synth_faces(2, 224, seed=5)).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        ref = model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf = model(x)
    assert bf.dtype == torch.float32
    assert (F.cosine_similarity(bf, ref, dim=1) > 0.99).all()


def test_wrong_input_size_is_a_backbone_error():
    model = build_iresnet("iresnet18").eval()
    with pytest.raises(BackboneError, match=r"\(B, 3, 112, 112\)"):
        model(torch.zeros(1, 3, 224, 224))
    with pytest.raises(BackboneError, match=r"\(B, 3, 224, 224\)"):
        build_resnet("resnet18").eval()(torch.zeros(1, 3, 112, 112))


# --------------------------------------------------------------------------- costs
def test_params_and_macs_agree_with_published_metadata():
    # torchvision's own metadata: ResNet18_Weights num_params 11,689,512 (with its 513,000-param fc),
    # ~1.814 GFLOPS as torchvision counts (multiply-adds)
    r18 = build_resnet("resnet18")
    meta = torchvision.models.ResNet18_Weights.IMAGENET1K_V1.meta
    assert count_params(r18) == meta["num_params"] - (512 * 1000 + 1000)
    assert abs(face_gmacs(r18, 224) - meta["_ops"]) < 0.01
    # InsightFace's model-zoo table lists r18 at 2.6 G (multiply-adds)
    ir18 = build_iresnet("iresnet18")
    assert abs(face_gmacs(ir18, 112) - 2.6) < 0.05
    for name, blocks in REF_IRESNET_BLOCKS.items():
        model = ir18 if name == "iresnet18" else build_iresnet(name)
        assert count_params(model) == reference_iresnet_params(blocks), name
    assert isinstance(ir18, IResNet)
