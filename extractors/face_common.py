"""Shared helpers of the face backbones: checkpoint unwrapping, key-prefix conversion
both ways, and cost measurement (parameters, MACs per face frame).

Checkpoints arrive in several wrappings of the same state dict:

* a raw ``state_dict`` (InsightFace ``backbone.pth``, torchvision ``resnet50-*.pth``);
* nested in a dict under one of :data:`NESTING_KEYS` (``{"state_dict": ...}``,
  ``{"model": ...}``, arcface_torch's resume file ``{"state_dict_backbone": ...}``);
* with every key prefixed by one of :data:`KNOWN_PREFIXES` (``module.`` from
  ``DataParallel``/``DistributedDataParallel``, ``backbone.`` from a wrapper module,
  ``_orig_mod.`` from ``torch.compile``), possibly stacked (``module.backbone.``).

:func:`unwrap_checkpoint` undoes the nesting, :func:`strip_prefixes` the prefixes
(a prefix is stripped only when *every* key carries it), :func:`add_prefix` goes the
other way (to write a DataParallel-style file).
"""

from __future__ import annotations

import logging
from typing import Any, Mapping

import torch
from torch import nn

from pipeline.errors import BackboneError

log = logging.getLogger("avfuse.extractors")

#: InsightFace normalisation on RGB in [0, 1]: ``(x - 0.5) / 0.5`` per channel.
INSIGHTFACE_MEAN: tuple[float, float, float] = (0.5, 0.5, 0.5)
INSIGHTFACE_STD: tuple[float, float, float] = (0.5, 0.5, 0.5)
#: torchvision ImageNet normalisation on RGB in [0, 1].
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

#: dict keys under which training scripts nest the backbone's state dict, tried in order.
NESTING_KEYS: tuple[str, ...] = ("state_dict_backbone", "state_dict", "model_state_dict",
                                 "model", "backbone", "net")
#: key prefixes added by wrappers; stripped while every key carries one of them.
KNOWN_PREFIXES: tuple[str, ...] = ("module.", "backbone.", "model.", "_orig_mod.")


def _is_tensor_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())


def unwrap_checkpoint(raw: Any, name: str, notes: dict | None = None) -> dict[str, torch.Tensor]:
    """Return the flat ``{key: tensor}`` state dict inside ``raw``.

    ``raw`` is what ``torch.load(weights_only=True)`` returned. Nesting under
    :data:`NESTING_KEYS` is undone (repeatedly; the keys followed are recorded in
    ``notes["nested_under"]`` when ``notes`` is given). Anything else (a list, a tensor,
    a dict with no tensors) raises :class:`BackboneError` naming what was found.
    """
    obj = raw
    path: list[str] = []
    for _ in range(4):  # nesting depth seen in the wild is at most 2
        if _is_tensor_dict(obj):
            if path and notes is not None:
                notes["nested_under"] = path
            return dict(obj)
        if not isinstance(obj, Mapping):
            break
        key = next((k for k in NESTING_KEYS if k in obj and isinstance(obj[k], Mapping)), None)
        if key is None:
            break
        path.append(key)
        obj = obj[key]
    if isinstance(obj, Mapping):
        non_tensor = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)][:5]
        found = (f"a dict of {len(obj)} entries whose entries {non_tensor} are not tensors"
                 if obj else "an empty dict")
    else:
        found = f"a {type(obj).__name__}"
    raise BackboneError(
        f"checkpoint for backbone {name!r} holds {found}, not a state dict",
        hint="give a file saved with torch.save(model.state_dict()), or a dict nesting one under "
             + "/".join(repr(k) for k in NESTING_KEYS))


def strip_prefixes(state: Mapping[str, torch.Tensor],
                   prefixes: tuple[str, ...] = KNOWN_PREFIXES) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Strip wrapper prefixes that *every* key carries, repeatedly (``module.backbone.x``
    -> ``x``). Returns ``(state, stripped prefixes in order)``; keys that do not all share
    a prefix are left alone."""
    out = dict(state)
    stripped: list[str] = []
    changed = True
    while changed and out:
        changed = False
        for p in prefixes:
            if all(k.startswith(p) for k in out):
                out = {k[len(p):]: v for k, v in out.items()}
                stripped.append(p)
                changed = True
                break
    return out, stripped


def add_prefix(state: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The inverse of :func:`strip_prefixes` for one prefix: ``k -> prefix + k``
    (e.g. ``"module."`` gives the layout ``DataParallel(model).state_dict()`` saves)."""
    return {prefix + k: v for k, v in state.items()}


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


def count_params(module: nn.Module) -> int:
    """Number of parameter elements (learnable and frozen; buffers excluded)."""
    return sum(p.numel() for p in module.parameters())


@torch.no_grad()
def face_gmacs(module: nn.Module, crop: int) -> float:
    """GMACs for one ``(1, 3, crop, crop)`` face frame, measured with
    ``torch.utils.flop_counter.FlopCounterMode`` (convolutions and matmuls;
    MACs = FLOPs / 2; BatchNorm/PReLU/ReLU/pooling are not counted)."""
    from torch.utils.flop_counter import FlopCounterMode

    was_training = module.training
    module.eval()
    dev = next(module.parameters()).device
    x = torch.zeros(1, 3, crop, crop, device=dev)
    counter = FlopCounterMode(display=False)
    with counter:
        module(x)
    module.train(was_training)
    return counter.get_total_flops() / 2 / 1e9


def check_face_input(name: str, x: torch.Tensor, crop: int) -> None:
    """Raise :class:`BackboneError` unless ``x`` is ``(B, 3, crop, crop)`` floating point."""
    if x.dim() != 4 or x.shape[1] != 3 or x.shape[2] != crop or x.shape[3] != crop or not x.is_floating_point():
        raise BackboneError(
            f"backbone {name!r} expects a float (B, 3, {crop}, {crop}) batch, got "
            f"{x.dtype} {tuple(x.shape)}",
            hint=f"centre-crop and resize faces to {crop}x{crop} and normalise with the spec's mean/std")
