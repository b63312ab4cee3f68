"""Audio backbones: ECAPA-TDNN (SpeechBrain and
WeSpeaker layouts), WeSpeaker ResNet34 and MobileNetV2-on-log-mel (GE2E: ``test_ge2e``). (The front-ends, and
the synthetic voices and padded batches used here, are in ``test_frontends``.)

Published layouts are checked against data read from the reference implementations
(speechbrain/lobes/models/ECAPA_TDNN.py, wespeaker/models/{ecapa_tdnn,resnet}.py,
resemblyzer 0.1.4's pretrained.pt, torchvision's mobilenet_v2): a few representative
keys with their shapes and the total tensor count. Checkpoints go through real
``torch.save`` files and ``load_backbone``. Every backbone is checked for giving a clip
the same embedding alone and zero-padded inside a batch.
"""

from __future__ import annotations

import pytest
import torch
import torchvision

from extractors import get_backbone, load_backbone
from extractors.audio import ecapa as audio_ecapa
from extractors.audio import mobilenet as audio_mobilenet
from extractors.audio import resnet as audio_resnet
from extractors.audio.frontends import LogMel64
from extractors.checkpoints import add_prefix
from pipeline.core import BackboneError
from tests.extractors.audio.test_frontends import batch_of, clips

pytestmark = pytest.mark.usefixtures("one_thread")

# --------------------------------------------------------------------------- helpers

def randomize_bn(module: torch.nn.Module, seed: int = 0) -> None:
    """Non-trivial BatchNorm statistics and affine parameters (so BN is not the identity)."""
    g = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
            m.running_mean.copy_(0.2 * torch.randn(m.running_mean.shape, generator=g))
            m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=g))
            if m.affine:
                m.weight.data.copy_(1 + 0.2 * torch.randn(m.weight.shape, generator=g))
                m.bias.data.copy_(0.1 * torch.randn(m.bias.shape, generator=g))


def build(name: str, seed: int = 0) -> torch.nn.Module:
    entry = get_backbone(name)
    torch.manual_seed(seed)
    m = entry.build(**entry.build_kwargs)
    randomize_bn(m, seed)
    return m.eval()


def check_batch_vs_single(module, waves, *, rtol=1e-4, atol=1e-4) -> torch.Tensor:
    x, n = batch_of(waves)
    with torch.no_grad():
        batched = module(x, n)
        single = torch.cat([module(torch.from_numpy(w)[None], torch.tensor([len(w)])) for w in waves])
    assert batched.shape == single.shape
    torch.testing.assert_close(batched, single, rtol=rtol, atol=atol)
    return batched


def assert_layout(state: dict, ref_shapes: dict, ref_count: int) -> None:
    assert len(state) == ref_count
    for k, shape in ref_shapes.items():
        assert k in state, k
        assert tuple(state[k].shape) == shape, (k, tuple(state[k].shape), shape)

# --------------------------------------------------------------------------- ECAPA-TDNN

