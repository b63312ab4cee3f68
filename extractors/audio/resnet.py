"""``resnet34``: WeSpeaker's ResNet34 speaker encoder (256-d, TSTP pooling) on Kaldi fbank.

Architecture (``wespeaker/models/resnet.py``, ``ResNet34(feat_dim=80, embed_dim=256,
pooling_func="TSTP")``; our own module with the same key names): input ``(B, 1, 80, T)``
(frequency x time); ``conv1`` 3x3 (32 ch, no bias) -> BN -> ReLU; four stages of
BasicBlocks with 3/4/6/3 blocks and 32/64/128/256 channels, the first block of stages
2-4 with stride 2 in both axes and a 1x1 conv + BN shortcut (``shortcut.0``/``shortcut.1``);
TSTP = mean and unbiased std (``sqrt(var + 1e-7)``) over time of the ``256 x 10``
channel-frequency map (flattened channel-major), 5120-d; ``seg_1`` Linear(5120, 256) is
the embedding. With ``two_emb_layer`` checkpoints (``seg_bn_1`` affine-free BN + ``seg_2``)
the embedding is ``seg_2(seg_bn_1(ReLU(seg_1(.))))``, as WeSpeaker's ``forward`` returns it.

Front-end: :class:`extractors.audio.frontends.KaldiFbank80` (WeSpeaker's
``compute_fbank`` with dither 0 + ``apply_cmvn`` mean normalisation).

Checkpoints: WeSpeaker ``avg_model.pt`` is ``torch.save(model.state_dict())`` of the
speaker model with the training head attached as ``projection.*`` (dropped here); also
accepted with ``module.`` (DDP), ``resnet.`` (pyannote's WeSpeakerResNet34 inside a
Lightning ``state_dict``) or ``front.`` prefixes.

Padding: every 3x3 convolution sees zeros beyond each clip's own length (as the clip
alone would), and the statistics use only the clip's valid time steps
(``ceil(frames / 8)`` after three stride-2 stages), so a clip's embedding does not depend
on the batch.
"""

from __future__ import annotations

from typing import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from extractors.audio.frontends import KaldiFbank80, check_wave, no_autocast, valid_mask
from extractors.checkpoints import (
    add_prefix,
    blocks_per_stage,
    cloned_state,
    foreign_checkpoint_error,
    split_training_only,
    strip_prefixes,
    unwrap_state_dict,
)
from extractors.registry import BackboneEntry, InputSpec, check_state_dict, register_backbone
from pipeline.core.errors import BackboneError

NAME = "resnet34"
LAYERS = (3, 4, 6, 3)


