"""``ecapa_tdnn`` (C=1024) and ``ecapa_tdnn_c512``: ECAPA-TDNN (Desplanques et al. 2020),
192-d, loading SpeechBrain ``embedding_model.ckpt`` and WeSpeaker ``avg_model.pt``.

One module, two published layouts. The two reference implementations share the topology
-- a k=5 TDNN stem, three SE-Res2Net blocks (k=3, dilations 2/3/4, scale 8, SE bottleneck
128), multi-layer aggregation of the three block outputs by a 1x1 conv, attentive
statistics pooling (attention bottleneck 128, optional global context), BatchNorm and a
linear embedding -- and differ in details, which the module follows per ``flavour``:

=====================  ==================================  ==================================
detail                 ``speechbrain`` (lobes ECAPA_TDNN)   ``wespeaker`` (models/ecapa_tdnn)
=====================  ==================================  ==================================
conv padding (k > 1)   "same", **reflect**                  zeros
Res2Net split order    chunk 0 passes through first         chunk 7 passes through last
MFA (1x1 conv)         conv -> ReLU -> BatchNorm            conv -> ReLU
aggregated channels M  3C (3072 for C=1024)                 1536 always
attention              conv -> ReLU -> BN -> tanh -> conv   conv -> tanh -> conv
global-context std     biased, sqrt(max(var, 1e-12))        unbiased, sqrt(var + 1e-7)
pooled std             sqrt(max(E[(x-mu)^2], 1e-12))        sqrt(max(E[x^2] - mu^2, 1e-7))
front-end              ``sb_fbank80``                        ``kaldi_fbank80``
=====================  ==================================  ==================================

Our parameter names (``stem``, ``blocks.i.{pre,res2,post,se}``, ``mfa``, ``mfa_bn``,
``pool.{att1,att_bn,att2}``, ``pool_bn``, ``embed``, ``embed_bn``) map one-to-one onto
both layouts (:func:`to_published` / :func:`from_published`); SpeechBrain stores the SE
and final layers as 1x1 ``Conv1d`` weights ``(O, I, 1)`` where we (and WeSpeaker) use
``Linear`` ``(O, I)``. Loading a checkpoint detects its layout, reconfigures the module
(flavour, M, global context, front-end) and records the front-end in the load info.

Padding: the module uses ``lengths`` so that a clip's embedding does not depend on the
batch: each k>1 convolution pads every clip at its own end (reflect or zeros), and SE
means, global-context statistics and the attention softmax use only valid frames.
"""

from __future__ import annotations

import re
from typing import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from extractors.audio.frontends import KaldiFbank80, SpeechBrainFbank80, check_wave, no_autocast, valid_mask
from extractors.checkpoints import (
    cloned_state,
    foreign_checkpoint_error,
    split_training_only,
    strip_prefixes,
    unwrap_state_dict,
)
from extractors.registry import BackboneEntry, InputSpec, check_state_dict, register_backbone
from pipeline.core.errors import BackboneError

FLAVOURS = ("speechbrain", "wespeaker")
FORMATS = {"speechbrain": "SpeechBrain embedding_model.ckpt", "wespeaker": "WeSpeaker avg_model.pt"}
FRONTENDS = {"speechbrain": SpeechBrainFbank80, "wespeaker": KaldiFbank80}
DILATIONS = (2, 3, 4)


def same_pad(x: torch.Tensor, frames: torch.Tensor, pad: int, mode: str) -> torch.Tensor:
    """Pad ``x (B, C, T)`` by ``pad`` on both sides as if clip ``b`` ended at
    ``frames[b]``: ``"zeros"`` zeroes ``t >= frames[b]``; ``"reflect"`` mirrors each clip
    at its own end (torch's reflect rule, clamped for clips shorter than ``pad + 1``)."""
    if pad == 0:
        return x
    B, C, T = x.shape
    if mode == "zeros":
        x = x * valid_mask(frames, T).unsqueeze(1).to(x.dtype)
        return F.pad(x, (pad, pad))
    p = torch.arange(-pad, T + pad, device=x.device).unsqueeze(0).expand(B, -1)
    last = (frames.clamp(min=1) - 1).unsqueeze(1)
    q = p.abs()
    q = torch.where(q > last, 2 * last - q, q)
    q = torch.minimum(q.clamp(min=0), last)
    return x.gather(2, q.unsqueeze(1).expand(B, C, -1))


