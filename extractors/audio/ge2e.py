"""``ge2e_lstm``: the GE2E speaker encoder of resemblyzer (Wan et al. 2018, as trained for
Real-Time-Voice-Cloning), 256-d, with its real weights from the PyPI package.

Architecture (resemblyzer ``VoiceEncoder``, our own module with the same key names):
``LSTM(40 -> 256, 3 layers, batch_first)``; partial embedding = ``L2norm(ReLU(Linear(256,
256)(h_last)))`` where ``h_last`` is the final hidden state of the top layer after 160
frames (1.6 s). Utterance embedding (resemblyzer ``embed_utterance`` with its defaults
``rate=1.3, min_coverage=0.75``): partial windows of 160 frames start every
``round(16000 / 1.3 / 160) = 77`` frames (about 52 % overlap) and cover
``ceil((T + 1) / 160)`` frames; the last window is dropped when it covers less than 75 %
of its samples with audio (unless it is the only one); missing audio is zeros; the
utterance embedding is the L2-normalised mean of the partial embeddings.

Pre-processing. Inside the module (every weights, every input, segments included): each
clip is scaled to -30 dBFS RMS if it is quieter (increase only; silent clips are left as
they are). The ``pretrained`` weights add resemblyzer's ``preprocess_wav`` as their
``Weights.preprocess`` (:class:`ResemblyzerPreprocess`, name ``resemblyzer_vad``), which
extraction applies to each clip's whole waveform before the clip and its segments are cut:
resemblyzer's volume normalisation (numpy float32, as theirs) then its webrtcvad long-silence
trimming (:mod:`extractors.audio.vad`, bit-exact masks), in that order; the in-module
normalisation then finds the trimmed wave at or above -30 dBFS (unless the trimming removed
loud non-speech) and leaves it. The segments are therefore cut from the trimmed wave. A clip
the VAD trims to nothing (no voiced window, or shorter than one 30 ms window) keeps its
untrimmed (volume-normalised) wave; resemblyzer would embed an empty wave. The extraction
records the preprocessing in the cache provenance (``audio_backbone["preprocess"]``).
``pretrained-novad`` is the same file without it (the wave as decoded, as avfuse did before).
Clip embeddings equal resemblyzer's ``preprocess_wav`` + ``embed_utterance`` to cosine
1.000000 on speech with pauses (``benchmarks/ge2e_resemblyzer_check.py``).

Features: :class:`extractors.audio.frontends.Mel40` (librosa melspectrogram defaults).

Weights: ``resemblyzer==0.1.4`` ships ``resemblyzer/pretrained.pt`` (Apache-2.0), a
checkpoint dict ``{"step", "model_state", "optimizer_state"}`` whose ``model_state`` has
``lstm.weight_ih_l0 ... lstm.bias_hh_l2``, ``linear.weight/bias`` and the GE2E loss's
``similarity_weight/bias`` (ignored). Install it with
``pip install --no-deps resemblyzer==0.1.4``; :func:`pretrained_path` finds the file
without importing resemblyzer (its imports pull librosa and webrtcvad).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from extractors.audio.frontends import Mel40, check_wave, no_autocast, valid_mask
from extractors.audio.vad import INT16_MAX, TrimParams, trim_long_silences
from extractors.checkpoints import (
    add_prefix,
    cloned_state,
    foreign_checkpoint_error,
    split_training_only,
    strip_prefixes,
    unwrap_state_dict,
)
from extractors.registry import BackboneEntry, InputSpec, Weights, check_state_dict, register_backbone
from pipeline.core.errors import BackboneError

NAME = "ge2e_lstm"
SAMPLE_RATE = 16000
HOP = 160
EMBEDDING_DIM = 256
INSTALL_HINT = "pip install --no-deps resemblyzer==0.1.4"
#: GE2E loss scale/offset at initialisation (Wan et al. 2018: w = 10, b = -5); written by
#: :func:`to_resemblyzer` because resemblyzer's checkpoint carries them.
GE2E_SIMILARITY_INIT = (10.0, -5.0)


# sha256 of resemblyzer 0.1.4's pretrained.pt
PRETRAINED_SHA256 = "39373b86598fa3da9fcddee6142382efe09777e8d37dc9c0561f41f0070f134e"


def pretrained_path() -> Path:
    """Path of ``resemblyzer/pretrained.pt`` in the installed resemblyzer package, found
    without importing it. Raises :class:`BackboneError` with the install hint if absent."""
    candidates: list[Path] = []
    try:
        spec = importlib.util.find_spec("resemblyzer")
    except (ImportError, ValueError):
        spec = None
    if spec is not None and spec.submodule_search_locations:
        candidates += [Path(p) / "pretrained.pt" for p in spec.submodule_search_locations]
    try:
        files = importlib.metadata.files("resemblyzer") or []
        candidates += [Path(f.locate()) for f in files if str(f).replace("\\", "/").endswith("resemblyzer/pretrained.pt")]
    except importlib.metadata.PackageNotFoundError:
        pass
    for c in candidates:
        if c.is_file():
            return c
    raise BackboneError("the resemblyzer package with the pretrained GE2E weights is not installed",
                        hint=f"run `{INSTALL_HINT}` (no other dependency is needed), "
                             "or pass --audio-weights PATH/TO/pretrained.pt")


def partial_starts(n_samples: int, partial_frames: int = 160, rate: float = 1.3,
                   min_coverage: float = 0.75, hop: int = HOP, sample_rate: int = SAMPLE_RATE) -> list[int]:
    """Start frames of the partial windows of a clip of ``n_samples`` samples, exactly as
    resemblyzer's ``VoiceEncoder.compute_partial_slices`` places them."""
    n_frames = int(math.ceil((n_samples + 1) / hop))
    step = int(round((sample_rate / rate) / hop))
    if not 0 < step <= partial_frames:
        raise BackboneError(f"GE2E partial rate {rate} gives a step of {step} frames",
                            hint=f"use a rate in [{sample_rate / hop / partial_frames:.3f}, {sample_rate / hop:.0f}]")
    starts = list(range(0, max(1, n_frames - partial_frames + step + 1), step))
    coverage = (n_samples - starts[-1] * hop) / (partial_frames * hop)
    if coverage < min_coverage and len(starts) > 1:
        starts = starts[:-1]
    return starts


