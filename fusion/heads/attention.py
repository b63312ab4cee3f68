"""Sequence fusion heads: vanilla cross-attention, joint cross-attention and dynamic cross-attention.

One module (``CrossAttentionHead``) with options, registered under three names:

| name | ``attention`` | ``gate`` |
| --- | --- | --- |
| ``cross_attention`` | ``"cross"``: audio correlates with the face features, face with audio | no |
| ``jca`` | ``"joint"``: each modality correlates with the joint features [audio; face] | no |
| ``dca`` | ``"joint"`` (``attention="cross"`` gives DCA on vanilla CA) | yes |

The defaults follow 2403.04661 as the authors' code implements it
(github.com/praveena2j/DCAforPersonVerification; file:line references in
docs/FIDELITY.md, which also lists every remaining difference and why). On the cached
per-segment / per-frame sequences (S audio steps, F face steps, S = F = 8 by default):

1. Each step is L2-normalised (``input_norm="l2"``; ``"standardize"``: ``InputNorm``).
2. Temporal encoder per modality, ``encoder="lstm"``: 2-layer BiLSTM at the native width
   (192 for ECAPA, 512 for iresnet), input concatenated to its output, Linear back to the
   width, L2-normalised (``fusion.heads.attention_layers.BiLSTMEncoder``). Steps that are invalid
   (repeat-padded) or whose modality is absent are replaced by a learned filler vector of
   that modality (the authors' clips always have both modalities and 8 steps: their loader
   zero-pads short clips).
3. ``formulation="corr"``: ``layers`` (2) sublayers with their own weights of the authors'
   joint cross-attention over the joint features concatenated on the feature axis
   (192 + 512 = 704): feature-correlation C = tanh(K J / sqrt(704)), attended
   H = ReLU(tanh(V C)), residual X + Dropout(ReLU(W H)), dropout 0.6
   (``CorrelationSublayer``). Needs S = F = ``steps`` (the time-axis key projection is a
   Linear(steps, steps), as the authors' Linear(8, 8); ``avfuse train`` sets ``steps`` to the
   cache's step count, and a batch with fewer steps is padded with invalid steps). ``iterations`` > 1 repeats the
   stack with shared weights (recursive JCA).
4. DCA conditional gate (``gate=True``), per step t, from the attended features alone
   (``gate_input="att"``: Linear(d_m, 2)):
   (g0, g1) = softmax(W_g X_m,t^att / T), out_t = ReLU(g0 X_m,t + g1 X_m,t^att) (``gate_relu``),
   T = 0.1. g1 -> 1 selects the cross-attended features, g0 -> 1 the unattended ones. The
   gate weights of the last ``embed`` call are kept in ``head.last_gates``.
5. ``pooling="joint"``: per-step concatenation [Y_A,t ; Y_V,t] (704), one attentive
   statistics pooling over the steps valid in either modality (-> 1408), Linear -> ``dim``
   (512): the identity embedding (cosine scoring).
6. Initialisation, ``init="xavier"`` (the authors' ``CAM.init_weights``, ``dca_cam.py:56-78``):
   every Linear / Conv weight of the encoders, the sublayers and the gates xavier-uniform (gain 1),
   biases zero; the LSTM weights, the pooling and the output Linear keep PyTorch's init (the
   authors build ASP and Linear(1408, 512) outside CAM, ``trainer.py:38-50``). ``init="torch"``:
   PyTorch's defaults everywhere (avfuse's earlier default, and that of checkpoints written
   before the option existed).

Options that give avfuse's earlier variants (each can be swept on its own with
``avfuse ablate --sweep dca.FIELD=...``): ``formulation="softmax"`` (multi-head scaled
dot-product attention over time steps, joint keys = [audio steps; face steps] along time,
residual + LayerNorm; works for S != F), ``encoder="conv"|"gru"`` (Linear -> ``d_model`` +
Conv1d/BiGRU + LayerNorm), ``gate_input="x_and_att"`` (Linear(2d, 2) on [X; X_att]),
``gate_relu=False``, ``pooling="separate"`` (one ASP per modality, a learned pooled filler
for a missing modality, Linear(2 d_A + 2 d_V -> dim)), ``input_norm="standardize"``.
``d_model``: 0 keeps the native widths (``corr``); N > 0 projects both modalities to N
first; ``softmax`` and the conv/gru encoders need one width for both (0 -> 256).
"""

