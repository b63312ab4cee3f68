"""torchvision ResNet face backbones: ``resnet18`` (512-d; the 2403.04661 DCA paper's
visual backbone) and ``resnet50`` (2048-d; the 2311.05071 paper's video backbone).

The module is torchvision's own ``ResNet`` (BasicBlock [2,2,2,2] / Bottleneck [3,4,6,3])
with the classifier ``fc`` replaced by the identity, so the embedding is the global
average pool of ``layer4``: ``(B, 3, 224, 224) -> (B, 512)`` or ``(B, 2048)``. Keys and
shapes are exactly those of ``torchvision.models.resnet18/50().state_dict()`` minus
``fc.weight``/``fc.bias``.

Input: RGB in [0, 1] normalised with the ImageNet mean/std, 224x224.

Accepted checkpoints: a plain torchvision state dict (``resnet50-0676ba61.pth``, or a
face-trained one in the same layout); its classifier ``fc.*`` (any number of classes)
is dropped with a log note. Also ``module.``/``backbone.``/``model.``/``_orig_mod.``
prefixed keys and dicts nesting the state dict under ``state_dict``/``model``.

Random init (``weights="random"``) is torchvision's own (Kaiming-normal fan-out convs,
BN weight 1 / bias 0). In eval mode its pooled post-ReLU features are all
non-negative, so raw cosines between random-init embeddings of different images are high
(about 0.97-0.999) though image-dependent; use ``iresnet18`` for random toy runs.
"""

from __future__ import annotations

from typing import Mapping

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

from extractors.checkpoints import add_prefix, blocks_per_stage, cloned_state
from extractors.face.common import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    check_face_input,
    check_keys_belong,
    face_state_from_checkpoint,
    load_face_state,
    log,
)
from extractors.registry import BackboneEntry, InputSpec, register_backbone
from pipeline.core.errors import BackboneError

CROP = 224
#: name -> (block type, blocks per stage, embedding size); 34/101/152 only for error hints
RESNET_ARCHS: dict[str, tuple[type[nn.Module], tuple[int, int, int, int], int]] = {
    "resnet18": (BasicBlock, (2, 2, 2, 2), 512),
    "resnet34": (BasicBlock, (3, 4, 6, 3), 512),
    "resnet50": (Bottleneck, (3, 4, 6, 3), 2048),
    "resnet101": (Bottleneck, (3, 4, 23, 3), 2048),
    "resnet152": (Bottleneck, (3, 8, 36, 3), 2048),
}
REGISTERED = ("resnet18", "resnet50")
CLASSIFIER_KEYS = ("fc.weight", "fc.bias")


class FaceResNet(ResNet):
    """torchvision ``ResNet`` whose ``fc`` is the identity: ``forward -> (B, 512|2048)``
    float32 (the pooled ``layer4`` output)."""

    def __init__(self, name: str):
        if name not in RESNET_ARCHS:
            raise BackboneError(f"unknown ResNet depth {name!r}", hint=f"one of {', '.join(REGISTERED)}")
        block, layers, dim = RESNET_ARCHS[name]
        super().__init__(block, list(layers))
        self.fc = nn.Identity()
        self.name = name
        self.layers_spec = layers
        self.embedding_dim = dim
        self.load_info: dict = {"format": "random"}  # replaced by load_resnet_state

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_face_input(self.name, x, CROP)
        return super().forward(x).float()  # float32 also under bf16/fp16 autocast, like IResNet


def build_resnet(name: str) -> FaceResNet:
    """A randomly initialised (torchvision init) :class:`FaceResNet`."""
    return FaceResNet(name)


def guess_resnet_arch(keys) -> str | None:
    """Name of the torchvision ResNet whose block layout the state-dict ``keys`` show
    (``layerS.B.conv3`` present -> Bottleneck), or None."""
    keys = list(keys)
    counts = blocks_per_stage(keys)
    bottleneck = any(k.endswith(".conv3.weight") for k in keys)
    for name, (block, layers, _) in RESNET_ARCHS.items():
        if counts == layers and (block is Bottleneck) == bottleneck:
            return name
    return None