# speechbrain.lobes.models.ECAPA_TDNN.ECAPA_TDNN(80, channels=[C]*4 + [3C], lin_neurons=192)
# .state_dict(): 231 tensors (spkrec-ecapa-voxceleb is C=1024).
REF_SB_ECAPA = {
    1024: {"blocks.0.conv.conv.weight": (1024, 80, 5), "blocks.1.tdnn1.conv.conv.weight": (1024, 1024, 1),
           "blocks.1.res2net_block.blocks.0.conv.conv.weight": (128, 128, 3),
           "blocks.3.res2net_block.blocks.6.norm.norm.running_var": (128,),
           "blocks.1.se_block.conv1.conv.weight": (128, 1024, 1), "blocks.2.se_block.conv2.conv.weight": (1024, 128, 1),
           "mfa.conv.conv.weight": (3072, 3072, 1), "asp.tdnn.conv.conv.weight": (128, 9216, 1),
           "asp.conv.conv.weight": (3072, 128, 1), "asp_bn.norm.weight": (6144,), "fc.conv.weight": (192, 6144, 1)},
    512: {"blocks.0.conv.conv.weight": (512, 80, 5), "blocks.1.res2net_block.blocks.0.conv.conv.weight": (64, 64, 3),
          "blocks.1.se_block.conv1.conv.weight": (128, 512, 1), "mfa.conv.conv.weight": (1536, 1536, 1),
          "asp.tdnn.conv.conv.weight": (128, 4608, 1), "asp_bn.norm.weight": (3072,), "fc.conv.weight": (192, 3072, 1)},
}
REF_SB_ECAPA_COUNT = 231
# wespeaker.models.ecapa_tdnn.ECAPA_TDNN_GLOB_c{1024,512}(80, 192).state_dict(): 221 tensors
# (avg_model.pt adds the training head projection.*).
REF_WS_ECAPA = {
    1024: {"layer1.conv.weight": (1024, 80, 5), "layer2.se_res2block.0.conv.weight": (1024, 1024, 1),
           "layer2.se_res2block.1.convs.0.weight": (128, 128, 3), "layer4.se_res2block.1.bns.6.running_var": (128,),
           "layer3.se_res2block.3.linear1.weight": (128, 1024), "conv.weight": (1536, 3072, 1),
           "pool.linear1.weight": (128, 4608, 1), "pool.linear2.weight": (1536, 128, 1), "bn.weight": (3072,),
           "linear.weight": (192, 3072)},
    512: {"layer1.conv.weight": (512, 80, 5), "layer2.se_res2block.1.convs.0.weight": (64, 64, 3),
          "layer3.se_res2block.3.linear1.weight": (128, 512), "conv.weight": (1536, 1536, 1),
          "pool.linear1.weight": (128, 4608, 1), "bn.weight": (3072,), "linear.weight": (192, 3072)},
}
REF_WS_ECAPA_COUNT = 221


def ecapa(channels: int, flavour: str, seed: int = 0) -> audio_ecapa.ECAPATDNN:
    torch.manual_seed(seed)
    m = audio_ecapa.ECAPATDNN(channels, flavour=flavour)
    randomize_bn(m, seed)
    return m.eval()


@pytest.mark.parametrize("channels", [1024, 512])
def test_ecapa_published_layouts(channels):
    sb = audio_ecapa.to_published(ecapa(channels, "speechbrain"), "speechbrain")
    assert_layout(sb, REF_SB_ECAPA[channels], REF_SB_ECAPA_COUNT)
    ws = audio_ecapa.to_published(ecapa(channels, "wespeaker"), "wespeaker")
    assert_layout(ws, REF_WS_ECAPA[channels], REF_WS_ECAPA_COUNT)


@pytest.mark.parametrize("flavour", ["speechbrain", "wespeaker"])
def test_ecapa_converters_round_trip_both_ways(flavour):
    m = ecapa(512, flavour, seed=1)
    ours = m.state_dict()
    pub = audio_ecapa.to_published(m, flavour)
    back = audio_ecapa.from_published(pub, flavour, ours.keys())
    assert back.keys() == ours.keys() and all(torch.equal(back[k], ours[k]) for k in ours)
    again = audio_ecapa.to_published(back, flavour)
    assert again.keys() == pub.keys() and all(torch.equal(again[k], pub[k]) for k in pub)
    wrapped = audio_ecapa.to_published(m, flavour, prefix="embedding_model.")
    assert all(k.startswith("embedding_model.") for k in wrapped)
    with pytest.raises(BackboneError, match="not part of"):
        audio_ecapa.from_published({**pub, "extra.weight": torch.zeros(1)}, flavour, ours.keys())


def test_ecapa_speechbrain_checkpoint_file(tmp_path):
    src = ecapa(512, "speechbrain", seed=2)
    path = tmp_path / "embedding_model.ckpt"
    torch.save(audio_ecapa.to_published(src, "speechbrain"), path)
    model, info = load_backbone("ecapa_tdnn_c512", path, seed=7)
    assert info["checkpoint_format"] == "SpeechBrain embedding_model.ckpt" and info["frontend"] == "sb_fbank80"
    assert info["load_notes"]["config"]["mfa_channels"] == 1536
    waves = clips()
    emb = check_batch_vs_single(model, waves)              # reflect padding at each clip's own end
    assert emb.shape == (3, 192)
    with torch.no_grad():
        torch.testing.assert_close(emb, src(*batch_of(waves)))


