"""Shared latent traits of a synthetic identity: what makes a toy voice say something about
its face (``avfuse synth --av-correlation R``).

Real people's voices and faces are linked through sex, age and body size; the toy corpus
draws voice and face from independent generators, so with ``R = 0`` (the default) nothing
links them and this module is not called at all: the corpus is byte for byte the one
written before the option existed.

Model, for ``0 < R <= 1`` (one generator per identity, ``_rng(seed, K_TRAITS, speaker)``):

* three latent traits ``t = (sex, age, size) ~ N(0, I)`` per identity;
* the voice and the face each see their own noisy copy, ``u_X = sqrt(R) t + sqrt(1 - R) e_X``
  with ``e_X ~ N(0, I)`` independent, so that every trait has correlation exactly ``R``
  between voice and face (and each ``u_X`` stays ``N(0, I)``: the marginal distribution of
  voices and faces does not depend on R). Sex is ``u_sex > 0`` on each side: voice and face
  agree on it with probability ``1/2 + arcsin(R) / pi`` (R = 0.5: 2/3, R = 1: always);
* the voice (:func:`voice_from_traits`) redraws pitch and vocal-tract length around the
  sex-typical centres of ``synth_voice`` (F0 falls with size, and with age for women,
  rises slightly with age for men; formants fall with size), speaking rate (slower with
  age) and voice quality (with age: breathier, a steeper spectral tilt, wider formant
  bandwidths, more jitter and shimmer), each as a loading on the traits plus its own
  noise with unit total variance, in the units of ``sample_voice``;
* the face (:func:`face_from_traits`) redraws shape and proportions (a wider, squarer head
  and jaw, a wider nose and thicker brows for men and for larger sizes; ears grow with
  age; the hairline recedes with age, more for men) and colouring (grey or white hair
  with age, beards on men only, hair styles by sex; bald more often for older men), with
  the same per-feature marginal shares as ``sample_face`` (beards 25 %, hair styles
  12/43/25/20 %, grey or white hair 2/7).

Everything else of the voice (formant offsets, timbre, tilt, vowel habits) and of the
face (skin, eyes, mouth, glasses, lips) keeps its independent draw: identity within a
modality is as rich as at R = 0, and only the trait-driven part carries across.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from data_manifests.synth.face import HAIR_COLOURS, Face, FaceVariation
from data_manifests.synth.voice import Voice, VoiceVariation

TRAITS = ("sex", "age", "size")
#: hair-style shares (bald, short, long, fringe) of women and of men; their mean is synth_face's
STYLE_FEMALE = np.array([0.0, 0.2, 0.5, 0.3])
STYLE_MALE = np.array([0.24, 0.66, 0.0, 0.1])
GREY_HAIR = (5, 6)      # HAIR_COLOURS rows that read as grey / white


def sample_traits(rng: np.random.Generator, r: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(t, u_voice, u_face)``: the identity's traits and each modality's view of them (3,)."""
    if not 0.0 <= r <= 1.0:
        raise ValueError(f"correlation must be in [0, 1], got {r}")
    t = rng.standard_normal(3)
    e_v, e_f = rng.standard_normal(3), rng.standard_normal(3)
    a, b = math.sqrt(r), math.sqrt(1.0 - r)
    return t, a * t + b * e_v, a * t + b * e_f


def _mix(rng: np.random.Generator, loads: dict[int, float], u: np.ndarray) -> float:
    """``sum_k load_k u_k + sqrt(1 - sum load^2) n``: a unit-variance score with its own noise n."""
    w2 = sum(v * v for v in loads.values())
    return float(sum(v * u[k] for k, v in loads.items()) + math.sqrt(max(0.0, 1.0 - w2)) * rng.standard_normal())


def _phi(x: float) -> float:
    return 0.5 * (1.0 + math.erf(x / math.sqrt(2.0)))


