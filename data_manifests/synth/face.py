"""Procedural faces: a per-speaker face drawn into a per-video scene, animated per frame.

A speaker (:class:`Face`) fixes head shape, skin/hair/eye/lip colours, hair style, the
geometry of eyes, brows, nose and mouth, and optional beard and glasses. A video
(:class:`Scene`) fixes the background, shirt colour, lighting (gain, colour cast and a
directional gradient), head placement (shift, scale, roll), blur and sensor noise. Each
frame moves the head slightly (slow sinusoidal sway), blinks now and then, and opens the
mouth with the audio (``mouth`` track from :func:`data_manifests.synth.voice.synth_clip`).

Rendering is vectorised over all frames of a clip: every part is a soft-edged shape
(signed distance -> alpha over about one pixel) in head-local coordinates
``x, y`` (head centre at 0, y down, the head's half-height about 0.52), composited in
painter's order on float RGB in [0, 1], then lit, blurred and quantised to uint8.

Frame size: 128 x 128 by default (VoxCeleb face tracks are 224 x 224; 128 keeps the corpus
small and fast while still exercising the decoder's centre crop + resize to 112).

Conditions per clip: ``"ok"``; ``"occluded"`` (a large moving object covers 55-85 % of
the face); ``"absent"`` (no face: a blank, nearly uniform dark frame, as a failed face
track would give).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DEFAULT_SIZE = 128
#: frame half-widths per head-local unit: the head (half-height ~0.52) spans ~80 % of the frame
#: height, with a margin of background, hair and neck, like a VoxCeleb face track.
ZOOM = 1.6

SKIN_TONES = np.array([[0.96, 0.80, 0.69], [0.91, 0.72, 0.58], [0.80, 0.58, 0.43],
                       [0.65, 0.45, 0.32], [0.47, 0.31, 0.21], [0.33, 0.22, 0.15]])
HAIR_COLOURS = np.array([[0.08, 0.06, 0.05], [0.25, 0.15, 0.08], [0.45, 0.30, 0.15], [0.85, 0.70, 0.40],
                         [0.60, 0.25, 0.10], [0.60, 0.60, 0.60], [0.92, 0.92, 0.90]])
IRIS_COLOURS = np.array([[0.25, 0.15, 0.08], [0.35, 0.55, 0.75], [0.35, 0.50, 0.30], [0.15, 0.10, 0.05]])


@dataclass(frozen=True)
class Face:
    """A speaker's fixed face parameters (the identity). Lengths in head-local units."""

    head_w: float
    head_h: float
    head_p: float               # superellipse exponent (2: ellipse, larger: squarer)
    jaw_taper: float            # 0: no taper, 0.35: pointed chin
    skin: tuple[float, float, float]
    hair: tuple[float, float, float]
    hair_style: int             # 0 bald, 1 short, 2 long, 3 fringe
    hairline: float             # hairline height (fraction of head_h above centre)
    eye_y: float
    eye_dx: float
    eye_w: float
    eye_h: float
    iris: tuple[float, float, float]
    brow_thick: float
    brow_tilt: float            # radians
    nose_len: float
    nose_w: float
    mouth_y: float
    mouth_w: float
    lip: tuple[float, float, float]
    lip_thick: float
    beard: float                # 0: none, up to 0.9: full
    glasses: bool
    glasses_colour: tuple[float, float, float]
    ear: float


@dataclass(frozen=True)
class Scene:
    """A video's scene and camera (nuisance)."""

    bg: np.ndarray              # (H, W, 3) float background
    shirt: tuple[float, float, float]
    gain: float
    tint: tuple[float, float, float]
    light: tuple[float, float]  # direction * strength of the lighting gradient
    cx: float
    cy: float
    scale: float
    roll: float                 # radians
    blur: float                 # Gaussian sigma in pixels
    noise: float                # sensor noise std (0-1 scale)
    sway: tuple[float, float, float]     # amplitude (units), frequency (Hz), phase
    blink_rate: float           # blinks per second


@dataclass(frozen=True)
class FaceVariation:
    """Knobs of identity spread and within-speaker (per-video) variation."""

    identity_spread: float = 1.0   # x spread of colours and geometry across speakers
    scene: float = 1.0             # x size of per-video lighting / pose / blur variation
    max_blur: float = 1.2          # pixels (x scene)
    bg_colour: float = 0.25        # colourfulness of backgrounds (0: grey, 1: any colour)