class ConvBN(nn.Module):
    """``conv (k, dilation) -> ReLU -> BatchNorm`` (both references' TDNN unit)."""

    def __init__(self, cin: int, cout: int, kernel: int = 1, dilation: int = 1):
        super().__init__()
        self.conv = nn.Conv1d(cin, cout, kernel, dilation=dilation)
        self.bn = nn.BatchNorm1d(cout)

    def forward(self, x: torch.Tensor, frames: torch.Tensor, mode: str) -> torch.Tensor:
        pad = self.conv.dilation[0] * (self.conv.kernel_size[0] - 1) // 2
        return self.bn(F.relu(self.conv(same_pad(x, frames, pad, mode))))


class Res2(nn.Module):
    def __init__(self, channels: int, dilation: int, scale: int = 8):
        super().__init__()
        self.scale, w = scale, channels // scale
        self.convs = nn.ModuleList(nn.Conv1d(w, w, 3, dilation=dilation) for _ in range(scale - 1))
        self.bns = nn.ModuleList(nn.BatchNorm1d(w) for _ in range(scale - 1))

    def _unit(self, i: int, x: torch.Tensor, frames: torch.Tensor, mode: str) -> torch.Tensor:
        pad = self.convs[i].dilation[0]
        return self.bns[i](F.relu(self.convs[i](same_pad(x, frames, pad, mode))))

    def forward(self, x: torch.Tensor, frames: torch.Tensor, mode: str, flavour: str) -> torch.Tensor:
        chunks = torch.chunk(x, self.scale, dim=1)
        out: list[torch.Tensor] = []
        if flavour == "speechbrain":                      # y0 = x0, y1 = f(x1), yi = f(xi + y_{i-1})
            out.append(chunks[0])
            y = None
            for i in range(1, self.scale):
                y = self._unit(i - 1, chunks[i] if y is None else chunks[i] + y, frames, mode)
                out.append(y)
        else:                                             # yi = f(xi + y_{i-1}) for i < 7, y7 = x7
            y = None
            for i in range(self.scale - 1):
                y = self._unit(i, chunks[i] if y is None else chunks[i] + y, frames, mode)
                out.append(y)
            out.append(chunks[-1])
        return torch.cat(out, dim=1)


class SE(nn.Module):
    def __init__(self, channels: int, bottleneck: int = 128):
        super().__init__()
        self.fc1 = nn.Linear(channels, bottleneck)
        self.fc2 = nn.Linear(bottleneck, channels)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        m = mask.to(x.dtype)
        s = (x * m).sum(2) / m.sum(2).clamp(min=1)
        return x * torch.sigmoid(self.fc2(F.relu(self.fc1(s)))).unsqueeze(2)


class SERes2Block(nn.Module):
    def __init__(self, channels: int, dilation: int, scale: int = 8, se_channels: int = 128):
        super().__init__()
        self.pre = ConvBN(channels, channels)
        self.res2 = Res2(channels, dilation, scale)
        self.post = ConvBN(channels, channels)
        self.se = SE(channels, se_channels)

    def forward(self, x, frames, mask, mode, flavour):
        y = self.pre(x, frames, mode)
        y = self.res2(y, frames, mode, flavour)
        y = self.post(y, frames, mode)
        return x + self.se(y, mask)


