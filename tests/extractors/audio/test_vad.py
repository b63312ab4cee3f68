"""resemblyzer's long-silence trimming (``extractors.audio.vad``) and ge2e_lstm's ``pretrained``
preprocessing: the real WebRTC VAD on procedural voices with pauses, bit-equal masks against a
plain re-implementation of resemblyzer 0.1.4's published ``trim_long_silences`` (written here
from its source: struct.pack, one list append per window, a direct moving sum; resemblyzer itself
is not imported, it needs librosa), and the all-silence fallback."""

from __future__ import annotations

import struct

import numpy as np
import pytest
from scipy.ndimage import binary_dilation

from extractors import get_backbone
from extractors.audio.ge2e import ResemblyzerPreprocess, normalize_volume_np
from extractors.audio.vad import DEFAULT, moving_average, speech_mask, trim_long_silences
from tests.extractors.audio.test_frontends import SPEAKER_A, SPEAKER_B, toy_voice

webrtcvad = pytest.importorskip("webrtcvad")
SR = 16000


def reference_mask(wav: np.ndarray) -> np.ndarray:
    """resemblyzer 0.1.4 ``trim_long_silences`` step by step (hparams: 30 ms, 8, 6, mode 3),
    returning its sample mask instead of ``wav[mask]``."""
    samples_per_window = (30 * SR) // 1000
    wav = wav[:len(wav) - (len(wav) % samples_per_window)]
    pcm_wave = struct.pack("%dh" % len(wav), *(np.round(wav * 32767)).astype(np.int16))
    voice_flags = []
    vad = webrtcvad.Vad(mode=3)
    for window_start in range(0, len(wav), samples_per_window):
        window_end = window_start + samples_per_window
        voice_flags.append(vad.is_speech(pcm_wave[window_start * 2:window_end * 2], sample_rate=SR))
    flags = np.array(voice_flags, dtype=float)
    width = 8
    padded = np.concatenate((np.zeros((width - 1) // 2), flags, np.zeros(width // 2)))
    averaged = np.array([padded[i:i + width].sum() / width for i in range(len(flags))])
    mask = np.round(averaged).astype(bool)
    mask = binary_dilation(mask, np.ones(6 + 1))
    return np.repeat(mask, samples_per_window)


def silence(seconds: float, level: float = 0.0, seed: int = 0) -> np.ndarray:
    n = int(seconds * SR)
    return (level * np.random.default_rng(seed).standard_normal(n)).astype(np.float32)


def with_pauses(seed: int) -> list[np.ndarray]:
    """Voices with pauses of 0.1-2.5 s (zeros or low noise), odd lengths, loud and quiet."""
    a, b = toy_voice(*SPEAKER_A, 1.3, seed), toy_voice(*SPEAKER_B, 1.1, seed + 1)
    return [np.concatenate([silence(0.4), a, silence(2.0, 1e-3, seed), b, silence(0.7)]),
            np.concatenate([a, silence(0.1), b, silence(0.25, 3e-3, seed), a[:5003]]),
            np.concatenate([silence(1.0, 1e-4, seed), 0.02 * a, silence(2.5), 0.02 * b]),   # quiet: gain > 1
            np.concatenate([a, b])[:7777]]


def test_trimming_removes_the_long_silence_and_keeps_the_speech():
    a, b = toy_voice(*SPEAKER_A, 1.5, 1), toy_voice(*SPEAKER_A, 1.5, 2)
    gap = silence(2.0, 1e-3)
    wav = np.concatenate([a, gap, b])
    mask = speech_mask(wav)
    assert len(mask) == len(wav) - len(wav) % 480
    s0, s1 = len(a), len(a) + len(gap)
    assert mask[:s0].all() and mask[s1:].all()                  # every speech sample kept
    assert not mask[s0 + 3000:s1 - 3000].any()                   # the pause's middle is gone
    assert mask[s0:s1].sum() <= 2 * 6 * 480                      # at most ~3 windows each side remain
    out = trim_long_silences(wav)
    assert len(out) == mask.sum() and np.array_equal(out, wav[:len(mask)][mask])
    assert len(wav) - len(out) > 1.6 * SR


def test_masks_bit_equal_to_resemblyzers_algorithm():
    waves = with_pauses(3) + with_pauses(11)
    n_dropped = 0
    for w in waves:
        w = normalize_volume_np(w)
        ours, ref = speech_mask(w), reference_mask(w)
        assert ours.dtype == bool and np.array_equal(ours, ref)
        n_dropped += int((~ref).sum() > SR // 2)
    assert n_dropped >= 4       # the check is not vacuous: several waves lose long pauses
    # the loud-after-gain wave: int16 conversion as resemblyzer's (no clipping), same mask
    loud = normalize_volume_np(with_pauses(5)[2]) * 40
    assert np.abs(loud).max() > 1 and np.array_equal(speech_mask(loud), reference_mask(loud))


def test_moving_average_is_resemblyzers():
    flags = np.random.default_rng(0).random(50) > 0.5
    for width in (1, 2, 7, 8, 9):
        got = moving_average(flags, width)
        padded = np.concatenate((np.zeros((width - 1) // 2), flags, np.zeros(width // 2)))
        want = np.array([padded[i:i + width].mean() for i in range(len(flags))])
        assert got.shape == flags.shape and np.allclose(got, want)


def test_volume_normalisation_is_resemblyzers():
    w = 0.01 * toy_voice(*SPEAKER_B, 1.0, 4)
    out = normalize_volume_np(w)
    rms_db = 20 * np.log10(np.sqrt(np.mean((out.astype(np.float64) * 32767) ** 2)) / 32767)
    assert out.dtype == np.float32 and abs(rms_db + 30) < 1e-3
    loud = toy_voice(*SPEAKER_B, 1.0, 4)                   # already above -30 dBFS: unchanged
    assert normalize_volume_np(loud) is loud
    zeros = np.zeros(1000, np.float32)                     # resemblyzer: NaN; here: as is
    assert normalize_volume_np(zeros) is zeros


def test_all_silence_falls_back_to_the_untrimmed_wave():
    pre = ResemblyzerPreprocess()
    for w in (np.zeros(SR, np.float32), silence(1.5, 1e-4, 7), np.zeros(100, np.float32), np.zeros(0, np.float32)):
        assert len(trim_long_silences(normalize_volume_np(w))) == 0
        out = pre(w)
        assert out.dtype == np.float32 and len(out) == len(w)
        assert np.array_equal(out, normalize_volume_np(w))
    speech = np.concatenate([toy_voice(*SPEAKER_A, 1.0, 1), np.zeros(SR, np.float32)])
    assert len(pre(speech)) < len(speech) - SR // 2          # with speech: trimmed


def test_pretrained_weights_carry_the_preprocessing():
    entry = get_backbone("ge2e_lstm")
    pre = entry.get_weights("pretrained").preprocess
    assert isinstance(pre, ResemblyzerPreprocess) and pre.name == "resemblyzer_vad"
    assert entry.get_weights("pretrained-novad").preprocess is None
    assert entry.get_preprocess("resemblyzer_vad") is pre
    d = pre.to_dict()
    assert (d["window_ms"], d["average_width"], d["max_silence"], d["mode"], d["volume_dbfs"]) == (30, 8, 6, 3, -30.0)
    assert DEFAULT.window == 480
