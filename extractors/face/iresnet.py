"""IResNet face backbones (``iresnet18``, ``iresnet50``, ``iresnet100``) in the
InsightFace arcface_torch ``backbone.pth`` layout: 512-d embeddings of 112x112 RGB faces.

Architecture (our own module; key names and shapes match
``recognition/arcface_torch/backbones/iresnet.py`` of deepinsight/insightface)::

    conv1 3x3/1 (3->64, no bias) -> bn1 -> prelu
    layer1..4: planes 64/128/256/512, blocks per stage (r18 2,2,2,2; r50 3,4,14,3;
               r100 3,13,30,3); the first block of every stage has stride 2 and a
               downsample = [conv1x1 stride 2 (no bias), BatchNorm2d]
        block: bn1 -> conv1 3x3/1 -> bn2 -> prelu -> conv2 3x3/stride -> bn3, + skip
    bn2 (BatchNorm2d 512) -> flatten (512*7*7, NCHW order) -> fc (25088 -> 512)
    -> features (BatchNorm1d 512, weight frozen at 1.0 as in the reference)

All BatchNorms use eps 1e-5. The reference's dropout (p=0 in every released config)
holds no state and is omitted. Under fp16/bf16 autocast the convolutional body runs in
reduced precision while ``fc`` and ``features`` run in float32, mirroring the
reference's ``fp16=True`` forward (``self.fc(x.float())`` outside autocast).

Input: ``(B, 3, 112, 112)`` float RGB normalised from [0, 1] with
``(x - 0.5) / 0.5`` per channel (InsightFace's ``img / 127.5 - 1`` on RGB).
"""

from __future__ import annotations

import math
from typing import Mapping

import torch
from torch import nn

from extractors.checkpoints import add_prefix, blocks_per_stage, cloned_state
from extractors.face.common import (
    INSIGHTFACE_MEAN,
    INSIGHTFACE_STD,
    check_face_input,
    check_keys_belong,
    face_state_from_checkpoint,
    load_face_state,
)
from extractors.registry import BackboneEntry, InputSpec, register_backbone
from pipeline.core.errors import BackboneError

#: blocks per stage of each registered depth (from the reference's iresnetNN builders)
IRESNET_LAYERS: dict[str, tuple[int, int, int, int]] = {
    "iresnet18": (2, 2, 2, 2),
    "iresnet34": (3, 4, 6, 3),     # recognised in error messages only, not registered
    "iresnet50": (3, 4, 14, 3),
    "iresnet100": (3, 13, 30, 3),
    "iresnet200": (6, 26, 60, 6),  # recognised in error messages only, not registered
}
REGISTERED = ("iresnet18", "iresnet50", "iresnet100")
CROP = 112
EMBEDDING_DIM = 512
PRELU_INIT = 0.25  # nn.PReLU default, as in the reference
_STAGE_PLANES = (64, 128, 256, 512)


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1, bias=False)


