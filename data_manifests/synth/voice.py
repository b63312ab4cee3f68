"""Procedural voices: source-filter "speech" with a per-speaker identity.

A speaker (:class:`Voice`) is a fixed set of source and vocal-tract parameters; a video
(:class:`Channel`) adds a recording condition; a clip is a random sequence of syllables
spoken by that voice through that channel (:func:`synth_clip`).

Model (all in the short-time Fourier domain, 16 kHz, 512-point Hann window, hop 128):

* source: a glottal pulse train at F0(t) (speaker mean and range, phrase declination,
  per-syllable accents, jitter and shimmer) plus white noise for aspiration and frication;
* filter: a cascade of five formant resonances ``|H_k(f)| = (F_k^2 + (B_k/2)^2) /
  sqrt(((f - F_k)^2 + (B_k/2)^2) ((f + F_k)^2 + (B_k/2)^2))`` whose centre frequencies
  follow the syllables' vowel/consonant targets (a 10-vowel table scaled by the speaker's
  vocal-tract factor and per-formant / per-vowel offsets), times the speaker's spectral
  tilt (dB/octave) and a smooth speaker "timbre" curve (three log-frequency bumps);
* consonants: fricatives (band noise at a place-specific centre), plosives (closure then
  burst), nasals (low formants, weaker), approximants (formant glides);
* channel (per video): a smooth random EQ curve with band limits, reverberation (an
  exponentially decaying noise impulse response), coloured background noise at an SNR,
  a gain, and a small shift of the speaker's pitch and speaking rate (mood/session);
* a clip flagged ``noisy`` gets loud non-stationary noise (``noisy_snr_db``).

Identity lives in the speaker parameters (pitch, formants, tilt, breathiness, timbre,
rate); every random draw comes from generators seeded by (seed, speaker, video, clip),
so a speaker's voice does not depend on how many other speakers are generated.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SAMPLE_RATE = 16000
N_FFT = 512
HOP = 128

# Vowel formant targets (Hz) of an adult male voice: F1, F2, F3 (Hillenbrand-like values).
VOWELS: dict[str, tuple[float, float, float]] = {
    "i": (270, 2290, 3010), "I": (390, 1990, 2550), "E": (530, 1840, 2480), "ae": (660, 1720, 2410),
    "a": (730, 1090, 2440), "o": (570, 840, 2410), "U": (440, 1020, 2240), "u": (300, 870, 2240),
    "V": (640, 1190, 2390), "3": (490, 1350, 1690),
}
VOWEL_NAMES = tuple(VOWELS)
# consonant kinds: (type, formant targets or None, noise centre Hz, noise bandwidth Hz)
CONSONANTS: dict[str, tuple[str, tuple[float, float, float] | None, float, float]] = {
    "s": ("fric", None, 5800, 2200), "S": ("fric", None, 3200, 1600), "f": ("fric", None, 4500, 5000),
    "h": ("asp", None, 0, 0),
    "p": ("stop", (300, 900, 2300), 900, 1200), "t": ("stop", (350, 1700, 2600), 4200, 2500),
    "k": ("stop", (320, 1900, 2400), 2100, 1200),
    "b": ("vstop", (300, 900, 2300), 900, 1200), "d": ("vstop", (350, 1700, 2600), 3800, 2500),
    "m": ("nasal", (260, 1100, 2300), 0, 0), "n": ("nasal", (260, 1700, 2600), 0, 0),
    "l": ("approx", (360, 1300, 2700), 0, 0), "r": ("approx", (350, 1100, 1600), 0, 0),
    "w": ("approx", (300, 700, 2200), 0, 0), "j": ("approx", (280, 2200, 3000), 0, 0),
}
CONSONANT_NAMES = tuple(CONSONANTS)


@dataclass(frozen=True)
class Voice:
    """A speaker's fixed voice parameters (the identity)."""

    f0: float                  # mean pitch, Hz
    f0_range: float            # intonation spread, semitones (std of accents)
    formant_scale: float       # vocal-tract factor: all formants x this (shorter tract -> higher)
    formant_offsets: tuple[float, ...]   # per-formant multipliers for F1..F5
    vowel_offsets: np.ndarray  # (n_vowels, 3) per-vowel multipliers of F1..F3 (accent)
    f4: float                  # speaker's F4, Hz (before formant_scale)
    f5: float                  # speaker's F5, Hz
    bandwidth_scale: float     # formant bandwidths x this
    tilt_db_oct: float         # spectral slope of the source, dB per octave (negative)
    breathiness: float         # aspiration noise / voiced ratio
    jitter: float              # relative period jitter (std)
    shimmer: float             # relative pulse amplitude jitter (std)
    rate: float                # syllables per second
    timbre: tuple[tuple[float, float, float], ...]  # (centre Hz, gain dB, width octaves) bumps
    vowel_prior: np.ndarray    # (n_vowels,) probabilities of the speaker's vowel choice


