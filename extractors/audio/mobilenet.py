"""``mobilenetv2_mel``: MobileNetV2 on a log-mel "image", the audio backbone of
arXiv:2311.05071 (audio-visual fusion architectures for identity verification).

Architecture: torchvision's ``mobilenet_v2`` (width 1.0: a stride-2 3x3 stem to 32
channels, 17 inverted-residual blocks ``t, c, n, s = (1,16,1,1) (6,24,2,2) (6,32,3,2)
(6,64,4,2) (6,96,3,1) (6,160,3,2) (6,320,1,1)``, a 1x1 conv to 1280, BatchNorm + ReLU6
throughout) with two audio changes: the stem takes **1** input channel (the log-mel
spectrogram as a ``(B, 1, 64 mel, T frames)`` image), and the global average pool is a
mean over frequency and over each clip's valid time steps only. ``classifier`` =
``Dropout(0.2), Linear(1280, D)`` gives the D-d embedding. Key names are exactly
torchvision's (``features.0.0.weight`` ... ``features.18.1.*``, ``classifier.1.*``), so a
``torchvision.models.mobilenet_v2(num_classes=D)`` with ``features[0][0]`` replaced by a
1-channel conv saves a checkpoint this backbone loads as is.

Embedding size: the paper's summary gives "356-dim" for the audio embedding, which we
take for a typo of 256: its mean fusion averages the audio and video embeddings, which
needs equal sizes, and the fused embedding is 256-d; 356 is not a MobileNetV2 width
either. So ``D = 256`` by default (``embedding_dim`` option for other checkpoints).

Front-end: :class:`extractors.audio.frontends.LogMel64` (64 HTK mel bands, 25 ms / 10 ms,
log, per-clip mean normalisation). The paper publishes no checkpoint; ImageNet
torchvision weights (``mobilenet_v2-*.pth``: RGB stem, 1000-way classifier) are accepted
as an initialisation: the stem's RGB kernels are summed into one channel (the response to
a grey image is unchanged) and the classifier stays at its seeded random init -- the load
info says so.

Padding: each 3x3 convolution (stem, depthwise) sees zeros beyond each clip's own length
(``ceil(frames / 2**k)`` after k stride-2 layers) and the pool averages valid steps only,
so a clip's embedding does not depend on the batch.
"""

from __future__ import annotations

from typing import Mapping

import torch
from torch import nn

from extractors.audio.frontends import LogMel64, check_wave, no_autocast, valid_mask
from extractors.audio.resnet import halve, mask_time
from extractors.checkpoints import add_prefix, cloned_state, foreign_checkpoint_error, strip_prefixes, unwrap_state_dict
from extractors.registry import BackboneEntry, InputSpec, check_state_dict, register_backbone
from pipeline.core.errors import BackboneError

NAME = "mobilenetv2_mel"
EMBEDDING_DIM = 256
SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))
LAST_CHANNEL = 1280


def conv_bn_act(cin: int, cout: int, kernel: int = 3, stride: int = 1, groups: int = 1) -> nn.Sequential:
    """torchvision ``Conv2dNormActivation``: keys ``.0`` conv (no bias), ``.1`` BN, ReLU6."""
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU6(inplace=True))


