"""The backbone registry: a name maps to a builder, its input spec and its checkpoint loader.

Like torchvision's ``register_model``/``get_model``. Backbone modules register
themselves on import; the built-in ones are imported lazily on first lookup, so
``avfuse --help`` stays fast.
"""

from __future__ import annotations

import dataclasses
import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from pipeline.errors import BackboneError

# modules that register built-in backbones (imported on first use)
BUILTIN_MODULES: list[str] = [
    "extractors.audio_ge2e",
    "extractors.audio_ecapa",
    "extractors.audio_resnet",
    "extractors.audio_mobilenet",
    "extractors.face_iresnet",
    "extractors.face_resnet",
]


@dataclass(frozen=True)
class InputSpec:
    """What a backbone eats. Audio: waveform at ``sample_rate`` (front-end inside the
    module, named by ``features``). Face: RGB in [0, 1], centre-cropped and resized to
    ``crop`` x ``crop``, then normalised with ``mean``/``std``."""

    modality: str                       # "audio" | "face"
    embedding_dim: int
    sample_rate: int | None = None      # audio only
    features: str = "rgb"               # "mel40", "fbank80", "logmel64", ... or "rgb"
    crop: int | None = None             # face only
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class BackboneEntry:
    name: str
    modality: str
    spec: InputSpec
    build: Callable[..., Any]                     # (**kwargs) -> nn.Module
    load_state: Callable[[Any, dict], None]       # (module, raw checkpoint object) -> None; raises BackboneError
    formats: tuple[str, ...] = ()                 # human names of accepted checkpoint layouts
    description: str = ""
    build_kwargs: dict = field(default_factory=dict)


_REGISTRY: dict[str, BackboneEntry] = {}
_loaded_builtins = False


def register_backbone(entry: BackboneEntry) -> BackboneEntry:
    if entry.name in _REGISTRY and _REGISTRY[entry.name] is not entry:
        raise BackboneError(f"backbone {entry.name!r} is registered twice")
    if entry.modality != entry.spec.modality:
        raise BackboneError(f"backbone {entry.name!r}: modality {entry.modality} != spec {entry.spec.modality}")
    _REGISTRY[entry.name] = entry
    return entry


def _load_builtins() -> None:
    global _loaded_builtins
    if _loaded_builtins:
        return
    _loaded_builtins = True
    for mod in BUILTIN_MODULES:
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as e:
            if e.name != mod:  # a real missing dependency inside the module
                raise


def list_backbones(modality: str | None = None) -> list[BackboneEntry]:
    _load_builtins()
    return [e for n, e in sorted(_REGISTRY.items()) if modality is None or e.modality == modality]


def get_backbone(name: str) -> BackboneEntry:
    _load_builtins()
    if name not in _REGISTRY:
        known = ", ".join(sorted(_REGISTRY)) or "(none)"
        raise BackboneError(f"unknown backbone {name!r}", hint=f"known backbones: {known}")
    return _REGISTRY[name]


