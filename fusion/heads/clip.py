"""Fusion heads on clip-level embeddings: ``score_avg``, ``mean``, ``mlp``, ``multiview``.

A head maps a batch of cached rows (``EmbeddingBatch``) to one identity embedding
per row, and can embed either modality alone (``use=("A",)`` / ``("V",)``), so that
every scoring mode (AxA, VxV, AVxAV, AVxA, AVxV) works with every head. A row whose
``has_audio``/``has_face`` is False (or whose modality is not in ``use``) is treated
as missing for that modality; heads never read an absent modality's vectors.

Inputs of the trained heads are L2-normalised per modality, then centred per dimension
and divided by one scalar spread, both estimated on the training rows (``InputNorm``,
fitted by the trainer through ``head.fit_inputs``): ``u(x) = (x/||x|| - mean) / s``.

Definitions (2311.05071, "On the behavior of audio-visual fusion architectures in
identity verification tasks", adapted to frozen, cached backbones):

* ``mean``: e_A = P_A(u(a)), e_V = P_V(u(v)) (per-modality projections to ``dim``,
  default 256); the clip embedding is the average of the *available* ones,
  e = (m_A e_A + m_V e_V) / max(1, m_A + m_V). The loss sees only e (fusion before
  the loss), so e_A and e_V are free to sit at a large angle (the paper's finding).
* ``mlp``: e = MLP([u(a) or f_A ; u(v) or f_V]) where f_A, f_V are learned filler
  vectors substituted for a missing modality.
* ``multiview``: e_A = S(Q_A(u(a))), e_V = S(Q_V(u(v))) with modality-specific
  projections Q_* into one shared embedding layer S (and the trainer's one shared
  classification layer); each modality is trained as its own view (loss on e_A and
  on e_V separately, no fused-view loss, as in the paper). The AV embedding is the
  mean of the available *L2-normalised* view embeddings.
* ``score_avg`` (no training): see ``ScoreAvgHead``.

The sequence heads (``cross_attention``, ``jca``, ``dca``) live in ``fusion.heads.attention``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fusion.batch import MODALITIES, EmbeddingBatch
from fusion.heads.base import FusionHead, InputNorm, _field, _need, mlp
from fusion.registry import register_head
from pipeline.core.errors import TrainingError

__all__ = ["FusionHead", "ScoreAvgHead", "MeanHead", "MLPHead", "MultiViewHead", "InputNorm"]


# ------------------------------------------------------------------ score_avg
class ScoreAvgHead(FusionHead):
    """No training: z-normalised per-modality cosine scores, averaged with a tuned weight.

    On a dev trial list, s_A and s_V are the cosine scores of the raw clip
    embeddings; mu_*, sd_* their mean/std over the dev trials (rows with both
    modalities on both sides). The fused score is
    ``s = w (s_A - mu_A)/sd_A + (1 - w)(s_V - mu_V)/sd_V`` with w chosen on a grid
    of ``grid`` points in [0, 1] minimising dev EER (ties: the w nearest 0.5).

    It is an embedding head with ``score_kind = "dot"``:
    ``e = [sqrt(w/sd_A) a_hat ; sqrt((1-w)/sd_V) v_hat]`` (hats: L2-normalised,
    zeros for a missing modality), so ``e1 . e2 = s + const`` where the constant
    ``w mu_A/sd_A + (1-w) mu_V/sd_V`` does not change any EER. A one-sided
    comparison (AVxA, or a row missing a modality) reduces to the other
    modality's scaled score, e.g. AVxA gives ``(w/sd_A) s_A``.
    """

    score_kind = "dot"
    trainable = False

    def __init__(self, *, audio_dim: int, face_dim: int, grid: int = 21):
        super().__init__(audio_dim=audio_dim, face_dim=face_dim)
        if grid < 2:
            raise ValueError("grid must be >= 2")
        self.grid = int(grid)
        for name, val in (("weight", 0.5), ("mu_a", 0.0), ("sd_a", 1.0), ("mu_v", 0.0), ("sd_v", 1.0),
                          ("calibrated", 0.0)):
            self.register_buffer(name, torch.tensor(float(val)))

    @property
    def embedding_dim(self) -> int:
        return self.audio_dim + self.face_dim

    def embed(self, batch, use=MODALITIES):
        a_p, v_p = batch.present(use)
        n = len(batch)
        dev = batch.device
        a = (F.normalize(_need(batch.audio_clip, "audio_clip", self.name).float(), dim=-1) * a_p[:, None]
             if a_p.any() else torch.zeros(n, self.audio_dim, device=dev))
        v = (F.normalize(_need(batch.face_clip, "face_clip", self.name).float(), dim=-1) * v_p[:, None]
             if v_p.any() else torch.zeros(n, self.face_dim, device=dev))
        ca = torch.sqrt(self.weight / self.sd_a)
        cv = torch.sqrt((1 - self.weight) / self.sd_v)
        return torch.cat([ca * a, cv * v], dim=1)

    @torch.no_grad()
    def calibrate(self, batch: EmbeddingBatch, enrol_idx: torch.Tensor, test_idx: torch.Tensor,
                  labels: torch.Tensor) -> dict:
        """Fit mu/sd/w on dev trials (indices into ``batch``); returns ``{"w", "dev_eer", ...}``."""
        from fusion.evaluation import eer

        enrol_idx = torch.as_tensor(enrol_idx, dtype=torch.long, device=batch.device)
        test_idx = torch.as_tensor(test_idx, dtype=torch.long, device=batch.device)
        labels = torch.as_tensor(labels, device=batch.device).long()
        both = batch.has_audio & batch.has_face
        keep = both[enrol_idx] & both[test_idx] & (labels >= 0)
        e, t, y = enrol_idx[keep], test_idx[keep], labels[keep]
        if int((y == 1).sum()) < 1 or int((y == 0).sum()) < 1:
            raise TrainingError("score_avg needs dev trials with both modalities on both sides, "
                                f"with targets and non-targets; got {int((y == 1).sum())} target and "
                                f"{int((y == 0).sum())} non-target usable trials",
                                hint="pass a labelled dev trial list whose clips have audio and face")
        a = F.normalize(batch.audio_clip.float(), dim=-1)
        v = F.normalize(batch.face_clip.float(), dim=-1)
        s_a = (a[e] * a[t]).sum(1)
        s_v = (v[e] * v[t]).sum(1)
        mu_a, sd_a = s_a.mean(), s_a.std().clamp_min(1e-6)
        mu_v, sd_v = s_v.mean(), s_v.std().clamp_min(1e-6)
        za, zv = (s_a - mu_a) / sd_a, (s_v - mu_v) / sd_v
        yn = y.cpu().numpy()
        best = None
        for w in torch.linspace(0, 1, self.grid).tolist():
            err = eer((w * za + (1 - w) * zv).cpu().numpy(), yn)
            key = (round(err, 12), abs(w - 0.5))
            if best is None or key < best[0]:
                best = (key, w, err)
        _, w, err = best
        self.weight.fill_(w)
        self.mu_a.fill_(float(mu_a)); self.sd_a.fill_(float(sd_a))
        self.mu_v.fill_(float(mu_v)); self.sd_v.fill_(float(sd_v))
        self.calibrated.fill_(1.0)
        return {"w": w, "dev_eer": err, "dev_eer_audio": eer(za.cpu().numpy(), yn),
                "dev_eer_face": eer(zv.cpu().numpy(), yn), "n_trials": int(y.numel()),
                "mu_a": float(mu_a), "sd_a": float(sd_a), "mu_v": float(mu_v), "sd_v": float(sd_v)}


# ----------------------------------------------------------------------- mean
class MeanHead(FusionHead):
    """Mean fusion: per-modality projections to ``dim``, averaged over the available ones.

    ``hidden = 0`` (default): each projection is one linear layer (the paper's per-modality
    projection; on frozen embeddings it generalised better to unseen identities than a
    hidden layer in our toy-corpus runs); ``hidden > 0``: Linear-ReLU-Dropout-Linear.

    ``modality_loss = True`` (2311.05071's test of whether a shared space breaks): besides
    the fused view, the training views include each modality's own embedding e_A (rows
    with audio) and e_V (rows with a face), so the arc-margin loss pulls e_A and e_V to the
    same class centres as e. Default False: the fused view only (the paper's mean fusion).
    """

    def __init__(self, *, audio_dim: int, face_dim: int, dim: int = 256, hidden: int = 0,
                 dropout: float = 0.1, modality_loss: bool = False):
        super().__init__(audio_dim=audio_dim, face_dim=face_dim)
        if not isinstance(modality_loss, bool):
            raise ValueError(f"modality_loss must be true or false, got {modality_loss!r}")
        self.dim = int(dim)
        self.modality_loss = modality_loss
        self.norm_a, self.norm_v = InputNorm(audio_dim), InputNorm(face_dim)
        self.proj_a = mlp(audio_dim, hidden, dim, dropout)
        self.proj_v = mlp(face_dim, hidden, dim, dropout)

    @property
    def embedding_dim(self) -> int:
        return self.dim

    def _project(self, batch, use):
        """``(a_p, v_p, e_A or None, e_V or None)``: presence masks and per-modality projections."""
        a_p, v_p = batch.present(use)
        xa, xv = _field(batch, "audio_clip", "A", use, self.name), _field(batch, "face_clip", "V", use, self.name)
        e_a = self.proj_a(self.norm_a(xa)) if xa is not None else None
        e_v = self.proj_v(self.norm_v(xv)) if xv is not None else None
        return a_p, v_p, e_a, e_v

    def _fuse(self, n, device, a_p, v_p, e_a, e_v):
        out = torch.zeros(n, self.dim, device=device)
        if e_a is not None:
            out = out + e_a * a_p[:, None]
        if e_v is not None:
            out = out + e_v * v_p[:, None]
        count = (a_p.float() + v_p.float()).clamp_min(1.0)
        return out / count[:, None]

    def embed(self, batch, use=MODALITIES):
        return self._fuse(len(batch), batch.device, *self._project(batch, use))

    def train_views(self, batch):
        if not self.modality_loss:
            return super().train_views(batch)
        a_p, v_p, e_a, e_v = self._project(batch, MODALITIES)
        views = [("AV", self._fuse(len(batch), batch.device, a_p, v_p, e_a, e_v), a_p | v_p)]
        if e_a is not None:
            views.append(("A", e_a, a_p))
        if e_v is not None:
            views.append(("V", e_v, v_p))
        return views


# ------------------------------------------------------------------------ mlp
class MLPHead(FusionHead):
    """MLP fusion: ``MLP([u(a) or filler_A ; u(v) or filler_V])`` to ``dim``."""

    def __init__(self, *, audio_dim: int, face_dim: int, dim: int = 256, hidden: int = 512,
                 dropout: float = 0.1):
        super().__init__(audio_dim=audio_dim, face_dim=face_dim)
        self.dim = int(dim)
        self.filler_a = nn.Parameter(torch.zeros(audio_dim))
        self.filler_v = nn.Parameter(torch.zeros(face_dim))
        self.norm_a, self.norm_v = InputNorm(audio_dim), InputNorm(face_dim)
        self.net = mlp(audio_dim + face_dim, hidden, dim, dropout)

    @property
    def embedding_dim(self) -> int:
        return self.dim

    def embed(self, batch, use=MODALITIES):
        a_p, v_p = batch.present(use)
        n = len(batch)
        fa = self.filler_a.expand(n, -1)
        fv = self.filler_v.expand(n, -1)
        xa, xv = _field(batch, "audio_clip", "A", use, self.name), _field(batch, "face_clip", "V", use, self.name)
        a = torch.where(a_p[:, None], self.norm_a(xa), fa) if xa is not None else fa
        v = torch.where(v_p[:, None], self.norm_v(xv), fv) if xv is not None else fv
        return self.net(torch.cat([a, v], dim=1))


# ------------------------------------------------------------------ multiview
class MultiViewHead(FusionHead):
    """Multi-view fusion: modality projections into one shared embedding layer; one loss per view."""

    def __init__(self, *, audio_dim: int, face_dim: int, dim: int = 256, hidden: int = 512,
                 dropout: float = 0.1):
        super().__init__(audio_dim=audio_dim, face_dim=face_dim)
        self.dim = int(dim)
        self.norm_a, self.norm_v = InputNorm(audio_dim), InputNorm(face_dim)
        self.proj_a = nn.Sequential(nn.Linear(audio_dim, hidden), nn.ReLU(), nn.Dropout(dropout))
        self.proj_v = nn.Sequential(nn.Linear(face_dim, hidden), nn.ReLU(), nn.Dropout(dropout))
        self.shared = nn.Linear(hidden, dim)          # the one shared embedding layer

    @property
    def embedding_dim(self) -> int:
        return self.dim

    def view(self, batch: EmbeddingBatch, modality: str) -> torch.Tensor:
        """The (un-normalised) embedding of one view, ``"A"`` or ``"V"``, for every row."""
        if modality == "A":
            return self.shared(self.proj_a(self.norm_a(_need(batch.audio_clip, "audio_clip", self.name))))
        return self.shared(self.proj_v(self.norm_v(_need(batch.face_clip, "face_clip", self.name))))

    def embed(self, batch, use=MODALITIES):
        a_p, v_p = batch.present(use)
        out = torch.zeros(len(batch), self.dim, device=batch.device)
        if _field(batch, "audio_clip", "A", use, self.name) is not None:
            out = out + F.normalize(self.view(batch, "A"), dim=-1) * a_p[:, None]
        if _field(batch, "face_clip", "V", use, self.name) is not None:
            out = out + F.normalize(self.view(batch, "V"), dim=-1) * v_p[:, None]
        return out / (a_p.float() + v_p.float()).clamp_min(1.0)[:, None]

    def train_views(self, batch):
        a_p, v_p = batch.present()
        views = []
        if _field(batch, "audio_clip", "A", MODALITIES, self.name) is not None:
            views.append(("A", self.view(batch, "A"), a_p))
        if _field(batch, "face_clip", "V", MODALITIES, self.name) is not None:
            views.append(("V", self.view(batch, "V"), v_p))
        return views


register_head("score_avg", ScoreAvgHead,
              "no training: z-normed per-modality cosine scores averaged with a dev-tuned weight")
register_head("mean", MeanHead, "per-modality projections to 256-d, averaged (mean fusion)")
register_head("mlp", MLPHead, "concatenation (learned filler for a missing modality) then MLP")
register_head("multiview", MultiViewHead,
              "modality projections into one shared embedding + classifier, one loss per view")