def test_ecapa_wespeaker_checkpoint_file(tmp_path):
    src = ecapa(512, "wespeaker", seed=3)
    state = audio_ecapa.to_published(src, "wespeaker", prefix="module.")
    state["module.projection.weight"] = torch.randn(5994, 192)       # the training head in avg_model.pt
    path = tmp_path / "avg_model.pt"
    torch.save(state, path)
    model, info = load_backbone("ecapa_tdnn_c512", path)
    assert info["checkpoint_format"] == "WeSpeaker avg_model.pt" and info["frontend"] == "kaldi_fbank80"
    assert info["load_notes"]["dropped_keys"] == ["projection.weight"]
    assert info["load_notes"]["config"]["flavour"] == "wespeaker"
    waves = clips()
    emb = check_batch_vs_single(model, waves)
    assert emb.shape == (3, 192)
    with torch.no_grad():
        torch.testing.assert_close(emb, src(*batch_of(waves)))


def test_ecapa_c1024_builds_and_embeds(tmp_path):
    model, info = load_backbone("ecapa_tdnn", "random")
    assert info["frontend"] == "sb_fbank80" and model.channels == 1024 and model.mfa_channels == 3072
    w = clips((0.6,))[0]
    with torch.no_grad():
        out = model(torch.from_numpy(w)[None], torch.tensor([len(w)]))
    assert out.shape == (1, 192) and torch.isfinite(out).all()


def test_ecapa_mismatched_checkpoints(tmp_path):
    path = tmp_path / "c512.ckpt"
    torch.save(audio_ecapa.to_published(ecapa(512, "speechbrain"), "speechbrain"), path)
    with pytest.raises(BackboneError) as ei:
        load_backbone("ecapa_tdnn", path)
    assert "C=512" in str(ei.value) and "ecapa_tdnn_c512" in str(ei.value)
    state = audio_ecapa.to_published(ecapa(512, "wespeaker"), "wespeaker")
    state["linear.weight"], state["linear.bias"] = torch.zeros(256, 3072), torch.zeros(256)
    torch.save(state, path)
    with pytest.raises(BackboneError, match="embedding size 256"):
        load_backbone("ecapa_tdnn_c512", path)
    state = audio_ecapa.to_published(ecapa(512, "wespeaker"), "wespeaker")
    state["layer2.se_res2block.1.convs.3.weight"] = torch.zeros(64, 64, 5)
    torch.save(state, path)
    with pytest.raises(BackboneError) as ei:
        load_backbone("ecapa_tdnn_c512", path)
    assert "shape mismatch" in str(ei.value) and "blocks.0.res2.convs.3.weight" in str(ei.value)
    torch.save(torchvision.models.resnet18().state_dict(), path)
    with pytest.raises(BackboneError) as ei:
        load_backbone("ecapa_tdnn_c512", path)
    assert "torchvision ResNet" in str(ei.value) and "WeSpeaker avg_model.pt" in str(ei.value)


# --------------------------------------------------------------------------- ResNet34

# wespeaker.models.resnet.ResNet34(feat_dim=80, embed_dim=256).state_dict(): 218 tensors.
REF_WS_RESNET34 = {"conv1.weight": (32, 1, 3, 3), "layer1.0.conv1.weight": (32, 32, 3, 3),
                   "layer2.0.shortcut.0.weight": (64, 32, 1, 1), "layer2.0.shortcut.1.running_mean": (64,),
                   "layer3.5.conv2.weight": (128, 128, 3, 3), "layer4.2.bn2.weight": (256,),
                   "seg_1.weight": (256, 5120)}
REF_WS_RESNET34_COUNT = 218


