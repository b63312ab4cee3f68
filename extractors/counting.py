"""Parameter and multiply-accumulate counts of backbones (the figures `avfuse backbones` prints)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


def count_params(module: nn.Module) -> int:
    """Number of parameter elements (learnable and frozen; buffers such as BatchNorm
    statistics excluded)."""
    return sum(p.numel() for p in module.parameters())


@torch.no_grad()
def forward_gmacs(module: nn.Module, *inputs: Any) -> float:
    """GMACs (1e9 multiply-accumulates) of one eval-mode ``module(*inputs)``.

    Counted with ``torch.utils.flop_counter.FlopCounterMode`` (convolutions, linear
    layers, matmuls -- mel projections included; FFTs, norms, activations and pooling not
    counted), MACs = FLOPs / 2; ``nn.LSTM`` (not seen by the counter on CPU) is added
    analytically by :func:`_lstm_macs`. The module's training mode is restored after."""
    from torch.utils.flop_counter import FlopCounterMode

    lstm = [0]

    def hook(mod, args, _out):
        lstm[0] += _lstm_macs(mod, args[0])

    hooks = [m.register_forward_hook(hook) for m in module.modules() if isinstance(m, nn.LSTM)]
    was_training = module.training
    module.eval()
    try:
        counter = FlopCounterMode(display=False)
        with counter:
            module(*inputs)
    finally:
        for h in hooks:
            h.remove()
        module.train(was_training)
    return (counter.get_total_flops() / 2 + lstm[0]) / 1e9


def face_gmacs(module: nn.Module, crop: int) -> float:
    """GMACs for one ``(1, 3, crop, crop)`` face frame
    (:func:`extractors.checkpoints.forward_gmacs`: convolutions and matmuls, MACs =
    FLOPs / 2; BatchNorm/PReLU/ReLU/pooling are not counted)."""
    dev = next(module.parameters()).device
    return forward_gmacs(module, torch.zeros(1, 3, crop, crop, device=dev))


def _lstm_macs(mod: nn.LSTM, x: torch.Tensor) -> int:
    """``steps x 4H(I + H)`` per layer and direction (``I`` = input size of the layer)."""
    steps = x.shape[0] * x.shape[1] if x.dim() == 3 else x.shape[0]
    dirs = 2 if mod.bidirectional else 1
    total = 0
    for layer in range(mod.num_layers):
        i = mod.input_size if layer == 0 else mod.hidden_size * dirs
        total += steps * 4 * mod.hidden_size * (i + mod.hidden_size) * dirs
    return total
