"""Dev trials for training-time evaluation: embed once, score pairs, EER.

A ``DevSet`` is the unique utterances of a trial list as one ``EmbeddingBatch``
plus index arrays into it. ``dev_set_from_trials`` builds one from a VoxCeleb-format
trial list and a cache; ``pseudo_dev_set`` samples balanced target / non-target pairs
from a labelled batch (used to calibrate ``score_avg`` when no dev list is given).

Scoring modes (enrol x test) and the modalities each side may see:
``AxA`` (A, A), ``VxV`` (V, V), ``AVxAV`` (AV, AV), ``AVxA`` (AV, A), ``AVxV`` (AV, V)
(``pipeline.core.modes.MODES``). EERs are fractions in [0, 0.5], computed by ``pipeline.core.metrics.eer``.
A ``"cosine"`` head's embeddings are L2-normalised before the dot product; ``"dot"``
heads (``score_avg``) are scored by the raw dot product.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from fusion.batch import EmbeddingBatch, check_use
from pipeline.core.errors import ScoringError, TrainingError
from pipeline.core.metrics import eer  # EER as a fraction (definition in pipeline.core.metrics)
from pipeline.core.modes import MODES  # mode -> (enrol side modalities, test side modalities)


@dataclass
class DevSet:
    """Unique utterances (``batch``) and trials as indices into them."""

    batch: EmbeddingBatch
    enrol_idx: torch.Tensor     # int64 (T,)
    test_idx: torch.Tensor      # int64 (T,)
    labels: torch.Tensor        # int64 (T,): 1 target, 0 non-target
    ids: np.ndarray | None = None

    def to(self, device) -> "DevSet":
        return DevSet(self.batch.to(device), self.enrol_idx.to(device), self.test_idx.to(device),
                      self.labels.to(device), self.ids)


def pseudo_dev_set(batch: EmbeddingBatch, labels: torch.Tensor, n_pairs: int = 20000, seed: int = 0) -> DevSet:
    """Balanced random target / non-target pairs (distinct rows) drawn from a labelled batch."""
    y = labels.cpu().numpy()
    rng = np.random.default_rng(seed)
    order = np.argsort(y, kind="stable")
    ys = y[order]
    starts = np.searchsorted(ys, ys, side="left")
    counts = np.searchsorted(ys, ys, side="right") - starts
    can = counts >= 2
    if not can.any():
        raise TrainingError("no identity has 2 or more clips: cannot form target trials",
                            hint="calibrate on a split with several clips per identity")
    half = n_pairs // 2
    # targets: a row of an identity with >= 2 clips, and another row of the same identity
    pick = rng.choice(np.nonzero(can)[0], size=half)
    off = (rng.integers(1, counts[pick]) + (pick - starts[pick])) % counts[pick]
    te, tt = order[pick], order[starts[pick] + off]
    # non-targets: two rows with different labels
    a = rng.integers(0, y.size, size=half * 2)
    b = rng.integers(0, y.size, size=half * 2)
    ok = y[a] != y[b]
    ne, nt = a[ok][:half], b[ok][:half]
    enrol = np.concatenate([te, ne])
    test = np.concatenate([tt, nt])
    lab = np.concatenate([np.ones(te.size, np.int64), np.zeros(ne.size, np.int64)])
    dev = batch.device
    return DevSet(batch, torch.as_tensor(enrol, device=dev), torch.as_tensor(test, device=dev),
                  torch.as_tensor(lab, device=dev))


@torch.no_grad()
def embed_all(head, batch: EmbeddingBatch, use=("A", "V"), chunk: int = 8192) -> torch.Tensor:
    """Float32 embeddings of every row (head in eval mode, in chunks); normalised for cosine heads."""
    use = check_use(use)
    was_training = head.training
    head.eval()
    try:
        outs = [head.embed(batch[torch.arange(s, min(s + chunk, len(batch)), device=batch.device)].float(),
                           use).float() for s in range(0, len(batch), chunk)]
    finally:
        head.train(was_training)
    emb = torch.cat(outs, 0) if outs else torch.zeros(0, head.embedding_dim)
    return F.normalize(emb, dim=-1) if head.score_kind == "cosine" else emb


def score_pairs(head, batch: EmbeddingBatch, enrol_idx, test_idx, mode: str = "AVxAV") -> np.ndarray:
    """Scores of the trials (index pairs into ``batch``) in ``mode``; each row embedded once per side."""
    if mode not in MODES:
        raise ScoringError(f"unknown mode '{mode}'", hint=f"modes: {', '.join(MODES)}")
    use_e, use_t = MODES[mode]
    e = embed_all(head, batch, use_e)
    t = e if use_t == use_e else embed_all(head, batch, use_t)
    ei = torch.as_tensor(enrol_idx, dtype=torch.long, device=e.device)
    ti = torch.as_tensor(test_idx, dtype=torch.long, device=e.device)
    return (e[ei] * t[ti]).sum(1).cpu().numpy()


def dev_eer(head, dev: DevSet, mode: str = "AVxAV") -> float:
    """EER of ``head`` on the dev trials in ``mode``."""
    s = score_pairs(head, dev.batch, dev.enrol_idx, dev.test_idx, mode)
    return eer(s, dev.labels.cpu().numpy())