def load_backbone(name: str, weights: str | Path, *, seed: int = 0, device: str = "cpu"):
    """Build ``name`` and load ``weights`` (a checkpoint path, or ``"random"`` for an
    explicit seeded random init). Returns ``(module in eval mode on device, info)``.

    ``info`` (JSON-able, recorded in cache provenance): ``name``, ``modality``, ``spec``,
    ``embedding_dim``, ``seed``, ``weights`` ("random" or the resolved path), ``sha256``
    (None for random), ``checkpoint_format`` (the layout the loader detected, e.g.
    "WeSpeaker avg_model.pt"; "random"; None if the module does not say),
    ``frontend`` (the audio front-end actually used, e.g. "kaldi_fbank80"; else
    ``spec.features``) and, when there is any, ``load_notes`` (stripped prefixes, dropped
    training-head keys, detected configuration). Modules report the last three through a
    ``load_info`` dict attribute set by their builder/loader."""
    import torch

    from pipeline.config import sha256_file

    entry = get_backbone(name)
    if weights is None or str(weights) == "":
        raise BackboneError(f"no weights given for backbone {name!r}",
                            hint="pass a checkpoint path, or the word 'random' for a seeded random init")
    info: dict[str, Any] = {"name": name, "modality": entry.modality, "spec": entry.spec.to_dict(),
                            "embedding_dim": entry.spec.embedding_dim, "seed": seed}
    if str(weights) == "random":
        torch.manual_seed(seed)
        module = entry.build(**entry.build_kwargs)
        info.update(weights="random", sha256=None)
    else:
        path = Path(weights)
        if not path.is_file():
            raise BackboneError(f"checkpoint not found for backbone {name!r}", path=path,
                                hint="give the path of a checkpoint file, or 'random'")
        torch.manual_seed(seed)
        module = entry.build(**entry.build_kwargs)
        raw = read_checkpoint(path)
        try:
            entry.load_state(module, raw)
        except BackboneError as e:
            if e.path is None:
                e.path = str(path)
            raise
        except (RuntimeError, KeyError, ValueError, TypeError) as e:  # a loader tripped on odd content
            raise BackboneError(f"checkpoint does not fit backbone {name!r} ({type(e).__name__}: "
                                f"{str(e).splitlines()[0][:200] if str(e) else ''})", path=path,
                                hint=f"accepted formats: {'; '.join(entry.formats) or 'state dict'}") from e
        info.update(weights=str(path.resolve()), sha256=sha256_file(path))
    load_info = dict(getattr(module, "load_info", None) or {})
    info["checkpoint_format"] = load_info.pop("format", None)
    info["frontend"] = load_info.pop("frontend", entry.spec.features)
    if load_info:
        info["load_notes"] = load_info
    module.eval()
    module.to(device)
    return module, info


def read_checkpoint(path: str | Path):
    """``torch.load(path, map_location="cpu", weights_only=True)``; anything it refuses
    (a pickled module or other object, a truncated or non-torch file) is a
    :class:`BackboneError` that says why."""
    import pickle
    import re
    import zipfile

    import torch

    path = Path(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        text = " ".join(str(e).split())
        glob = (re.search(r"Unsupported global: (GLOBAL \S+)", text)
                or re.search(r"unsupported (GLOBAL \S+)", text))
        if glob:
            raise BackboneError("checkpoint is not a plain state dict: torch.load(weights_only=True) refused "
                                f"to unpickle {glob.group(1)} (a pickled object or module, not tensors)", path=path,
                                hint="avfuse never unpickles code; re-save it as "
                                     "torch.save(model.state_dict(), PATH) in the environment that made it") from None
        why = re.search(r"WeightsUnpickler error: (.*?)(?: Check the documentation|$)", text)
        raise BackboneError("cannot read checkpoint: not a torch.save file, or a damaged one "
                            f"({(why.group(1) if why else text)[:160]})", path=path,
                            hint="is the file complete and written by torch.save? "
                                 "avfuse loads with torch.load(weights_only=True)") from None
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError) as e:
        raise BackboneError(f"cannot read checkpoint ({type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else 'empty'})",
                            path=path, hint="is the file complete and written by torch.save? "
                                            "avfuse loads with torch.load(weights_only=True)") from None


def check_state_dict(name: str, module, state: dict, *, strict: bool = True) -> None:
    """Load ``state`` into ``module``; any missing/unexpected key or shape mismatch is a
    ``BackboneError`` listing (a few of) what was expected. Shared by all loaders."""
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    bad_shape = [f"{k}: checkpoint {tuple(state[k].shape)} vs expected {tuple(own[k].shape)}"
                 for k in own if k in state and hasattr(state[k], "shape") and tuple(state[k].shape) != tuple(own[k].shape)]
    problems = []
    if missing and strict:
        problems.append(f"{len(missing)} missing key(s), e.g. {missing[:4]}")
    if unexpected and strict:
        problems.append(f"{len(unexpected)} unexpected key(s), e.g. {unexpected[:4]}")
    if bad_shape:
        problems.append(f"{len(bad_shape)} shape mismatch(es), e.g. {bad_shape[:3]}")
    if problems:
        raise BackboneError(f"checkpoint does not match backbone {name!r}: " + "; ".join(problems),
                            hint=f"expected keys like {list(own)[:4]} ({len(own)} tensors)")
    module.load_state_dict({k: v for k, v in state.items() if k in own}, strict=strict)
