"""The fusion heads: ``base`` (what all share), ``clip`` (score averaging, mean, MLP,
multi-view: one vector per clip) and ``attention`` (cross-attention, JCA, DCA: per-step
sequences). Importing a module registers its heads."""

from fusion.heads.base import FusionHead, InputNorm

__all__ = ["FusionHead", "InputNorm"]