from __future__ import annotations

import torch
from torch import nn

from fusion.batch import MODALITIES, EmbeddingBatch
from fusion.heads.attention_layers import (
    ENCODERS,
    AttentiveStatsPool,
    BiLSTMEncoder,
    CorrelationSublayer,
    CrossAttention,
    TemporalEncoder,
    xavier_init,
)
from fusion.heads.base import FIT_ROWS, FusionHead, _need, spaced_rows
from fusion.recipes import DCA_RECIPE
from fusion.registry import register_head
from pipeline.core.errors import HeadError

ATTENTIONS = ("cross", "joint")
FORMULATIONS = ("corr", "softmax")
POOLINGS = ("joint", "separate")
GATE_INPUTS = ("att", "x_and_att")
INPUT_NORMS = ("l2", "standardize")
INITS = ("xavier", "torch")
SOFTMAX_D_MODEL = 256       # the common width of formulation="softmax" / conv / gru when d_model is 0


def _pad_steps(t: torch.Tensor, steps: int) -> torch.Tensor:
    """(B, T, ...) -> (B, steps, ...) with zeros (False) appended on the time axis."""
    pad = torch.zeros((t.shape[0], steps - t.shape[1], *t.shape[2:]), dtype=t.dtype, device=t.device)
    return torch.cat([t, pad], dim=1)


def _choice(name: str, value, allowed) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}")