def resnet_state_from_checkpoint(raw, name: str = "resnet", notes: dict | None = None) -> dict[str, torch.Tensor]:
    """Published/wrapped checkpoint -> our module's state dict: undo nesting and prefixes,
    then drop the ImageNet (or any) classifier ``fc.*`` with a log note; what was undone
    or dropped goes into ``notes`` when given."""
    notes = {} if notes is None else notes
    state = face_state_from_checkpoint(raw, name, notes)
    dropped = [f"{k} {tuple(state[k].shape)}" for k in CLASSIFIER_KEYS if k in state]
    if dropped:
        notes["dropped_classifier"] = dropped
        log.warning("%s: dropped the classifier %s; the embedding is the pooled layer4 output",
                    name, ", ".join(dropped))
        for k in CLASSIFIER_KEYS:
            state.pop(k, None)
    return state


def resnet_to_published(source: nn.Module | Mapping[str, torch.Tensor], prefix: str = "",
                        fc: tuple[torch.Tensor, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """Our module (or its state dict) -> the torchvision layout ``torch.save`` would write.
    ``fc=(weight, bias)`` re-attaches a classifier (``(classes, D)``, ``(classes,)``) so
    the result loads into ``torchvision.models.resnetNN(num_classes=classes)``;
    ``prefix="module."`` gives the DataParallel layout."""
    out = cloned_state(source)
    if fc is not None:
        out["fc.weight"], out["fc.bias"] = fc[0].detach().clone(), fc[1].detach().clone()
    return add_prefix(out, prefix)


def load_resnet_state(model: FaceResNet, raw) -> None:
    """``BackboneEntry.load_state`` of the torchvision ResNets: convert ``raw`` and load it
    strictly (BatchNorm running statistics included, bit for bit). A checkpoint of another
    depth, an InsightFace IResNet or a non-face checkpoint raises :class:`BackboneError`
    saying what was expected."""
    name = model.name
    notes: dict = {}
    state = resnet_state_from_checkpoint(raw, name, notes)
    own = model.state_dict()
    if any(k.endswith("prelu.weight") for k in state) or "features.running_mean" in state:
        raise BackboneError(
            f"checkpoint is an InsightFace IResNet (PReLU/features keys), not a torchvision {name}",
            hint="load it with --face-backbone iresnet18/iresnet50/iresnet100")
    check_keys_belong(state, own, name, "a torchvision ResNet",
                      "torchvision (plus an optional fc.*; is this an audio checkpoint?)")
    found = guess_resnet_arch(state)
    if found != name:
        expected = RESNET_ARCHS[name]
        raise BackboneError(
            f"checkpoint is a {found or 'ResNet of unknown depth'}, but {name!r} expects "
            f"{expected[0].__name__} blocks {list(expected[1])}",
            hint=(f"use --face-backbone {found}" if found in REGISTERED else
                  f"give a torchvision {name} state dict ({len(own)} tensors)"))
    load_face_state(model, name, state, notes, "torchvision resnet")


def _register() -> None:
    formats = ("torchvision ResNet state dict (fc.* classifier dropped)",
               "'module.'/'backbone.'-prefixed state dict",
               "dict nesting the state dict under 'state_dict'/'model'")
    papers = {"resnet18": "visual backbone of 2403.04661 (DCA)",
              "resnet50": "video backbone of 2311.05071"}
    for name in REGISTERED:
        dim = RESNET_ARCHS[name][2]
        spec = InputSpec(modality="face", embedding_dim=dim, features="rgb", crop=CROP,
                         mean=IMAGENET_MEAN, std=IMAGENET_STD)
        register_backbone(BackboneEntry(
            name=name, modality="face", spec=spec, build=build_resnet, build_kwargs={"name": name},
            load_state=load_resnet_state, formats=formats,
            description=f"torchvision {name}, fc removed: pooled {dim}-d at 224x224; {papers[name]}"))


_register()