def _pick(rng: np.random.Generator, palette: np.ndarray, jitter: float) -> tuple[float, float, float]:
    t = rng.uniform(0, len(palette) - 1)
    i = int(t)
    j = min(i + 1, len(palette) - 1)
    c = palette[i] * (1 - (t - i)) + palette[j] * (t - i)
    c = np.clip(c * np.exp(rng.normal(0, jitter, 3)), 0.02, 0.98)
    return tuple(float(v) for v in c)


def sample_face(rng: np.random.Generator, var: FaceVariation = FaceVariation()) -> Face:
    """Draw one speaker's face. ``var.identity_spread`` scales geometric spread."""
    s = var.identity_spread

    def g(mean: float, sd: float, lo: float, hi: float) -> float:
        return float(np.clip(rng.normal(mean, sd * s), lo, hi))

    hair_idx = rng.integers(len(HAIR_COLOURS))
    hair = np.clip(HAIR_COLOURS[hair_idx] * np.exp(rng.normal(0, 0.15) + rng.normal(0, 0.04, 3)), 0.02, 0.98)
    head_h = g(0.52, 0.04, 0.42, 0.62)
    return Face(
        head_w=g(0.38, 0.04, 0.30, 0.48), head_h=head_h, head_p=g(2.3, 0.3, 1.8, 3.2),
        jaw_taper=g(0.18, 0.08, 0.0, 0.38), skin=_pick(rng, SKIN_TONES, 0.05),
        hair=tuple(float(v) for v in hair), hair_style=int(rng.choice(4, p=[0.12, 0.43, 0.25, 0.20])),
        hairline=g(0.55, 0.12, 0.25, 0.8),
        eye_y=g(-0.08, 0.03, -0.16, 0.0), eye_dx=g(0.14, 0.018, 0.10, 0.19),
        eye_w=g(0.065, 0.01, 0.045, 0.09), eye_h=g(0.032, 0.006, 0.02, 0.048),
        iris=tuple(float(v) for v in IRIS_COLOURS[rng.integers(len(IRIS_COLOURS))]),
        brow_thick=g(0.020, 0.007, 0.008, 0.04), brow_tilt=g(0.0, 0.15, -0.35, 0.35),
        nose_len=g(0.17, 0.03, 0.1, 0.25), nose_w=g(0.05, 0.012, 0.03, 0.08),
        mouth_y=g(0.24, 0.03, 0.16, 0.32), mouth_w=g(0.11, 0.02, 0.07, 0.16),
        lip=_pick(rng, np.array([[0.80, 0.45, 0.45], [0.65, 0.30, 0.30], [0.50, 0.25, 0.22]]), 0.08),
        lip_thick=g(0.018, 0.005, 0.008, 0.03),
        beard=float(rng.uniform(0.4, 0.9)) if rng.random() < 0.25 else 0.0,
        glasses=bool(rng.random() < 0.2),
        glasses_colour=tuple(float(v) for v in rng.uniform(0.0, 0.6, 3)),
        ear=g(1.0, 0.15, 0.7, 1.4),
    )


def sample_scene(rng: np.random.Generator, size: int = DEFAULT_SIZE,
                 var: FaceVariation = FaceVariation()) -> Scene:
    """Draw one video's scene: background, shirt, lighting, placement, blur, motion."""
    c = var.scene
    u, v = _grid(size)
    def muted():   # a grey level plus a little colour: walls, studios, rooms
        return np.clip(rng.uniform(0.2, 0.8) + var.bg_colour * rng.uniform(-0.5, 0.5, 3), 0, 1)

    a, b = muted(), muted()
    ang = rng.uniform(0, 2 * np.pi)
    t = np.clip(0.5 + 0.5 * (np.cos(ang) * u + np.sin(ang) * v), 0, 1)[..., None]
    bg = a * (1 - t) + b * t
    for _ in range(int(rng.integers(1, 5))):          # soft blobs: furniture, windows...
        cx, cy, r = rng.uniform(-1, 1), rng.uniform(-1, 1), rng.uniform(0.15, 0.6)
        m = np.exp(-((u - cx) ** 2 + (v - cy) ** 2) / (2 * r * r))[..., None]
        bg = bg * (1 - 0.8 * m) + 0.8 * m * muted()
    return Scene(
        bg=np.clip(bg, 0, 1), shirt=tuple(float(x) for x in rng.uniform(0.05, 0.95, 3)),
        gain=float(np.exp(rng.uniform(-0.12, 0.08) * c)),
        tint=tuple(float(x) for x in np.exp(rng.normal(0, 0.025 * c, 3))),
        light=tuple(float(x) for x in rng.normal(0, 0.07 * c, 2)),
        cx=float(rng.uniform(-0.07, 0.07) * c), cy=float(rng.uniform(-0.05, 0.07) * c),
        scale=float(np.exp(rng.uniform(-0.08, 0.08) * c)), roll=float(rng.uniform(-0.1, 0.1) * c),
        blur=float(rng.uniform(0.0, var.max_blur * c)), noise=float(rng.uniform(0.004, 0.02)),
        sway=(float(rng.uniform(0.005, 0.03)), float(rng.uniform(0.2, 0.8)), float(rng.uniform(0, 6.3))),
        blink_rate=float(rng.uniform(0.1, 0.5)),
    )


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    r = (np.arange(size) + 0.5) / size * 2 - 1
    v, u = np.meshgrid(r, r, indexing="ij")
    return u, v