def test_resnet34_layout_round_trip_and_pyannote_style_file(tmp_path):
    src = build("resnet34", seed=4)
    pub = audio_resnet.to_wespeaker(src)
    assert_layout(pub, REF_WS_RESNET34, REF_WS_RESNET34_COUNT)
    wrapped = {"state_dict": {**audio_resnet.to_wespeaker(src, prefix="resnet."),
                              "resnet.projection.weight": torch.zeros(10, 256)}}
    back, undone = audio_resnet.from_wespeaker(wrapped)
    assert undone["stripped_prefixes"] == ["resnet."] and undone["dropped_keys"] == ["projection.weight"]
    assert back.keys() == pub.keys() and all(torch.equal(back[k], pub[k]) for k in pub)
    path = tmp_path / "pytorch_model.bin"
    torch.save(wrapped, path)
    model, info = load_backbone("resnet34", path)
    assert info["checkpoint_format"] == "WeSpeaker avg_model.pt" and info["frontend"] == "kaldi_fbank80"
    waves = clips((1.0, 0.31, 0.75))
    emb = check_batch_vs_single(model, waves)
    assert emb.shape == (3, 256)
    with torch.no_grad():
        torch.testing.assert_close(emb, src(*batch_of(waves)))


def test_resnet34_two_embedding_layers(tmp_path):
    torch.manual_seed(0)
    src = audio_resnet.WeSpeakerResNet(two_emb_layer=True)
    randomize_bn(src)
    src.eval()
    state = audio_resnet.to_wespeaker(src, prefix="module.")
    assert "module.seg_bn_1.running_mean" in state and "module.seg_2.weight" in state
    path = tmp_path / "avg_model.pt"
    torch.save(state, path)
    model, info = load_backbone("resnet34", path)
    assert info["load_notes"]["two_emb_layer"] is True
    w = clips((0.5,))
    with torch.no_grad():
        torch.testing.assert_close(model(*batch_of(w)), src(*batch_of(w)))


def test_resnet34_mismatched_checkpoints(tmp_path):
    path = tmp_path / "r.pt"
    small = audio_resnet.WeSpeakerResNet(layers=(2, 2, 2, 2))       # a WeSpeaker ResNet18
    torch.save(small.state_dict(), path)
    with pytest.raises(BackboneError, match=r"\[2, 2, 2, 2\].*\[3, 4, 6, 3\]"):
        load_backbone("resnet34", path)
    state = audio_resnet.to_wespeaker(build("resnet34"))
    state["seg_1.weight"] = torch.zeros(512, 5120)
    torch.save(state, path)
    with pytest.raises(BackboneError, match=r"seg_1.weight: checkpoint \(512, 5120\) vs expected \(256, 5120\)"):
        load_backbone("resnet34", path)
    torch.save(torchvision.models.resnet18().state_dict(), path)
    with pytest.raises(BackboneError) as ei:
        load_backbone("resnet34", path)
    assert "torchvision ResNet" in str(ei.value) and "seg_1" not in str(ei.value).split("--")[0]


# --------------------------------------------------------------------------- MobileNetV2

# torchvision.models.mobilenet_v2(num_classes=256) with features[0][0] = Conv2d(1, 32, 3, 2, 1):
# 314 tensors.
REF_MNV2 = {"features.0.0.weight": (32, 1, 3, 3), "features.1.conv.0.0.weight": (32, 1, 3, 3),
            "features.1.conv.1.weight": (16, 32, 1, 1), "features.2.conv.0.0.weight": (96, 16, 1, 1),
            "features.2.conv.1.0.weight": (96, 1, 3, 3), "features.14.conv.1.0.weight": (576, 1, 3, 3),
            "features.17.conv.2.weight": (320, 960, 1, 1), "features.18.0.weight": (1280, 320, 1, 1),
            "features.18.1.running_var": (1280,), "classifier.1.weight": (256, 1280)}
REF_MNV2_COUNT = 314


def torchvision_mnv2(num_classes: int = 256, stem_channels: int = 1) -> torch.nn.Module:
    tv = torchvision.models.mobilenet_v2(num_classes=num_classes)
    if stem_channels == 1:
        tv.features[0][0] = torch.nn.Conv2d(1, 32, 3, 2, 1, bias=False)
    randomize_bn(tv, 6)
    return tv.eval()