def voice_from_traits(voice: Voice, u: np.ndarray, rng: np.random.Generator,
                      var: VoiceVariation = VoiceVariation()) -> Voice:
    """``voice`` with its sex, pitch, vocal-tract length, rate and breathiness redrawn from ``u``."""
    s = var.identity_spread
    female = u[0] > 0
    older = 1.0 if not female else -1.0            # age raises men's F0 a little, lowers women's
    f0 = 205.0 if female else 118.0
    f0 *= 2 ** (0.36 * s * _mix(rng, {2: -0.6, 1: 0.3 * older}, u))
    fs = (1.16 if female else 1.0) * math.exp(0.11 * s * _mix(rng, {2: -0.8}, u))
    rate = 4.6 + 1.0 * s * _mix(rng, {1: -0.7}, u)
    breath = math.exp(math.log(0.06) + 1.0 * s * _mix(rng, {1: 0.7}, u))
    tilt = -6.5 + 3.5 * s * _mix(rng, {1: -0.6}, u)                # an ageing voice: steeper, wider, rougher
    bw = math.exp(0.4 * s * _mix(rng, {1: 0.5}, u))
    jitter = 0.003 + 0.017 * _phi(_mix(rng, {1: 0.7}, u))
    shimmer = 0.02 + 0.08 * _phi(_mix(rng, {1: 0.7}, u))
    return dataclasses.replace(voice, f0=float(np.clip(f0, 70.0, 350.0)), formant_scale=float(fs),
                               rate=float(np.clip(rate, 2.8, 7.0)), breathiness=float(np.clip(breath, 0.005, 0.5)),
                               tilt_db_oct=float(np.clip(tilt, -16, -1)), bandwidth_scale=float(bw),
                               jitter=float(jitter), shimmer=float(shimmer))


def face_from_traits(face: Face, u: np.ndarray, rng: np.random.Generator,
                     var: FaceVariation = FaceVariation()) -> Face:
    """``face`` with its shape, proportions, hair and beard redrawn from ``u`` (module doc)."""
    s = var.identity_spread
    female = u[0] > 0
    male = -1.0 if female else 1.0

    def g(mean, sd, lo, hi, loads):
        return float(np.clip(mean + sd * s * _mix(rng, loads, u), lo, hi))

    if female:
        style = int(rng.choice(4, p=STYLE_FEMALE))
    elif rng.random() < 2 * STYLE_MALE[0] * _phi(u[1]):     # bald: 24 % of men on average, older more
        style = 0
    else:
        style = 1 + int(rng.choice(3, p=STYLE_MALE[1:] / STYLE_MALE[1:].sum()))
    grey = _phi(u[1]) > 1 - len(GREY_HAIR) / len(HAIR_COLOURS)
    pool = [i for i in range(len(HAIR_COLOURS)) if (i in GREY_HAIR) == grey]
    idx = pool[int(rng.integers(len(pool)))]
    hair = np.clip(HAIR_COLOURS[idx] * np.exp(rng.normal(0, 0.15) + rng.normal(0, 0.04, 3)), 0.02, 0.98)
    beard = float(rng.uniform(0.4, 0.9)) if (not female and rng.random() < 0.5) else 0.0
    return dataclasses.replace(
        face,
        head_w=g(0.38, 0.04, 0.30, 0.48, {0: -0.45, 2: 0.6}),
        head_p=g(2.3, 0.3, 1.8, 3.2, {0: -0.5, 2: 0.4}),
        jaw_taper=g(0.18, 0.08, 0.0, 0.38, {0: 0.5, 2: -0.4}),
        nose_w=g(0.05, 0.012, 0.03, 0.08, {0: -0.3, 2: 0.6}),
        brow_thick=g(0.020, 0.007, 0.008, 0.04, {0: -0.6}),
        ear=g(1.0, 0.15, 0.7, 1.4, {1: 0.5, 2: 0.4}),
        hairline=g(0.55, 0.12, 0.25, 0.8, {1: 0.45 + 0.25 * male}),
        hair=tuple(float(v) for v in hair), hair_style=style, beard=beard)


def correlate(voice: Voice, face: Face, rng: np.random.Generator, r: float,
              voice_var: VoiceVariation = VoiceVariation(),
              face_var: FaceVariation = FaceVariation()) -> tuple[Voice, Face]:
    """The identity's ``(voice, face)`` linked with correlation ``r``; unchanged (and ``rng``
    unused) when ``r == 0``, so that R = 0 is the independent corpus exactly."""
    if r == 0:
        return voice, face
    _t, u_v, u_f = sample_traits(rng, r)
    return voice_from_traits(voice, u_v, rng, voice_var), face_from_traits(face, u_f, rng, face_var)


__all__ = ["TRAITS", "sample_traits", "voice_from_traits", "face_from_traits", "correlate"]
