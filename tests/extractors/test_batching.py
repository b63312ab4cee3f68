"""extractors.batching: the segment plan, length bucketing, padding."""

from __future__ import annotations

import numpy as np
import pytest

from extractors.batching import length_batches, pad_stack, segment_plan, tile_to_length


def test_long_utterance_gets_s_equal_valid_segments():
    p = segment_plan(16003, 8, 1000)
    assert len(p.parts) == 8 and p.valid.all() and p.tiled_length == 0
    assert p.parts[0][0] == 0 and p.parts[-1][1] == 16003
    assert all(a[1] == b[0] for a, b in zip(p.parts, p.parts[1:]))          # contiguous
    assert {b - a for a, b in p.parts} <= {2000, 2001}                       # equal up to one sample
    assert p.slot_part.tolist() == list(range(8))


def test_mid_length_utterance_is_repeat_padded_and_flagged():
    p = segment_plan(3500, 8, 1000)  # room for 3 segments of >= 1000 samples
    assert len(p.parts) == 3 and all(b - a >= 1000 for a, b in p.parts)
    assert p.slot_part.tolist() == [0, 1, 2, 0, 1, 2, 0, 1]
    assert p.valid.tolist() == [True] * 3 + [False] * 5


def test_utterance_shorter_than_one_segment_is_tiled_and_all_invalid():
    p = segment_plan(300, 8, 1000)
    assert p.tiled_length == 1000 and p.parts == ((0, 1000),) and not p.valid.any()
    w = np.arange(300, dtype=np.float32)
    t = tile_to_length(w, 1000)
    assert len(t) == 1000 and np.array_equal(t[300:600], w) and t[999] == w[999 % 300]
    assert tile_to_length(w, 100) is w
    with pytest.raises(ValueError):
        segment_plan(0, 8, 1000)


def test_length_batches_sorted_and_capped():
    lengths = [5, 100, 7, 100, 50, 3, 60]
    bs = length_batches(lengths, max_items=3)
    flat = np.concatenate(bs)
    assert sorted(flat.tolist()) == list(range(7))
    assert [len(b) for b in bs] == [3, 3, 1]
    assert bs[0].tolist() == [1, 3, 6]                 # longest first, ties by index
    assert all(np.all(np.diff(np.asarray(lengths)[b]) <= 0) for b in bs)
    capped = length_batches(lengths, max_items=10, max_samples=200)
    for b in capped:
        assert len(b) == 1 or len(b) * max(lengths[i] for i in b) <= 200
    assert length_batches([10_000], max_items=4, max_samples=10)[0].tolist() == [0]  # at least one


def test_pad_stack():
    w, lens = pad_stack([np.ones(3, np.float32), np.full(5, 2, np.float32)])
    assert w.shape == (2, 5) and lens.tolist() == [3, 5]
    assert w[0].tolist() == [1, 1, 1, 0, 0] and w[1].tolist() == [2] * 5
    buf = np.full((4, 8), 9, np.float32)
    w2, _ = pad_stack([np.ones(2, np.float32)], out=buf)
    assert w2.shape == (1, 2) and w2.tolist() == [[1, 1]]
    dirty = np.full((2, 5), 7, np.float32)             # a reused buffer: only the tails are zeroed
    w3, _ = pad_stack([np.ones(3, np.float32), np.full(5, 2, np.float32)], out=dirty)
    assert np.array_equal(w3, w) and w3.base is dirty or w3 is dirty
