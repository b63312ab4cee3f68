"""The backbone registry: a name maps to a builder, its input spec and its checkpoint loader.

Like torchvision's ``register_model``/``get_model``. Backbone modules register
themselves on import; the built-in ones are imported lazily on first lookup, so
``avfuse --help`` stays fast.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from pipeline.core.errors import BackboneError
from pipeline.core.registry import Registry
from pipeline.core.safeload import load_weights_only

# modules that register built-in backbones (imported on first use)
BUILTIN_MODULES: list[str] = [
    "extractors.audio.ge2e",
    "extractors.audio.ecapa",
    "extractors.audio.resnet",
    "extractors.audio.mobilenet",
    "extractors.face.iresnet",
    "extractors.face.resnet",
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


@dataclass(frozen=True)
class Weights:
    """Named weights of a backbone, as data (like torchvision's ``Weights``).

    ``locate()`` finds the file on this machine (e.g. inside an installed PyPI package;
    avfuse never downloads) or raises ``BackboneError`` saying how to get it; ``sha256``
    is checked when the weights are resolved; ``meta`` says where they come from.
    ``random`` (a seeded random init) is always available and is not a ``Weights``.
    ``preprocess`` (like torchvision's ``Weights.transforms``): the input preprocessing that
    belongs to these weights, applied by extraction to each clip's waveform before it is
    segmented and batched; a callable ``float32 wave (T,) -> wave (T',)`` with a ``name`` and
    a ``to_dict()`` of its parameters (recorded in the cache provenance); None: none.
    """

    name: str
    locate: Callable[[], Path]
    sha256: str | None = None
    meta: dict = field(default_factory=dict, compare=False, hash=False)
    preprocess: Any = None

    def path(self) -> Path:
        from pipeline.core.fsio import sha256_file

        p = Path(self.locate())
        if self.sha256 is not None and sha256_file(p) != self.sha256:
            raise BackboneError(f"the {self.name} weights file does not have the published checksum", path=p,
                                hint=f"expected sha256 {self.sha256}; reinstall the package that ships it")
        return p


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
    weights: tuple[Weights, ...] = ()             # named weights (e.g. "pretrained"), besides "random"

    def get_preprocess(self, name: str):
        """The preprocessing called ``name`` of one of this backbone's named weights."""
        for w in self.weights:
            if w.preprocess is not None and w.preprocess.name == name:
                return w.preprocess
        known = sorted({w.preprocess.name for w in self.weights if w.preprocess is not None})
        raise BackboneError(f"backbone {self.name!r} has no input preprocessing {name!r}",
                            hint=f"its preprocessings: {', '.join(known) or 'none'}")

    def named_weights(self, name: str | None) -> Weights | None:
        """The named weights ``name``, or None when it names none (a path, ``random``, None)."""
        return next((w for w in self.weights if w.name == name), None)

    def get_weights(self, name: str) -> Weights:
        for w in self.weights:
            if w.name == name:
                return w
        known = ", ".join([w.name for w in self.weights] + ["random"])
        raise BackboneError(f"backbone {self.name!r} has no {name!r} weights",
                            hint=f"its named weights: {known}; or give a checkpoint path")


BACKBONES: Registry[BackboneEntry] = Registry("backbone", BackboneError, BUILTIN_MODULES)


def register_backbone(entry: BackboneEntry) -> BackboneEntry:
    if entry.modality != entry.spec.modality:
        raise BackboneError(f"backbone {entry.name!r}: modality {entry.modality} != spec {entry.spec.modality}")
    return BACKBONES.register(entry.name, entry)


def list_backbones(modality: str | None = None) -> list[BackboneEntry]:
    return [BACKBONES.get(n) for n in sorted(BACKBONES.names())
            if modality is None or BACKBONES.get(n).modality == modality]


def get_backbone(name: str) -> BackboneEntry:
    return BACKBONES.get(name)


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

    from pipeline.core.fsio import sha256_file

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
    return load_weights_only(path, BackboneError, what="checkpoint",
                             hint="re-save it as torch.save(model.state_dict(), PATH) in the environment that made "
                                  "it; avfuse loads with torch.load(weights_only=True)")


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
