"""Batched, length-aware audio front-ends (waveform -> frames x features), in torch.

Every front-end is an ``nn.Module`` without state-dict entries (filterbanks and windows
are non-persistent buffers) with ``forward(wave (B, T) float, lengths (B,) int64) ->
(feats (B, F, n) float32, frames (B,) int64)``. Row ``b`` is computed from
``wave[b, :lengths[b]]`` only -- samples beyond a clip's length are treated as zeros and
every per-clip statistic (mean normalisation, dB ceiling) uses that clip's own
``frames[b]`` valid frames -- so a clip gives the same features alone or zero-padded in
a batch. Frames ``>= frames[b]`` hold unspecified values; callers mask them.

Definitions (16 kHz, 25 ms windows, 10 ms hop unless said):

* ``mel40`` (:class:`Mel40`, resemblyzer/GE2E): librosa ``melspectrogram`` defaults --
  periodic Hann window of 400, ``center=True`` zero padding, power spectrum, 40 Slaney
  mel bands 0-8 kHz with Slaney area normalisation, **no log**. ``frames = 1 + T // 160``.
* ``sb_fbank80`` (:class:`SpeechBrainFbank80`, SpeechBrain ``Fbank(n_mels=80)`` +
  ``InputNormalization(norm_type="sentence", std_norm=False)``): periodic Hamming 400,
  ``center=True`` zero padding, power spectrum, SpeechBrain's 80 triangular HTK-mel
  filters (symmetric, half-width = left band width), ``10 log10(max(x, 1e-10))``
  clipped at (clip max - 80 dB), minus the clip's mean over valid frames.
  ``frames = 1 + T // 160``.
* ``kaldi_fbank80`` (:class:`KaldiFbank80`, WeSpeaker/pyannote =
  ``torchaudio.compliance.kaldi.fbank(wave * 2**15, num_mel_bins=80, dither=0,
  window_type="hamming", use_energy=False)`` then CMN): ``snip_edges`` framing, per-frame
  DC removal, pre-emphasis 0.97, symmetric Hamming, FFT 512, power, Kaldi mel banks
  20 Hz - 8 kHz, ``log(max(x, eps_f32))``, minus the clip's mean.
  ``frames = 1 + (T - 400) // 160``; clips shorter than 400 samples are zero-padded to
  one window (Kaldi would return no frame).
* ``logmel64`` (:class:`LogMel64`, our MobileNetV2 front-end): ``torchaudio``
  ``MelSpectrogram(n_fft=512, win_length=400, hop_length=160, n_mels=64,
  pad_mode="constant")`` (periodic Hann, ``center=True`` zero padding, power, HTK mel
  0-8 kHz, no norm), ``log(x + 1e-6)``,
  minus the clip's mean over valid frames. ``frames = 1 + T // 160``.
"""

from __future__ import annotations

import math

import torch
from torch import nn

# --------------------------------------------------------------------------- helpers

def valid_mask(lengths: torch.Tensor, size: int) -> torch.Tensor:
    """``(B, size)`` bool, True where ``index < lengths[b]``."""
    return torch.arange(size, device=lengths.device).unsqueeze(0) < lengths.unsqueeze(1)


def zero_beyond(wave: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """``wave`` with samples at ``t >= lengths[b]`` set to 0 (a new tensor)."""
    return wave * valid_mask(lengths, wave.shape[1]).to(wave.dtype)


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int) -> torch.Tensor:
    """Mean of ``x`` over ``dim`` counting only positions where ``mask`` (broadcastable)
    is True; keeps ``dim``. A row with no valid position gives 0."""
    m = mask.to(x.dtype)
    n = m.sum(dim, keepdim=True).clamp(min=1)
    return (x * m).sum(dim, keepdim=True) / n


