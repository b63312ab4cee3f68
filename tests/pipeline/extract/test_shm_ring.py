"""The shared-memory hand-off of decoded clips (``pipeline.extract.shm_ring``) on real media:
VoxCeleb-format clips mixed with missing, empty and truncated files, decoded by real worker
processes; order, arrays and failure records must be those of the inline decode, slots must
be reused only once the consumer dropped a clip, nothing may be left in /dev/shm, and a worker
that dies or raises must end the iteration with an error."""

from __future__ import annotations

import gc
import multiprocessing as mp
import os
import time
from pathlib import Path

import numpy as np
import pytest

from benchmarks.voxceleb_media import generate
from data_manifests.manifest import ClipRecord, read_manifest
from pipeline.extract.decode_pool import DecodeSpec, decode_clip, iter_decoded
from pipeline.extract.shm_ring import in_ring, iter_ring, slot_bytes_for

pytestmark = pytest.mark.usefixtures("one_thread")
SPEC = DecodeSpec(audio_sr=16000, face_size=112, frames=4)


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    root = tmp_path_factory.mktemp("ring")
    good = read_manifest(generate(root / "good", kind="vox2", durations=[0.6, 1.0, 1.4, 0.8], progress=False))
    bad = root / "bad"
    bad.mkdir()
    (bad / "empty.mp4").write_bytes(b"")
    data = Path(good[2].video_path).read_bytes()
    (bad / "cut.mp4").write_bytes(data[: len(data) // 2])

    def rec(name, **kw):
        return ClipRecord(clip_id=f"idbad/v/{name}", speaker="idbad", video="v", **kw)

    bads = [rec("missing", audio_path=str(bad / "gone.m4a"), video_path=str(bad / "gone.mp4")),
            rec("empty", audio_path=good[0].audio_path, video_path=str(bad / "empty.mp4")),
            rec("truncated", video_path=str(bad / "cut.mp4"))]
    return good[:2] + bads[:2] + good[2:] + bads[2:]


_in_ring = in_ring     # a view into the ring's shared mapping, not an unpickled copy


def _same(a, b) -> None:
    assert a.clip_id == b.clip_id and a.failures == b.failures and a.duration == b.duration
    for k in ("audio", "faces", "face_valid"):
        x, y = getattr(a, k), getattr(b, k)
        assert (x is None) == (y is None), (a.clip_id, k)
        if x is not None:
            assert x.dtype == y.dtype and np.array_equal(x, y), (a.clip_id, k)


def test_order_arrays_and_failures_as_inline(records):
    inline = [decode_clip(r, SPEC) for r in records]
    assert sum(bool(d.failures) for d in inline) == 3     # the bad files fail, with records
    got = list(iter_decoded(records, SPEC, num_workers=2, backend="process", prefetch=3))
    assert [d.clip_id for d in got] == [r.clip_id for r in records]
    for a, b in zip(got, inline):
        _same(a, b)
    shared = [d for d in got if d.faces is not None]
    assert shared and all(_in_ring(d.faces) and _in_ring(d.audio) for d in shared)   # views into the ring, not copies


def test_device_resize_hands_over_the_source_size(records):
    spec = DecodeSpec(audio_sr=16000, face_size=112, frames=4, resize_on="device")
    got = list(iter_decoded(records, spec, num_workers=2, backend="process"))
    faces = [d.faces for d in got if d.faces is not None]
    assert faces and all(f.shape == (4, 3, 224, 224) for f in faces)
    for d, r in zip(got, records):
        if d.faces is not None:
            _same(d, decode_clip(r, spec))


def test_slots_reused_only_after_the_consumer_drops_a_clip(records):
    """Two slots for 7 clips: held clips keep their slots (the rest travel pickled), dropped
    clips give theirs back; every clip stays intact whatever the consumer holds."""
    inline = [decode_clip(r, SPEC) for r in records]
    sb = slot_bytes_for(16000, 4, 112)
    held = list(iter_ring(records, decode_clip, SPEC, num_workers=2, prefetch=2, slot_bytes=sb, slots=2))
    for a, b in zip(held, inline):
        _same(a, b)
    assert 1 <= sum(_in_ring(d.audio) for d in held if d.audio is not None) <= 2
    del held
    gc.collect()
    views = 0
    for k, d in enumerate(iter_ring(records * 3, decode_clip, SPEC, num_workers=2, prefetch=2, slot_bytes=sb,
                                    slots=2)):
        _same(d, inline[k % len(records)])
        views += d.audio is not None and _in_ring(d.audio)
    assert views >= 12          # dropped at once: nearly every clip came through a slot
    small = list(iter_ring(records, decode_clip, SPEC, num_workers=1, prefetch=2, slot_bytes=4096, slots=2))
    for a, b in zip(small, inline):   # nothing fits: every clip travels pickled, same arrays
        _same(a, b)
        assert a.audio is None or not _in_ring(a.audio)


def _shm_names() -> set[str]:
    return set(os.listdir("/dev/shm")) if os.path.isdir("/dev/shm") else set()


def test_nothing_left_in_dev_shm_after_end_exception_or_close(records):
    before = _shm_names()
    list(iter_decoded(records, SPEC, num_workers=2, backend="process"))
    with pytest.raises(ZeroDivisionError):
        for k, _ in enumerate(iter_decoded(records, SPEC, num_workers=2, backend="process")):
            if k == 2:
                raise ZeroDivisionError("the consumer fails")
    it = iter_decoded(records, SPEC, num_workers=2, backend="process")
    next(it)
    it.close()
    deadline = time.monotonic() + 5
    while mp.active_children() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not mp.active_children()             # the workers are gone after every kind of end
    new = _shm_names() - before
    time.sleep(0.5)
    assert not (new & _shm_names()), new        # (entries of other processes on the box come and go)


def _dies_on_row_3(i, spec):
    if i == 3:
        os._exit(7)
    return decode_clip(spec[0], spec[1])


def _raises_on_row_2(i, spec):
    if i == 2:
        raise MemoryError("made up")
    return decode_clip(spec[0], spec[1])


def test_a_dead_or_raising_worker_ends_the_iteration(records):
    sb = slot_bytes_for(16000, 4, 112)
    with pytest.raises(RuntimeError, match="exited unexpectedly .*exit code 7"):
        list(iter_ring(list(range(6)), _dies_on_row_3, (records[0], SPEC), num_workers=2, prefetch=2, slot_bytes=sb))
    with pytest.raises(RuntimeError, match="(?s)row 2.*MemoryError: made up"):
        list(iter_ring(list(range(6)), _raises_on_row_2, (records[0], SPEC), num_workers=2, prefetch=2,
                       slot_bytes=sb))
    assert not mp.active_children() or all(not p.is_alive() for p in mp.active_children())


def _big_with_marker(i, marks):
    """A clip far bigger than a pipe's buffer (it travels pickled), leaving a marker once decoded."""
    from pipeline.extract.decode_pool import DecodedClip
    out = DecodedClip(clip_id=str(i), audio=np.full(2_000_000, i, np.float32))
    (Path(marks) / str(i)).touch()
    return out


def test_workers_go_on_decoding_while_the_consumer_is_away(tmp_path):
    """A clip that travels pickled must not stall its worker until the consumer asks for more
    (it sat blocked on its send before; on the GPU box most workers did, behind the clips
    longer than a slot, while the main process embedded): the receiver thread takes it."""
    it = iter_ring(list(range(8)), _big_with_marker, str(tmp_path), num_workers=2, prefetch=8, slot_bytes=4096)
    first = next(it)                       # the consumer takes one clip, then is busy elsewhere
    assert first.clip_id == "0" and not _in_ring(first.audio)
    deadline = time.monotonic() + 60
    while len(list(tmp_path.iterdir())) < 8 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(list(tmp_path.iterdir())) == 8      # all decoded meanwhile, by 2 workers
    rest = list(it)
    assert [d.clip_id for d in rest] == [str(i) for i in range(1, 8)]
    assert all(float(d.audio[0]) == int(d.clip_id) for d in rest)


def test_one_pool_serves_iterations_from_several_threads_and_abandoned_ones(records):
    """A Dask worker keeps one RingPool for all its shard tasks, two of which run at once: each
    iteration gets its own clips in its own order, and one its consumer leaves early gives its
    slots back once the results still on their way have come in."""
    import threading

    from pipeline.extract.shm_ring import RingPool
    inline = [decode_clip(r, SPEC) for r in records]
    sb = slot_bytes_for(16000, 4, 112)
    with RingPool(decode_clip, SPEC, num_workers=2, slots=6, slot_bytes=sb) as pool:
        got: dict[int, list] = {}

        def consume(k: int, recs) -> None:
            got[k] = list(pool.imap(recs, prefetch=3))

        threads = [threading.Thread(target=consume, args=(k, records[::-1] if k else records)) for k in (0, 1)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        for a, b in zip(got[0], inline):
            _same(a, b)
        for a, b in zip(got[1], inline[::-1]):
            _same(a, b)
        got.clear()                                 # the clips go: their slots come back
        it = pool.imap(records * 2, prefetch=5)
        next(it)
        it.close()                                  # abandoned with clips still being decoded
        gc.collect()
        deadline = time.monotonic() + 30
        while len(pool.free) < 6 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert sorted(pool.free) == list(range(6))  # every slot back, none twice
        for a, b in zip(pool.imap(records, prefetch=2), inline):
            _same(a, b)


def _slow(i, _):
    time.sleep(0.2)
    from pipeline.extract.decode_pool import DecodedClip
    return DecodedClip(clip_id=str(i))


def test_closing_a_pool_ends_an_iteration_still_running_with_an_error():
    """Closed under an iteration (another run replacing it, free_models at a run's end), a pool
    must not leave its consumer waiting forever for decoders that are gone."""
    import threading

    from pipeline.extract.shm_ring import RingPool
    pool = RingPool(_slow, None, num_workers=1, slots=2, slot_bytes=4096)
    err: list = []

    def consume() -> None:
        try:
            list(pool.imap(list(range(50)), prefetch=4))
        except RuntimeError as e:
            err.append(e)

    t = threading.Thread(target=consume)
    t.start()
    time.sleep(0.5)
    pool.close()
    t.join(timeout=30)
    assert not t.is_alive() and err and "closed" in str(err[0])