def test_mobilenet_layout_matches_torchvision_and_reference_output(tmp_path):
    ours = build("mobilenetv2_mel")
    pub = audio_mobilenet.to_torchvision(ours)
    assert_layout(pub, REF_MNV2, REF_MNV2_COUNT)
    tv = torchvision_mnv2()
    ref = tv.state_dict()
    assert list(pub) == list(ref) and all(pub[k].shape == ref[k].shape for k in ref)
    path = tmp_path / "mnv2.pt"
    torch.save(add_prefix(ref, "module."), path)
    model, info = load_backbone("mobilenetv2_mel", path)
    assert info["checkpoint_format"] == "torchvision mobilenet_v2" and info["frontend"] == "logmel64"
    waves = clips((1.2, 0.66, 0.35))
    emb = check_batch_vs_single(model, waves)
    assert emb.shape == (3, 256)
    fe = LogMel64()
    with torch.no_grad():   # torchvision's own forward on each clip's log-mel image
        for i, w in enumerate(waves):
            feats, _ = fe(torch.from_numpy(w)[None], torch.tensor([len(w)]))
            torch.testing.assert_close(emb[i], tv(feats.transpose(1, 2).unsqueeze(1))[0], rtol=1e-4, atol=1e-5)


def test_mobilenet_imagenet_checkpoint_initialises_features(tmp_path):
    tv = torchvision_mnv2(num_classes=1000, stem_channels=3)
    path = tmp_path / "mobilenet_v2-imagenet.pth"
    torch.save(tv.state_dict(), path)
    model, info = load_backbone("mobilenetv2_mel", path)
    assert info["checkpoint_format"] == "torchvision mobilenet_v2 (ImageNet init)"
    assert "classifier" in info["load_notes"] and "stem" in info["load_notes"]
    torch.testing.assert_close(model.features[0][0].weight, tv.features[0][0].weight.sum(1, keepdim=True))
    assert torch.equal(model.features[5].conv[1][0].weight, tv.features[5].conv[1][0].weight)
    w = clips((0.4,))
    with torch.no_grad():
        assert model(*batch_of(w)).shape == (1, 256)


def test_mobilenet_mismatched_checkpoints(tmp_path):
    path = tmp_path / "m.pt"
    torch.save(torchvision_mnv2(num_classes=512).state_dict(), path)
    with pytest.raises(BackboneError, match="512-d embeddings"):
        load_backbone("mobilenetv2_mel", path)
    torch.save(torchvision.models.resnet18().state_dict(), path)
    with pytest.raises(BackboneError) as ei:
        load_backbone("mobilenetv2_mel", path)
    assert "torchvision ResNet" in str(ei.value) and "features.0.0.weight" in str(ei.value)


def test_wave_contract_errors():
    model = build("ecapa_tdnn_c512")
    with pytest.raises(BackboneError, match=r"\(B, T\)"):
        model(torch.zeros(2, 1, 100), torch.tensor([100, 100]))
    with pytest.raises(BackboneError, match="outside"):
        model(torch.zeros(2, 100), torch.tensor([100, 101]))


@pytest.mark.parametrize("name", ["ge2e_lstm", "ecapa_tdnn_c512", "resnet34", "mobilenetv2_mel"])
def test_bf16_autocast_agrees_with_fp32(name):
    """Front-ends, the GE2E LSTM and pooling statistics stay float32 under autocast."""
    model = build(name, seed=8)
    x, n = batch_of(clips((1.0, 0.55)))
    with torch.no_grad():
        ref = model(x, n)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(x, n)
    assert low.dtype == torch.float32
    assert float(torch.nn.functional.cosine_similarity(ref, low, dim=1).min()) >= 0.999


@pytest.mark.parametrize("audio_name", ["resnet34", "ecapa_tdnn", "ge2e_lstm"])
def test_face_backbone_checkpoint_given_to_audio_backbone(tmp_path, audio_name):
    from extractors import list_backbones

    if "iresnet18" not in {e.name for e in list_backbones("face")}:
        pytest.skip("face backbones not registered")
    face, _ = load_backbone("iresnet18", "random")
    path = tmp_path / "backbone.pth"
    torch.save(face.state_dict(), path)               # an InsightFace-layout face checkpoint
    with pytest.raises(BackboneError) as ei:
        load_backbone(audio_name, path)
    msg = str(ei.value)
    assert "InsightFace IResNet" in msg and "(face)" in msg and "backbone.pth" in msg
    assert "expects" in msg                            # ... and what was expected instead
