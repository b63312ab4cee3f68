"""Train a fusion head from an embedding cache: load the split, build the dev set, fit.

The training loop itself is ``fusion.trainer.fit_head`` (tensors in); this module is
the part that knows about caches, paths and trial lists, and what a checkpoint
records about them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from fusion.batch import EmbeddingBatch, resolve_device
from fusion.evaluation import DevSet
from fusion.registry import get_head
from fusion.trainer import TrainConfig, fit_head, recipe_record, resolve_config
from pipeline import __version__
from pipeline.core.config import to_dict
from pipeline.core.errors import ConfigError
from pipeline.train.data import dev_set_from_trials, load_split


def _resolve_data(data, cfg: TrainConfig, need_sequences: bool, device: torch.device):
    """-> (batch, labels, cache or None); ``fit_head`` checks and moves in-memory tensors."""
    if isinstance(data, tuple):
        if not isinstance(data[0], EmbeddingBatch):
            raise TypeError("train_head data must be a cache, a cache path or (EmbeddingBatch, labels)")
        return data[0], data[1], None
    cache = data
    if isinstance(data, (str, Path)):
        from pipeline.cache.reader import open_cache
        cache = open_cache(data)
    batch, labels, _ids = load_split(cache, cfg.split, need_sequences, device=device,
                                     drop_bad_rows=cfg.drop_bad_rows)
    return batch, labels, cache


def _resolve_dev(dev_trials, cache, need_sequences: bool, device) -> DevSet | None:
    if dev_trials is None or isinstance(dev_trials, DevSet):
        return None if dev_trials is None else dev_trials.to(device)
    if cache is None:
        raise ConfigError("a dev trial list needs a cache to read its clips from",
                          hint="pass a DevSet when training from in-memory tensors")
    return dev_set_from_trials(cache, dev_trials, need_sequences, device=device)


def checkpoint_meta(cfg: TrainConfig, cache=None, history: list[dict] | None = None,
                    n_classes: int | None = None, head_name: str | None = None) -> dict:
    """The ``meta`` ``avfuse train`` stores next to the weights: TrainConfig (as given), the
    resolved recipe (``recipe``, with ``head_name``), cache fingerprint, history."""
    meta: dict[str, Any] = {"train_config": to_dict(cfg), "history": history or []}
    if head_name is not None:
        meta["recipe"] = recipe_record(cfg, head_name)
    if n_classes is not None:
        meta["n_classes"] = int(n_classes)
    if cache is not None:
        meta["cache_fingerprint"] = cache.fingerprint
        meta["cache_provenance"] = cache.provenance
        meta["cache_path"] = str(cache.path)
    meta["avfuse_version"] = __version__
    return meta


def train_head(data, head_name: str, cfg: TrainConfig | None = None, dev_trials=None, *,
               progress: bool | None = None) -> tuple[Any, list[dict]]:
    """Train (or, for ``score_avg``, calibrate) head ``head_name`` (see ``fusion.trainer.fit_head``).

    ``data``: an ``EmbeddingCache``, a cache path, or ``(EmbeddingBatch, labels)``.
    ``dev_trials``: None, a ``DevSet``, or (with a cache) a trial-list path / ``TrialList``.
    """
    cfg = resolve_config(cfg or TrainConfig(), head_name)
    entry = get_head(head_name)
    device = resolve_device(cfg.device)
    batch, labels, cache = _resolve_data(data, cfg, entry.needs_sequences, device)
    dev = _resolve_dev(dev_trials, cache, entry.needs_sequences, device)
    return fit_head(batch, labels, head_name, cfg, dev, progress=progress)