class AttentiveStatsPool(nn.Module):
    def __init__(self, channels: int, attention: int = 128, global_context: bool = True,
                 attention_bn: bool = True):
        super().__init__()
        self.global_context = global_context
        self.att1 = nn.Conv1d(channels * (3 if global_context else 1), attention, 1)
        self.att_bn = nn.BatchNorm1d(attention) if attention_bn else None
        self.att2 = nn.Conv1d(attention, channels, 1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, flavour: str) -> torch.Tensor:
        m = mask.to(x.dtype)                                           # (B, 1, T)
        n = m.sum(2, keepdim=True).clamp(min=1)
        if self.global_context:
            mean = (x * m).sum(2, keepdim=True) / n
            sq = ((x - mean).square() * m).sum(2, keepdim=True)
            if flavour == "speechbrain":
                std = torch.sqrt((sq / n).clamp(min=1e-12))
            else:
                std = torch.sqrt(sq / (n - 1).clamp(min=1) + 1e-7)
            T = x.shape[2]
            h = torch.cat([x, mean.expand(-1, -1, T), std.expand(-1, -1, T)], dim=1)
        else:
            h = x
        h = self.att1(h)
        if flavour == "speechbrain":
            h = self.att_bn(F.relu(h))
        a = self.att2(torch.tanh(h)).masked_fill(~mask, float("-inf")).softmax(dim=2)
        mu = (a * x).sum(2)
        if flavour == "speechbrain":
            sd = torch.sqrt((a * (x - mu.unsqueeze(2)).square()).sum(2).clamp(min=1e-12))
        else:
            sd = torch.sqrt(((a * x.square()).sum(2) - mu.square()).clamp(min=1e-7))
        return torch.cat([mu, sd], dim=1)


