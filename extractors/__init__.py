"""Frozen backbones and media decoding: ``registry`` (name -> builder, input spec,
checkpoint loader and named weights), ``audio/`` (ECAPA-TDNN, ResNet34, MobileNetV2 on
log-mel, GE2E LSTM, their front-ends), ``face/`` (IResNet, ResNet), ``media/`` (PyAV,
soundfile and JPEG decoding), ``checkpoints`` (layout conversion helpers), ``counting``
(parameters, MACs), ``batching`` (segment plans, padding)."""

from extractors.registry import (
    BackboneEntry,
    InputSpec,
    Weights,
    check_state_dict,
    get_backbone,
    list_backbones,
    load_backbone,
    read_checkpoint,
    register_backbone,
)

__all__ = ["BackboneEntry", "InputSpec", "Weights", "check_state_dict", "get_backbone", "list_backbones",
           "load_backbone", "read_checkpoint", "register_backbone"]