def mask_time(x: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
    """Zero the time steps ``t >= frames[b]`` of ``x (B, C, F, T)``."""
    return x * valid_mask(frames, x.shape[-1])[:, None, None, :].to(x.dtype)


def halve(frames: torch.Tensor) -> torch.Tensor:
    """Valid length after a k=3, pad=1, stride-2 conv: ``ceil(frames / 2)``."""
    return torch.div(frames + 1, 2, rounding_mode="floor")


class BasicBlock(nn.Module):
    def __init__(self, cin: int, planes: int, stride: int = 1):
        super().__init__()
        self.stride = stride
        self.conv1 = nn.Conv2d(cin, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x: torch.Tensor, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out_frames = halve(frames) if self.stride == 2 else frames
        out = F.relu(self.bn1(self.conv1(mask_time(x, frames))))
        out = self.bn2(self.conv2(mask_time(out, out_frames)))
        return F.relu(out + self.shortcut(x)), out_frames


class WeSpeakerResNet(nn.Module):
    """ResNet speaker encoder; ``forward(wave, lengths) -> (B, embedding_dim)``."""

    def __init__(self, layers: tuple[int, ...] = LAYERS, m_channels: int = 32, feat_dim: int = 80,
                 embedding_dim: int = 256, two_emb_layer: bool = False):
        super().__init__()
        self.layers_spec, self.m_channels, self.feat_dim, self.embedding_dim = tuple(layers), m_channels, feat_dim, embedding_dim
        self.frontend = KaldiFbank80(n_mels=feat_dim)
        self.conv1 = nn.Conv2d(1, m_channels, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(m_channels)
        cin = m_channels
        for i, (n, mult) in enumerate(zip(layers, (1, 2, 4, 8))):
            blocks = []
            for j in range(n):
                blocks.append(BasicBlock(cin, m_channels * mult, 2 if (j == 0 and i > 0) else 1))
                cin = m_channels * mult
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
        self.stats_dim = (feat_dim // 8) * m_channels * 8
        self.seg_1 = nn.Linear(2 * self.stats_dim, embedding_dim)
        self.configure(two_emb_layer)
        self.load_info = {"format": "random", "frontend": self.frontend.name}

    def configure(self, two_emb_layer: bool) -> None:
        self.two_emb_layer = two_emb_layer
        self.seg_bn_1 = nn.BatchNorm1d(self.embedding_dim, affine=False) if two_emb_layer else None
        self.seg_2 = nn.Linear(self.embedding_dim, self.embedding_dim) if two_emb_layer else None

    def forward_features(self, feats: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
        """``(B, T, feat_dim)`` features with ``frames`` valid per clip -> embeddings."""
        x = feats.transpose(1, 2).unsqueeze(1)                   # (B, 1, F, T)
        x = F.relu(self.bn1(self.conv1(mask_time(x, frames))))
        for stage in (self.layer1, self.layer2, self.layer3, self.layer4):
            for block in stage:
                x, frames = block(x, frames)
        with no_autocast(x):                                     # statistics and embedding in float32
            x = x.float().reshape(x.shape[0], -1, x.shape[-1])   # (B, C*F', T')
            m = valid_mask(frames, x.shape[-1]).unsqueeze(1).to(x.dtype)
            n = m.sum(2)
            mean = (x * m).sum(2) / n
            var = ((x - mean.unsqueeze(2)).square() * m).sum(2) / (n - 1).clamp(min=1)
            emb = self.seg_1(torch.cat([mean, torch.sqrt(var + 1e-7)], dim=1))
            if self.two_emb_layer:
                emb = self.seg_2(self.seg_bn_1(F.relu(emb)))
            return emb

    def forward(self, wave: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        wave, lengths = check_wave(wave, lengths)
        feats, frames = self.frontend(wave, lengths)
        return self.forward_features(feats, frames)


# --------------------------------------------------------------------------- checkpoints

def to_wespeaker(source: nn.Module | Mapping[str, torch.Tensor], prefix: str = "") -> dict[str, torch.Tensor]:
    """Our module (or state dict) -> WeSpeaker's ``avg_model.pt`` layout (same key names;
    ``prefix="module."``/``"resnet."`` for DDP / pyannote-wrapped files)."""
    return add_prefix(cloned_state(source), prefix)


def from_wespeaker(raw) -> tuple[dict[str, torch.Tensor], dict]:
    """Published/wrapped checkpoint -> our state dict, and what was undone."""
    state, stripped = strip_prefixes(unwrap_state_dict(raw, NAME))
    state, dropped = split_training_only(state)
    return state, {"stripped_prefixes": stripped, "dropped_keys": dropped[:8]}


def load_resnet_state(module: WeSpeakerResNet, raw) -> None:
    """``BackboneEntry.load_state`` of ``resnet34``: strict, every tensor."""
    state, undone = from_wespeaker(raw)
    own = module.state_dict()
    if "seg_1.weight" not in state or "conv1.weight" not in state or "prelu.weight" in state:
        raise foreign_checkpoint_error(NAME, state, "a WeSpeaker ResNet34 avg_model.pt", own)
    found = blocks_per_stage(state)
    if found != module.layers_spec:
        raise BackboneError(f"checkpoint is a WeSpeaker ResNet with blocks per stage {list(found)}, but "
                            f"{NAME!r} expects {list(module.layers_spec)} (ResNet34)",
                            hint="only ResNet34 is registered; give voxceleb_resnet34(_LM)/avg_model.pt")
    if any(k.startswith("pool.") for k in state):
        raise BackboneError("checkpoint has a parametric pooling layer (pool.*); resnet34 implements WeSpeaker's "
                            "TSTP pooling only", hint="use a ResNet34-TSTP checkpoint (the VoxCeleb recipe default)")
    module.configure("seg_2.weight" in state)
    check_state_dict(NAME, module, state, strict=True)
    module.load_info = {"format": "WeSpeaker avg_model.pt", "frontend": module.frontend.name,
                        "two_emb_layer": module.two_emb_layer, **undone}


register_backbone(BackboneEntry(
    name=NAME, modality="audio",
    spec=InputSpec(modality="audio", embedding_dim=256, sample_rate=16000, features="fbank80"),
    build=WeSpeakerResNet, load_state=load_resnet_state,
    formats=("WeSpeaker avg_model.pt (conv1.*, layer1-4.*, seg_1.*; projection.* ignored; front-end kaldi_fbank80)",
             "'module.' (DDP), 'resnet.' (pyannote WeSpeakerResNet34) or 'front.'-prefixed, or nested under "
             "'state_dict'/'model'"),
    description="WeSpeaker ResNet34-TSTP, 32 base channels, 256-d, Kaldi fbank 80 + CMN"))
