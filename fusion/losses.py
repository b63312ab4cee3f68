"""Classification losses for training heads: AAM-softmax (ArcFace) and plain softmax.

AAM-softmax (additive angular margin): with W the (C, D) class weights,
cos(theta_j) = <x/||x||, W_j/||W_j||>, the target logit becomes
``s * cos(theta_y + m)`` and the others ``s * cos(theta_j)``; the loss is cross-entropy.
When ``theta_y + m > pi`` (where cos(theta + m) would stop decreasing) the target
logit is ``s * (cos(theta_y) - m sin(m))`` instead (the usual "easy margin off"
correction of ArcFace / voxceleb_trainer).

Defaults:
* ``dca``/``jca``/``cross_attention``: m = 0.4, s = 64 (2403.04661's AAM-softmax setup).
* ``mean``/``mlp``/``multiview``: m = 0.2, s = 30. 2311.05071 trains all three fusions
  with an arc-margin loss on a 256-d embedding over the VoxCeleb2 speakers without
  printing m/s in the text we have; 0.2/30 is the standard VoxCeleb arc-margin setup
  (voxceleb_trainer's AAM-softmax default, WeSpeaker's final margin 0.2 with s = 32),
  and keeps the margin moderate for 256-d embeddings with a random-masked modality.

Plain softmax: a linear classifier (with bias) and cross-entropy.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.core.errors import ConfigError

LOSSES = ("aam", "softmax")


class AAMSoftmax(nn.Module):
    """Additive angular margin softmax; ``forward(x, y, weight=None) -> (loss, logits)``."""

    def __init__(self, dim: int, n_classes: int, margin: float = 0.2, scale: float = 30.0):
        super().__init__()
        if not (0.0 <= margin < math.pi / 2):
            raise ConfigError(f"AAM margin must be in [0, pi/2), got {margin}", hint="typical: 0.2 to 0.5")
        if scale <= 0:
            raise ConfigError(f"AAM scale must be positive, got {scale}", hint="typical: 30 to 64")
        self.margin, self.scale = float(margin), float(scale)
        self.weight = nn.Parameter(torch.empty(n_classes, dim))
        nn.init.xavier_normal_(self.weight, gain=1.0)
        self._cos_m, self._sin_m = math.cos(margin), math.sin(margin)
        self._th = math.cos(math.pi - margin)
        self._mm = math.sin(math.pi - margin) * margin

    def logits(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        with torch.autocast(device_type=x.device.type, enabled=False):   # angles in float32, never bf16
            return self._logits(x, y)

    def _logits(self, x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        # Lean on the (B, C) matrix, which dominates a step with thousands of classes: the scale is
        # folded into x and the 1/||W_j|| into one column multiply (W itself is never normalised, a
        # (C, D) pass each way saved), nothing is clamped there, and the target column is
        # overwritten in place. Only the B target cosines go through the margin arithmetic.
        xn = F.normalize(x.float(), dim=-1)
        w = self.weight.float()
        inv = torch.rsqrt((w * w).sum(1).clamp_min(1e-24))              # 1 / ||W_j||
        out = F.linear(xn * self.scale, w) * inv                        # s * cos(theta_j)
        if y is None or self.margin == 0.0:
            return out
        cos_y = ((xn * w.index_select(0, y)).sum(1) * inv.index_select(0, y)).clamp(-1 + 1e-7, 1 - 1e-7)
        sin_y = torch.sqrt(1.0 - cos_y * cos_y)
        phi = cos_y * self._cos_m - sin_y * self._sin_m                 # cos(theta_y + m)
        phi = torch.where(cos_y > self._th, phi, cos_y - self._mm)
        return out.scatter_(1, y[:, None], (self.scale * phi)[:, None])

    def forward(self, x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.logits(x, y)
        return weighted_cross_entropy(out, y, weight), out


class SoftmaxLoss(nn.Module):
    """Linear classifier + cross-entropy; ``forward(x, y, weight=None) -> (loss, logits)``."""

    def __init__(self, dim: int, n_classes: int):
        super().__init__()
        self.fc = nn.Linear(dim, n_classes)

    def forward(self, x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.fc(x.float())
        return weighted_cross_entropy(out, y, weight), out


def weighted_cross_entropy(logits: torch.Tensor, y: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
    """Cross-entropy averaged over the rows, or with ``weight`` (B,) 0/1 over the rows it keeps (0 when it
    keeps none): the mean over ``rows`` without indexing by them, which on a GPU would wait for the device
    to learn how many rows there are (the trainer's step has no such wait)."""
    if weight is None:
        return F.cross_entropy(logits, y)
    per_row = F.cross_entropy(logits, y, reduction="none")
    return (per_row * weight).sum() / weight.sum().clamp_min(1.0)


def make_loss(kind: str, dim: int, n_classes: int, margin: float = 0.2, scale: float = 30.0) -> nn.Module:
    """``"aam"`` -> ``AAMSoftmax(dim, n_classes, margin, scale)``; ``"softmax"`` -> ``SoftmaxLoss``."""
    if kind == "aam":
        return AAMSoftmax(dim, n_classes, margin, scale)
    if kind == "softmax":
        return SoftmaxLoss(dim, n_classes)
    raise ConfigError(f"unknown loss '{kind}'", hint=f"known losses: {', '.join(LOSSES)}")
