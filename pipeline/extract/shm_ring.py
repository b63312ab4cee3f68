"""Decode worker processes that hand decoded clips to the main process through a ring of
shared-memory slots, so that arrays are never pickled (issue 15).

* The ring is **one anonymous shared mapping** (``mmap(-1, n)``: ``MAP_SHARED|MAP_ANONYMOUS``)
  made before the workers are forked. It has no name: nothing is created in ``/dev/shm``, so
  nothing can be left there after a normal end, an exception or a kill -9; the kernel frees
  the memory with the last process that maps it.
* The main process hands out tasks ``(row, record, slot)`` through a queue, at most
  ``prefetch`` rows ahead of the consumer. A worker runs ``decode(record, spec)``, copies the
  clip's arrays (``audio``, ``faces``, ``face_valid``) into its slot and sends back the clip
  without arrays plus their layout (a few hundred bytes) through its own pipe.
* A receiver thread of the main process reads the workers' pipes as results arrive, also while
  the consumer is busy (a worker never waits on its send). The main process yields the clips
  **in record order** (failure records included, they travel with the clip); their arrays are
  numpy views into the slot, no copy. The slot is
  free again once the last view is gone (a ``weakref.finalize`` on the array that owns the
  views), i.e. when the consumer has embedded the clip's shard and dropped it.
* A clip whose arrays do not fit a slot, or a task handed out while the consumer holds every
  slot, travels pickled as before: same arrays, only slower; the ring never blocks.
* Workers run one torch thread and are SIGKILLed by the kernel when the main process dies
  (``die_with_parent``). A worker that dies or raises ends the iteration with
  ``RuntimeError`` naming it. Needs ``fork`` (Linux); ``available()`` says so.

``benchmarks/handoff_speed.py`` measures the main process's CPU per clip against pickling.
"""

from __future__ import annotations

import dataclasses
import mmap
import os
import threading
import time
import traceback
import weakref
from collections import deque
from typing import Any, Callable, Iterator, Sequence

import numpy as np

__all__ = ["iter_ring", "in_ring", "available", "worker_init", "die_with_parent", "slot_bytes_for", "FIELDS"]

#: the array fields of a decoded clip that travel in the slots
FIELDS = ("audio", "faces", "face_valid")
#: seconds of audio a slot holds (VoxCeleb2 dev: 96 % of the clips are shorter); longer clips travel pickled
SLOT_AUDIO_SECONDS = 20.0
_ALIGN = 64


def available() -> bool:
    import multiprocessing as mp
    return "fork" in mp.get_all_start_methods()


def in_ring(a) -> bool:
    """Whether array ``a`` is a view into a hand-off ring (not a copy that travelled pickled)."""
    while isinstance(a, np.ndarray):
        a = a.base
    return isinstance(a, memoryview) and isinstance(a.obj, mmap.mmap)


def worker_init(_: int = 0) -> None:
    import torch
    torch.set_num_threads(1)
    die_with_parent()


def die_with_parent() -> None:
    """Linux: have the kernel SIGKILL this decode worker when its parent dies (kill -9 of
    ``avfuse extract`` would otherwise orphan it, blocked writing into a dead pipe)."""
    import ctypes
    import signal
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux/glibc: nothing to do
        return
    if os.getppid() == 1:  # the parent is already gone
        os._exit(0)


