"""Checkpoint helpers shared by every backbone (audio and face): unwrap a nested
checkpoint, strip/add key prefixes, drop training-only heads, copy a state dict, count
blocks per ResNet stage, say what a foreign checkpoint looks like (parameter and MAC
counts live in ``extractors.counting``).

Published checkpoints arrive in several wrappings of one state dict:

* a raw state dict (InsightFace ``backbone.pth``, torchvision ``resnet50-*.pth``,
  WeSpeaker ``avg_model.pt``);
* nested in a dict under one of :data:`NESTING_KEYS`: resemblyzer's ``pretrained.pt``
  is ``{"step", "model_state", "optimizer_state"}``; Lightning/pyannote files nest under
  ``"state_dict"``; arcface_torch's resume file under ``"state_dict_backbone"``; other
  trainers under ``"model"``/``"model_state_dict"``/``"embedding_model"``/``"backbone"``;
* with every key prefixed by one of :data:`WRAPPER_PREFIXES`, possibly stacked
  (``module.backbone.``): ``module.`` (DataParallel/DDP), ``_orig_mod.``
  (``torch.compile``), ``model.``, ``embedding_model.`` (a SpeechBrain ``Brain``'s
  modules dict), ``resnet.`` (pyannote's WeSpeakerResNet34), ``front.`` (trainers that
  wrap a ResNet trunk as ``self.front``), ``backbone.`` (a face wrapper module);
* with training-only tensors beside the embedding network: WeSpeaker's ``projection.*``
  (the margin-softmax head), resemblyzer's ``similarity_weight``/``similarity_bias``
  (the GE2E loss scale), SpeechBrain's ``classifier.*``.

Both modalities use the same key sets (the union of what either needs): a face loader
also looks under ``"model_state"``/``"embedding_model"`` and strips ``resnet.``/
``front.``, an audio loader also looks under ``"state_dict_backbone"``/``"backbone"``.
A checkpoint of the wrong network still fails, in the backbone's own layout check.

Every helper is pure (returns new dicts) and raises :class:`BackboneError` for things a
user can cause. Layout-specific renames live with each backbone (e.g.
``extractors.audio.ecapa.to_published``/``from_published``).
"""

from __future__ import annotations

import re
from typing import Any, Iterable, Mapping

import torch
from torch import nn

from pipeline.core.errors import BackboneError

#: dict keys under which trainers nest the state dict, tried in this order at each level.
NESTING_KEYS: tuple[str, ...] = ("state_dict_backbone", "model_state", "state_dict", "model_state_dict",
                                 "model", "embedding_model", "backbone", "net")
#: wrapper prefixes stripped while *every* key carries one of them (repeatedly).
WRAPPER_PREFIXES: tuple[str, ...] = ("module.", "_orig_mod.", "model.", "embedding_model.",
                                     "resnet.", "front.", "backbone.")
#: prefixes of tensors that belong to training heads/losses, never to the embedding network.
TRAINING_ONLY_PREFIXES: tuple[str, ...] = ("projection.", "classifier.", "similarity_", "loss.", "head.")
#: share of a dict's entries that must be tensors for the dict to count as a state dict
#: carrying a few scalars (e.g. a step counter) when no nesting key is present.
MIN_TENSOR_SHARE = 0.9


def _is_tensor_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())


