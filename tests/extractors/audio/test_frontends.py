"""Audio front-ends (mel40, sb_fbank80, kaldi_fbank80, logmel64) against their reference
implementations (torchaudio's compliance.kaldi.fbank, MelSpectrogram and melscale_fbanks;
values read from SpeechBrain 1.x's Fbank), and the synthetic voices and padded batches the
audio backbone tests share (imported by ``test_backbones``).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torchaudio
from scipy.signal import lfilter

from extractors.audio.frontends import KaldiFbank80, LogMel64, Mel40, SpeechBrainFbank80, slaney_mel_filterbank

SR = 16000


pytestmark = pytest.mark.usefixtures("one_thread")



# --------------------------------------------------------------------------- helpers

def toy_voice(f0: float, formants: tuple[float, ...], seconds: float, seed: int) -> np.ndarray:
    """A procedural voice: a glottal-like harmonic series at ``f0`` (with vibrato and
    drift) through two-pole formant resonators, syllable-rate amplitude modulation and a
    little noise. Speaker identity = (f0, formants); utterances differ by seed."""
    rng = np.random.default_rng(seed)
    n = int(seconds * SR)
    t = np.arange(n) / SR
    f = f0 * (1 + 0.06 * np.sin(2 * np.pi * rng.uniform(2, 5) * t + rng.uniform(0, 6))
              + 0.03 * np.sin(2 * np.pi * rng.uniform(0.3, 0.8) * t))
    phase = 2 * np.pi * np.cumsum(f) / SR
    y = sum(np.sin(k * phase + rng.uniform(0, 6)) / k for k in range(1, int(7000 / f0)))
    y = y + 0.02 * rng.standard_normal(n)
    for fc in formants:
        fc = fc * rng.uniform(0.96, 1.04)
        r, th = np.exp(-np.pi * (80 + 0.05 * fc) / SR), 2 * np.pi * fc / SR
        y = lfilter([1 - r], [1, -2 * r * np.cos(th), r * r], y)
    y = y * (0.55 + 0.45 * np.sin(2 * np.pi * rng.uniform(3, 5) * t + rng.uniform(0, 6)))
    return (0.3 * y / np.abs(y).max()).astype(np.float32)


SPEAKER_A = (110.0, (700.0, 1200.0, 2600.0))
SPEAKER_B = (210.0, (400.0, 2100.0, 3000.0))


def batch_of(waves: list[np.ndarray], junk: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero-padded (or ``junk``-padded) batch and int64 lengths."""
    T = max(len(w) for w in waves)
    x = torch.full((len(waves), T), junk)
    for i, w in enumerate(waves):
        x[i, : len(w)] = torch.from_numpy(w)
    return x, torch.tensor([len(w) for w in waves])


def clips(seconds=(1.3, 0.47, 0.9)) -> list[np.ndarray]:
    return [toy_voice(*(SPEAKER_A if i % 2 == 0 else SPEAKER_B), s, 100 + i) for i, s in enumerate(seconds)]


# --------------------------------------------------------------------------- front-ends

def test_kaldi_fbank_matches_torchaudio_compliance():
    import torchaudio.compliance.kaldi as kaldi

    waves = clips((1.0, 0.61, 0.02))                  # the last is shorter than one 25 ms window
    x, n = batch_of(waves, junk=0.7)                   # junk beyond each length must not matter
    feats, frames = KaldiFbank80()(x, n)
    assert frames.tolist() == [1 + (len(w) - 400) // 160 if len(w) >= 400 else 1 for w in waves]
    for i, w in enumerate(waves[:2]):
        ref = kaldi.fbank(torch.from_numpy(w)[None] * 32768, num_mel_bins=80, frame_length=25, frame_shift=10,
                          dither=0.0, sample_frequency=SR, window_type="hamming", use_energy=False)
        ref = ref - ref.mean(0)
        torch.testing.assert_close(feats[i, : frames[i]], ref, rtol=0, atol=1e-4)


def test_logmel64_matches_torchaudio_melspectrogram():
    waves = clips((0.8, 1.1))
    x, n = batch_of(waves, junk=-0.3)
    feats, frames = LogMel64()(x, n)
    ms = torchaudio.transforms.MelSpectrogram(sample_rate=SR, n_fft=512, win_length=400, hop_length=160,
                                              n_mels=64, pad_mode="constant")
    for i, w in enumerate(waves):
        ref = torch.log(ms(torch.from_numpy(w)) + 1e-6).T
        ref = ref - ref.mean(0)
        assert frames[i] == 1 + len(w) // 160 == ref.shape[0]
        torch.testing.assert_close(feats[i, : frames[i]], ref, rtol=0, atol=1e-4)


def test_slaney_filterbank_matches_torchaudio():
    ours = slaney_mel_filterbank(SR, 400, 40)
    ref = torchaudio.functional.melscale_fbanks(201, 0.0, 8000.0, 40, SR, norm="slaney", mel_scale="slaney")
    assert ours.shape == ref.shape == (201, 40)
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-7)


