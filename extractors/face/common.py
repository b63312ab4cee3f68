"""Shared parts of the face backbones: normalisation constants, the input check, the
checkpoint-loading steps both face loaders run (unwrap + strip prefixes with notes;
fill missing BatchNorm counters + strict load), and the cost per face frame.

The generic checkpoint helpers (nesting, prefixes, parameter and MAC counts) live in
:mod:`extractors.checkpoints`, shared with the audio backbones.
"""

from __future__ import annotations

import logging
from typing import Any, Mapping

import torch
from torch import nn

from extractors.checkpoints import strip_prefixes, unwrap_state_dict
from extractors.registry import check_state_dict
from pipeline.core.errors import BackboneError

log = logging.getLogger("avfuse.extractors")

#: InsightFace normalisation on RGB in [0, 1]: ``(x - 0.5) / 0.5`` per channel.
INSIGHTFACE_MEAN: tuple[float, float, float] = (0.5, 0.5, 0.5)
INSIGHTFACE_STD: tuple[float, float, float] = (0.5, 0.5, 0.5)
#: torchvision ImageNet normalisation on RGB in [0, 1].
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)


def face_state_from_checkpoint(raw: Any, name: str, notes: dict) -> dict[str, torch.Tensor]:
    """``raw`` (what ``torch.load`` returned) -> a flat state dict with nesting and wrapper
    prefixes undone (:func:`extractors.checkpoints.unwrap_state_dict` and
    :func:`~extractors.checkpoints.strip_prefixes`). Records ``notes["nested_under"]``
    (the nesting keys followed) and ``notes["stripped_prefix"]`` (the stripped prefixes
    joined, e.g. ``"module.backbone."``) when there was any, and logs the latter."""
    state, stripped = strip_prefixes(unwrap_state_dict(raw, name, notes))
    if stripped:
        notes["stripped_prefix"] = "".join(stripped)
        log.info("%s: stripped key prefix %s from the checkpoint", name, "".join(stripped))
    return state


def fill_bn_counters(state: dict[str, torch.Tensor], own: Mapping[str, torch.Tensor]) -> list[str]:
    """Add missing ``*.num_batches_tracked`` counters (absent from checkpoints written by
    PyTorch < 0.4.1 and from some exporters; they do not affect eval-mode outputs) when the
    BatchNorm's ``running_mean`` is present. Returns the keys that were filled."""
    filled = []
    for k, v in own.items():
        if k.endswith(".num_batches_tracked") and k not in state:
            if k[: -len("num_batches_tracked")] + "running_mean" in state:
                state[k] = torch.zeros_like(v)
                filled.append(k)
    return filled


def load_face_state(model: nn.Module, name: str, state: dict[str, torch.Tensor], notes: dict, fmt: str) -> None:
    """The last step of both face loaders: fill missing BatchNorm counters (count in
    ``notes["filled_bn_counters"]``), load ``state`` strictly with
    :func:`extractors.registry.check_state_dict`, and set ``model.load_info`` to
    ``{"format": fmt, **notes}`` (read by ``registry.load_backbone`` into
    ``info["checkpoint_format"]``/``info["load_notes"]``)."""
    filled = fill_bn_counters(state, model.state_dict())
    if filled:
        notes["filled_bn_counters"] = len(filled)
        log.info("%s: checkpoint has no num_batches_tracked counters; filled %d with 0", name, len(filled))
    check_state_dict(name, model, state, strict=True)
    model.load_info = {"format": fmt, **notes}


def check_keys_belong(state: Mapping[str, torch.Tensor], own: Mapping[str, torch.Tensor], name: str,
                       kind: str, expects: str) -> None:
    """``BackboneError`` when none of the checkpoint's keys belongs to the model (another family)."""
    if not any(k in own for k in state):
        raise BackboneError(
            f"checkpoint is not {kind}: none of its {len(state)} keys (e.g. {list(state)[:3]}) belongs to {name!r}",
            hint=f"{name} expects {expects} keys like {list(own)[:3]} ... ({len(own)} tensors)")


def check_face_input(name: str, x: torch.Tensor, crop: int) -> None:
    """Raise :class:`BackboneError` unless ``x`` is ``(B, 3, crop, crop)`` floating point."""
    if x.dim() != 4 or x.shape[1] != 3 or x.shape[2] != crop or x.shape[3] != crop or not x.is_floating_point():
        raise BackboneError(
            f"backbone {name!r} expects a float (B, 3, {crop}, {crop}) batch, got "
            f"{x.dtype} {tuple(x.shape)}",
            hint=f"centre-crop and resize faces to {crop}x{crop} and normalise with the spec's mean/std")
