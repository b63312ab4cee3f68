"""Building blocks of the sequence heads (``fusion.heads.attention``).

* ``BiLSTMEncoder``: the DCA authors' temporal encoder (their ``layer.py:6-32``): a
  2-layer bidirectional LSTM at the input width (hidden d/2 per direction, dropout 0.1,
  learned initial states), the input concatenated to its output, Dropout, Linear(2d -> d),
  L2-normalised per step. Runs over the valid steps only (packed), so padded steps never
  reach a valid one.
* ``TemporalEncoder``: avfuse's earlier encoder (Linear -> d + residual Conv1d(k=3) or a
  BiGRU, ReLU, LayerNorm); kept as ``encoder="conv"|"gru"``.
* ``CorrelationSublayer``: one sublayer of the authors' joint cross-attention
  (``av_crossatten.py:6-29`` + ``dense_coattn.py:6-42``), in their feature-correlation
  formulation (below). ``formulation="corr"``.
* ``CrossAttention``: scaled dot-product multi-head attention over time steps with a
  residual and LayerNorm (avfuse's earlier formulation, ``formulation="softmax"``).
* ``AttentiveStatsPool``: channel-wise attentive statistics pooling, masked.

The correlation sublayer, for modality m in {A, V} with features X_m (B, T, d_m):

    J     = W_J [X_A ; X_V] + b_J                      (B, T, d_A + d_V)  joint ("joint" attention)
    K_m   = (W_K,m X_m^T) over the time axis           (B, d_m, T)        Linear(T, T), dense_coattn.py:13-14,23-24
    C_m   = Dropout(tanh(K_m J / sqrt(d_A + d_V)))     (B, d_m, d_A+d_V)  feature x joint-feature correlation
    H_m   = ReLU(tanh((W_V,m X_m) C_m))                (B, T, d_A + d_V)  dense_coattn.py:34-42
    X_m  <- X_m + Dropout(ReLU(W_O,m H_m))                                  av_crossatten.py:24-29

``attention="cross"`` (vanilla CA, for which the authors publish no code) uses the other
modality in place of the joint features: J_A = W X_V, J_V = W X_A.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from fusion.heads.base import InputNorm

ENCODERS = ("lstm", "conv", "gru")


def xavier_init(m: nn.Module) -> None:
    """The DCA authors' ``init_weights`` (``dca_cam.py:56-78``) for one module (use with ``.apply``):
    a Linear or Conv weight xavier-uniform (gain 1), its bias zero; anything else (LSTM, LayerNorm,
    free parameters) left as it is."""
    if isinstance(m, (nn.Linear, nn.modules.conv._ConvNd)):
        nn.init.xavier_uniform_(m.weight, gain=1.0)
        if m.bias is not None:
            nn.init.zeros_(m.bias)


def masked_softmax(logits: torch.Tensor, mask: torch.Tensor, dim: int) -> torch.Tensor:
    """Softmax over ``dim`` restricted to ``mask``; all-masked slices give all-zero weights."""
    any_valid = mask.any(dim=dim, keepdim=True)
    m = mask | ~any_valid
    w = torch.softmax(logits.masked_fill(~m, float("-inf")), dim=dim)
    return w * any_valid


def valid_only(x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """``x`` with the invalid steps set to 0 (``where``, so NaN/inf there cannot leak)."""
    return torch.where(valid[..., None], x, torch.zeros((), dtype=x.dtype, device=x.device))


class StepInput(nn.Module):
    """The per-step input transform: L2 normalisation (the authors', ``dca_cam.py:102-103``) or
    ``InputNorm`` standardisation (``standardize=True``, fitted by ``fit_inputs``)."""

    def __init__(self, d: int, standardize: bool):
        super().__init__()
        self.standardize = bool(standardize)
        self.norm_in = InputNorm(d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm_in(x) if self.standardize else F.normalize(x.float(), dim=-1)


class BiLSTMEncoder(nn.Module):
    """(B, T, d_in), valid (B, T) -> (B, T, d), L2-normalised per step, zeros at invalid steps."""

    def __init__(self, d_in: int, d: int, *, layers: int = 2, dropout: float = 0.1, standardize: bool = False):
        super().__init__()
        if d % 2:
            raise ValueError(f"the BiLSTM width must be even, got {d}")
        self.inp = StepInput(d_in, standardize)
        self.proj = nn.Linear(d_in, d) if d != d_in else nn.Identity()
        self.layers, self.hidden = int(layers), d // 2
        self.rnn = nn.LSTM(d, d // 2, num_layers=layers, dropout=dropout if layers > 1 else 0.0,
                           bidirectional=True, batch_first=True)
        self.init_state = nn.Parameter(nn.init.xavier_uniform_(torch.empty(4 * layers, d // 2)))  # h0; c0
        self.drop = nn.Dropout(dropout)
        self.out = nn.Linear(2 * d, d)

    @property
    def norm_in(self) -> InputNorm:
        return self.inp.norm_in

    def forward(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        h = valid_only(self.proj(valid_only(self.inp(x), valid)), valid)
        if torch.jit.is_tracing():   # ONNX export: no sort/packing ops; the same outputs at valid steps
            r = self.unrolled(h, valid)
        else:
            r = self.packed(h, valid)
        y = self.out(self.drop(torch.cat([h, r], dim=-1)))
        return valid_only(F.normalize(y, dim=-1), valid)

    def packed(self, h: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """The BiLSTM over each row's valid steps, compacted and packed (cuDNN-friendly): valid
        steps first (stable: time order kept), so padded steps never reach a valid one."""
        b, t, _ = h.shape
        order = torch.argsort((~valid).to(torch.int8), dim=1, stable=True)
        hs = h.gather(1, order[..., None].expand_as(h))
        lengths = valid.sum(1).clamp_min(1).cpu()
        n = 2 * self.layers
        h0 = self.init_state[:n, None].expand(n, b, self.hidden).contiguous()
        c0 = self.init_state[n:, None].expand(n, b, self.hidden).contiguous()
        packed = pack_padded_sequence(hs, lengths, batch_first=True, enforce_sorted=False)
        r, _ = self.rnn(packed, (h0, c0))
        r, _ = pad_packed_sequence(r, batch_first=True, total_length=t)
        return r.gather(1, torch.argsort(order, dim=1)[..., None].expand(b, t, r.shape[-1]))

    def unrolled(self, h: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """The same BiLSTM written out step by step (traceable: no sort, no packing): an invalid
        step leaves the state as it was, so at every valid step the output equals ``packed``'s
        (tested); at invalid steps it is the carried state, zeroed by ``forward``."""
        b, t, _ = h.shape
        n, x = 2 * self.layers, h
        for layer in range(self.layers):
            outs = []
            for direction, steps in ((0, range(t)), (1, range(t - 1, -1, -1))):
                sfx = f"_l{layer}" + ("_reverse" if direction else "")
                w_hh = getattr(self.rnn, "weight_hh" + sfx)
                xw = x @ getattr(self.rnn, "weight_ih" + sfx).T + getattr(self.rnn, "bias_ih" + sfx) \
                    + getattr(self.rnn, "bias_hh" + sfx)
                k = 2 * layer + direction
                hh = self.init_state[k].expand(b, self.hidden)
                cc = self.init_state[n + k].expand(b, self.hidden)
                ys: list = [None] * t
                for s in steps:
                    i, f, g, o = (xw[:, s] + hh @ w_hh.T).chunk(4, dim=-1)
                    c2 = torch.sigmoid(f) * cc + torch.sigmoid(i) * torch.tanh(g)
                    m = valid[:, s, None]
                    hh = torch.where(m, torch.sigmoid(o) * torch.tanh(c2), hh)
                    cc = torch.where(m, c2, cc)
                    ys[s] = hh
                outs.append(torch.stack(ys, 1))
            x = torch.cat(outs, -1)
        return x


class TemporalEncoder(nn.Module):
    """avfuse's earlier encoder: Linear -> d, residual Conv1d(k=3) or BiGRU, ReLU, LayerNorm."""

    def __init__(self, d_in: int, d: int, kind: str = "conv", dropout: float = 0.1, standardize: bool = True):
        super().__init__()
        if kind not in ("conv", "gru"):
            raise ValueError(f"TemporalEncoder kind must be conv or gru, got {kind!r}")
        self.kind = kind
        self.inp = StepInput(d_in, standardize)
        self.proj = nn.Linear(d_in, d)
        if kind == "conv":
            self.conv = nn.Conv1d(d, d, kernel_size=3, padding=1)
        else:
            self.gru = nn.GRU(d, d // 2, batch_first=True, bidirectional=True)
        self.norm = nn.LayerNorm(d)
        self.drop = nn.Dropout(dropout)

    @property
    def norm_in(self) -> InputNorm:
        return self.inp.norm_in

    def forward(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        h = valid_only(self.proj(valid_only(self.inp(x), valid)), valid)
        if self.kind == "conv":
            r = self.conv(h.transpose(1, 2)).transpose(1, 2)
        else:
            r = self.gru(h)[0]
        return valid_only(self.norm(h + self.drop(F.relu(r))), valid)


class CorrelationSublayer(nn.Module):
    """One joint (or vanilla) cross-attention sublayer in the authors' formulation (module docstring)."""

    def __init__(self, da: int, dv: int, steps: int, *, attention: str = "joint", dropout: float = 0.6):
        super().__init__()
        self.attention, self.steps = attention, int(steps)
        dj = da + dv
        if attention == "joint":
            self.query = nn.Linear(dj, dj)
            qa = qv = dj
        else:                               # vanilla CA: audio correlates with the face features, face with audio
            self.query_a, self.query_v = nn.Linear(dv, dv), nn.Linear(da, da)
            qa, qv = dv, da
        self.key_a, self.key_v = nn.Linear(steps, steps), nn.Linear(steps, steps)
        self.value_a, self.value_v = nn.Linear(da, da), nn.Linear(dv, dv)
        self.drop_a, self.drop_v = nn.Dropout(dropout), nn.Dropout(dropout)
        self.back_a = nn.Sequential(nn.Linear(qa, da), nn.ReLU(), nn.Dropout(dropout))
        self.back_v = nn.Sequential(nn.Linear(qv, dv), nn.ReLU(), nn.Dropout(dropout))

    @staticmethod
    def _attend(x, q, key: nn.Linear, value: nn.Linear, drop: nn.Dropout) -> torch.Tensor:
        k = key(x.transpose(1, 2))                                   # B d_m T (time steps mixed)
        corr = drop(torch.tanh(k @ q / math.sqrt(q.shape[-1])))      # B d_m d_q
        return F.relu(torch.tanh(value(x) @ corr))                   # B T d_q

    def forward(self, xa: torch.Tensor, xv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.attention == "joint":
            qa = qv = self.query(torch.cat([xa, xv], dim=-1))
        else:
            qa, qv = self.query_a(xv), self.query_v(xa)
        ha = self._attend(xa, qa, self.key_a, self.value_a, self.drop_a)
        hv = self._attend(xv, qv, self.key_v, self.value_v, self.drop_v)
        return xa + self.back_a(ha), xv + self.back_v(hv)


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
    """Channel-wise attentive statistics pooling: (B, T, d), mask (B, T) -> (B, 2d) = [mu; sigma].

    Attention net ``Linear(d, b) [-> ReLU] -> Tanh -> Linear(b, d)``, softmax over the valid
    steps. ``relu=True, bottleneck=256`` is the authors' ``ASP.py:17-24`` less its BatchNorm1d.
    """

    def __init__(self, d: int, bottleneck: int = 128, relu: bool = False):
        super().__init__()
        mid = [nn.ReLU(), nn.Tanh()] if relu else [nn.Tanh()]
        self.att = nn.Sequential(nn.Linear(d, bottleneck), *mid, nn.Linear(bottleneck, d))

    def forward(self, h: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        w = masked_softmax(self.att(h).float(), valid[..., None], dim=1)    # B T d
        hf = h.float()
        mu = (w * hf).sum(1)
        var = (w * hf * hf).sum(1) - mu * mu
        return torch.cat([mu, torch.sqrt(var.clamp_min(1e-5))], dim=1)