def _soft(d: np.ndarray, edge: np.ndarray | float) -> np.ndarray:
    """Alpha from a signed distance (negative inside): 1 inside, 0 outside, linear over ``edge``."""
    return np.clip(0.5 - d / edge, 0.0, 1.0)


def _ellipse(x, y, cx, cy, a, b, p: float = 2.0):
    r = (np.abs((x - cx) / a) ** p + np.abs((y - cy) / b) ** p) ** (1.0 / p)
    return (r - 1.0) * np.minimum(a, b)


class _Canvas:
    """Frames being painted, with the per-frame head-local coordinates ``x, y`` of every
    pixel. Shapes are evaluated only inside a pixel window that bounds them in all frames."""

    def __init__(self, bg: np.ndarray, n: int, cx, cy, roll, s, size: int):
        self.size = size
        self.img = np.broadcast_to(bg.astype(np.float32), (n, size, size, 3)).copy()
        u, v = _grid(size)
        u, v = u[None].astype(np.float32), v[None].astype(np.float32)
        self.cx, self.cy, self.cr, self.sr, self.s = cx, cy, np.cos(roll), np.sin(roll), s
        self.x = (((u - cx) * self.cr + (v - cy) * self.sr) / s).astype(np.float32)
        self.y = ((-(u - cx) * self.sr + (v - cy) * self.cr) / s).astype(np.float32)
        self.edge = ((2.0 / size) / s * 1.2).astype(np.float32)

    def window(self, lx: float, ly: float, radius: float | None) -> tuple[slice, slice]:
        """Pixel rows/cols that hold the disc of ``radius`` (head units) around (lx, ly) in every frame."""
        if radius is None:
            return slice(0, self.size), slice(0, self.size)
        u = self.cx + self.s * (lx * self.cr - ly * self.sr)
        v = self.cy + self.s * (lx * self.sr + ly * self.cr)
        r = radius * float(np.max(self.s))
        half = self.size / 2
        c0 = int(np.floor((float(np.min(u)) - r + 1) * half)) - 2
        c1 = int(np.ceil((float(np.max(u)) + r + 1) * half)) + 2
        r0 = int(np.floor((float(np.min(v)) - r + 1) * half)) - 2
        r1 = int(np.ceil((float(np.max(v)) + r + 1) * half)) + 2
        clip = lambda a: min(max(a, 0), self.size)  # noqa: E731
        return slice(clip(r0), clip(r1)), slice(clip(c0), clip(c1))

    def paint(self, dist, colour, *, at: tuple[float, float] = (0.0, 0.0), radius: float | None = None,
              strength=1.0, soften: float = 1.0) -> None:
        """Composite ``colour`` where ``dist(x, y) < 0`` (soft edge ``soften`` pixels wide);
        ``strength`` scales the alpha (a number or a callable of the window's shape)."""
        rs, cs = self.window(at[0], at[1], radius)
        if rs.stop <= rs.start or cs.stop <= cs.start:
            return
        x, y = self.x[:, rs, cs], self.y[:, rs, cs]
        alpha = _soft(dist(x, y), self.edge * soften)
        alpha = alpha * (strength(x.shape[1:]) if callable(strength) else strength)
        sub = self.img[:, rs, cs]
        sub += alpha[..., None] * (np.asarray(colour, dtype=np.float32).reshape(-1) - sub)


