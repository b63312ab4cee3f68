"""Host buffers that batches are assembled in on their way to the backbones' device.

A VoxCeleb2 shard's audio batches are 20-80 MB of zero-padded float32 each. Before, each batch
was a fresh array (``np.zeros``), then, on CUDA, copied once more into pinned memory
(``Tensor.pin_memory()``) for the non-blocking host->device copy. Now a batch is filled in place:

* on CUDA, in a pinned tensor from torch's caching host allocator (``torch.empty(...,
  pin_memory=True)``): no pageable copy in between, and the allocator hands a block back out
  only after the non-blocking host->device copy that read it has finished (it records an event
  on the copy's stream), so a block is never overwritten while in flight;
* on the CPU, in a grow-only array per thread and dtype, reused by the next batch of that
  thread: the backbone runs synchronously and its output is a new tensor, so the buffer is
  free again when the forward returns. Per thread, since a Dask worker computes shards on two
  threads at once.

Measured (``benchmarks/main_process_speed.py``, null backbones, 720 VoxCeleb2-format clips, CPU):
main-process CPU 1.91 -> 1.75 and 2.39 -> 1.95 ms per clip in two runs (x1.09, x1.23; a fresh array
sometimes costs much more once a run is warm: page faults and huge-page compaction, 2.4 ms per clip
in one run). On CUDA it also saves the copy into pinned memory, not measured here (no GPU).
"""

from __future__ import annotations

import threading

import numpy as np

__all__ = ["host_buffer", "to_device"]

_LOCAL = threading.local()
#: a CPU buffer grows to this much more than the batch that outgrew it, so a run's slowly
#: growing batches do not reallocate every time
GROWTH = 1.25


def host_buffer(shape: tuple[int, ...], dtype, device: str):
    """``(array, tensor)``: a host array of ``shape`` and ``dtype`` to fill a batch in and a torch
    tensor on the same memory, for :func:`to_device`. Its content is undefined until filled.
    CPU: valid until this thread's next call with the same dtype."""
    import torch
    dtype = np.dtype(dtype)
    if device.startswith("cuda"):
        t = torch.empty(shape, dtype=torch.from_numpy(np.empty(0, dtype)).dtype, pin_memory=True)
        return t.numpy(), t
    bufs = _LOCAL.__dict__.setdefault("bufs", {})
    n = int(np.prod(shape, dtype=np.int64))
    flat = bufs.get(dtype.str)
    if flat is None or flat.size < n:
        flat = bufs[dtype.str] = np.empty(max(n, int(n * GROWTH)), dtype)
    arr = flat[:n].reshape(shape)
    return arr, torch.from_numpy(arr)


def to_device(t, device: str):
    """``t`` (from :func:`host_buffer`) on ``device``: a non-blocking copy from pinned memory on
    CUDA, the tensor itself on the CPU."""
    return t.to(device, non_blocking=True) if device.startswith("cuda") else t
