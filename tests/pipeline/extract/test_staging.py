"""Host staging buffers (``pipeline.extract.staging``): on the CPU one grow-only buffer per
thread and dtype, reused by the next batch, so extraction's batches stop allocating fresh
20-80 MB arrays; a thread never gets another thread's memory; the embeddings of a run with
reused buffers equal those of batches assembled fresh (the batch-vs-single-clip tests of
``test_extract`` check the same through the whole run)."""

from __future__ import annotations

import threading

import numpy as np
import torch

from extractors.batching import pad_stack
from pipeline.extract.embed import faces_on_device
from pipeline.extract.staging import host_buffer, to_device


def test_cpu_buffer_is_reused_grows_and_shares_memory_with_its_tensor():
    a, ta = host_buffer((4, 100), np.float32, "cpu")
    assert a.shape == (4, 100) and a.dtype == np.float32 and ta.data_ptr() == a.ctypes.data
    b, _ = host_buffer((2, 150), np.float32, "cpu")          # smaller than the buffer: same memory
    assert b.ctypes.data == a.ctypes.data and b.flags["C_CONTIGUOUS"]
    c, _ = host_buffer((3, 3, 8, 8), np.uint8, "cpu")        # another dtype: another buffer
    assert c.ctypes.data != a.ctypes.data and c.dtype == np.uint8
    big, _ = host_buffer((8, 1000), np.float32, "cpu")       # outgrows it: a new, bigger one
    again, _ = host_buffer((8, 1000), np.float32, "cpu")
    assert again.ctypes.data == big.ctypes.data
    assert to_device(ta, "cpu") is ta


def test_threads_get_their_own_buffers():
    ptrs, barrier = {}, threading.Barrier(4)

    def take(name):
        ptrs[name] = host_buffer((16, 64), np.float32, "cpu")[0].ctypes.data
        barrier.wait()          # all alive at once (an ended thread's buffer may be freed and reused)

    threads = [threading.Thread(target=take, args=(k,)) for k in range(3)]
    for t in threads:
        t.start()
    take("main")
    for t in threads:
        t.join()
    assert len(set(ptrs.values())) == 4


def test_batches_in_a_reused_buffer_equal_fresh_ones():
    rng = np.random.default_rng(0)
    for _ in range(3):                                       # the buffer holds the last batch's data
        waves = [rng.standard_normal(n).astype(np.float32) for n in rng.integers(50, 400, 5)]
        arr, t = host_buffer((5, max(map(len, waves))), np.float32, "cpu")
        arr[...] = np.nan
        got, lens = pad_stack(waves, out=arr)
        want, _ = pad_stack(waves)
        assert np.array_equal(got, want) and np.array_equal(t.numpy(), want)
        clips = [rng.integers(0, 255, (2, 3, 8, 8), dtype=np.uint8) for _ in range(3)]
        faces = faces_on_device(clips, 8, "cpu")
        assert torch.equal(faces, torch.from_numpy(np.concatenate(clips)).float())
        host_buffer((6, 3, 8, 8), np.uint8, "cpu")[0][...] = 0   # scribbling afterwards changes nothing
        assert torch.equal(faces, torch.from_numpy(np.concatenate(clips)).float())
