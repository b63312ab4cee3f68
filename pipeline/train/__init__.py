"""Stage-2 training from a cache: load a split into one batch (``data``), build the dev
set from a trial list, and run ``fusion.trainer.fit_head`` (``run.train_head``)."""

from pipeline.train.data import batch_from_cache, dev_set_from_trials, load_split
from pipeline.train.run import checkpoint_meta, train_head

__all__ = ["batch_from_cache", "checkpoint_meta", "dev_set_from_trials", "load_split", "train_head"]
