"""Sequence fusion heads: vanilla cross-attention, joint cross-attention and dynamic cross-attention.

One module (``CrossAttentionHead``) with options, registered under three names:

| name | ``attention`` | ``gate`` |
| --- | --- | --- |
| ``cross_attention`` | ``"cross"``: audio queries attend over face steps, face over audio | no |
| ``jca`` | ``"joint"``: each modality attends over the joint sequence [audio steps; face steps] | no |
| ``dca`` | ``"joint"`` (``attention="cross"`` gives DCA on vanilla CA) | yes |

Pipeline per modality m in {A, V}, on the cached per-segment / per-frame sequences
(default 8 steps each; invalid = repeat-padded steps are masked everywhere):

1. ``InputNorm``: L2-normalise each step, standardise per dimension (statistics of the
   valid training steps, ``fit_inputs``); ``Linear(D_m, d_model)``.
2. Temporal encoder (``encoder="conv"``: residual Conv1d(k=3) + ReLU + LayerNorm;
   ``"gru"``: a bidirectional GRU + LayerNorm): X_m (B, T_m, d).
3. Cross-attention, ``iterations`` times with shared weights (recursive):
   X_m^att = LN(X_m + Wo_m softmax(Wq_m X_m (Wk_m K_m)^T / sqrt(d/h)) Wv_m K_m), multi-head,
   where K_A = X_V, K_V = X_A (``cross``) or K_m = [X_A; X_V] (``joint``). A row with no
   valid key steps (the other modality missing, ``cross``) keeps X_m^att = X_m.
4. DCA conditional gate (``gate=True``), per step t:
   (g0, g1) = softmax(W_g [X_m,t ; X_m,t^att] / T), out_t = g0 X_m,t + g1 X_m,t^att, with the
   temperature T (default 0.1, 2403.04661): g1 -> 1 selects the cross-attended features
   where the inter-modal relationship is strong, g0 -> 1 falls back to the unattended ones.
   The gate weights of the last ``embed`` call are kept in ``head.last_gates`` for analysis.
5. Attentive statistics pooling (channel-wise attention, ECAPA-style) over valid steps:
   (mu_m, sigma_m) (B, 2d); a missing modality uses a learned filler vector instead.
6. ``Linear(4d, dim)`` with ``dim = 512``: the identity embedding (cosine scoring).

Scaled dot-product softmax attention is used for the cross-correlation (the papers'
tanh-correlation + attention-map formulation is an equivalent-capacity variant); ``joint``
implements JCA's idea that each modality attends to the joint audio-visual
representation (intra- and inter-modal relations in one map) by attending over the
concatenated sequence, which also works when S != F.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from fusion.batch import MODALITIES, EmbeddingBatch
from fusion.heads.base import FIT_ROWS, FusionHead, InputNorm, _need, spaced_rows
from fusion.registry import register_head

ATTENTIONS = ("cross", "joint")
ENCODERS = ("conv", "gru")


def masked_softmax(logits: torch.Tensor, mask: torch.Tensor, dim: int) -> torch.Tensor:
    """Softmax over ``dim`` restricted to ``mask``; all-masked slices give all-zero weights."""
    any_valid = mask.any(dim=dim, keepdim=True)
    m = mask | ~any_valid
    w = torch.softmax(logits.masked_fill(~m, float("-inf")), dim=dim)
    return w * any_valid


class TemporalEncoder(nn.Module):
    """Linear projection + a small temporal encoder over (B, T, D) -> (B, T, d)."""

    def __init__(self, d_in: int, d: int, kind: str = "conv", dropout: float = 0.1):
        super().__init__()
        if kind not in ENCODERS:
            raise ValueError(f"encoder must be one of {ENCODERS}, got {kind!r}")
        self.kind = kind
        self.norm_in = InputNorm(d_in)
        self.proj = nn.Linear(d_in, d)
        if kind == "conv":
            self.conv = nn.Conv1d(d, d, kernel_size=3, padding=1)
        else:
            self.gru = nn.GRU(d, d // 2, batch_first=True, bidirectional=True)
        self.norm = nn.LayerNorm(d)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        h = self.proj(self.norm_in(x)) * valid[..., None]
        if self.kind == "conv":
            r = self.conv(h.transpose(1, 2)).transpose(1, 2)
        else:
            r = self.gru(h)[0]
        return self.norm(h + self.drop(F.relu(r))) * valid[..., None]


class CrossAttention(nn.Module):
    """Multi-head attention of queries ``x`` (B, T, d) over keys ``k`` (B, L, d), masked, residual + LN."""

    def __init__(self, d: int, n_heads: int = 4, dropout: float = 0.1):
        super().__init__()
        if d % n_heads:
            raise ValueError(f"d_model {d} must be divisible by n_heads {n_heads}")
        self.h = n_heads
        self.q = nn.Linear(d, d)
        self.kv = nn.Linear(d, 2 * d)
        self.o = nn.Linear(d, d)
        self.norm = nn.LayerNorm(d)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, k: torch.Tensor, key_valid: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        length = k.shape[1]
        dh = d // self.h
        q = self.q(x).view(b, t, self.h, dh).transpose(1, 2)                 # B h T dh
        kk, vv = self.kv(k).view(b, length, 2, self.h, dh).permute(2, 0, 3, 1, 4)  # B h L dh each
        logits = q @ kk.transpose(-1, -2) / math.sqrt(dh)                    # B h T L
        w = masked_softmax(logits, key_valid[:, None, None, :], dim=-1)
        att = (w @ vv).transpose(1, 2).reshape(b, t, d)
        out = self.norm(x + self.drop(self.o(att)))
        has_keys = key_valid.any(dim=1)[:, None, None]
        return torch.where(has_keys, out, x)


class AttentiveStatsPool(nn.Module):
    """Channel-wise attentive statistics pooling: (B, T, d), mask (B, T) -> (B, 2d) = [mu; sigma]."""

    def __init__(self, d: int, bottleneck: int = 128):
        super().__init__()
        self.att = nn.Sequential(nn.Linear(d, bottleneck), nn.Tanh(), nn.Linear(bottleneck, d))

    def forward(self, h: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        w = masked_softmax(self.att(h).float(), valid[..., None], dim=1)    # B T d
        hf = h.float()
        mu = (w * hf).sum(1)
        var = (w * hf * hf).sum(1) - mu * mu
        return torch.cat([mu, torch.sqrt(var.clamp_min(1e-5))], dim=1)


class CrossAttentionHead(FusionHead):
    """CA / JCA / DCA on the per-step sequences (see the module docstring for the exact definition)."""

    needs_sequences = True
    default_margin = 0.4      # 2403.04661: AAM-softmax, m = 0.4, s = 64
    default_scale = 64.0

    def __init__(self, *, audio_dim: int, face_dim: int, attention: str = "joint", gate: bool = True,
                 temperature: float = 0.1, d_model: int = 256, n_heads: int = 4, iterations: int = 1,
                 encoder: str = "conv", dim: int = 512, dropout: float = 0.1):
        super().__init__(audio_dim=audio_dim, face_dim=face_dim)
        if attention not in ATTENTIONS:
            raise ValueError(f"attention must be one of {ATTENTIONS}, got {attention!r}")
        if not temperature > 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        if iterations < 1:
            raise ValueError(f"iterations must be >= 1, got {iterations}")
        self.attention, self.gate, self.temperature = attention, bool(gate), float(temperature)
        self.iterations, self.dim, self.d_model = int(iterations), int(dim), int(d_model)
        self.enc_a = TemporalEncoder(audio_dim, d_model, encoder, dropout)
        self.enc_v = TemporalEncoder(face_dim, d_model, encoder, dropout)
        self.att_a = CrossAttention(d_model, n_heads, dropout)
        self.att_v = CrossAttention(d_model, n_heads, dropout)
        if self.gate:
            self.gate_a = nn.Linear(2 * d_model, 2)
            self.gate_v = nn.Linear(2 * d_model, 2)
        self.pool_a = AttentiveStatsPool(d_model)
        self.pool_v = AttentiveStatsPool(d_model)
        self.filler_a = nn.Parameter(torch.zeros(2 * d_model))
        self.filler_v = nn.Parameter(torch.zeros(2 * d_model))
        self.out = nn.Linear(4 * d_model, dim)
        self.last_gates: dict[str, torch.Tensor] = {}

    @property
    def embedding_dim(self) -> int:
        return self.dim

    def _gate(self, layer: nn.Linear, x: torch.Tensor, x_att: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        g = torch.softmax(layer(torch.cat([x, x_att], dim=-1)).float() / self.temperature, dim=-1)  # B T 2
        return g[..., :1] * x + g[..., 1:] * x_att, g

    def _steps(self, batch: EmbeddingBatch, use) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        a_p, v_p = batch.present(use)
        a_seq = _need(batch.audio_seq, "audio_seq (per-segment embeddings)", self.name)
        v_seq = _need(batch.face_seq, "face_seq (per-frame embeddings)", self.name)
        a_valid = (batch.audio_seq_valid.bool() if batch.audio_seq_valid is not None
                   else torch.ones(a_seq.shape[:2], dtype=torch.bool, device=a_seq.device)) & a_p[:, None]
        v_valid = (batch.face_seq_valid.bool() if batch.face_seq_valid is not None
                   else torch.ones(v_seq.shape[:2], dtype=torch.bool, device=v_seq.device)) & v_p[:, None]
        return a_seq, a_valid, v_seq, v_valid

    def embed(self, batch, use=MODALITIES):
        a_seq, a_valid, v_seq, v_valid = self._steps(batch, use)
        xa = self.enc_a(a_seq, a_valid)
        xv = self.enc_v(v_seq, v_valid)
        ya, yv = xa, xv
        for _ in range(self.iterations):
            if self.attention == "cross":
                ka, ka_valid, kv, kv_valid = yv, v_valid, ya, a_valid
            else:
                joint = torch.cat([ya, yv], dim=1)
                joint_valid = torch.cat([a_valid, v_valid], dim=1)
                ka, ka_valid, kv, kv_valid = joint, joint_valid, joint, joint_valid
            ya, yv = self.att_a(ya, ka, ka_valid), self.att_v(yv, kv, kv_valid)
        if self.gate:
            ya, ga = self._gate(self.gate_a, xa, ya)
            yv, gv = self._gate(self.gate_v, xv, yv)
            self.last_gates = {"A": ga.detach(), "V": gv.detach(),
                               "A_valid": a_valid.detach(), "V_valid": v_valid.detach()}
        a_has, v_has = a_valid.any(1), v_valid.any(1)
        pa = torch.where(a_has[:, None], self.pool_a(ya, a_valid), self.filler_a.float())
        pv = torch.where(v_has[:, None], self.pool_v(yv, v_valid), self.filler_v.float())
        return self.out(torch.cat([pa, pv], dim=1))

    @torch.no_grad()
    def fit_inputs(self, batch: EmbeddingBatch, max_rows: int = FIT_ROWS) -> None:
        """Fit the step-level input normalisers on the valid steps of (at most ``max_rows``
        evenly spaced) present rows."""
        for seq, valid, has, enc in ((batch.audio_seq, batch.audio_seq_valid, batch.has_audio, self.enc_a),
                                     (batch.face_seq, batch.face_seq_valid, batch.has_face, self.enc_v)):
            if seq is None:
                continue
            rows = spaced_rows(has, max_rows)
            if not rows.numel():
                continue
            steps = seq.index_select(0, rows)
            m = (torch.ones(steps.shape[:2], dtype=torch.bool, device=steps.device) if valid is None
                 else valid.index_select(0, rows).bool())
            if m.any():
                enc.norm_in.fit(steps[m])

    @torch.no_grad()
    def gate_weights(self, batch: EmbeddingBatch, use=MODALITIES) -> dict[str, torch.Tensor]:
        """Per-step gate weights ``{"A": (B, S, 2), "V": (B, F, 2), "A_valid", "V_valid"}``.

        ``[..., 1]`` is the weight on the cross-attended features, ``[..., 0]`` on the
        unattended ones. Only for ``gate=True`` heads (``dca``).
        """
        if not self.gate:
            raise ValueError(f"head '{self.name}' has no gate (only dca-style heads do)")
        self.embed(batch, use)
        return dict(self.last_gates)


register_head("cross_attention", CrossAttentionHead,
              "vanilla cross-attention (audio<->face) on the 8-step sequences, ASP, 512-d",
              defaults={"attention": "cross", "gate": False})
register_head("jca", CrossAttentionHead,
              "joint cross-attention: each modality attends over [audio; face] steps, ASP, 512-d",
              defaults={"attention": "joint", "gate": False})
register_head("dca", CrossAttentionHead,
              "dynamic cross-attention: JCA + per-step gate (softmax, T=0.1) attended vs unattended",
              defaults={"gate": True})
