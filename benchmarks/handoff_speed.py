"""Hand-off of decoded clips from decode worker processes to the main process: CPU per clip.

The main process feeds the backbones: its CPU per clip bounds extraction throughput, so what
it spends *receiving* a decoded clip matters. Measured here, in one run, for ``--clips``
decoded clips of VoxCeleb2 shape (8 x 3 x S x S uint8 faces, S = 112 as handed over today or
224 = the source size for ``--resize-on device``, plus 7.8 s of float32 audio at 16 kHz),
made up by the workers (no decoding: only the hand-off is timed):

* **pickle**: today's path before this change: a torch ``DataLoader`` whose workers return
  ``DecodedClip``s of numpy arrays, pickled through the result queue (a pipe);
* **torch shm**: the same ``DataLoader``, the workers return the arrays as torch tensors,
  which torch's multiprocessing moves to a shared-memory segment (``file_descriptor``
  strategy: the segment is unlinked at once, only its fd travels, through a
  ``multiprocessing.resource_sharer`` connection per segment); the parent maps it;
* **torch shm, packed**: the same with audio and faces packed into one tensor per clip (one
  segment, one fd instead of two);
* **shm ring**: ``pipeline.extract.shm_ring`` (what ``iter_decoded(backend="process")`` runs
  now): workers copy the arrays into slots of one anonymous shared mapping, the parent reads
  them as zero-copy views, a slot is free again when its views are dropped.

Parent CPU = ``time.process_time()`` of this process (all its threads, the queue feeder
included) per clip, including a *consume* step as ``embed`` does (concatenate faces of 8
clips, copy the audio), whose cost alone on in-process arrays is printed as the floor.
Worker CPU = ``resource.getrusage(RUSAGE_CHILDREN)`` after the workers exited (start-up
included). Best of ``--repeats``.

With ``--real N``: N VoxCeleb-format clips really decoded (``decode_clip``: audio + 8 faces)
inline, through the DataLoader with pickled clips and through the ring, CPU-ms per clip of the
main process and in all.

    python benchmarks/handoff_speed.py [--clips 200] [--workers 2] [--repeats 3] [--size 112 224] [--real 12]
                                       [--json FILE]
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import save_json  # noqa: E402
from pipeline.extract.decode_pool import DecodedClip  # noqa: E402
from pipeline.extract.shm_ring import iter_ring, slot_bytes_for, worker_init  # noqa: E402

AUDIO_SAMPLES = int(7.8 * 16000)


def make_clip(i: int, size: int) -> DecodedClip:
    rng = np.random.default_rng(i)
    faces = rng.integers(0, 256, (8, 3, size, size), dtype=np.uint8)
    audio = rng.standard_normal(AUDIO_SAMPLES, dtype=np.float32)
    return DecodedClip(clip_id=f"c{i}", audio=audio, faces=faces, face_valid=np.ones(8, bool), duration=7.8)


class _Clips:
    """Map-style dataset: item i = a clip of pre-made arrays (copied, as a decoder makes new ones)."""

    def __init__(self, n: int, size: int, mode: str):
        self.n, self.size, self.mode, self._base = n, size, mode, None

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        if self._base is None:
            self._base = make_clip(0, self.size)
        b = self._base
        c = DecodedClip(clip_id=f"c{i}", audio=b.audio.copy(), faces=b.faces.copy(), face_valid=b.face_valid.copy(),
                        duration=7.8)
        if self.mode == "torch":
            import torch
            c.audio, c.faces = torch.from_numpy(c.audio), torch.from_numpy(c.faces)
        elif self.mode == "packed":
            c = pack_clip(c)
        return c


def pack_clip(clip: DecodedClip):
    """The arrays of ``clip`` in one shared-memory torch tensor (one segment, one fd)."""
    import torch
    parts = [(k, getattr(clip, k)) for k in ("audio", "faces", "face_valid")]
    layout, off = [], 0
    for k, a in parts:
        layout.append((k, a.dtype.str, a.shape, off))
        off += -(-a.nbytes // 64) * 64
    buf = torch.empty(0, dtype=torch.uint8).set_(torch.UntypedStorage._new_shared(off))
    raw = buf.numpy()
    for (k, a), (_, _, _, o) in zip(parts, layout):
        raw[o:o + a.nbytes].view(a.dtype).reshape(a.shape)[...] = a
    return DecodedClip(clip_id=clip.clip_id, duration=clip.duration), buf, layout


def unpack_clip(item) -> DecodedClip:
    bare, buf, layout = item
    raw = buf.numpy()
    for k, dt, shape, o in layout:
        n = int(np.prod(shape)) * np.dtype(dt).itemsize
        setattr(bare, k, raw[o:o + n].view(dt).reshape(shape))
    return bare


def _identity(x):
    return x


def consume(clips: list) -> None:
    """What ``embed`` does with a batch: concatenate the faces, copy the audio."""
    np.concatenate([c.faces for c in clips])
    for c in clips:
        np.array(c.audio)


def parent_and_children_s(fn) -> tuple[float, float]:
    """``(CPU s of this process, CPU s of the children that ended meanwhile)`` of ``fn()``."""
    ch0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.process_time()
    fn()
    parent = time.process_time() - t0
    ch1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    return parent, (ch1.ru_utime + ch1.ru_stime) - (ch0.ru_utime + ch0.ru_stime)


def consume_in_batches(clips) -> None:
    """Hand the received clips to :func:`consume` 8 at a time, as ``extract`` batches them."""
    batch = []
    for c in clips:
        batch.append(c)
        if len(batch) == 8:
            consume(batch)
            batch = []


def _received(c, mode: str):
    if mode == "torch":
        c.audio, c.faces = c.audio.numpy(), c.faces.numpy()
    elif mode == "packed":
        c = unpack_clip(c)
    return c


def run_loader(n: int, size: int, mode: str, workers: int) -> tuple[float, float]:
    import torch.utils.data as tud

    def run() -> None:
        loader = tud.DataLoader(_Clips(n, size, mode), batch_size=None, num_workers=workers, collate_fn=_identity,
                                worker_init_fn=worker_init, prefetch_factor=16)
        consume_in_batches(_received(c, mode) for c in loader)

    parent, child = parent_and_children_s(run)
    return parent / n * 1e3, child / n * 1e3


# ----------------------------------------------------------------------------- the shm ring (production code)
_FAKE: dict[int, _Clips] = {}


def _fake_decode(i: int, size: int) -> DecodedClip:
    if size not in _FAKE:
        _FAKE[size] = _Clips(1, size, "numpy")
    return _FAKE[size][i]


def run_ring(n: int, size: int, workers: int) -> tuple[float, float]:
    """``pipeline.extract.shm_ring.iter_ring`` as ``iter_decoded`` runs it, the decoder replaced
    by the made-up clips; slots freed as the consumed batches are dropped."""
    parent, child = parent_and_children_s(lambda: consume_in_batches(
        iter_ring(list(range(n)), _fake_decode, size, num_workers=workers, prefetch=64,
                  slot_bytes=slot_bytes_for(16000, 8, size))))
    return parent / n * 1e3, child / n * 1e3


# ----------------------------------------------------------------------------- real media
class _Decode:
    """Map-style dataset: item i = ``decode_clip(records[i])`` (the DataLoader path before the ring)."""

    def __init__(self, records, spec):
        self.records, self.spec = records, spec

    def __len__(self):
        return len(self.records)

    def __getitem__(self, i):
        from pipeline.extract.decode_pool import decode_clip
        return decode_clip(self.records[i], self.spec)


def real_media(n_clips: int, workers: int, repeats: int, min_items: int = 96) -> dict:
    """CPU-ms per clip decoding VoxCeleb-format clips (audio + 8 faces at 112) inline, through
    the DataLoader with pickled clips (before) and through the ring (now): the main process's
    CPU and the total with the workers (their start-up included)."""
    import tempfile

    import torch.utils.data as tud

    from benchmarks.voxceleb_media import generate
    from data_manifests.manifest import read_manifest
    from pipeline.extract.decode_pool import DecodeSpec, decode_clip, iter_decoded
    tmp = tempfile.TemporaryDirectory(prefix="avfuse-handoff-")
    recs = read_manifest(generate(Path(tmp.name) / "vox2", kind="vox2", clips=n_clips, progress=False))
    recs = list(recs) * max(1, -(-min_items // len(recs)))
    spec = DecodeSpec(audio_sr=16000, face_size=112, frames=8)

    def inline():
        for r in recs:
            decode_clip(r, spec)

    def loader():
        dl = tud.DataLoader(_Decode(recs, spec), batch_size=None, num_workers=workers, collate_fn=_identity,
                            worker_init_fn=worker_init, prefetch_factor=max(2, 64 // workers))
        for _ in dl:
            pass

    def ring():
        for _ in iter_decoded(recs, spec, num_workers=workers, backend="process"):
            pass

    out = {"clips": len(recs), "distinct": n_clips, "workers": workers}
    best: dict = {}
    decode_clip(recs[0], spec)
    for _ in range(repeats):
        for name, fn in (("inline", inline), ("pickle (DataLoader)", loader), ("shm ring", ring)):
            p, c = parent_and_children_s(fn)
            prev = best.get(name, (np.inf, np.inf))
            best[name] = (min(prev[0], p / len(recs) * 1e3), min(prev[1], (p + c) / len(recs) * 1e3))
    out["parent_ms"] = {k: v[0] for k, v in best.items()}
    out["total_ms"] = {k: v[1] for k, v in best.items()}
    tmp.cleanup()
    return out


def floor_ms(n: int, size: int) -> float:
    clips = [make_clip(0, size)] * 8
    t0 = time.process_time()
    for _ in range(n // 8):
        consume(clips)
    return (time.process_time() - t0) / (n // 8 * 8) * 1e3


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clips", type=int, default=200)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--size", type=int, nargs="+", default=[112, 224], help="face side(s) handed over")
    ap.add_argument("--skip-ring", action="store_true")
    ap.add_argument("--real", type=int, default=0, help="also decode this many VoxCeleb-format clips (repeated to "
                                                        "96) inline, through the DataLoader and through the ring")
    ap.add_argument("--json")
    a = ap.parse_args(argv)
    import torch
    torch.set_num_threads(1)
    res = {"clips": a.clips, "workers": a.workers, "repeats": a.repeats,
           "machine": f"{os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}", "sizes": {}}
    for size in a.size:
        runs = {"pickle": lambda s=size: run_loader(a.clips, s, "numpy", a.workers),
                "torch shm": lambda s=size: run_loader(a.clips, s, "torch", a.workers),
                "torch shm, packed": lambda s=size: run_loader(a.clips, s, "packed", a.workers)}
        if not a.skip_ring:
            runs["shm ring"] = lambda s=size: run_ring(a.clips, s, a.workers)
        best = {k: (float("inf"), float("inf")) for k in runs}
        for _ in range(a.repeats):      # interleaved, so that load changes hit every variant alike
            for k, fn in runs.items():
                p, c = fn()
                best[k] = (min(best[k][0], p), min(best[k][1], c))
        mb = (8 * 3 * size * size + 4 * AUDIO_SAMPLES) / 1e6
        res["sizes"][size] = {"mb_per_clip": mb, "consume_floor_ms": floor_ms(a.clips, size),
                              "parent_ms": {k: v[0] for k, v in best.items()},
                              "workers_ms": {k: v[1] for k, v in best.items()}}
    if a.real:
        res["real_media"] = real_media(a.real, a.workers, a.repeats)
    report(res)
    save_json(a.json, res)
    return res


def report(res: dict) -> None:
    print(f"\n{res['clips']} clips, {res['workers']} workers, best of {res['repeats']}; {res['machine']}")
    print("\n| faces | MB/clip | path | parent CPU-ms/clip | parent vs pickle | workers CPU-ms/clip |")
    print("| --- | --- | --- | --- | --- | --- |")
    for size, r in res["sizes"].items():
        base = r["parent_ms"]["pickle"]
        print(f"| {size} | {r['mb_per_clip']:.2f} | consume only (floor) | {r['consume_floor_ms']:.3f} | | |")
        for k, p in r["parent_ms"].items():
            print(f"| {size} | {r['mb_per_clip']:.2f} | {k} | {p:.3f} | x{base / max(p, 1e-9):.2f} less | "
                  f"{r['workers_ms'][k]:.3f} |")
    if "real_media" in res:
        r = res["real_media"]
        print(f"\nreal media: {r['distinct']} VoxCeleb2-format clips x {r['clips'] // r['distinct']}, audio + 8 faces "
              f"at 112, {r['workers']} workers\n| path | main process CPU-ms/clip | main + workers CPU-ms/clip |\n"
              "| --- | --- | --- |")
        for k in r["parent_ms"]:
            print(f"| {k} | {r['parent_ms'][k]:.2f} | {r['total_ms'][k]:.1f} |")


if __name__ == "__main__":
    main()
