"""The backbones of an extraction, built and loaded once per process (``get_models``)."""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.core.errors import ConfigError
from pipeline.extract.config import ExtractConfig


# ----------------------------------------------------------------------------- models
@dataclass
class Models:
    """Loaded backbones (eval mode, on ``device``) and their ``load_backbone`` info."""
    audio: Any = None
    audio_info: dict | None = None
    face: Any = None
    face_info: dict | None = None
    audio_preprocess: Any = None      # the audio weights' waveform preprocessing (``Weights.preprocess``)
    device: str = "cpu"
    precision: str = "fp32"


_MODELS: dict[tuple, Models] = {}


_MODELS_LOCK = threading.Lock()


def _weights_key(w: str | None) -> tuple:
    if w in (None, "random"):
        return (w,)
    try:
        st = os.stat(w)
        return (str(Path(w).resolve()), st.st_size, st.st_mtime_ns)
    except OSError:
        return (w,)


def _named(backbone: str | None, weights: str | None):
    """The registry's named weights entry ``weights`` of ``backbone``; None for a path,
    ``random`` or None."""
    if weights in (None, "random") or not backbone:
        return None
    from extractors.registry import get_backbone

    return get_backbone(backbone).named_weights(weights)


def resolve_weights(backbone: str | None, weights: str | None) -> str | None:
    """A named weights entry of ``backbone`` (e.g. ``"pretrained"``: ge2e_lstm's resemblyzer
    file, checksum-checked) -> its path; ``"random"``, paths and None unchanged. ``"pretrained"``
    of a backbone without it raises ``BackboneError`` with the names it has."""
    named = _named(backbone, weights)
    if named is None and weights == "pretrained" and backbone:
        from extractors.registry import get_backbone

        named = get_backbone(backbone).get_weights(weights)       # raises, naming the known ones
    return str(named.path()) if named is not None else weights


def worker_weights(backbone: str | None, given: str | None, resolved: str | None) -> str | None:
    """The weights a Dask worker gets: named weights (e.g. "pretrained") and "random" as
    given, each worker resolving its own packaged file (sha256 checked); a checkpoint path
    made absolute."""
    if given in (None, "random") or not backbone or _named(backbone, given) is not None:
        return given
    return str(Path(resolved).resolve())


def resolve_config(cfg: ExtractConfig) -> ExtractConfig:
    """``cfg`` with named weights resolved to their files (:func:`resolve_weights`) and
    ``audio_preprocess`` set to the named audio weights' preprocessing (None when they have
    none); paths and ``random`` keep ``cfg.audio_preprocess`` as given."""
    import dataclasses

    pre = cfg.audio_preprocess
    named = _named(cfg.audio_backbone, cfg.audio_weights)
    if named is not None:
        pre = named.preprocess.name if named.preprocess is not None else None
    return dataclasses.replace(cfg, audio_weights=resolve_weights(cfg.audio_backbone, cfg.audio_weights),
                               face_weights=resolve_weights(cfg.face_backbone, cfg.face_weights),
                               audio_preprocess=pre)


def get_models(cfg: ExtractConfig) -> Models:
    """The backbones of ``cfg``, built and loaded once per process (cached by backbone,
    weights file identity, seed, device and precision). Thread-safe."""
    import torch

    from extractors.registry import get_backbone, load_backbone
    from pipeline.core.errors import BackboneError
    key = (cfg.audio_backbone, _weights_key(cfg.audio_weights), cfg.face_backbone,
           _weights_key(cfg.face_weights), cfg.seed, cfg.device, cfg.compute_precision(), cfg.audio_preprocess)
    with _MODELS_LOCK:
        if key in _MODELS:
            return _MODELS[key]
        if cfg.device.startswith("cuda") and not torch.cuda.is_available():
            raise ConfigError(f"device {cfg.device} asked for, but torch sees no CUDA device",
                              hint="use --device cpu, or check the driver / CUDA_VISIBLE_DEVICES")
        m = Models(device=cfg.device, precision=cfg.compute_precision())
        for mod in ("audio", "face"):
            name = getattr(cfg, f"{mod}_backbone")
            if not name:
                continue
            entry = get_backbone(name)
            if entry.modality != mod:
                raise BackboneError(f"backbone {name!r} is a {entry.modality} backbone, not {mod}",
                                    hint=f"pick a {mod} backbone of `avfuse backbones` for --{mod}-backbone")
            module, info = load_backbone(name, getattr(cfg, f"{mod}_weights"), seed=cfg.seed, device=cfg.device)
            if mod == "face":
                module = module.to(memory_format=torch.channels_last)
            if mod == "audio" and cfg.audio_preprocess is not None:
                m.audio_preprocess = entry.get_preprocess(cfg.audio_preprocess)
                m.audio_preprocess(np.zeros(4096, np.float32))  # fails here, once, if it cannot run
                info = {**info, "preprocess": m.audio_preprocess.to_dict()}
            setattr(m, mod, module)
            setattr(m, f"{mod}_info", info)
        _MODELS[key] = m
        return m


def clear_model_cache() -> None:
    with _MODELS_LOCK:
        _MODELS.clear()