def render_clip(face: Face, scene: Scene, mouth: np.ndarray, rng: np.random.Generator, *,
                condition: str = "ok", fps: float = 25.0, size: int = DEFAULT_SIZE) -> np.ndarray:
    """Frames of one clip: uint8 ``(len(mouth), size, size, 3)`` RGB.

    ``mouth`` (per frame, 0..1) drives the mouth opening; ``condition`` is ``"ok"``,
    ``"occluded"`` or ``"absent"`` (see the module doc).
    """
    n = len(mouth)
    if condition not in ("ok", "occluded", "absent"):
        raise ValueError(f"unknown face condition {condition!r}")
    if condition == "absent":
        level = rng.uniform(0.0, 0.12)
        frames = np.full((n, size, size, 3), level, np.float32)
        frames += 0.01 * rng.standard_normal(frames.shape, dtype=np.float32)
        return np.clip(frames * 255 + 0.5, 0, 255).astype(np.uint8)
    t = (np.arange(n, dtype=np.float32) / fps)[:, None, None]
    amp, freq, ph = scene.sway
    ph0 = rng.uniform(0, 2 * np.pi)
    cx = scene.cx + amp * np.sin(2 * np.pi * freq * t + ph + ph0)
    cy = scene.cy + 0.5 * amp * np.sin(2 * np.pi * freq * 1.3 * t + ph)
    roll = scene.roll + 0.6 * amp * np.sin(2 * np.pi * freq * 0.7 * t + ph0)
    s = scene.scale * (1 + 0.3 * amp * np.sin(2 * np.pi * freq * 0.5 * t)) * ZOOM
    cv = _Canvas(scene.bg, n, cx, cy, roll, s, size)
    f = face
    skin = np.asarray(f.skin)
    hair = np.asarray(f.hair)
    # shoulders and neck
    cv.paint(lambda x, y: _ellipse(x, y, 0, 1.25, 0.95, 0.55), scene.shirt)
    cv.paint(lambda x, y: np.maximum(np.abs(x) - 0.16, -(y - 0.2)), skin * 0.82)
    if f.hair_style == 2:   # long hair behind the head
        cv.paint(lambda x, y: np.maximum(_ellipse(x, y, 0, 0.08, f.head_w * 1.28, f.head_h * 1.18),
                                         y - f.head_h * 0.9), hair * 0.9)
    # ears, head (superellipse with a tapered jaw)
    for sgn in (-1, 1):
        ex = sgn * f.head_w * 0.97
        cv.paint(lambda x, y: _ellipse(x, y, ex, 0.0, 0.07 * f.ear, 0.12 * f.ear), skin * 0.9,
                 at=(ex, 0.0), radius=0.13 * f.ear)

    def taper(y):
        return 1 - f.jaw_taper * np.clip(y / f.head_h, 0, 1) ** 2

    head_r = max(f.head_w, f.head_h) * 1.25
    cv.paint(lambda x, y: _ellipse(x / taper(y), y, 0, 0, f.head_w, f.head_h, f.head_p), skin, radius=head_r)
    # hair on top
    if f.hair_style in (1, 2, 3):
        line = f.hairline if f.hair_style != 3 else 0.32

        def hair_d(x, y):
            hl = -f.head_h * line + 0.12 * (x / f.head_w) ** 2
            return np.maximum(_ellipse(x, y, 0, -0.03, f.head_w * 1.07, f.head_h * 1.1), y - hl)
        cv.paint(hair_d, hair, radius=head_r)
    # brows, eyes (blinking), irises, glasses
    blink = np.ones((n, 1, 1), np.float32)
    for _ in range(int(rng.poisson(scene.blink_rate * n / fps))):
        k = int(rng.integers(n))
        blink[k:k + 3] = np.array([0.15, 0.1, 0.5], np.float32)[:len(blink[k:k + 3]), None, None]
    gx, gy = rng.normal(0, 0.012, 2)
    for sgn in (-1, 1):
        ex, ey, by0 = sgn * f.eye_dx, f.eye_y, f.eye_y - 0.075
        ct, st = np.cos(sgn * f.brow_tilt), np.sin(sgn * f.brow_tilt)
        cv.paint(lambda x, y: _ellipse((x - ex) * ct + (y - by0) * st, -(x - ex) * st + (y - by0) * ct,
                                       0, 0, f.eye_w * 1.35, f.brow_thick),
                 hair * 0.8, at=(ex, by0), radius=f.eye_w * 1.4 + 0.05)

        def eye(x, y):
            return _ellipse(x, y, ex, ey, f.eye_w, f.eye_h * blink)
        cv.paint(eye, (0.95, 0.95, 0.93), at=(ex, ey), radius=f.eye_w + 0.01)
        cv.paint(lambda x, y: np.maximum(_ellipse(x, y, ex + gx, ey + gy, f.eye_h * 0.95, f.eye_h * 0.95),
                                         eye(x, y)), f.iris, at=(ex, ey), radius=f.eye_w + 0.01)
        cv.paint(lambda x, y: np.maximum(_ellipse(x, y, ex + gx, ey + gy, f.eye_h * 0.4, f.eye_h * 0.4),
                                         eye(x, y)), (0.02, 0.02, 0.02), at=(ex, ey), radius=f.eye_w + 0.01)
        if f.glasses:
            cv.paint(lambda x, y: np.abs(_ellipse(x, y, ex, ey, f.eye_w * 1.6, f.eye_h * 2.6)) - 0.008,
                     f.glasses_colour, at=(ex, ey), radius=f.eye_w * 1.6 + f.eye_h * 2.6 + 0.02)
    if f.glasses:
        cv.paint(lambda x, y: np.maximum(np.abs(x) - (f.eye_dx - f.eye_w * 1.6), np.abs(y - f.eye_y) - 0.008),
                 f.glasses_colour, at=(0.0, f.eye_y), radius=f.eye_dx + 0.02)
    # nose (soft shadow + nostrils)
    ny = f.eye_y + 0.03 + f.nose_len * 0.5
    cv.paint(lambda x, y: _ellipse(x, y, 0.015, ny, f.nose_w * 0.7, f.nose_len * 0.5), skin * 0.78,
             at=(0.0, ny), radius=f.nose_len * 0.5 + 0.05, strength=0.6, soften=4.0)
    for sgn in (-1, 1):
        nx, nyy = sgn * f.nose_w * 0.55, ny + f.nose_len * 0.45
        cv.paint(lambda x, y: _ellipse(x, y, nx, nyy, 0.018, 0.01), skin * 0.45,
                 at=(nx, nyy), radius=0.03, strength=0.7)
    # beard below the mouth line
    if f.beard > 0:
        cv.paint(lambda x, y: np.maximum(_ellipse(x / taper(y), y, 0, 0, f.head_w * 1.02, f.head_h * 1.03, f.head_p),
                                         -(y - (f.mouth_y - 0.05))),
                 hair * 0.9, radius=head_r,
                 strength=lambda shape: f.beard * (0.85 + 0.15 * rng.random(shape, dtype=np.float32)))
    # mouth: lips plus a dark opening driven by the audio
    open_h = (0.004 + 0.05 * np.clip(mouth, 0, 1))[:, None, None].astype(np.float32)
    mr = f.mouth_w + 0.02
    cv.paint(lambda x, y: _ellipse(x, y, 0, f.mouth_y, f.mouth_w, f.lip_thick + open_h), f.lip,
             at=(0.0, f.mouth_y), radius=mr + 0.06)
    cv.paint(lambda x, y: _ellipse(x, y, 0, f.mouth_y, f.mouth_w * 0.8, open_h * 0.8), (0.15, 0.04, 0.04),
             at=(0.0, f.mouth_y), radius=mr + 0.06)
    if condition == "occluded":
        frac = rng.uniform(0.55, 0.85)
        ox = rng.uniform(-0.2, 0.2)
        oy = f.head_h * (1 - 2 * frac) + np.sin(2 * np.pi * 0.5 * t) * 0.03
        cv.paint(lambda x, y: np.maximum(np.abs(x - ox) - f.head_w * 1.3, -(y - oy)), rng.uniform(0.05, 0.9, 3))
    # lighting, blur, noise
    img = cv.img
    u, v = _grid(size)
    light = (scene.gain * (1 + scene.light[0] * u + scene.light[1] * v)).astype(np.float32)
    img *= light[None, :, :, None] * np.asarray(scene.tint, np.float32)
    if scene.blur > 0.3:
        from scipy.ndimage import gaussian_filter
        img = gaussian_filter(img, sigma=(0, scene.blur, scene.blur, 0), mode="nearest", truncate=2.5)
    img += np.float32(scene.noise) * rng.standard_normal(img.shape, dtype=np.float32)
    return np.clip(img * 255 + 0.5, 0, 255).astype(np.uint8)


__all__ = ["Face", "Scene", "FaceVariation", "sample_face", "sample_scene", "render_clip", "DEFAULT_SIZE"]