class CrossAttentionHead(FusionHead):
    """CA / JCA / DCA on the per-step sequences (see the module docstring for the exact definition)."""

    needs_sequences = True
    default_margin = 0.4      # 2403.04661 / the authors' trainer.py:57 + run_train.sh:33-34: m = 0.4, s = 64
    default_scale = 64.0
    legacy_defaults = {"init": "torch"}   # checkpoints written before `init` existed were built with it

    def __init__(self, *, audio_dim: int, face_dim: int, attention: str = "joint", gate: bool = True,
                 temperature: float = 0.1, formulation: str = "corr", encoder: str = "lstm",
                 pooling: str = "joint", gate_input: str = "att", gate_relu: bool = True,
                 input_norm: str = "l2", d_model: int = 0, layers: int = 2, iterations: int = 1,
                 steps: int = 8, n_heads: int = 4, dim: int = 512, dropout: float = 0.1,
                 att_dropout: float = 0.6, init: str = "xavier"):
        super().__init__(audio_dim=audio_dim, face_dim=face_dim)
        for name, value, allowed in (("attention", attention, ATTENTIONS), ("formulation", formulation, FORMULATIONS),
                                     ("encoder", encoder, ENCODERS), ("pooling", pooling, POOLINGS),
                                     ("gate_input", gate_input, GATE_INPUTS), ("input_norm", input_norm, INPUT_NORMS),
                                     ("init", init, INITS)):
            _choice(name, value, allowed)
        if not temperature > 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        if iterations < 1 or layers < 1 or steps < 1:
            raise ValueError(f"iterations, layers and steps must be >= 1, got {iterations}, {layers}, {steps}")
        self.attention, self.gate, self.temperature = attention, bool(gate), float(temperature)
        self.formulation, self.pooling, self.gate_input = formulation, pooling, gate_input
        self.gate_relu, self.iterations, self.steps = bool(gate_relu), int(iterations), int(steps)
        self.dim = int(dim)
        if d_model < 0:
            raise ValueError(f"d_model must be >= 0 (0: native widths), got {d_model}")
        if not d_model and (formulation == "softmax" or encoder != "lstm"):
            d_model = SOFTMAX_D_MODEL
        wa, wv = (audio_dim, face_dim) if not d_model else (int(d_model), int(d_model))
        self.widths = (wa, wv)
        std = input_norm == "standardize"
        if encoder == "lstm":
            self.enc_a = BiLSTMEncoder(audio_dim, wa, dropout=dropout, standardize=std)
            self.enc_v = BiLSTMEncoder(face_dim, wv, dropout=dropout, standardize=std)
        else:
            self.enc_a = TemporalEncoder(audio_dim, wa, encoder, dropout, standardize=std)
            self.enc_v = TemporalEncoder(face_dim, wv, encoder, dropout, standardize=std)
        self.uses_step_filler = formulation == "corr" or pooling == "joint"
        if self.uses_step_filler:
            self.step_filler_a = nn.Parameter(torch.zeros(wa))
            self.step_filler_v = nn.Parameter(torch.zeros(wv))
        if formulation == "corr":
            self.sublayers = nn.ModuleList(CorrelationSublayer(wa, wv, steps, attention=attention,
                                                               dropout=att_dropout) for _ in range(layers))
        else:
            self.sublayers = nn.ModuleList(nn.ModuleList([CrossAttention(wa, n_heads, dropout),
                                                          CrossAttention(wv, n_heads, dropout)])
                                           for _ in range(layers))
        if self.gate:
            k = 1 if gate_input == "att" else 2
            self.gate_a, self.gate_v = nn.Linear(k * wa, 2), nn.Linear(k * wv, 2)
        if pooling == "joint":
            self.pool = AttentiveStatsPool(wa + wv, bottleneck=256, relu=True)
        else:
            self.pool_a, self.pool_v = AttentiveStatsPool(wa), AttentiveStatsPool(wv)
            self.filler_a = nn.Parameter(torch.zeros(2 * wa))
            self.filler_v = nn.Parameter(torch.zeros(2 * wv))
        self.out = nn.Linear(2 * (wa + wv), dim)
        if init == "xavier":   # the authors' CAM.init_weights: encoders, sublayers, gates; not ASP or out
            for part in (self.enc_a, self.enc_v, self.sublayers, *((self.gate_a, self.gate_v) if self.gate else ())):
                part.apply(xavier_init)
        self.last_gates: dict[str, torch.Tensor] = {}

    @property
    def embedding_dim(self) -> int:
        return self.dim

    # ------------------------------------------------------------------ parts
    def _gate(self, layer: nn.Linear, x: torch.Tensor, x_att: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        inp = x_att if self.gate_input == "att" else torch.cat([x, x_att], dim=-1)
        g = torch.softmax(layer(inp).float() / self.temperature, dim=-1)            # B T 2
        out = g[..., :1] * x + g[..., 1:] * x_att
        return (torch.relu(out) if self.gate_relu else out), g

    def _steps(self, batch: EmbeddingBatch, use) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        a_p, v_p = batch.present(use)
        a_seq = _need(batch.audio_seq, "audio_seq (per-segment embeddings)", self.name)
        v_seq = _need(batch.face_seq, "face_seq (per-frame embeddings)", self.name)
        a_valid = (batch.audio_seq_valid.bool() if batch.audio_seq_valid is not None
                   else torch.ones(a_seq.shape[:2], dtype=torch.bool, device=a_seq.device)) & a_p[:, None]
        v_valid = (batch.face_seq_valid.bool() if batch.face_seq_valid is not None
                   else torch.ones(v_seq.shape[:2], dtype=torch.bool, device=v_seq.device)) & v_p[:, None]
        s, f = a_seq.shape[1], v_seq.shape[1]
        if (self.formulation == "corr" or self.pooling == "joint") and s != f:
            raise HeadError(f"head '{self.name}' pairs audio step t with face step t, but the cache has {s} audio "
                            f"segments and {f} face frames per clip",
                            hint="re-extract with --segments N --frames N (equal), or train with --option "
                                 "formulation=softmax --option pooling=separate")
        if self.formulation == "corr" and s != self.steps:
            if s > self.steps:
                raise HeadError(f"head '{self.name}' was built for {self.steps} steps per clip (its time-axis key "
                                f"projection is Linear({self.steps}, {self.steps})), the batch has {s}",
                                hint=f"train with --option steps={s}, or re-extract with {self.steps} segments/frames")
            # fewer steps (a shorter clip, `avfuse ablate --lengths`): pad with invalid steps (-> fillers)
            a_seq, a_valid, v_seq, v_valid = (_pad_steps(t, self.steps) for t in (a_seq, a_valid, v_seq, v_valid))
        return a_seq, a_valid, v_seq, v_valid

    def _attend(self, xa, a_valid, xv, v_valid):
        ya, yv = xa, xv
        for _ in range(self.iterations):
            for layer in self.sublayers:
                if self.formulation == "corr":
                    ya, yv = layer(ya, yv)
                    continue
                att_a, att_v = layer
                if self.attention == "cross":
                    ka, ka_valid, kv, kv_valid = yv, v_valid, ya, a_valid
                else:
                    joint = torch.cat([ya, yv], dim=1)
                    joint_valid = torch.cat([a_valid, v_valid], dim=1)
                    ka, ka_valid, kv, kv_valid = joint, joint_valid, joint, joint_valid
                ya, yv = att_a(ya, ka, ka_valid), att_v(yv, kv, kv_valid)
        return ya, yv

    def embed(self, batch, use=MODALITIES):
        a_seq, a_valid, v_seq, v_valid = self._steps(batch, use)
        xa = self.enc_a(a_seq, a_valid)
        xv = self.enc_v(v_seq, v_valid)
        if self.uses_step_filler:   # invalid / absent steps -> the modality's learned filler
            xa = torch.where(a_valid[..., None], xa, self.step_filler_a.to(xa.dtype))
            xv = torch.where(v_valid[..., None], xv, self.step_filler_v.to(xv.dtype))
        ya, yv = self._attend(xa, a_valid, xv, v_valid)
        if self.gate:
            ya, ga = self._gate(self.gate_a, xa, ya)
            yv, gv = self._gate(self.gate_v, xv, yv)
            self.last_gates = {"A": ga.detach(), "V": gv.detach(),
                               "A_valid": a_valid.detach(), "V_valid": v_valid.detach()}
        if self.pooling == "joint":
            pooled = self.pool(torch.cat([ya, yv], dim=-1), a_valid | v_valid)
        else:
            a_has, v_has = a_valid.any(1), v_valid.any(1)
            pa = torch.where(a_has[:, None], self.pool_a(ya, a_valid), self.filler_a.float())
            pv = torch.where(v_has[:, None], self.pool_v(yv, v_valid), self.filler_v.float())
            pooled = torch.cat([pa, pv], dim=1)
        return self.out(pooled)

    @torch.no_grad()
    def fit_inputs(self, batch: EmbeddingBatch, max_rows: int = FIT_ROWS) -> None:
        """Fit the step-level ``InputNorm``s (``input_norm="standardize"`` only; ``"l2"`` has nothing
        to fit) on the valid steps of (at most ``max_rows`` evenly spaced) present rows."""
        for seq, valid, has, enc in ((batch.audio_seq, batch.audio_seq_valid, batch.has_audio, self.enc_a),
                                     (batch.face_seq, batch.face_seq_valid, batch.has_face, self.enc_v)):
            if seq is None or not enc.inp.standardize:
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
              "vanilla cross-attention (audio<->face correlation), BiLSTM, per-step concat + ASP, 512-d",
              defaults={"attention": "cross", "gate": False}, recipe=DCA_RECIPE)
register_head("jca", CrossAttentionHead,
              "joint cross-attention (2 sublayers over [audio; face] features), BiLSTM, concat + ASP, 512-d",
              defaults={"attention": "joint", "gate": False}, recipe=DCA_RECIPE)
register_head("dca", CrossAttentionHead,
              "dynamic cross-attention: JCA + per-step gate on the attended features (softmax, T=0.1), ReLU",
              defaults={"gate": True}, recipe=DCA_RECIPE)
