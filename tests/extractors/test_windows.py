"""extractors.windows: the DCA authors' audio windows (8 x 1.015 s at the centres of 8 equal
spans; clips up to 8 windows long zero-padded in front, as their dataLoader.py does)."""

from __future__ import annotations

import numpy as np
import pytest

from extractors.windows import centre_window_plan, front_padded, window_samples

W = window_samples(16000)


def test_window_is_the_authors_frame_len():
    assert W == 100 * 160 + 240 == 16240          # dataLoader.py: frame_len * 160 + 240, frame_len 100
    assert window_samples(8000) == 8120


def test_long_utterance_windows_sit_at_span_centres():
    t = 10 * 16000 + 7                             # longer than 8 windows: no padding
    p = centre_window_plan(t, 8, W, 8000)
    assert p.pad_front == 0 and p.valid.all() and p.slot_part.tolist() == list(range(8))
    span = t // 8
    for i, (a, b) in enumerate(p.parts):
        assert b - a == W
        assert i * span <= a and b <= (i + 1) * span                    # inside its span
        assert abs((a + b) / 2 - (i + 0.5) * span) <= 1                 # at its centre
    assert p.parts[-1][1] <= t


def test_exactly_eight_windows_long_is_cut_consecutively():
    p = centre_window_plan(8 * W, 8, W, 8000)
    assert p.pad_front == 0 and p.valid.all()
    assert list(p.parts) == [(i * W, (i + 1) * W) for i in range(8)]


def test_shorter_than_eight_windows_is_zero_padded_in_front():
    t = 3 * W + 5000                               # 3 full windows + 5000 samples of real audio
    p = centre_window_plan(t, 8, W, 8000)
    assert p.pad_front == 8 * W - t
    # windows 0-3 are all padding or hold < 8000 real samples (window 4 holds 5000): invalid
    assert p.valid.tolist() == [False] * 5 + [True] * 3
    assert list(p.parts) == [(i * W, (i + 1) * W) for i in range(5, 8)]
    assert p.slot_part.tolist() == [0] * 6 + [1, 2]                   # invalid slots copy the first valid
    wave = np.arange(1, t + 1, dtype=np.float32)
    padded = front_padded(wave, p.pad_front)
    assert len(padded) == 8 * W and not padded[:p.pad_front].any()
    assert np.array_equal(padded[p.parts[-1][0]:p.parts[-1][1]], wave[-W:])   # the last window: the end
    # with a minimum of one sample, the partly padded window 4 counts
    p1 = centre_window_plan(t, 8, W, 1)
    assert p1.valid.tolist() == [False] * 4 + [True] * 4 and len(p1.parts) == 4


def test_shorter_than_one_window():
    t = 12000                                      # 0.75 s: >= the 0.5 s minimum, < 1.015 s
    p = centre_window_plan(t, 8, W, 8000)
    assert p.pad_front == 8 * W - t and p.parts == ((7 * W, 8 * W),)
    assert p.valid.tolist() == [False] * 7 + [True] and p.slot_part.tolist() == [0] * 8
    padded = front_padded(np.ones(t, np.float32), p.pad_front)
    seg = padded[7 * W:8 * W]
    assert not seg[:W - t].any() and seg[W - t:].all()               # zeros, then the whole clip
    # shorter than the backbone's minimum: the last window everywhere, every slot invalid
    q = centre_window_plan(3000, 8, W, 8000)
    assert q.parts == ((7 * W, 8 * W),) and not q.valid.any() and q.slot_part.tolist() == [0] * 8


def test_bad_arguments():
    with pytest.raises(ValueError):
        centre_window_plan(0, 8, W)
    with pytest.raises(ValueError):
        centre_window_plan(100, 0, W)
    assert front_padded(np.ones(3, np.float32), 0).tolist() == [1, 1, 1]