@dataclass(frozen=True)
class Channel:
    """A video's recording condition (nuisance)."""

    eq: tuple[tuple[float, float, float], ...]  # (centre Hz, gain dB, width octaves) bumps
    highpass: float            # Hz
    lowpass: float             # Hz
    snr_db: float              # background noise level
    noise_colour: float        # spectral slope of the noise, dB/octave
    reverb_rt60: float         # seconds (0: dry)
    reverb_wet: float          # wet/dry mix
    gain_db: float
    f0_shift: float            # semitones (session mood)
    rate_factor: float         # x speaking rate


@dataclass(frozen=True)
class VoiceVariation:
    """Knobs of identity spread and within-speaker variation (defaults: moderate)."""

    identity_spread: float = 1.0   # x spread of speaker parameters around the population mean
    channel: float = 1.0           # x size of per-video channel variation (EQ, reverb, noise)
    snr_db: tuple[float, float] = (12.0, 30.0)        # per-video background SNR range
    noisy_snr_db: tuple[float, float] = (-5.0, 5.0)   # SNR of clips flagged noisy
    session_f0_semitones: float = 1.0                  # per-video pitch shift range (+-)
    session_rate: float = 0.12                         # per-video rate change range (+-, relative)


def sample_voice(rng: np.random.Generator, var: VoiceVariation = VoiceVariation()) -> Voice:
    """Draw one speaker's voice. ``var.identity_spread`` scales how different speakers are."""
    s = var.identity_spread
    female = rng.random() < 0.5
    # pitch: log-normal around a sex-typical centre
    f0_centre = 205.0 if female else 118.0
    f0 = float(np.clip(f0_centre * 2 ** rng.normal(0, 0.36 * s), 70.0, 350.0))
    vtl_centre = 1.16 if female else 1.0
    formant_scale = float(vtl_centre * np.exp(rng.normal(0, 0.11 * s)))
    formant_offsets = tuple(float(np.exp(rng.normal(0, 0.09 * s))) for _ in range(5))
    vowel_offsets = np.exp(rng.normal(0, 0.05 * s, size=(len(VOWELS), 3)))
    timbre = tuple((float(np.exp(rng.uniform(np.log(300), np.log(6000)))),
                    float(rng.normal(0, 7.0 * s)), float(rng.uniform(0.3, 0.9))) for _ in range(3))
    prior = rng.dirichlet(np.full(len(VOWELS), 1.5))
    return Voice(
        f0=f0, f0_range=float(np.clip(rng.normal(2.2, 1.0 * s), 0.6, 5.0)),
        formant_scale=formant_scale, formant_offsets=formant_offsets, vowel_offsets=vowel_offsets,
        f4=float(rng.uniform(3200, 3900)), f5=float(rng.uniform(4300, 5200)),
        bandwidth_scale=float(np.exp(rng.normal(0, 0.4 * s))),
        tilt_db_oct=float(np.clip(rng.normal(-6.5, 3.5 * s), -16, -1)),
        breathiness=float(np.clip(np.exp(rng.normal(np.log(0.06), 1.0 * s)), 0.005, 0.5)),
        jitter=float(rng.uniform(0.003, 0.02)), shimmer=float(rng.uniform(0.02, 0.10)),
        rate=float(np.clip(rng.normal(4.6, 1.0 * s), 2.8, 7.0)), timbre=timbre, vowel_prior=prior,
    )