class InvertedResidual(nn.Module):
    """torchvision's block: ``conv = [expand 1x1 (t != 1)], depthwise 3x3, project 1x1, BN``."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int):
        super().__init__()
        hidden = cin * expand
        self.stride, self.use_res = stride, stride == 1 and cin == cout
        layers: list[nn.Module] = [conv_bn_act(cin, hidden, 1)] if expand != 1 else []
        layers += [conv_bn_act(hidden, hidden, 3, stride, groups=hidden),
                   nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout)]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out, out_frames = x, frames
        for layer in self.conv:
            if isinstance(layer, nn.Sequential) and layer[0].kernel_size[0] > 1:
                out = layer(mask_time(out, frames))
                out_frames = halve(frames) if self.stride == 2 else frames
            else:
                out = layer(out)
        return (x + out if self.use_res else out), out_frames


class MobileNetV2Mel(nn.Module):
    """MobileNetV2 on log-mel; ``forward(wave, lengths) -> (B, embedding_dim)``."""

    def __init__(self, embedding_dim: int = EMBEDDING_DIM, n_mels: int = 64, dropout: float = 0.2):
        super().__init__()
        self.embedding_dim = embedding_dim
        self.frontend = LogMel64(n_mels=n_mels)
        features: list[nn.Module] = [conv_bn_act(1, 32, 3, 2)]
        cin = 32
        for t, c, n, s in SETTINGS:
            for i in range(n):
                features.append(InvertedResidual(cin, c, s if i == 0 else 1, t))
                cin = c
        features.append(conv_bn_act(cin, LAST_CHANNEL, 1))
        self.features = nn.Sequential(*features)
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(LAST_CHANNEL, embedding_dim))
        for m in self.modules():                      # torchvision's initialisation
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)
        self.load_info = {"format": "random", "frontend": self.frontend.name}

    def forward_features(self, feats: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
        """``(B, T, n_mels)`` features with ``frames`` valid per clip -> embeddings."""
        x = feats.transpose(1, 2).unsqueeze(1)                   # (B, 1, mel, T)
        x = self.features[0](mask_time(x, frames))
        frames = halve(frames)
        for block in self.features[1:-1]:
            x, frames = block(x, frames)
        x = self.features[-1](x)
        with no_autocast(x):                                     # pooling and embedding in float32
            x = x.float()
            m = valid_mask(frames, x.shape[-1])[:, None, None, :].to(x.dtype)
            pooled = (x * m).sum((2, 3)) / (m.sum((2, 3)) * x.shape[2])
            return self.classifier(pooled)

    def forward(self, wave: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        wave, lengths = check_wave(wave, lengths)
        feats, frames = self.frontend(wave, lengths)
        return self.forward_features(feats, frames)


# --------------------------------------------------------------------------- checkpoints

def to_torchvision(source: nn.Module | Mapping[str, torch.Tensor], prefix: str = "") -> dict[str, torch.Tensor]:
    """Our module (or state dict) -> torchvision ``mobilenet_v2`` layout (same names)."""
    return add_prefix(cloned_state(source), prefix)


def from_torchvision(raw, own: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict]:
    """torchvision-layout checkpoint -> our state dict (+ notes). An RGB stem is summed to
    one channel; a classifier of another size (ImageNet's 1000 classes) is left out."""
    state, stripped = strip_prefixes(unwrap_state_dict(raw, NAME))
    notes: dict = {"stripped_prefixes": stripped}
    stem = state.get("features.0.0.weight")
    if stem is not None and stem.dim() == 4 and stem.shape[1] == 3:
        state["features.0.0.weight"] = stem.sum(dim=1, keepdim=True)
        notes["stem"] = "RGB kernels summed to 1 channel"
    cls = state.get("classifier.1.weight")
    if cls is not None and tuple(cls.shape) != tuple(own["classifier.1.weight"].shape):
        if int(cls.shape[0]) == 1000:
            state = {k: v for k, v in state.items() if not k.startswith("classifier.")}
            notes["classifier"] = "ImageNet 1000-way classifier dropped; embedding layer left at seeded random init"
    return state, notes


def load_mobilenet_state(module: MobileNetV2Mel, raw) -> None:
    """``BackboneEntry.load_state`` of ``mobilenetv2_mel``: every ``features.*`` tensor
    strictly; the classifier too unless the checkpoint is an ImageNet one."""
    own = module.state_dict()
    state, notes = from_torchvision(raw, own)
    if "features.0.0.weight" not in state or "features.18.0.weight" not in state:
        raise foreign_checkpoint_error(NAME, state, "a torchvision-layout MobileNetV2 (features.*, classifier.*)", own)
    cls = state.get("classifier.1.weight")
    if cls is not None and int(cls.shape[0]) != module.embedding_dim:
        raise BackboneError(f"checkpoint's classifier gives {int(cls.shape[0])}-d embeddings, but {NAME!r} is "
                            f"{module.embedding_dim}-d", hint="register a MobileNetV2Mel(embedding_dim=...) backbone "
                            "for this checkpoint, or give a 256-d one")
    partial = "classifier" in notes
    check_state_dict(NAME, module, state if not partial else
                     {**state, **{k: v for k, v in own.items() if k.startswith("classifier.")}}, strict=True)
    module.load_info = {"format": "torchvision mobilenet_v2" + (" (ImageNet init)" if partial else ""),
                        "frontend": module.frontend.name, **notes}


register_backbone(BackboneEntry(
    name=NAME, modality="audio",
    spec=InputSpec(modality="audio", embedding_dim=EMBEDDING_DIM, sample_rate=16000, features="logmel64"),
    build=MobileNetV2Mel, load_state=load_mobilenet_state,
    formats=("torchvision mobilenet_v2 state dict with a 1-channel stem and classifier.1 = Linear(1280, 256)",
             "torchvision ImageNet mobilenet_v2 weights (stem summed to 1 channel, classifier left random)",
             "'module.'-prefixed or nested under 'state_dict'/'model'"),
    description="MobileNetV2 on 64-band log-mel (audio backbone of arXiv:2311.05071), 256-d"))