class IBasicBlock(nn.Module):
    """Pre-activation-style IResNet block: ``bn3(conv2(prelu(bn2(conv1(bn1(x)))))) + skip(x)``;
    the stride sits on ``conv2``; ``skip`` is identity or ``downsample``."""

    def __init__(self, cin: int, planes: int, stride: int = 1):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin, eps=1e-5)
        self.conv1 = _conv3x3(cin, planes)
        self.bn2 = nn.BatchNorm2d(planes, eps=1e-5)
        self.prelu = nn.PReLU(planes, init=PRELU_INIT)
        self.conv2 = _conv3x3(planes, planes, stride)
        self.bn3 = nn.BatchNorm2d(planes, eps=1e-5)
        self.downsample: nn.Sequential | None = None
        if stride != 1 or cin != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(cin, planes, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(planes, eps=1e-5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        skip = x if self.downsample is None else self.downsample(x)
        return out + skip


class IResNet(nn.Module):
    """IResNet with the arcface_torch key layout. ``forward((B,3,112,112)) -> (B, 512)``."""

    def __init__(self, layers: tuple[int, int, int, int], *, embedding_dim: int = EMBEDDING_DIM,
                 name: str = "iresnet"):
        super().__init__()
        self.name = name
        self.layers_spec = tuple(layers)
        self.conv1 = _conv3x3(3, 64)
        self.bn1 = nn.BatchNorm2d(64, eps=1e-5)
        self.prelu = nn.PReLU(64, init=PRELU_INIT)
        cin = 64
        for i, (planes, n) in enumerate(zip(_STAGE_PLANES, layers), start=1):
            blocks = [IBasicBlock(cin, planes, stride=2)]
            blocks += [IBasicBlock(planes, planes) for _ in range(n - 1)]
            setattr(self, f"layer{i}", nn.Sequential(*blocks))
            cin = planes
        self.bn2 = nn.BatchNorm2d(512, eps=1e-5)
        self.fc = nn.Linear(512 * 7 * 7, embedding_dim)
        self.features = nn.BatchNorm1d(embedding_dim, eps=1e-5)
        nn.init.ones_(self.features.weight)
        self.features.weight.requires_grad_(False)
        init_random_(self)
        self.load_info: dict = {"format": "random"}  # replaced by load_iresnet_state

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_face_input(self.name, x, CROP)
        x = self.prelu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = self.bn2(x).flatten(1)  # logical NCHW order, also for channels_last inputs
        with torch.autocast(device_type=x.device.type, enabled=False):
            return self.features(self.fc(x.float()))


@torch.no_grad()
def init_random_(model: IResNet) -> IResNet:
    """Seeded random init (uses the global torch RNG; ``load_backbone(..., "random", seed=s)``
    seeds it) that keeps eval-mode activations well scaled at every depth.

    Eval-mode BatchNorms with fresh running statistics (mean 0, var 1) are identities,
    so the scale of the outputs is set by the weights alone. The reference's training
    init (conv weights N(0, 0.1)) multiplies the activation scale by ~2-5 per block
    and overflows float16 in the deeper nets; instead:

    * every conv: Kaiming-normal, fan-in, with the PReLU(0.25) gain
      ``sqrt(2 / (1 + 0.25**2))`` (variance-preserving through conv + PReLU);
    * every BatchNorm: weight 1, bias 0, running mean 0, running var 1, except each
      block's last BN (``bn3``), whose weight is ``1 / sqrt(total blocks)`` so that the
      sum of residual branches grows the variance by at most ``(1 + 1/L)^L < e``
      (not zero: the branches stay active, outputs stay image-dependent);
    * PReLU slopes 0.25; ``fc``: normal with std ``1 / sqrt(fan_in)``, bias 0;
      ``features``: weight 1 (frozen), bias 0.
    """
    gain = math.sqrt(2.0 / (1.0 + PRELU_INIT ** 2))
    n_blocks = sum(model.layers_spec)
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            fan_in = m.in_channels * m.kernel_size[0] * m.kernel_size[1] // m.groups
            nn.init.normal_(m.weight, 0.0, gain / math.sqrt(fan_in))
        elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
            m.reset_running_stats()
        elif isinstance(m, nn.PReLU):
            nn.init.constant_(m.weight, PRELU_INIT)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, 1.0 / math.sqrt(m.in_features))
            nn.init.zeros_(m.bias)
    for m in model.modules():
        if isinstance(m, IBasicBlock):
            nn.init.constant_(m.bn3.weight, 1.0 / math.sqrt(n_blocks))
    return model


def build_iresnet(name: str) -> IResNet:
    """A randomly initialised (see :func:`init_random_`) IResNet of a registered depth."""
    if name not in IRESNET_LAYERS:
        raise BackboneError(f"unknown IResNet depth {name!r}", hint=f"one of {', '.join(REGISTERED)}")
    return IResNet(IRESNET_LAYERS[name], name=name)


# ----------------------------------------------------------------------------- checkpoints

def iresnet_state_from_checkpoint(raw, name: str = "iresnet", notes: dict | None = None) -> dict[str, torch.Tensor]:
    """Published/wrapped checkpoint -> our module's state dict (same key names as the
    InsightFace ``backbone.pth``). Undoes nesting (``state_dict``, ``model``,
    ``state_dict_backbone``, ... :data:`extractors.checkpoints.NESTING_KEYS`) and wrapper
    prefixes (``module.``/``backbone.``/``_orig_mod.``, ...
    :data:`extractors.checkpoints.WRAPPER_PREFIXES`); what was undone goes into ``notes``
    when given."""
    return face_state_from_checkpoint(raw, name, {} if notes is None else notes)


def iresnet_to_published(source: nn.Module | Mapping[str, torch.Tensor], prefix: str = "") -> dict[str, torch.Tensor]:
    """Our module (or its state dict) -> the InsightFace ``backbone.pth`` layout, as
    ``torch.save`` would write it; ``prefix="module."`` gives the DataParallel layout."""
    return add_prefix(cloned_state(source), prefix)


def load_iresnet_state(model: IResNet, raw) -> None:
    """``BackboneEntry.load_state`` of the IResNets: convert ``raw`` and load it strictly
    (every tensor, BatchNorm running statistics included, bit for bit). A checkpoint of
    another depth, or one that is not an IResNet at all, raises :class:`BackboneError`
    saying what was expected."""
    name = model.name
    notes: dict = {}
    state = iresnet_state_from_checkpoint(raw, name, notes)
    own = model.state_dict()
    expected = model.layers_spec
    check_keys_belong(state, own, name, "an IResNet face backbone",
                      "the InsightFace backbone.pth layout (is this an audio or torchvision checkpoint?):")
    if not any(k.endswith("prelu.weight") for k in state):
        raise BackboneError(
            f"checkpoint has no PReLU keys: it looks like a torchvision ResNet, not an IResNet ({name!r})",
            hint="load torchvision checkpoints with --face-backbone resnet18/resnet50; "
                 f"{name} expects the InsightFace backbone.pth layout ({len(own)} tensors)")
    found = blocks_per_stage(state)
    if found != expected:
        guess = next((n for n, l in IRESNET_LAYERS.items() if l == found), None)
        raise BackboneError(
            f"checkpoint has IResNet blocks per stage {list(found)}"
            + (f" ({guess})" if guess else "") + f", but {name!r} expects {list(expected)}",
            hint=(f"use --face-backbone {guess}" if guess in REGISTERED else
                  f"give an {name} backbone.pth ({len(own)} tensors)"))
    load_face_state(model, name, state, notes, "insightface backbone.pth")


def _register() -> None:
    spec = InputSpec(modality="face", embedding_dim=EMBEDDING_DIM, features="rgb", crop=CROP,
                     mean=INSIGHTFACE_MEAN, std=INSIGHTFACE_STD)
    formats = ("InsightFace arcface_torch backbone.pth (raw state dict)",
               "DataParallel 'module.'-prefixed state dict",
               "dict nesting the state dict under 'state_dict'/'model'/'state_dict_backbone'")
    for name in REGISTERED:
        register_backbone(BackboneEntry(
            name=name, modality="face", spec=spec, build=build_iresnet, build_kwargs={"name": name},
            load_state=load_iresnet_state, formats=formats,
            description=f"IResNet-{name[7:]} (ArcFace/InsightFace), blocks {list(IRESNET_LAYERS[name])}, "
                        f"512-d at 112x112"))


_register()
