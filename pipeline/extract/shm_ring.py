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
import itertools
import mmap
import os
import threading
import time
import traceback
import weakref
from collections import deque
from typing import Any, Callable, Iterator, Sequence

import numpy as np

__all__ = ["RingPool", "iter_ring", "in_ring", "available", "worker_init", "die_with_parent", "slot_bytes_for", "FIELDS"]

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
        task = tasks.get()
        if task is None:
            break
        job, i, rec, slot = task
        try:
            clip = decode(rec, spec)
            layout = _write(mm, slot * slot_bytes, slot_bytes, clip) if slot is not None else None
            if layout is not None:
                clip = dataclasses.replace(clip, **{name: None for name, *_ in layout})
            conn.send((job, i, slot, clip, layout, None))
        except BaseException:
            conn.send((job, i, slot, None, None, traceback.format_exc(limit=8)))
    conn.close()


def iter_ring(records: Sequence, decode: Callable, spec: Any, *, num_workers: int, prefetch: int,
              slot_bytes: int, slots: int | None = None) -> Iterator:
    """``decode(records[i], spec)`` for every i, in order, from ``num_workers`` forked worker
    processes, the arrays handed over in a ring of ``slots`` shared slots of ``slot_bytes``
    (default ``min(len(records), 2 * prefetch)``: the consumer may hold a shard while the next
    one is decoded): a :class:`RingPool` for this one iteration. See the module docstring."""
    n = len(records)
    prefetch = max(1, prefetch)
    pool = RingPool(decode, spec, num_workers=num_workers, slot_bytes=slot_bytes,
                    slots=max(1, min(n, 2 * prefetch) if slots is None else slots))
    try:
        yield from pool.imap(records, prefetch)
    finally:
        pool.close()


class _Job:
    def __init__(self, records: Sequence):
        self.records = records
        self.ready: dict[int, Any] = {}
        self.error: BaseException | None = None


class RingPool:
    """Forked decode workers and one ring of shared slots, kept across iterations (``imap``), which
    may run in several threads at once (a Dask worker's concurrent shard tasks: forking workers and
    mapping a fresh ring per shard cost more there than the decoding). ``close`` ends it; a worker
    that dies breaks it for every iteration (make a new one).

    A receiver thread reads the workers' pipes as results arrive, also while the consumers are busy:
    a worker whose clip travels pickled (bigger than a slot) would otherwise block on its send until
    its consumer came back for more, and with it the decoding ahead (issue 15: on the GPU box, 12 of
    14 workers sat blocked behind the ~5 % of VoxCeleb2 clips longer than 20 s)."""

    def __init__(self, decode: Callable, spec: Any, *, num_workers: int, slots: int, slot_bytes: int):
        import multiprocessing as mp
        ctx = mp.get_context("fork")
        self.spec, self.num_workers, self.slot_bytes = spec, num_workers, slot_bytes
        self.mm = mmap.mmap(-1, max(1, slots) * slot_bytes)
        self.free: deque[int] = deque(range(max(1, slots)))
        self.tasks = ctx.Queue()
        self.procs, self.conns = [], []
        for w in range(max(1, num_workers)):
            r, s = ctx.Pipe(duplex=False)
            p = ctx.Process(target=_worker, args=(w, self.mm, slot_bytes, self.tasks, s, decode, spec), daemon=True,
                            name=f"avfuse-decode-{w}")
            p.start()
            s.close()
            self.procs.append(p)
            self.conns.append(r)
        self.cond = threading.Condition()
        self.jobs: dict[int, _Job] = {}
        self.broken: BaseException | None = None
        self._ids = itertools.count()
        self._halt = threading.Event()
        self._rx = threading.Thread(target=self._receive, name="avfuse-ring-receiver", daemon=True)
        self._rx.start()      # after the forks: no thread of ours is copied into a worker

    def imap(self, records: Sequence, prefetch: int) -> Iterator:
        """``decode(records[i], spec)`` in order, at most ``prefetch`` rows handed out ahead of the consumer."""
        job, st = next(self._ids), _Job(records)
        with self.cond:
            if self.broken is not None:
                raise self.broken
            self.jobs[job] = st
        n, prefetch, sent, done = len(records), max(1, prefetch), 0, 0
        try:
            while done < n:
                while sent < n and sent - done < prefetch:
                    self.tasks.put((job, sent, records[sent], self.free.popleft() if self.free else None))
                    sent += 1
                with self.cond:
                    while done not in st.ready and st.error is None and self.broken is None:
                        self.cond.wait()
                    if done not in st.ready:
                        raise st.error or self.broken
                    clip = st.ready.pop(done)
                yield clip
                done += 1
        finally:
            with self.cond:            # results still on their way: the receiver frees their slots
                self.jobs.pop(job, None)

    def _receive(self) -> None:
        from multiprocessing.connection import wait
        try:
            while not self._halt.is_set():
                live = [c for c in self.conns if not c.closed]
                got = wait(live + [p.sentinel for p in self.procs], timeout=0.2)
                msgs = [c for c in live if c in got]
                for c in msgs:
                    try:
                        while c.poll():
                            self._deliver(*c.recv())
                    except EOFError:    # its worker is gone: the sentinel says how, below
                        c.close()
                if got and not msgs and not self._halt.is_set():
                    dead = next(p for p in self.procs if p.sentinel in got)
                    dead.join(timeout=2.0)
                    raise RuntimeError(f"decode worker (pid {dead.pid}) exited unexpectedly "
                                       f"(exit code {dead.exitcode}; a negative code is the signal)")
        except BaseException as e:
            with self.cond:
                self.broken = e
                self.cond.notify_all()

    def _deliver(self, job: int, i: int, slot, clip, layout, err) -> None:
        with self.cond:
            st = self.jobs.get(job)
            if st is None or err is not None:
                if slot is not None:        # a finished consumer's, or a failed decode's slot
                    self.free.append(slot)
                if st is not None:
                    rec = st.records[i]
                    st.error = RuntimeError(f"decode worker failed on row {i} ({getattr(rec, 'clip_id', i)}):\n{err}")
                    self.cond.notify_all()
                return
            st.ready[i] = _attach(self.mm, slot, self.slot_bytes, clip, layout, self.free)
            self.cond.notify_all()

    def close(self) -> None:
        """Stop the workers; an iteration still running raises instead of waiting for them. Idempotent."""
        if self._halt.is_set():
            return
        self._halt.set()
        self._rx.join(timeout=5.0)
        with self.cond:
            self.broken = self.broken or RuntimeError("the decode pool was closed")
            self.cond.notify_all()
        _shutdown(self.procs, self.conns, self.tasks)

    def __enter__(self) -> "RingPool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


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
