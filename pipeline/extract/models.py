"""The backbones of an extraction, built and loaded once per process (``get_models``)."""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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


def resolve_weights(backbone: str | None, weights: str | None) -> str | None:
    """A named weights entry of ``backbone`` (e.g. ``"pretrained"``: ge2e_lstm's resemblyzer
    file, checksum-checked) -> its path; ``"random"``, paths and None unchanged."""
    if weights in (None, "random") or not backbone:
        return weights
    from extractors.registry import get_backbone

    entry = get_backbone(backbone)
    if any(w.name == weights for w in entry.weights) or weights == "pretrained":
        return str(entry.get_weights(weights).path())
    return weights


def get_models(cfg: ExtractConfig) -> Models:
    """The backbones of ``cfg``, built and loaded once per process (cached by backbone,
    weights file identity, seed, device and precision). Thread-safe."""
    import torch

    from extractors.registry import get_backbone, load_backbone
    from pipeline.core.errors import BackboneError
    key = (cfg.audio_backbone, _weights_key(cfg.audio_weights), cfg.face_backbone,
           _weights_key(cfg.face_weights), cfg.seed, cfg.device, cfg.compute_precision())
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
            setattr(m, mod, module)
            setattr(m, f"{mod}_info", info)
        _MODELS[key] = m
        return m


def clear_model_cache() -> None:
    with _MODELS_LOCK:
        _MODELS.clear()