def test_mel40_is_power_mel_without_log():
    w = clips((0.5,))[0]
    feats, frames = Mel40()(torch.from_numpy(w)[None], torch.tensor([len(w)]))
    spec = torch.stft(torch.from_numpy(w), 400, 160, window=torch.hann_window(400), center=True,
                      pad_mode="constant", return_complex=True).abs() ** 2
    ref = (slaney_mel_filterbank(SR, 400, 40).T @ spec).T
    assert frames.item() == 1 + len(w) // 160 == ref.shape[0]
    torch.testing.assert_close(feats[0], ref, rtol=1e-4, atol=1e-6)
    assert bool((feats >= 0).all())


# SpeechBrain 1.x `Fbank(n_mels=80)` + `InputNormalization("sentence", std_norm=False)` of
# the chirp below (rows = frames 0/10/25/49, columns = mel bins 0/5/20/40/79), and its
# filterbank matrix: column sums and peak bins of filters 0/10/40/79.
SB_CHIRP_FEATS = [[44.6464, 42.7494, 1.8345, -17.1175, -11.0433], [12.3111, 9.1208, 2.1099, -16.0221, -7.2273],
                  [5.9226, 2.2274, 0.0476, -8.8658, -11.3989], [1.591, -4.1678, -10.257, 3.0734, 0.6321]]
SB_FILTER_SUMS = [0.19169, 0.81284, 1.91609, 6.44462]
SB_FILTER_PEAKS = [1, 7, 45, 193]


def test_speechbrain_fbank_matches_reference_values():
    fe = SpeechBrainFbank80()
    assert [round(float(fe.fbank[:, j].sum()), 4) for j in (0, 10, 40, 79)] == pytest.approx(SB_FILTER_SUMS, abs=1e-4)
    assert [int(fe.fbank[:, j].argmax()) for j in (0, 10, 40, 79)] == SB_FILTER_PEAKS
    t = torch.arange(8000, dtype=torch.float64) / SR
    chirp = (0.5 * torch.sin(2 * math.pi * (100 * t + 2000 * t ** 2)) + 0.01 * torch.cos(2 * math.pi * 3000 * t)).float()
    x = torch.zeros(2, 12000)
    x[0, :8000] = chirp
    x[1] = 0.2
    feats, frames = fe(x, torch.tensor([8000, 12000]))
    assert frames.tolist() == [51, 76]
    got = [[float(feats[0, i, j]) for j in (0, 5, 20, 40, 79)] for i in (0, 10, 25, 49)]
    assert np.allclose(got, SB_CHIRP_FEATS, atol=2e-3)


def test_frontends_ignore_samples_beyond_length():
    waves = clips((0.73, 0.41))
    for fe in (Mel40(), SpeechBrainFbank80(), KaldiFbank80(), LogMel64()):
        a, fa = fe(*batch_of(waves, junk=0.0))
        b, fb = fe(*batch_of(waves, junk=0.9))
        assert torch.equal(fa, fb)
        for i in range(len(waves)):
            torch.testing.assert_close(a[i, : fa[i]], b[i, : fb[i]], rtol=0, atol=1e-5)


def test_check_wave_takes_host_lengths_and_refuses_bad_ones():
    """The forward contract: lengths may come on the host (as ``avfuse extract`` passes them, so that
    the check does not wait for the GPU) or on the wave's device; wrong count or range is refused."""
    from extractors.audio.frontends import check_wave
    from pipeline.core.errors import BackboneError
    wave = torch.zeros(3, 100, dtype=torch.float64)
    w, n = check_wave(wave, torch.tensor([100, 5, 0], dtype=torch.int32))
    assert w.dtype == torch.float32 and n.dtype == torch.int64 and n.tolist() == [100, 5, 0]
    assert n.device == wave.device
    w, n = check_wave(wave, np.asarray([1, 2, 3]))
    assert n.tolist() == [1, 2, 3]
    for bad, msg in (([101, 5, 0], "outside"), ([1, -1, 0], "outside"), ([1, 2], "2 entries")):
        with pytest.raises(BackboneError, match=msg):
            check_wave(wave, torch.tensor(bad))
    with pytest.raises(BackboneError, match="shape"):
        check_wave(torch.zeros(100), torch.tensor([100]))