def _round(n: int) -> int:
    return -(-n // _ALIGN) * _ALIGN


def slot_bytes_for(audio_sr: int | None, frames: int, face_side: int | None) -> int:
    """Bytes of one slot: ``SLOT_AUDIO_SECONDS`` of float32 audio, ``frames`` RGB faces of ``face_side``."""
    audio = _round(int(SLOT_AUDIO_SECONDS * audio_sr) * 4) if audio_sr else 0
    faces = _round(frames * 3 * face_side * face_side) + _round(frames) if face_side else 0
    return max(_ALIGN, audio + faces)


def _write(mm, base: int, cap: int, clip) -> tuple | None:
    """Copy ``clip``'s arrays into ``mm[base:base+cap]``; their layout, or None when they do not fit."""
    parts = [(name, a) for name in FIELDS if (a := getattr(clip, name)) is not None]
    layout, off = [], 0
    for name, a in parts:
        layout.append((name, a.dtype.str, a.shape, off))
        off += _round(a.nbytes)
    if off > cap:
        return None
    for (name, a), (_, _, _, o) in zip(parts, layout):
        if a.nbytes:
            np.frombuffer(mm, np.uint8, a.nbytes, base + o).view(a.dtype).reshape(a.shape)[...] = a
    return tuple(layout)


def _worker(wid: int, mm, slot_bytes: int, tasks, conn, decode: Callable, spec: Any) -> None:
    worker_init(wid)
    while True:
        job = tasks.get()
        if job is None:
            break
        i, rec, slot = job
        try:
            clip = decode(rec, spec)
            layout = _write(mm, slot * slot_bytes, slot_bytes, clip) if slot is not None else None
            if layout is not None:
                clip = dataclasses.replace(clip, **{name: None for name, *_ in layout})
            conn.send((i, clip, layout, None))
        except BaseException:
            conn.send((i, None, None, traceback.format_exc(limit=8)))
    conn.close()


def iter_ring(records: Sequence, decode: Callable, spec: Any, *, num_workers: int, prefetch: int,
              slot_bytes: int, slots: int | None = None) -> Iterator:
    """``decode(records[i], spec)`` for every i, in order, from ``num_workers`` forked worker
    processes, the arrays handed over in a ring of ``slots`` shared slots of ``slot_bytes``
    (default ``min(len(records), 2 * prefetch)``: the consumer may hold a shard while the next
    one is decoded). See the module docstring."""
    import multiprocessing as mp
    n = len(records)
    prefetch = max(1, prefetch)
    slots = max(1, min(n, 2 * prefetch) if slots is None else slots)
    ctx = mp.get_context("fork")
    mm = mmap.mmap(-1, slots * slot_bytes)
    free: deque[int] = deque(range(slots))
    tasks = ctx.Queue()
    procs, conns = [], []
    for w in range(num_workers):
        r, s = ctx.Pipe(duplex=False)
        p = ctx.Process(target=_worker, args=(w, mm, slot_bytes, tasks, s, decode, spec), daemon=True,
                        name=f"avfuse-decode-{w}")
        p.start()
        s.close()
        procs.append(p)
        conns.append(r)
    job_slot: dict[int, int | None] = {}
    rx = _Receiver(records, procs, conns, mm, slot_bytes, free, job_slot, n)
    rx.start()
    sent = done = 0
    try:
        while done < n:
            while sent < n and sent - done < prefetch:
                slot = free.popleft() if free else None
                with rx.cond:
                    job_slot[sent] = slot
                tasks.put((sent, records[sent], slot))
                sent += 1
            yield rx.take(done)
            done += 1
    finally:
        rx.stop()
        _shutdown(procs, conns, tasks)


class _Receiver(threading.Thread):
    """Reads every worker's pipe as results arrive, also while the consumer is busy embedding:
    a worker whose clip travels pickled (bigger than a slot) would otherwise block on its send
    until the consumer came back for more, and with it the decoding ahead (issue 15: on the GPU
    box, 12 of 14 workers sat blocked behind the ~5 % of VoxCeleb2 clips longer than 20 s)."""

    def __init__(self, records, procs, conns, mm, slot_bytes: int, free: deque, job_slot: dict, n: int):
        super().__init__(name="avfuse-ring-receiver", daemon=True)
        self.records, self.procs, self.conns, self.mm = records, procs, conns, mm
        self.slot_bytes, self.free, self.job_slot, self.n = slot_bytes, free, job_slot, n
        self.cond = threading.Condition()
        self.ready: dict[int, Any] = {}
        self.error: BaseException | None = None
        self._halt = threading.Event()

    def take(self, i: int):
        """Clip ``i`` once it has arrived; the worker's error if one came first."""
        with self.cond:
            while i not in self.ready and self.error is None:
                self.cond.wait()
            if i not in self.ready:
                raise self.error
            return self.ready.pop(i)

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=5.0)

    def run(self) -> None:
        from multiprocessing.connection import wait
        got_all = 0
        try:
            while got_all < self.n and not self._halt.is_set():
                live = [c for c in self.conns if not c.closed]
                got = wait(live + [p.sentinel for p in self.procs], timeout=0.2)
                msgs = [c for c in live if c in got]
                for c in msgs:
                    try:
                        while c.poll():
                            i, clip, layout, err = c.recv()
                            if err is not None:
                                raise RuntimeError(f"decode worker failed on row {i} "
                                                   f"({getattr(self.records[i], 'clip_id', i)}):\n{err}")
                            with self.cond:
                                self.ready[i] = _attach(self.mm, self.job_slot.pop(i), self.slot_bytes, clip,
                                                        layout, self.free)
                                self.cond.notify_all()
                            got_all += 1
                    except EOFError:    # its worker is gone: the sentinel says how, below
                        c.close()
                if got and not msgs:
                    dead = next(p for p in self.procs if p.sentinel in got)
                    dead.join(timeout=2.0)
                    raise RuntimeError(f"decode worker (pid {dead.pid}) exited unexpectedly "
                                       f"(exit code {dead.exitcode}; a negative code is the signal)")
        except BaseException as e:
            with self.cond:
                self.error = e
                self.cond.notify_all()


def _attach(mm, slot, slot_bytes: int, clip, layout, free: deque):
    """The clip with numpy views into its slot; the slot goes back to ``free`` with the last view."""
    if slot is None:
        return clip
    if layout is None:          # did not fit: it came pickled
        free.append(slot)
        return clip
    owner = np.frombuffer(mm, np.uint8, slot_bytes, slot * slot_bytes)
    weakref.finalize(owner, free.append, slot)
    arrays = {}
    for name, dt, shape, o in layout:
        dtype = np.dtype(dt)
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        arrays[name] = owner[o:o + nbytes].view(dtype).reshape(shape)
    return dataclasses.replace(clip, **arrays)


def _shutdown(procs, conns, tasks) -> None:
    for _ in procs:
        tasks.put(None)
    deadline = time.monotonic() + 2.0     # idle workers exit at once; busy ones get 2 s in all
    for p in procs:
        p.join(timeout=max(0.0, deadline - time.monotonic()))
    for p in procs:
        if p.is_alive():
            p.kill()
            p.join(timeout=2.0)
    tasks.cancel_join_thread()
    tasks.close()
    for c in conns:
        c.close()