def normalize_volume(wave: torch.Tensor, lengths: torch.Tensor, target_dbfs: float = -30.0) -> torch.Tensor:
    """resemblyzer ``normalize_volume(increase_only=True)`` per clip: scale clip ``b`` by
    ``10 ** ((target - dBFS_b) / 20)`` when that is > 1, where ``dBFS_b = 20 log10(RMS of
    wave[b, :lengths[b]])``; silent or empty clips are left unchanged."""
    mask = valid_mask(lengths, wave.shape[1]).to(wave.dtype)
    n = lengths.clamp(min=1).to(wave.dtype)
    rms = torch.sqrt((wave.square() * mask).sum(1) / n)
    gain = torch.where(rms > 0, (10.0 ** (target_dbfs / 20.0)) / rms.clamp(min=1e-30), torch.ones_like(rms))
    gain = torch.clamp(gain, min=1.0)
    return wave * mask * gain.unsqueeze(1)


def normalize_volume_np(wav: np.ndarray, target_dbfs: float = -30.0) -> np.ndarray:
    """resemblyzer ``normalize_volume(wav, target, increase_only=True)`` with its arithmetic
    (float32 in, float32 out); a silent wave is returned as is (resemblyzer: NaN)."""
    if len(wav) == 0:
        return wav
    rms = np.sqrt(np.mean((wav * INT16_MAX) ** 2))
    if not rms > 0:
        return wav
    change = target_dbfs - 20 * np.log10(rms / INT16_MAX)
    if change < 0:
        return wav
    return wav * (10 ** (change / 20))


@dataclass(frozen=True)
class ResemblyzerPreprocess:
    """resemblyzer 0.1.4 ``preprocess_wav`` on a 16 kHz wave: ``normalize_volume(-30 dBFS,
    increase_only)`` then ``trim_long_silences``; an all-silent result falls back to the
    normalised, untrimmed wave. The ``preprocess`` of ge2e_lstm's ``pretrained`` weights."""
    target_dbfs: float = -30.0
    trim: TrimParams = field(default_factory=TrimParams)
    name: str = "resemblyzer_vad"

    def __call__(self, wav: np.ndarray) -> np.ndarray:
        wav = normalize_volume_np(np.asarray(wav, dtype=np.float32), self.target_dbfs)
        trimmed = trim_long_silences(wav, self.trim)
        return trimmed if len(trimmed) else wav

    def to_dict(self) -> dict:
        return {"name": self.name, "of": "resemblyzer==0.1.4 preprocess_wav", "volume_dbfs": self.target_dbfs,
                "increase_only": True, "vad": "webrtcvad", **self.trim.to_dict(), "order": "volume, then trim",
                "all_silent": "untrimmed wave", "segments": "cut from the trimmed wave"}


