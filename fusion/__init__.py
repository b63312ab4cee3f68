"""Fusion heads and their training: pure torch (tensors in, no paths), importing only
``pipeline.core`` of the rest of avfuse.

``batch`` (``EmbeddingBatch``), ``heads/`` (``base``, ``clip`` heads, ``attention`` heads:
cross-attention, JCA, DCA), ``registry`` (name -> head), ``losses`` (AAM-softmax,
softmax), ``trainer`` (``fit_head``), ``evaluation`` (dev EER), ``checkpoint`` (save,
load, provenance).
"""

from fusion.batch import EmbeddingBatch, resolve_device
from fusion.checkpoint import check_provenance, load_head, save_head
from fusion.evaluation import DevSet, dev_eer, pseudo_dev_set
from fusion.losses import LOSSES, make_loss
from fusion.registry import HeadEntry, build_head, get_head, list_heads, register_head
from fusion.trainer import TrainConfig, fit_head

__all__ = ["LOSSES", "DevSet", "EmbeddingBatch", "HeadEntry", "TrainConfig", "build_head", "check_provenance",
           "dev_eer", "fit_head", "get_head", "list_heads", "load_head", "make_loss", "pseudo_dev_set",
           "register_head", "resolve_device", "save_head"]