class ECAPATDNN(nn.Module):
    """ECAPA-TDNN; ``forward(wave, lengths) -> (B, embedding_dim)`` (not normalised)."""

    def __init__(self, channels: int = 1024, *, flavour: str = "speechbrain", mfa_channels: int | None = None,
                 global_context: bool = True, embedding_dim: int = 192, feat_dim: int = 80,
                 attention_channels: int = 128, se_channels: int = 128, scale: int = 8, embed_bn: bool = False):
        super().__init__()
        self.channels, self.embedding_dim = channels, embedding_dim
        self.feat_dim, self.attention_channels, self.se_channels, self.scale = feat_dim, attention_channels, se_channels, scale
        self.stem = ConvBN(feat_dim, channels, kernel=5)
        self.blocks = nn.ModuleList(SERes2Block(channels, d, scale, se_channels) for d in DILATIONS)
        self.configure(flavour, mfa_channels=mfa_channels, global_context=global_context, embed_bn=embed_bn)
        self.load_info = {"format": "random", "frontend": self.frontend.name}

    def configure(self, flavour: str, *, mfa_channels: int | None = None, global_context: bool = True,
                  embed_bn: bool = False) -> None:
        """(Re)build the flavour-dependent parts: front-end, MFA, pooling, embedding."""
        if flavour not in FLAVOURS:
            raise BackboneError(f"unknown ECAPA flavour {flavour!r}", hint=f"one of {FLAVOURS}")
        C = self.channels
        M = mfa_channels or (3 * C if flavour == "speechbrain" else 1536)
        self.flavour, self.mfa_channels, self.global_context = flavour, M, global_context
        self.pad_mode = "reflect" if flavour == "speechbrain" else "zeros"
        self.frontend = FRONTENDS[flavour]()
        self.mfa = nn.Conv1d(3 * C, M, 1)
        self.mfa_bn = nn.BatchNorm1d(M) if flavour == "speechbrain" else None
        self.pool = AttentiveStatsPool(M, self.attention_channels, global_context, attention_bn=flavour == "speechbrain")
        self.pool_bn = nn.BatchNorm1d(2 * M)
        self.embed = nn.Linear(2 * M, self.embedding_dim)
        self.embed_bn = nn.BatchNorm1d(self.embedding_dim) if embed_bn else None

    def config(self) -> dict:
        return {"channels": self.channels, "flavour": self.flavour, "mfa_channels": self.mfa_channels,
                "global_context": self.global_context, "embedding_dim": self.embedding_dim,
                "embed_bn": self.embed_bn is not None}

    def forward_features(self, feats: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
        """``(B, F, feat_dim)`` features with ``frames`` valid per clip -> embeddings."""
        x = feats.transpose(1, 2)
        mask = valid_mask(frames, x.shape[2]).unsqueeze(1)
        x = self.stem(x, frames, self.pad_mode)
        outs = []
        for block in self.blocks:
            x = block(x, frames, mask, self.pad_mode, self.flavour)
            outs.append(x)
        x = F.relu(self.mfa(torch.cat(outs, dim=1)))
        if self.mfa_bn is not None:
            x = self.mfa_bn(x)
        with no_autocast(x):                                     # statistics and embedding in float32
            x = self.embed(self.pool_bn(self.pool(x.float(), mask, self.flavour)))
            return self.embed_bn(x) if self.embed_bn is not None else x

    def forward(self, wave: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        wave, lengths = check_wave(wave, lengths)
        feats, frames = self.frontend(wave, lengths)
        return self.forward_features(feats, frames)


# --------------------------------------------------------------------------- layouts

_SB_RULES = [
    (r"stem\.conv\.(\w+)", r"blocks.0.conv.conv.\1"), (r"stem\.bn\.(\w+)", r"blocks.0.norm.norm.\1"),
    (r"blocks\.(\d+)\.pre\.conv\.(\w+)", "blocks.{i}.tdnn1.conv.conv.\\2"),
    (r"blocks\.(\d+)\.pre\.bn\.(\w+)", "blocks.{i}.tdnn1.norm.norm.\\2"),
    (r"blocks\.(\d+)\.res2\.convs\.(\d+)\.(\w+)", "blocks.{i}.res2net_block.blocks.\\2.conv.conv.\\3"),
    (r"blocks\.(\d+)\.res2\.bns\.(\d+)\.(\w+)", "blocks.{i}.res2net_block.blocks.\\2.norm.norm.\\3"),
    (r"blocks\.(\d+)\.post\.conv\.(\w+)", "blocks.{i}.tdnn2.conv.conv.\\2"),
    (r"blocks\.(\d+)\.post\.bn\.(\w+)", "blocks.{i}.tdnn2.norm.norm.\\2"),
    (r"blocks\.(\d+)\.se\.fc1\.(\w+)", "blocks.{i}.se_block.conv1.conv.\\2"),
    (r"blocks\.(\d+)\.se\.fc2\.(\w+)", "blocks.{i}.se_block.conv2.conv.\\2"),
    (r"mfa\.(\w+)", r"mfa.conv.conv.\1"), (r"mfa_bn\.(\w+)", r"mfa.norm.norm.\1"),
    (r"pool\.att1\.(\w+)", r"asp.tdnn.conv.conv.\1"), (r"pool\.att_bn\.(\w+)", r"asp.tdnn.norm.norm.\1"),
    (r"pool\.att2\.(\w+)", r"asp.conv.conv.\1"), (r"pool_bn\.(\w+)", r"asp_bn.norm.\1"),
    (r"embed\.(\w+)", r"fc.conv.\1"),
]
_WS_RULES = [
    (r"stem\.conv\.(\w+)", r"layer1.conv.\1"), (r"stem\.bn\.(\w+)", r"layer1.bn.\1"),
    (r"blocks\.(\d+)\.pre\.(conv|bn)\.(\w+)", "layer{i}.se_res2block.0.\\2.\\3"),
    (r"blocks\.(\d+)\.res2\.(convs|bns)\.(\d+)\.(\w+)", "layer{i}.se_res2block.1.\\2.\\3.\\4"),
    (r"blocks\.(\d+)\.post\.(conv|bn)\.(\w+)", "layer{i}.se_res2block.2.\\2.\\3"),
    (r"blocks\.(\d+)\.se\.fc1\.(\w+)", "layer{i}.se_res2block.3.linear1.\\2"),
    (r"blocks\.(\d+)\.se\.fc2\.(\w+)", "layer{i}.se_res2block.3.linear2.\\2"),
    (r"mfa\.(\w+)", r"conv.\1"), (r"pool\.att1\.(\w+)", r"pool.linear1.\1"),
    (r"pool\.att2\.(\w+)", r"pool.linear2.\1"), (r"pool_bn\.(\w+)", r"bn.\1"),
    (r"embed\.(\w+)", r"linear.\1"), (r"embed_bn\.(\w+)", r"bn2.\1"),
]
_RULES = {"speechbrain": (_SB_RULES, 1), "wespeaker": (_WS_RULES, 2)}   # published block index offset
_SB_CONV_AS_LINEAR = re.compile(r"(blocks\.\d+\.se\.fc[12]|embed)\.weight")


def published_key(key: str, flavour: str) -> str:
    """Our key -> the key of the same tensor in ``flavour``'s published layout."""
    rules, offset = _RULES[flavour]
    for pattern, template in rules:
        m = re.fullmatch(pattern, key)
        if m:
            out = template.replace("{i}", str(int(m.group(1)) + offset)) if "{i}" in template else template
            return m.expand(out)
    raise BackboneError(f"ECAPA key {key!r} has no {flavour} counterpart")


def to_published(source: nn.Module | Mapping[str, torch.Tensor], flavour: str, prefix: str = "") -> dict[str, torch.Tensor]:
    """Our module (or state dict) -> ``flavour``'s published layout, as ``torch.save``
    would write it (``prefix="embedding_model."``/``"module."`` for wrapped files)."""
    out = {}
    for k, v in cloned_state(source).items():
        if flavour == "speechbrain" and _SB_CONV_AS_LINEAR.fullmatch(k):
            v = v.unsqueeze(-1)
        out[prefix + published_key(k, flavour)] = v
    return out


def from_published(state: Mapping[str, torch.Tensor], flavour: str, own_keys) -> dict[str, torch.Tensor]:
    """``flavour``'s published state dict -> our keys (for a module whose keys are
    ``own_keys``). Keys outside the layout raise :class:`BackboneError`."""
    inverse = {published_key(k, flavour): k for k in own_keys}
    unknown = [k for k in state if k not in inverse]
    if unknown:
        raise BackboneError(f"{len(unknown)} key(s) are not part of the {FORMATS[flavour]} layout of this "
                            f"ECAPA configuration, e.g. {unknown[:4]}",
                            hint=f"expected keys like {list(inverse)[:3]} ({len(inverse)} tensors)")
    out = {}
    for k, v in state.items():
        ours = inverse[k]
        if flavour == "speechbrain" and _SB_CONV_AS_LINEAR.fullmatch(ours) and v.dim() == 3:
            v = v.squeeze(-1)
        out[ours] = v
    return out


def detect_config(state: Mapping[str, torch.Tensor]) -> dict | None:
    """Layout and shape-derived configuration of a (prefix-stripped) ECAPA checkpoint:
    ``{"flavour", "channels", "feat_dim", "mfa_channels", "global_context",
    "embedding_dim", "embed_bn"}``, or None if it is neither layout."""
    if "blocks.0.conv.conv.weight" in state and "mfa.conv.conv.weight" in state:
        stem, mfa = state["blocks.0.conv.conv.weight"], state["mfa.conv.conv.weight"]
        att, fc = state.get("asp.tdnn.conv.conv.weight"), state.get("fc.conv.weight")
        flavour, embed_bn = "speechbrain", False
    elif "layer1.conv.weight" in state and "conv.weight" in state:
        stem, mfa = state["layer1.conv.weight"], state["conv.weight"]
        att, fc = state.get("pool.linear1.weight"), state.get("linear.weight")
        flavour, embed_bn = "wespeaker", "bn2.weight" in state
    else:
        return None
    M = int(mfa.shape[0])
    return {"flavour": flavour, "channels": int(stem.shape[0]), "feat_dim": int(stem.shape[1]),
            "mfa_channels": M, "global_context": att is not None and int(att.shape[1]) == 3 * M,
            "embedding_dim": int(fc.shape[0]) if fc is not None else None, "embed_bn": embed_bn}


def load_ecapa_state(module: ECAPATDNN, raw) -> None:
    """``BackboneEntry.load_state`` of the ECAPAs: unwrap, strip ``embedding_model.``/
    ``module.``, drop WeSpeaker's ``projection.*``, detect the layout, reconfigure the
    flavour and load every tensor strictly."""
    name = f"ecapa_tdnn{'' if module.channels == 1024 else f'_c{module.channels}'}"
    state, stripped = strip_prefixes(unwrap_state_dict(raw, name))
    state, dropped = split_training_only(state)
    cfg = detect_config(state)
    if cfg is None:
        raise foreign_checkpoint_error(name, state, "a SpeechBrain embedding_model.ckpt or WeSpeaker "
                                       "avg_model.pt ECAPA-TDNN", module.state_dict())
    wrong = []
    if cfg["channels"] != module.channels:
        other = {1024: "ecapa_tdnn", 512: "ecapa_tdnn_c512"}.get(cfg["channels"])
        raise BackboneError(f"checkpoint is an ECAPA-TDNN with C={cfg['channels']} channels, but {name!r} has "
                            f"C={module.channels}", hint=f"use --audio-backbone {other}" if other else
                            f"{name} expects C={module.channels}")
    if cfg["feat_dim"] != module.feat_dim:
        wrong.append(f"input features {cfg['feat_dim']} (expected {module.feat_dim} fbank bins)")
    if cfg["embedding_dim"] is not None and cfg["embedding_dim"] != module.embedding_dim:
        wrong.append(f"embedding size {cfg['embedding_dim']} (expected {module.embedding_dim})")
    if wrong:
        raise BackboneError(f"checkpoint does not fit {name!r}: " + "; ".join(wrong),
                            hint=f"{name} is the {module.embedding_dim}-d ECAPA-TDNN on 80-dim fbank")
    module.configure(cfg["flavour"], mfa_channels=cfg["mfa_channels"], global_context=cfg["global_context"],
                     embed_bn=cfg["embed_bn"])
    ours = from_published(state, cfg["flavour"], module.state_dict().keys())
    check_state_dict(name, module, ours, strict=True)
    module.load_info = {"format": FORMATS[cfg["flavour"]], "frontend": module.frontend.name,
                        "config": module.config(), "stripped_prefixes": stripped, "dropped_keys": dropped[:8]}


def _register(name: str, channels: int) -> None:
    register_backbone(BackboneEntry(
        name=name, modality="audio",
        spec=InputSpec(modality="audio", embedding_dim=192, sample_rate=16000, features="fbank80"),
        build=ECAPATDNN, build_kwargs={"channels": channels}, load_state=load_ecapa_state,
        formats=("SpeechBrain embedding_model.ckpt (blocks.*, mfa.*, asp.*, asp_bn.*, fc.*; "
                 "front-end sb_fbank80)",
                 "WeSpeaker avg_model.pt (layer1-4.*, conv.*, pool.*, bn.*, linear.*, projection.* ignored; "
                 "front-end kaldi_fbank80)",
                 "either with 'module.'/'embedding_model.' prefixes or nested under 'state_dict'/'model'"),
        description=f"ECAPA-TDNN C={channels}, 192-d (SpeechBrain or WeSpeaker layout; random init uses "
                    "the SpeechBrain flavour)"))


_register("ecapa_tdnn", 1024)
_register("ecapa_tdnn_c512", 512)