def subtract_clip_mean(feats: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
    """``feats (B, F, n)`` minus each clip's mean over its valid frames ``< frames[b]``
    (cepstral/sentence mean normalisation)."""
    valid = valid_mask(frames, feats.shape[1]).unsqueeze(2)
    return feats - masked_mean(feats, valid, dim=1)


def no_autocast(x: torch.Tensor):
    """Context that disables autocast on ``x``'s device: front-ends and pooling statistics
    always run in float32, also inside a bf16/fp16 ``torch.autocast`` region."""
    return torch.autocast(device_type=x.device.type, enabled=False)


def check_wave(wave: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate/convert the forward contract ``(wave (B, T) float, lengths (B,) int)``; the lengths
    may be on the host (checked there, then copied to ``wave``'s device) or on ``wave``'s device."""
    from pipeline.core.errors import BackboneError

    if wave.dim() != 2:
        raise BackboneError(f"audio backbones take wave of shape (B, T), got {tuple(wave.shape)}")
    lengths = torch.as_tensor(lengths).long().reshape(-1)
    if lengths.numel() != wave.shape[0]:
        raise BackboneError(f"lengths has {lengths.numel()} entries for a batch of {wave.shape[0]}")
    # checked where the lengths are: on the host (as avfuse extract passes them) this does not wait
    # for the GPU; lengths already on the GPU cost one sync here
    if bool(((lengths > wave.shape[1]) | (lengths < 0)).any()):
        raise BackboneError(f"lengths {lengths.tolist()} outside [0, {wave.shape[1]}]")
    if lengths.device != wave.device:       # non-blocking from pinned memory: no stream sync
        if wave.is_cuda and not lengths.is_pinned():
            lengths = lengths.pin_memory()
        lengths = lengths.to(wave.device, non_blocking=wave.is_cuda)
    return wave.float(), lengths


def power_spectrogram(wave: torch.Tensor, n_fft: int, hop: int, window: torch.Tensor) -> torch.Tensor:
    """``|STFT|^2`` with ``center=True`` zero padding: ``(B, 1 + T // hop, n_fft // 2 + 1)``."""
    spec = torch.stft(wave, n_fft, hop_length=hop, win_length=window.numel(), window=window,
                      center=True, pad_mode="constant", normalized=False, onesided=True,
                      return_complex=True)
    return (spec.real.square() + spec.imag.square()).transpose(1, 2)


# --------------------------------------------------------------------------- filterbanks

def _hz_to_mel_slaney(f: torch.Tensor) -> torch.Tensor:
    f_sp = 200.0 / 3
    min_log_hz, min_log_mel, logstep = 1000.0, 1000.0 / f_sp, math.log(6.4) / 27.0
    lin = f / f_sp
    log = min_log_mel + torch.log(torch.clamp(f, min=min_log_hz) / min_log_hz) / logstep
    return torch.where(f >= min_log_hz, log, lin)


def _mel_to_hz_slaney(m: torch.Tensor) -> torch.Tensor:
    f_sp = 200.0 / 3
    min_log_hz, min_log_mel, logstep = 1000.0, 1000.0 / f_sp, math.log(6.4) / 27.0
    lin = f_sp * m
    log = min_log_hz * torch.exp(logstep * (m - min_log_mel))
    return torch.where(m >= min_log_mel, log, lin)


def slaney_mel_filterbank(sample_rate: int, n_fft: int, n_mels: int, fmin: float = 0.0,
                          fmax: float | None = None) -> torch.Tensor:
    """librosa ``filters.mel(sr, n_fft, n_mels, fmin, fmax, htk=False, norm="slaney")``,
    transposed: ``(n_fft // 2 + 1, n_mels)`` float32 (computed in float64 like librosa)."""
    fmax = sample_rate / 2 if fmax is None else fmax
    fftfreqs = torch.linspace(0, sample_rate / 2, n_fft // 2 + 1, dtype=torch.float64)
    mels = torch.linspace(float(_hz_to_mel_slaney(torch.tensor(float(fmin), dtype=torch.float64))),
                          float(_hz_to_mel_slaney(torch.tensor(float(fmax), dtype=torch.float64))),
                          n_mels + 2, dtype=torch.float64)
    mel_f = _mel_to_hz_slaney(mels)
    fdiff = mel_f[1:] - mel_f[:-1]
    ramps = mel_f.unsqueeze(1) - fftfreqs.unsqueeze(0)          # (n_mels + 2, n_freqs)
    lower = -ramps[:-2] / fdiff[:-1].unsqueeze(1)
    upper = ramps[2:] / fdiff[1:].unsqueeze(1)
    weights = torch.clamp(torch.minimum(lower, upper), min=0)
    weights = weights * (2.0 / (mel_f[2:] - mel_f[:-2])).unsqueeze(1)
    return weights.to(torch.float32).T.contiguous()


def htk_mel_filterbank(sample_rate: int, n_fft: int, n_mels: int, fmin: float = 0.0,
                       fmax: float | None = None) -> torch.Tensor:
    """torchaudio ``melscale_fbanks(n_fft // 2 + 1, fmin, fmax, n_mels, sr, norm=None,
    mel_scale="htk")``: triangles between HTK-mel-spaced edges, ``(n_freqs, n_mels)``."""
    fmax = sample_rate / 2 if fmax is None else fmax
    all_freqs = torch.linspace(0, sample_rate // 2, n_fft // 2 + 1)
    m_min = 2595.0 * math.log10(1.0 + fmin / 700.0)
    m_max = 2595.0 * math.log10(1.0 + fmax / 700.0)
    m_pts = torch.linspace(m_min, m_max, n_mels + 2)
    f_pts = 700.0 * (10 ** (m_pts / 2595.0) - 1.0)
    f_diff = f_pts[1:] - f_pts[:-1]
    slopes = f_pts.unsqueeze(0) - all_freqs.unsqueeze(1)        # (n_freqs, n_mels + 2)
    down = (-1.0 * slopes[:, :-2]) / f_diff[:-1]
    up = slopes[:, 2:] / f_diff[1:]
    return torch.clamp(torch.minimum(down, up), min=0)


def speechbrain_filterbank(sample_rate: int, n_fft: int, n_mels: int, fmin: float = 0.0,
                           fmax: float | None = None) -> torch.Tensor:
    """SpeechBrain ``Filterbank(filter_shape="triangular")`` matrix ``(n_freqs, n_mels)``:
    centres on an HTK-mel grid, each triangle symmetric with half-width equal to the
    distance to the previous grid point (float32, as SpeechBrain computes it)."""
    fmax = sample_rate // 2 if fmax is None else fmax
    to_mel = lambda hz: 2595 * math.log10(1 + hz / 700)  # noqa: E731
    mel = torch.linspace(to_mel(fmin), to_mel(fmax), n_mels + 2)
    hz = 700 * (10 ** (mel / 2595) - 1)
    band = (hz[1:] - hz[:-1])[:-1]
    f_central = hz[1:-1]
    all_freqs = torch.linspace(0, sample_rate // 2, n_fft // 2 + 1)
    slope = (all_freqs.unsqueeze(0) - f_central.unsqueeze(1)) / band.unsqueeze(1)  # (n_mels, n_freqs)
    fb = torch.maximum(torch.zeros(1), torch.minimum(slope + 1.0, -slope + 1.0))
    return fb.T.contiguous()


def kaldi_mel_banks(num_bins: int, padded_window: int, sample_rate: float, low_freq: float = 20.0,
                    high_freq: float = 0.0) -> torch.Tensor:
    """Kaldi ``MelBanks`` (no VTLN) as ``torchaudio.compliance.kaldi.get_mel_banks``
    computes them, plus the zero Nyquist column: ``(padded_window // 2 + 1, num_bins)``."""
    num_fft_bins = padded_window // 2
    nyquist = 0.5 * sample_rate
    if high_freq <= 0.0:
        high_freq += nyquist
    fft_bin_width = sample_rate / padded_window
    mel = lambda f: 1127.0 * math.log(1.0 + f / 700.0)  # noqa: E731
    mel_low, mel_high = mel(low_freq), mel(high_freq)
    delta = (mel_high - mel_low) / (num_bins + 1)
    b = torch.arange(num_bins).unsqueeze(1)
    left = mel_low + b * delta
    center = mel_low + (b + 1.0) * delta
    right = mel_low + (b + 2.0) * delta
    freqs = fft_bin_width * torch.arange(num_fft_bins)
    m = (1127.0 * (1.0 + freqs / 700.0).log()).unsqueeze(0)
    up = (m - left) / (center - left)
    down = (right - m) / (right - center)
    banks = torch.max(torch.zeros(1), torch.min(up, down))      # (num_bins, num_fft_bins)
    return torch.nn.functional.pad(banks, (0, 1)).T.contiguous()


# --------------------------------------------------------------------------- front-ends

class _FrontEnd(nn.Module):
    name: str = "frontend"
    n_features: int = 0
    sample_rate: int = 16000
    hop: int = 160

    def num_frames(self, lengths: torch.Tensor) -> torch.Tensor:
        """Frames of a ``center=True`` STFT of each clip: ``1 + lengths // hop``."""
        return 1 + torch.div(lengths, self.hop, rounding_mode="floor")

    def forward(self, wave: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(feats (B, F, n_features) float32, frames (B,) int64)``; always float32."""
        with no_autocast(wave):
            return self._features(wave.float(), lengths)

    def _features(self, wave: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"{self.name}, {self.n_features} features at {self.sample_rate} Hz"


class Mel40(_FrontEnd):
    """resemblyzer's ``wav_to_mel_spectrogram`` (librosa melspectrogram, no log)."""

    name, n_features = "mel40", 40

    def __init__(self, n_fft: int = 400, hop: int = 160, n_mels: int = 40):
        super().__init__()
        self.n_fft, self.hop, self.n_features = n_fft, hop, n_mels
        self.register_buffer("window", torch.hann_window(n_fft, periodic=True), persistent=False)
        self.register_buffer("fbank", slaney_mel_filterbank(16000, n_fft, n_mels), persistent=False)

    def _features(self, wave: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        wave = zero_beyond(wave.float(), lengths)
        power = power_spectrogram(wave, self.n_fft, self.hop, self.window)
        return power @ self.fbank, self.num_frames(lengths)


class SpeechBrainFbank80(_FrontEnd):
    """SpeechBrain ``Fbank(n_mels=80)`` + sentence mean normalisation (see module doc)."""

    name, n_features = "sb_fbank80", 80

    def __init__(self, n_fft: int = 400, hop: int = 160, n_mels: int = 80, top_db: float = 80.0):
        super().__init__()
        self.n_fft, self.hop, self.n_features, self.top_db = n_fft, hop, n_mels, top_db
        self.register_buffer("window", torch.hamming_window(n_fft, periodic=True), persistent=False)
        self.register_buffer("fbank", speechbrain_filterbank(16000, n_fft, n_mels), persistent=False)

    def _features(self, wave: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        wave = zero_beyond(wave.float(), lengths)
        fb = power_spectrogram(wave, self.n_fft, self.hop, self.window) @ self.fbank
        db = 10.0 * torch.log10(torch.clamp(fb, min=1e-10))
        frames = self.num_frames(lengths)
        valid = valid_mask(frames, db.shape[1]).unsqueeze(2)
        ceiling = db.masked_fill(~valid, float("-inf")).amax(dim=(1, 2), keepdim=True) - self.top_db
        return subtract_clip_mean(torch.maximum(db, ceiling), frames), frames


class KaldiFbank80(_FrontEnd):
    """Kaldi fbank as WeSpeaker computes it, + CMN (see module doc)."""

    name, n_features = "kaldi_fbank80", 80

    def __init__(self, n_mels: int = 80, win: int = 400, hop: int = 160, preemph: float = 0.97,
                 scale: float = float(1 << 15)):
        super().__init__()
        self.win, self.hop, self.n_features, self.preemph, self.scale = win, hop, n_mels, preemph, scale
        self.padded = 1 << (win - 1).bit_length()                 # 512
        self.register_buffer("window", torch.hamming_window(win, periodic=False, alpha=0.54, beta=0.46),
                             persistent=False)
        self.register_buffer("fbank", kaldi_mel_banks(n_mels, self.padded, 16000.0), persistent=False)

    def num_frames(self, lengths: torch.Tensor) -> torch.Tensor:
        return 1 + torch.div(torch.clamp(lengths, min=self.win) - self.win, self.hop, rounding_mode="floor")

    def _features(self, wave: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        wave = zero_beyond(wave.float(), lengths) * self.scale
        if wave.shape[1] < self.win:
            wave = torch.nn.functional.pad(wave, (0, self.win - wave.shape[1]))
        frames = wave.unfold(1, self.win, self.hop)                # (B, F, win)
        frames = frames - frames.mean(dim=2, keepdim=True)
        prev = torch.cat([frames[..., :1], frames[..., :-1]], dim=2)
        frames = (frames - self.preemph * prev) * self.window
        frames = torch.nn.functional.pad(frames, (0, self.padded - self.win))
        power = torch.fft.rfft(frames).abs().pow(2.0)
        mel = torch.clamp(power @ self.fbank, min=torch.finfo(torch.float32).eps).log()
        n = self.num_frames(lengths)
        return subtract_clip_mean(mel, n), n


class LogMel64(_FrontEnd):
    """Log-mel 64 with per-clip mean normalisation (see module doc)."""

    name, n_features = "logmel64", 64

    def __init__(self, n_fft: int = 512, win: int = 400, hop: int = 160, n_mels: int = 64):
        super().__init__()
        self.n_fft, self.hop, self.n_features = n_fft, hop, n_mels
        self.register_buffer("window", torch.hann_window(win, periodic=True), persistent=False)
        self.register_buffer("fbank", htk_mel_filterbank(16000, n_fft, n_mels), persistent=False)

    def _features(self, wave: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        wave = zero_beyond(wave.float(), lengths)
        mel = torch.log(power_spectrogram(wave, self.n_fft, self.hop, self.window) @ self.fbank + 1e-6)
        n = self.num_frames(lengths)
        return subtract_clip_mean(mel, n), n


FRONTENDS: dict[str, type[_FrontEnd]] = {c.name: c for c in (Mel40, SpeechBrainFbank80, KaldiFbank80, LogMel64)}


def make_frontend(name: str) -> _FrontEnd:
    """A front-end by its name (``mel40``, ``sb_fbank80``, ``kaldi_fbank80``, ``logmel64``)."""
    from pipeline.core.errors import BackboneError

    if name not in FRONTENDS:
        raise BackboneError(f"unknown audio front-end {name!r}", hint=f"known: {', '.join(FRONTENDS)}")
    return FRONTENDS[name]()
