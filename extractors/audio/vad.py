"""resemblyzer's long-silence trimming (``resemblyzer.audio.trim_long_silences``, 0.1.4), exactly.

The algorithm (resemblyzer ``audio.py`` with its ``hparams.py`` values), for a float wave at
16 kHz:

1. windows of ``window_ms = 30`` ms (480 samples); the trailing partial window is dropped
   (``wav[:len(wav) - len(wav) % 480]``), so the output never has those samples;
2. int16 PCM as resemblyzer makes it: ``np.round(wav * 32767).astype(np.int16)`` (values
   beyond [-1, 1] are not clipped there either: the cast wraps them as numpy does);
3. one ``webrtcvad.Vad(mode=3).is_speech(window, 16000)`` per window (the only per-window
   Python call: the WebRTC VAD keeps state from window to window);
4. the flags smoothed by resemblyzer's ``moving_average(flags, 8)`` (zero padding of 3 in
   front and 4 behind, ``np.cumsum``, differences of width 8), then ``np.round(...)`` to bool;
5. ``scipy.ndimage.binary_dilation(mask, np.ones(6 + 1))``: a voiced window keeps 3 windows
   either side, so a pause of up to 6 windows (180 ms) between voiced windows is kept;
6. ``np.repeat(mask, 480)`` and ``wav[mask]``.

:func:`speech_mask` returns the sample mask (over the windowed part of the wave), and
:func:`trim_long_silences` the trimmed wave. Steps 2 and 4-6 are vectorised numpy. The
module needs the ``webrtcvad`` extension (PyPI ``webrtcvad-wheels``), imported on first use.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.core.errors import BackboneError

__all__ = ["INT16_MAX", "TrimParams", "moving_average", "speech_mask", "trim_long_silences", "voice_flags"]

INT16_MAX = (2 ** 15) - 1


@dataclass(frozen=True)
class TrimParams:
    """resemblyzer 0.1.4 ``hparams.py``: ``vad_window_length``, ``vad_moving_average_width``,
    ``vad_max_silence_length``; ``webrtcvad.Vad(mode=3)``; ``sampling_rate``."""
    window_ms: int = 30
    average_width: int = 8
    max_silence: int = 6
    mode: int = 3
    sample_rate: int = 16000

    @property
    def window(self) -> int:
        """Samples per VAD window (480 at 30 ms and 16 kHz)."""
        return (self.window_ms * self.sample_rate) // 1000

    def to_dict(self) -> dict:
        return {"window_ms": self.window_ms, "average_width": self.average_width,
                "max_silence": self.max_silence, "mode": self.mode, "sample_rate": self.sample_rate}


DEFAULT = TrimParams()


def _webrtcvad():
    try:
        import webrtcvad
    except ImportError as e:  # a broken install: webrtcvad-wheels is a runtime dependency
        raise BackboneError("the webrtcvad extension is not importable (needed by the GE2E silence trimming)",
                            hint="pip install webrtcvad-wheels, or use --audio-weights pretrained-novad") from e
    return webrtcvad


def voice_flags(wav: np.ndarray, params: TrimParams = DEFAULT) -> np.ndarray:
    """WebRTC VAD decision per full window of ``wav`` (bool, ``len(wav) // window``)."""
    win = params.window
    n = len(wav) - len(wav) % win
    pcm = np.round(wav[:n] * INT16_MAX).astype(np.int16).tobytes()   # resemblyzer's struct.pack("%dh")
    vad = _webrtcvad().Vad(params.mode)
    step = 2 * win
    return np.fromiter((vad.is_speech(pcm[a:a + step], params.sample_rate) for a in range(0, 2 * n, step)),
                       dtype=bool, count=n // win)


def moving_average(array: np.ndarray, width: int) -> np.ndarray:
    """resemblyzer's ``moving_average``: zero padding ``(width - 1) // 2`` in front and
    ``width // 2`` behind, cumulative sums, differences of width ``width``; same length."""
    padded = np.concatenate((np.zeros((width - 1) // 2), array, np.zeros(width // 2)))
    ret = np.cumsum(padded, dtype=float)
    ret[width:] = ret[width:] - ret[:-width]
    return ret[width - 1:] / width


def speech_mask(wav: np.ndarray, params: TrimParams = DEFAULT) -> np.ndarray:
    """Boolean mask of the samples resemblyzer keeps, over ``wav[:len(wav) - len(wav) % window]``."""
    from scipy.ndimage import binary_dilation

    flags = voice_flags(wav, params)
    if len(flags) == 0:
        return np.zeros(0, dtype=bool)
    mask = np.round(moving_average(flags, params.average_width)).astype(bool)
    mask = binary_dilation(mask, np.ones(params.max_silence + 1))
    return np.repeat(mask, params.window)


def trim_long_silences(wav: np.ndarray, params: TrimParams = DEFAULT) -> np.ndarray:
    """``wav`` without its long silences (resemblyzer ``trim_long_silences``); may be empty."""
    mask = speech_mask(wav, params)
    return wav[:len(mask)][mask]