class GE2EEncoder(nn.Module):
    """GE2E LSTM speaker encoder; ``forward(wave, lengths) -> (B, 256)`` unit-norm."""

    def __init__(self, n_mels: int = 40, hidden: int = 256, num_layers: int = 3,
                 embedding_dim: int = EMBEDDING_DIM, partial_frames: int = 160, rate: float = 1.3,
                 min_coverage: float = 0.75, volume_dbfs: float | None = -30.0):
        super().__init__()
        self.frontend = Mel40(n_mels=n_mels)
        self.lstm = nn.LSTM(n_mels, hidden, num_layers, batch_first=True)
        self.linear = nn.Linear(hidden, embedding_dim)
        self.partial_frames, self.rate, self.min_coverage = partial_frames, rate, min_coverage
        self.volume_dbfs = volume_dbfs
        self.embedding_dim = embedding_dim
        self.load_info: dict = {"format": "random", "frontend": self.frontend.name}

    def embed_partials(self, mels: torch.Tensor) -> torch.Tensor:
        """``(P, frames, 40)`` mel windows -> ``(P, D)`` unit-norm partial embeddings.
        Always float32 (a bf16 LSTM drifts over 160 steps: cosine to fp32 down to 0.998;
        the model is too small for reduced precision to pay off)."""
        with no_autocast(mels):
            _, (hidden, _) = self.lstm(mels.float())
            return F.normalize(torch.relu(self.linear(hidden[-1])), dim=1, eps=1e-12)

    def forward(self, wave: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        host = torch.as_tensor(lengths).reshape(-1)      # the partials are planned on the host: read the
        wave, lengths = check_wave(wave, lengths)        # lengths there when given there (no GPU sync)
        if self.volume_dbfs is not None:
            wave = normalize_volume(wave, lengths, self.volume_dbfs)
        starts = [partial_starts(int(n), self.partial_frames, self.rate, self.min_coverage)
                  for n in (host if host.device.type == "cpu" else lengths).tolist()]
        need = max((s[-1] + self.partial_frames) * HOP for s in starts)
        if need > wave.shape[1]:
            wave = F.pad(wave, (0, need - wave.shape[1]))
        mel, _ = self.frontend(wave, lengths)                     # (B, F, 40)
        clip = torch.tensor([b for b, s in enumerate(starts) for _ in s], device=wave.device)
        first = torch.tensor([i for s in starts for i in s], device=wave.device)
        idx = first.unsqueeze(1) + torch.arange(self.partial_frames, device=wave.device)
        partials = self.embed_partials(mel[clip.unsqueeze(1), idx]).float()  # (P, D)
        sums = torch.zeros(wave.shape[0], partials.shape[1], device=wave.device, dtype=torch.float32)
        sums.index_add_(0, clip, partials)
        return F.normalize(sums, dim=1, eps=1e-12)               # mean then norm == sum then norm


# --------------------------------------------------------------------------- checkpoints

def ge2e_state_from_checkpoint(raw) -> tuple[dict[str, torch.Tensor], dict]:
    """resemblyzer checkpoint (or a wrapped/prefixed state dict) -> our state dict, and
    what was undone ``{"stripped_prefixes", "dropped_keys"}``."""
    state, stripped = strip_prefixes(unwrap_state_dict(raw, NAME))
    state, dropped = split_training_only(state)
    return state, {"stripped_prefixes": stripped, "dropped_keys": dropped}


def to_resemblyzer(source: nn.Module | Mapping[str, torch.Tensor], prefix: str = "") -> dict:
    """Our module (or its state dict) -> resemblyzer's ``pretrained.pt`` layout
    ``{"step": 0, "model_state": {...}}`` with the GE2E similarity scalars at their
    initial values (they are not part of the encoder)."""
    w, b = GE2E_SIMILARITY_INIT
    model_state = {"similarity_weight": torch.tensor([w]), "similarity_bias": torch.tensor([b])}
    model_state.update(cloned_state(source))
    return {"step": 0, "model_state": add_prefix(model_state, prefix) if prefix else model_state}


def load_ge2e_state(module: GE2EEncoder, raw) -> None:
    """``BackboneEntry.load_state`` of ``ge2e_lstm``: strict, every LSTM/linear tensor."""
    state, undone = ge2e_state_from_checkpoint(raw)
    own = module.state_dict()
    if not any(k in own for k in state):
        raise foreign_checkpoint_error(NAME, state, "resemblyzer's pretrained.pt (GE2E LSTM 40->256x3)", own)
    check_state_dict(NAME, module, state, strict=True)
    module.load_info = {"format": "resemblyzer pretrained.pt", "frontend": module.frontend.name, **undone}


def build_ge2e(**kwargs) -> GE2EEncoder:
    return GE2EEncoder(**kwargs)


PRETRAINED_META = {"source": "resemblyzer==0.1.4 (PyPI), resemblyzer/pretrained.pt",
                   "training data": "LibriSpeech, VoxCeleb1, VoxCeleb2 (GE2E loss)", "license": "Apache-2.0"}

register_backbone(BackboneEntry(
    name=NAME, modality="audio",
    spec=InputSpec(modality="audio", embedding_dim=EMBEDDING_DIM, sample_rate=SAMPLE_RATE, features="mel40"),
    build=build_ge2e, load_state=load_ge2e_state,
    weights=(Weights("pretrained", locate=pretrained_path, sha256=PRETRAINED_SHA256, meta=PRETRAINED_META,
                     preprocess=ResemblyzerPreprocess()),
             Weights("pretrained-novad", locate=pretrained_path, sha256=PRETRAINED_SHA256,
                     meta={**PRETRAINED_META, "preprocess": "none (no silence trimming)"})),
    formats=("resemblyzer 0.1.4 pretrained.pt ({'model_state': ...})", "plain state dict (lstm.*, linear.*)",
             "'module.'/'model.'-prefixed state dict"),
    description="GE2E 3-layer LSTM (resemblyzer), 40 mel, 1.6 s partials averaged; "
                f"weights: `{INSTALL_HINT}`; 'pretrained' trims silences with webrtcvad as resemblyzer, "
                "'pretrained-novad' does not"))