def unwrap_state_dict(raw: Any, name: str, notes: dict | None = None) -> dict[str, torch.Tensor]:
    """The flat ``{key: tensor}`` state dict inside ``raw`` (what
    ``torch.load(weights_only=True)`` returned).

    At each level (at most 4): a non-empty dict whose entries are all tensors is the
    answer; otherwise the first of :data:`NESTING_KEYS` present with a dict value is
    followed (the keys followed go into ``notes["nested_under"]`` when ``notes`` is
    given and at least one was followed); with no such key, a dict of which at least
    :data:`MIN_TENSOR_SHARE` of the entries are tensors gives those tensors (the rest,
    e.g. a step counter, are ignored). Anything else (a list, a tensor, an empty dict,
    a dict of scalars) raises :class:`BackboneError` naming what was found."""
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
            tensors = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
            if tensors and len(tensors) >= MIN_TENSOR_SHARE * len(obj):
                if path and notes is not None:
                    notes["nested_under"] = path
                return tensors
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
                   prefixes: Iterable[str] = WRAPPER_PREFIXES) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Strip wrapper prefixes that *every* key carries, repeatedly (``module.backbone.x``
    -> ``x``). Returns ``(state, stripped prefixes in order)``; a prefix that only some
    keys carry is left alone (``(state, [])``)."""
    prefixes = tuple(prefixes)
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
    """Inverse of :func:`strip_prefixes` for one prefix: ``k -> prefix + k`` (e.g.
    ``"module."`` gives the layout ``DataParallel(model).state_dict()`` saves)."""
    return {prefix + k: v for k, v in state.items()}


def cloned_state(source: nn.Module | Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The state dict of ``source`` (a module, or a mapping taken as one) with every
    tensor detached and cloned: what ``torch.save`` of a converter's output should hold."""
    state = source.state_dict() if isinstance(source, nn.Module) else source
    return {k: v.detach().clone() for k, v in state.items()}


def split_training_only(state: Mapping[str, torch.Tensor],
                        prefixes: Iterable[str] = TRAINING_ONLY_PREFIXES) -> tuple[dict[str, torch.Tensor], list[str]]:
    """``(state without training-head tensors, the dropped keys)``."""
    prefixes = tuple(prefixes)
    kept = {k: v for k, v in state.items() if not k.startswith(prefixes)}
    return kept, [k for k in state if k.startswith(prefixes)]


_BLOCK_KEY = re.compile(r"^layer([1-4])\.(\d+)\.")


def blocks_per_stage(keys: Iterable[str]) -> tuple[int, int, int, int]:
    """Blocks per stage of a ResNet-style layout present in state-dict ``keys``
    (``layerS.B.*`` -> stage ``S`` has at least ``B + 1`` blocks; 0 for an absent stage)."""
    counts = [0, 0, 0, 0]
    for k in keys:
        m = _BLOCK_KEY.match(k)
        if m:
            s, b = int(m.group(1)) - 1, int(m.group(2))
            counts[s] = max(counts[s], b + 1)
    return tuple(counts)  # type: ignore[return-value]


# --------------------------------------------------------------------------- recognisers

#: (layout name, keys that must all be present) -- used only to explain a mismatch.
KNOWN_LAYOUTS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("resemblyzer GE2E LSTM (audio)", ("lstm.weight_ih_l0", "linear.weight")),
    ("SpeechBrain ECAPA-TDNN embedding_model.ckpt (audio)", ("blocks.0.conv.conv.weight", "asp_bn.norm.weight")),
    ("WeSpeaker ECAPA-TDNN avg_model.pt (audio)", ("layer1.conv.weight", "layer2.se_res2block.0.conv.weight")),
    ("WeSpeaker ResNet avg_model.pt (audio)", ("conv1.weight", "layer1.0.conv1.weight", "seg_1.weight")),
    ("MobileNetV2 torchvision layout", ("features.0.0.weight", "features.18.0.weight")),
    ("InsightFace IResNet backbone.pth (face)", ("conv1.weight", "prelu.weight", "features.weight")),
    ("torchvision ResNet (face/image)", ("conv1.weight", "layer1.0.conv1.weight", "fc.weight")),
)


def guess_layout(state: Mapping[str, torch.Tensor]) -> str | None:
    """A human name for the layout ``state`` looks like (after prefix stripping), or None."""
    for label, keys in KNOWN_LAYOUTS:
        if all(k in state for k in keys):
            return label
    return None


def foreign_checkpoint_error(name: str, state: Mapping[str, torch.Tensor], expected: str,
                             own: Mapping[str, torch.Tensor]) -> BackboneError:
    """The error for a checkpoint of another kind of network (e.g. a face backbone given
    to an audio backbone): says what it looks like and what was expected."""
    looks = guess_layout(state)
    what = f"it looks like a {looks} checkpoint" if looks else f"its keys look like {list(state)[:3]}"
    return BackboneError(f"checkpoint does not fit backbone {name!r}: {what}",
                         hint=f"{name} expects {expected}: keys like {list(own)[:3]} ... ({len(own)} tensors)")


# --------------------------------------------------------------------------- costs


