"""Shared checkpoint helpers of the audio backbones: unwrap, strip/add prefixes, rename
keys both ways, drop training-only heads, and say what a foreign checkpoint looks like.

Published speaker-embedding checkpoints arrive in several wrappings of one state dict:

* nested in a dict: resemblyzer's ``pretrained.pt`` is ``{"step", "model_state",
  "optimizer_state"}``; Lightning/pyannote files nest under ``"state_dict"``; other
  trainers under ``"model"``/``"model_state_dict"``/``"embedding_model"``;
* with every key prefixed by a wrapper: ``module.`` (DataParallel/DDP), ``_orig_mod.``
  (``torch.compile``), ``model.``, ``embedding_model.`` (a SpeechBrain ``Brain``'s
  modules dict), ``resnet.`` (pyannote's WeSpeakerResNet34), ``front.`` (trainers that
  wrap a ResNet trunk as ``self.front``), ``backbone.``;
* with training-only tensors beside the embedding network: WeSpeaker's ``projection.*``
  (the margin-softmax head), resemblyzer's ``similarity_weight``/``similarity_bias``
  (the GE2E loss scale), SpeechBrain's ``classifier.*``.

Every helper is pure (returns new dicts) and raises :class:`BackboneError` for things a
user can cause. Layout-specific renames live with each backbone (e.g.
``extractors.audio_ecapa.to_published``/``from_published``).
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

import torch

from pipeline.errors import BackboneError

#: dict keys under which trainers nest the state dict, tried in order.
NESTING_KEYS: tuple[str, ...] = ("model_state", "state_dict", "model_state_dict", "model",
                                 "embedding_model", "net")
#: wrapper prefixes stripped while *every* key carries one of them (repeatedly).
WRAPPER_PREFIXES: tuple[str, ...] = ("module.", "_orig_mod.", "model.", "embedding_model.",
                                     "resnet.", "front.", "backbone.")
#: prefixes of tensors that belong to training heads/losses, never to the embedding network.
TRAINING_ONLY_PREFIXES: tuple[str, ...] = ("projection.", "classifier.", "similarity_", "loss.", "head.")

def _is_tensor_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())


def unwrap_state_dict(raw: Any, name: str) -> dict[str, torch.Tensor]:
    """The flat ``{key: tensor}`` dict inside ``raw`` (what ``torch.load(weights_only=True)``
    returned), undoing nesting under :data:`NESTING_KEYS` (up to 4 levels). Anything
    else raises :class:`BackboneError` saying what was found."""
    obj = raw
    for _ in range(4):
        if _is_tensor_dict(obj):
            return dict(obj)
        if not isinstance(obj, Mapping):
            break
        inner = next((obj[k] for k in NESTING_KEYS if k in obj and isinstance(obj[k], Mapping)), None)
        if inner is None:
            # a dict of tensors plus a few scalars (e.g. a step counter): keep the tensors
            tensors = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
            if tensors and len(tensors) >= 0.9 * len(obj):
                return tensors
            break
        obj = inner
    if isinstance(obj, Mapping):
        odd = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)][:5]
        found = f"a dict of {len(obj)} entries, {odd} not tensors" if obj else "an empty dict"
    else:
        found = f"a {type(obj).__name__}"
    raise BackboneError(f"checkpoint for backbone {name!r} holds {found}, not a state dict",
                        hint="give a file saved with torch.save(model.state_dict()), or a dict nesting "
                             "one under " + "/".join(repr(k) for k in NESTING_KEYS))


def strip_prefixes(state: Mapping[str, torch.Tensor],
                   prefixes: Iterable[str] = WRAPPER_PREFIXES) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Strip wrapper prefixes that *every* key carries, repeatedly (``module.front.x`` ->
    ``x``). Returns ``(state, stripped prefixes in order)``."""
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
    """Inverse of :func:`strip_prefixes` for one prefix: ``k -> prefix + k``."""
    return {prefix + k: v for k, v in state.items()}


def split_training_only(state: Mapping[str, torch.Tensor],
                        prefixes: Iterable[str] = TRAINING_ONLY_PREFIXES) -> tuple[dict[str, torch.Tensor], list[str]]:
    """``(state without training-head tensors, the dropped keys)``."""
    prefixes = tuple(prefixes)
    kept = {k: v for k, v in state.items() if not k.startswith(prefixes)}
    return kept, [k for k in state if k.startswith(prefixes)]


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