def sample_channel(rng: np.random.Generator, var: VoiceVariation = VoiceVariation()) -> Channel:
    """Draw one video's recording condition."""
    c = var.channel
    eq = tuple((float(np.exp(rng.uniform(np.log(150), np.log(7000)))), float(rng.normal(0, 3.0 * c)),
                float(rng.uniform(0.4, 1.2))) for _ in range(3))
    return Channel(
        eq=eq, highpass=float(rng.uniform(40, 40 + 200 * c)), lowpass=float(rng.uniform(8000 - 3500 * c, 8000)),
        snr_db=float(rng.uniform(*var.snr_db)), noise_colour=float(rng.uniform(-6, 0)),
        reverb_rt60=float(rng.uniform(0.05, 0.05 + 0.3 * c)) if rng.random() < 0.7 else 0.0,
        reverb_wet=float(rng.uniform(0.1, 0.4) * min(c, 1.5)), gain_db=float(rng.uniform(-9, 0)),
        f0_shift=float(rng.uniform(-1, 1) * var.session_f0_semitones),
        rate_factor=float(1 + rng.uniform(-1, 1) * var.session_rate),
    )


# ---------------------------------------------------------------- planning
def _plan(voice: Voice, channel: Channel, n_frames: int, rng: np.random.Generator):
    """Frame-level control tracks (hop ``HOP``): voicing and noise amplitudes, noise band,
    formant targets F1..F3 and per-syllable pitch accents."""
    av = np.zeros(n_frames)
    an = np.zeros(n_frames)
    nc = np.full(n_frames, 4000.0)
    nb = np.full(n_frames, 2000.0)
    form = np.zeros((n_frames, 3))
    accent = np.zeros(n_frames)
    nasal = np.zeros(n_frames)
    fps = SAMPLE_RATE / HOP
    rate = voice.rate * channel.rate_factor
    t = int(rng.uniform(0.03, 0.15) * fps)          # leading silence
    form[:] = VOWELS["V"]
    last_vowel = "V"
    words_left = rng.integers(1, 4)
    while t < n_frames:
        syl = max(0.10, rng.normal(1.0 / rate, 0.25 / rate))
        cons = CONSONANT_NAMES[rng.integers(len(CONSONANT_NAMES))] if rng.random() < 0.8 else None
        vow = VOWEL_NAMES[rng.choice(len(VOWELS), p=voice.vowel_prior)]
        vi = VOWEL_NAMES.index(vow)
        vf = np.asarray(VOWELS[vow]) * voice.vowel_offsets[vi]
        acc = rng.normal(0, voice.f0_range)
        c_len = 0
        if cons is not None:
            kind, cf, centre, bw = CONSONANTS[cons]
            c_len = int(fps * min(0.45 * syl, rng.uniform(0.05, 0.11)))
            a, b = t, min(n_frames, t + c_len)
            if kind in ("fric", "asp"):
                an[a:b] = 0.35 if kind == "fric" else 0.15
                nc[a:b], nb[a:b] = (centre, bw) if kind == "fric" else (1500.0, 3000.0)
                form[a:b] = VOWELS[last_vowel]
            elif kind in ("stop", "vstop"):
                burst = max(1, c_len // 4)
                if kind == "vstop":
                    av[a:b - burst] = 0.08
                an[max(a, b - burst):b] = 0.5
                nc[a:b], nb[a:b] = centre, bw
                form[a:b] = cf
            else:  # nasal / approximant: voiced
                av[a:b] = 0.35 if kind == "nasal" else 0.7
                nasal[a:b] = 1.0 if kind == "nasal" else 0.0
                form[a:b] = cf
        v_len = max(2, int(fps * syl) - c_len)
        a, b = min(n_frames, t + c_len), min(n_frames, t + c_len + v_len)
        av[a:b] = np.maximum(av[a:b], 1.0)
        form[a:b] = vf
        accent[t:b] = acc
        last_vowel = vow
        t = b
        words_left -= 1
        if words_left == 0:                          # word / phrase break
            t += int(fps * rng.uniform(0.02, 0.18 if rng.random() < 0.8 else 0.35))
            words_left = rng.integers(1, 4)
    return av, an, nc, nb, form, accent, nasal


def _smooth(x: np.ndarray, k: int) -> np.ndarray:
    if k <= 1:
        return x
    w = np.hanning(k + 2)[1:-1]
    w /= w.sum()
    if x.ndim == 1:
        return np.convolve(np.pad(x, (k // 2, k - 1 - k // 2), mode="edge"), w, mode="valid")
    return np.stack([_smooth(x[:, j], k) for j in range(x.shape[1])], axis=1)


def _bumps_db(freqs: np.ndarray, bumps) -> np.ndarray:
    lf = np.log2(np.maximum(freqs, 20.0))
    out = np.zeros_like(freqs)
    for centre, gain, width in bumps:
        out += gain * np.exp(-0.5 * ((lf - np.log2(centre)) / width) ** 2)
    return out


def _stft(x: np.ndarray) -> np.ndarray:
    win = np.hanning(N_FFT + 1)[:-1]
    pad = np.pad(x, (N_FFT // 2, N_FFT // 2 + HOP))
    n = 1 + (len(pad) - N_FFT) // HOP
    idx = np.arange(N_FFT)[None, :] + HOP * np.arange(n)[:, None]
    return np.fft.rfft(pad[idx] * win, axis=1)


def _istft(spec: np.ndarray, length: int) -> np.ndarray:
    win = np.hanning(N_FFT + 1)[:-1]
    frames = np.fft.irfft(spec, n=N_FFT, axis=1) * win
    n = spec.shape[0]
    out = np.zeros(HOP * (n - 1) + N_FFT)
    norm = np.zeros_like(out)
    for i in range(n):
        out[i * HOP:i * HOP + N_FFT] += frames[i]
        norm[i * HOP:i * HOP + N_FFT] += win ** 2
    out /= np.maximum(norm, 1e-8)
    return out[N_FFT // 2:N_FFT // 2 + length]


def _resonances(freqs: np.ndarray, centres: np.ndarray, bws: np.ndarray) -> np.ndarray:
    """log |cascade of resonators| for (frames, k) centres/bandwidths at ``freqs`` -> (frames, bins)."""
    f = freqs[None, None, :]
    c = centres[:, :, None]
    b2 = (bws[:, :, None] / 2) ** 2
    mag = (c ** 2 + b2) / np.sqrt(((f - c) ** 2 + b2) * ((f + c) ** 2 + b2))
    return np.log(mag).sum(axis=1)


# ---------------------------------------------------------------- clip
def synth_clip(voice: Voice, channel: Channel, n_samples: int, rng: np.random.Generator, *,
               noisy: bool = False, var: VoiceVariation = VoiceVariation(),
               video_fps: float = 25.0) -> tuple[np.ndarray, np.ndarray]:
    """One utterance of ``n_samples`` at 16 kHz.

    Returns ``(audio float32 (n_samples,) in [-1, 1], mouth (n_video_frames,) in [0, 1])``
    where ``mouth`` is the mouth opening per video frame at ``video_fps`` (voicing amplitude
    times vowel openness from F1), used to animate the face in sync with the audio.
    """
    sr = SAMPLE_RATE
    n_frames = n_samples // HOP + 2
    av, an, nc, nb, form, accent, nasal = _plan(voice, channel, n_frames, rng)
    av, an = _smooth(av, 3), _smooth(an, 2)
    form = _smooth(form, 5)
    accent = _smooth(accent, 9)
    # pitch track (Hz per frame): mean, session shift, declination, accents, slow wobble
    tt = np.arange(n_frames) * HOP / sr
    semis = (channel.f0_shift + accent - 1.5 * tt / max(tt[-1], 1e-3)
             + 0.3 * np.sin(2 * np.pi * rng.uniform(3, 6) * tt + rng.uniform(0, 6.3)))
    f0 = voice.f0 * 2 ** (semis / 12)
    f0_s = np.interp(np.arange(n_samples + N_FFT), np.arange(n_frames) * HOP, f0)
    f0_s *= 1 + voice.jitter * _smooth(rng.standard_normal(len(f0_s)), 64) * 8
    phase = np.cumsum(f0_s / sr)
    pulses = np.zeros(len(phase))
    marks = np.nonzero(np.diff(np.floor(phase)) > 0)[0] + 1
    pulses[marks] = 1 + voice.shimmer * rng.standard_normal(len(marks))
    source = pulses[:n_samples]
    noise = rng.standard_normal(n_samples) * 0.12
    S_v, S_n = _stft(source), _stft(noise)
    n_stft = S_v.shape[0]
    fr = np.minimum(np.arange(n_stft), n_frames - 1)
    freqs = np.fft.rfftfreq(N_FFT, 1 / sr)
    k = voice.formant_scale
    offs = np.asarray(voice.formant_offsets)
    centres = np.concatenate([form[fr], np.tile([voice.f4, voice.f5], (n_stft, 1))], axis=1) * k * offs
    bws = np.array([80.0, 110.0, 160.0, 220.0, 300.0]) * voice.bandwidth_scale
    bws = np.tile(bws, (n_stft, 1)) * (1 + 1.5 * nasal[fr, None])
    log_res = _resonances(freqs, np.minimum(centres, 7600.0), bws)
    tilt = voice.tilt_db_oct * np.log2(np.maximum(freqs, 80.0) / 200.0) / 20 * np.log(10)
    timbre = _bumps_db(freqs, voice.timbre) / 20 * np.log(10)
    env_v = np.exp(log_res + tilt[None] + timbre[None])
    fric = np.exp(-0.5 * ((freqs[None, :] - nc[fr, None] * np.sqrt(k)) / nb[fr, None]) ** 2)
    env_n = an[fr, None] * fric + (voice.breathiness * av[fr, None] + 0.02 * an[fr, None]) * env_v
    spec = S_v * env_v * av[fr, None] + S_n * env_n
    y = _istft(spec, n_samples)
    # mouth opening per video frame: voicing x openness (F1 high = open)
    openness = np.clip((form[:, 0] - 250) / 500, 0.1, 1.0) * np.clip(av, 0, 1)
    n_vf = int(round(n_samples / sr * video_fps))
    vt = (np.arange(n_vf) + 0.5) / video_fps
    mouth = np.interp(vt, tt, openness)
    y = apply_channel(y, channel, rng, noisy=noisy, var=var)
    return y.astype(np.float32), mouth.astype(np.float32)


def apply_channel(y: np.ndarray, channel: Channel, rng: np.random.Generator, *, noisy: bool = False,
                  var: VoiceVariation = VoiceVariation()) -> np.ndarray:
    """Reverb, EQ/band limits, background noise at ``channel.snr_db`` (``noisy``: at a draw
    from ``var.noisy_snr_db``, modulated), then gain; peak-limited to 0.98."""
    sr = SAMPLE_RATE
    n = len(y)
    y = y / (np.sqrt(np.mean(y ** 2)) + 1e-9) * 0.1
    if channel.reverb_rt60 > 0:
        L = int(channel.reverb_rt60 * sr)
        ir = rng.standard_normal(L) * np.exp(-6.9 * np.arange(L) / L)
        ir /= np.sqrt(np.sum(ir ** 2)) + 1e-9
        wet = np.fft.irfft(np.fft.rfft(y, n + L) * np.fft.rfft(ir, n + L), n + L)[:n]
        y = (1 - channel.reverb_wet) * y + channel.reverb_wet * wet
    nf = 1 << int(np.ceil(np.log2(n + 1)))
    Y = np.fft.rfft(y, nf)
    f = np.fft.rfftfreq(nf, 1 / sr)
    gain_db = _bumps_db(f, channel.eq)
    resp = 10 ** (gain_db / 20) / np.sqrt(1 + (channel.highpass / np.maximum(f, 1.0)) ** 4)
    resp /= np.sqrt(1 + (f / channel.lowpass) ** 8)
    y = np.fft.irfft(Y * resp, nf)[:n]
    sig_p = np.mean(y ** 2) + 1e-12
    w = np.fft.rfft(rng.standard_normal(nf))
    w *= 2 ** (channel.noise_colour / 6.02 * np.log2(np.maximum(f, 50) / 1000))
    noise = np.fft.irfft(w, nf)[:n]
    snr = channel.snr_db
    if noisy:
        snr = float(rng.uniform(*var.noisy_snr_db))
        t = np.arange(n) / sr
        noise = noise * (1 + 0.8 * np.sin(2 * np.pi * rng.uniform(0.5, 3) * t + rng.uniform(0, 6.3)))
        burst = np.fft.irfft(np.fft.rfft(rng.standard_normal(nf)) *
                             np.exp(-0.5 * ((f - rng.uniform(300, 3000)) / 400) ** 2), nf)[:n]
        noise = noise / (np.std(noise) + 1e-9) + 1.5 * burst / (np.std(burst) + 1e-9)
    noise *= np.sqrt(sig_p / (np.mean(noise ** 2) + 1e-12) / 10 ** (snr / 10))
    y = (y + noise) * 10 ** (channel.gain_db / 20)
    y = y / (np.sqrt(np.mean(y ** 2)) + 1e-9) * 0.1 * 10 ** (channel.gain_db / 20)
    peak = np.max(np.abs(y)) + 1e-9
    if peak > 0.98:
        y *= 0.98 / peak
    return y


__all__ = ["Voice", "Channel", "VoiceVariation", "sample_voice", "sample_channel", "synth_clip",
           "apply_channel", "SAMPLE_RATE"]
