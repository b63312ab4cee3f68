"""What every fusion head shares: ``FusionHead`` (embed, score, train views), ``InputNorm``, small builders."""

from __future__ import annotations

import math
from typing import ClassVar, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from fusion.batch import MODALITIES, EmbeddingBatch, check_use
from pipeline.core.errors import HeadError


class InputNorm(nn.Module):
    """``n(x) = (x / ||x|| - mean) / s``: per-dimension centring, one scalar scale ``s``.

    Buffers ``mean`` (D,) and ``std`` (D,), the latter holding the same value ``s`` in every
    entry (a (D,) buffer so checkpoints keep one layout). Before ``fit`` (mean 0, s = 1/sqrt(D))
    it is ``sqrt(D) x / ||x||`` (unit-variance entries). ``fit`` estimates them on the
    training rows (L2-normalised first): backbone embeddings share a large common direction
    (e.g. mean cosine ~0.5-0.6 between any two toy-corpus clips), which centring removes;
    ``s`` is the RMS over dimensions of the centred entries (sqrt of the mean per-dimension
    variance), so the output has unit-variance entries on average. One scalar, not a
    per-dimension std: dividing each dimension by its own std would inflate the
    low-variance dimensions (little identity information, mostly noise in backbone
    embeddings) to the weight of the informative ones and change the cosine geometry the
    backbone was trained for; centring plus one scale removes only the common direction.
    Stored in the checkpoint (buffers).
    """

    def __init__(self, d: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(d))
        self.register_buffer("std", torch.full((d,), 1.0 / math.sqrt(d)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (F.normalize(x.float(), dim=-1) - self.mean) / self.std

    @torch.no_grad()
    def fit(self, x: torch.Tensor, chunk: int = 65536) -> None:
        """Estimate mean/std from the rows of ``x`` (N, D) (float64 sums, in chunks)."""
        n = x.shape[0]
        if n < 2:
            return
        s = torch.zeros(x.shape[1], dtype=torch.float64, device=x.device)
        ss = torch.zeros_like(s)
        for i in range(0, n, chunk):
            xn = F.normalize(x[i:i + chunk].float(), dim=-1).double()
            s += xn.sum(0)
            ss += (xn * xn).sum(0)
        mean = s / n
        var = (ss / n - mean * mean).clamp_min(0)
        std = torch.full_like(var, float(var.mean().sqrt()) + 1e-12)
        self.mean.copy_(mean.to(self.mean))
        self.std.copy_(std.to(self.std))


FIT_ROWS = 65536   # rows used to fit an InputNorm (plenty for a mean and a scale)


def spaced_rows(mask: torch.Tensor, max_rows: int) -> torch.Tensor:
    """Indices of the True entries of ``mask``, thinned to at most ``max_rows`` evenly spaced ones."""
    idx = torch.nonzero(mask, as_tuple=False).flatten()
    if idx.numel() > max_rows:
        idx = idx[torch.linspace(0, idx.numel() - 1, max_rows, device=idx.device).long()]
    return idx


def mlp(d_in: int, hidden: int, d_out: int, dropout: float = 0.0) -> nn.Module:
    """``Linear`` if ``hidden == 0``, else Linear -> ReLU -> Dropout -> Linear."""
    if hidden <= 0:
        return nn.Linear(d_in, d_out)
    return nn.Sequential(nn.Linear(d_in, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, d_out))


def _need(t: torch.Tensor | None, field: str, name: str) -> torch.Tensor:
    if t is None:
        raise HeadError(f"head '{name}' needs {field}, which this batch does not have",
                        hint="load the batch with both modalities (the cache must have audio and face arrays)")
    return t


def _field(batch: EmbeddingBatch, name: str, modality: str, use: Sequence[str], head: str) -> torch.Tensor | None:
    """``batch.<name>`` when ``modality`` is in ``use`` and the batch has that field, else None. Decided on
    the host: the heads compute a modality's rows whenever its array is there and weigh them by presence,
    rather than asking whether any row is present (on a GPU, a wait for the device in every training
    step). A batch without the array whose rows say the modality is present: ``_need``'s error."""
    if modality not in check_use(use):
        return None
    t = getattr(batch, name)
    if t is None and bool((batch.has_audio if modality == "A" else batch.has_face).any()):
        _need(t, name, head)
    return t


class FusionHead(nn.Module):
    """Base class. Subclasses set the class attributes and implement ``embed``."""

    score_kind: ClassVar[str] = "cosine"     # "cosine": L2-normalise then dot; "dot": raw dot
    needs_sequences: ClassVar[bool] = False  # True: reads audio_seq / face_seq
    trainable: ClassVar[bool] = True
    default_margin: ClassVar[float] = 0.2    # AAM-softmax defaults for this head
    default_scale: ClassVar[float] = 30.0
    name: str = "?"
    config: dict

    def __init__(self, *, audio_dim: int, face_dim: int):
        super().__init__()
        if audio_dim <= 0 or face_dim <= 0:
            raise ValueError(f"audio_dim and face_dim must be positive, got {audio_dim}, {face_dim}")
        self.audio_dim = int(audio_dim)
        self.face_dim = int(face_dim)
        self.config = {}

    @property
    def embedding_dim(self) -> int:  # pragma: no cover - every head overrides
        raise NotImplementedError

    def embed(self, batch: EmbeddingBatch, use: Sequence[str] = MODALITIES) -> torch.Tensor:
        """(B, embedding_dim) embeddings of the rows, seeing only the modalities in ``use``."""
        raise NotImplementedError

    def train_views(self, batch: EmbeddingBatch) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
        """``[(view, embeddings (B, D), rows (B,) bool)]`` the trainer puts a loss on.

        Default: one fused view over the rows with at least one present modality.
        """
        a, v = batch.present()
        return [("AV", self.embed(batch), a | v)]

    @torch.no_grad()
    def fit_inputs(self, batch: EmbeddingBatch, max_rows: int = FIT_ROWS) -> None:
        """Fit the input normalisers (``norm_a``/``norm_v``) on present rows of ``batch``
        (at most ``max_rows`` of them, evenly spaced: deterministic, bounded memory)."""
        if hasattr(self, "norm_a") and batch.audio_clip is not None:
            rows = spaced_rows(batch.has_audio, max_rows)
            if rows.numel():
                self.norm_a.fit(batch.audio_clip.index_select(0, rows))
        if hasattr(self, "norm_v") and batch.face_clip is not None:
            rows = spaced_rows(batch.has_face, max_rows)
            if rows.numel():
                self.norm_v.fit(batch.face_clip.index_select(0, rows))

    def n_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def extra_repr(self) -> str:
        return f"name={self.name!r}, score_kind={self.score_kind!r}"
