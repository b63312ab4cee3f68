"""Training throughput: our in-memory trainer vs a standard per-item Dataset + DataLoader.

A synthetic embedding cache shaped like VoxCeleb2-dev (1,092,009 clips, 5,994
identities, 192-d audio segments and 512-d face frames, 8 steps each, float16) is
written with ``pipeline.cache.create_cache`` (the real Zarr store), scaled by
``--scale`` (clip count only; the 5,994 identities and all sizes are kept, so the
per-clip cost, classifier included, is the real one). Then, per head (``mlp``,
``dca``), each in its own child process (so peak RSS is per measurement):

* ``ours``: ``fusion.trainer.train_head(cache, head, epochs=1)``: load the split
  into memory once, one epoch of index-permutation batches. Reported: load time,
  epoch time, clips/s, peak RSS (and peak CUDA memory on a GPU).
* ``dataloader-cache``: the standard way: a map-style ``Dataset`` whose
  ``__getitem__`` reads one row from the same cache (``EmbeddingCache.array(name)[row]``
  per array) and a ``torch.utils.data.DataLoader`` (shuffle, default collate,
  ``--workers`` processes) feeding the *same* training step (same head, loss,
  optimiser, masking). ``--naive-batches`` batches are timed after 2 warm-up
  batches and the epoch time is extrapolated: ``per_batch * ceil(N / batch)``.
* ``dataloader-memory``: the same per-item Dataset + DataLoader, but over the
  in-memory numpy arrays (no I/O per item): isolates the per-item + collate cost.

Ratio = extrapolated DataLoader epoch time / our measured epoch time (load excluded;
the ratio with our load time included is printed too). The *data path* alone (an
epoch of batches gathered, cast and masked, no model step) is timed for each way
too: on a CPU the model step (AAM-softmax over 5,994 classes included) can dominate
an epoch, and the data-path ratio shows what the in-memory design itself removes. Numbers go to stdout and to
``--json`` (default ``benchmarks/train_speed.json``).

Usage::

    python benchmarks/train_speed.py                  # 1/10 scale (109,201 clips) on CPU
    python benchmarks/train_speed.py --scale 1        # full VoxCeleb2-dev scale (~12 GB store)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

VOX2_CLIPS, VOX2_IDS = 1_092_009, 5_994


# ----------------------------------------------------------------- the cache
def make_cache(path: Path, n: int, n_ids: int, da: int, dv: int, steps: int, shard: int, seed: int = 0):
    """Write (or reuse) a synthetic cache: identity prototypes + clip and step noise, float16."""
    from tqdm import tqdm

    from pipeline.cache.layout import CacheLayout
    from pipeline.cache.reader import open_cache
    from pipeline.cache.writer import create_cache

    prov = {"avfuse_version": "bench", "manifest_fingerprint": f"synthetic-{n}-{n_ids}-{seed}",
            "audio_backbone": {"name": "synthetic", "dim": da}, "face_backbone": {"name": "synthetic", "dim": dv},
            "config": {"steps": steps, "benchmark": "train_speed"}}
    layout = CacheLayout(audio_dim=da, face_dim=dv, segments=steps, frames=steps, dtype="float16", shard_size=shard)
    rng = np.random.default_rng(seed)
    labels = np.sort(rng.integers(0, n_ids, n))
    labels[:n_ids] = np.arange(n_ids)          # every identity present
    labels.sort()
    ids = np.array([f"id{k:05d}/v{i % 7:011d}/{i:07d}" for i, k in enumerate(labels)])
    speakers = np.array([f"id{k:05d}" for k in labels])
    w = create_cache(path, ids=ids, speakers=speakers, splits=np.full(n, "train"), layout=layout, provenance=prov)
    pending = w.pending_shards()
    if not pending:
        return open_cache(path)
    pa = rng.standard_normal((n_ids, da), dtype=np.float32)
    pv = rng.standard_normal((n_ids, dv), dtype=np.float32)
    for k in tqdm(pending, desc="write synthetic cache", unit="shard"):
        s = w.shard_slice(k)
        m = s.stop - s.start
        r = np.random.default_rng([seed, k])
        lab = labels[s]
        a_seq = pa[lab][:, None] + r.standard_normal((m, 1, da), dtype=np.float32) \
            + 0.5 * r.standard_normal((m, steps, da), dtype=np.float32)
        v_seq = pv[lab][:, None] + r.standard_normal((m, 1, dv), dtype=np.float32) \
            + 0.5 * r.standard_normal((m, steps, dv), dtype=np.float32)
        has_a = r.random(m) > 0.01
        has_v = r.random(m) > 0.05
        has_a |= ~has_v
        w.write_shard(k, {
            "audio/clip": a_seq.mean(1), "audio/segments": a_seq, "audio/segment_valid": np.ones((m, steps), bool),
            "face/frames": v_seq, "face/frame_valid": np.ones((m, steps), bool), "face/clip": v_seq.mean(1),
            "has_audio": has_a, "has_face": has_v, "duration": np.full(m, 8.0, np.float32)})
    w.finalize()
    return open_cache(path)


# --------------------------------------------------------------- the phases
def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def phase_ours(args) -> dict:
    import torch

    from fusion.trainer import TrainConfig
    from pipeline.cache.reader import open_cache
    from pipeline.train.run import train_head

    cache = open_cache(args.cache)
    cfg = TrainConfig(epochs=1, batch_size=args.batch_size, device=args.device, mask_prob=0.3,
                      optimizer="adamw", grad_clip=5.0)   # the same steps as the naive loop's, whatever the head
    t0 = time.perf_counter()
    from fusion.registry import get_head
    from pipeline.train.data import load_split
    batch, labels, _ = load_split(cache, "train", get_head(args.head).needs_sequences, device=args.device)
    load_s = time.perf_counter() - t0
    # warm-up (first-call kernel/allocator set-up), as the DataLoader runs get 2 warm-up batches
    warm = torch.arange(min(len(batch), 2 * args.batch_size), device=batch.device)
    t_w = time.perf_counter()
    train_head((batch[warm], labels[warm]), args.head, cfg, progress=False)
    warm_s = time.perf_counter() - t_w
    t1 = time.perf_counter()
    _, hist = train_head((batch, labels), args.head, cfg, progress=not args.quiet)
    total = time.perf_counter() - t1
    # the data path alone: one epoch of batches (permute, gather, cast, mask), no model
    from fusion.trainer import _mask_modalities
    gen = torch.Generator(device=batch.device).manual_seed(0)
    t2 = time.perf_counter()
    perm = torch.randperm(len(batch), generator=gen, device=batch.device)
    for s in range(0, len(batch), args.batch_size):
        idx = perm[s:s + args.batch_size]
        _mb = _mask_modalities(batch[idx].float(), 0.3, gen)
        _y = labels.index_select(0, idx)
    if batch.device.type == "cuda":
        torch.cuda.synchronize()
    data_s = time.perf_counter() - t2
    out = {"load_s": load_s, "warmup_s": warm_s, "epoch_s": hist[0]["seconds"], "train_call_s": total,
           "data_path_epoch_s": data_s,
           "clips_per_s": hist[0]["clips_per_s"], "n": len(batch), "in_memory_gb": batch.nbytes() / 1e9,
           "peak_rss_mb": peak_rss_mb(), "loss": hist[0]["loss"]}
    if torch.cuda.is_available() and str(args.device) != "cpu":
        out["peak_cuda_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out


class CacheItems:
    """Map-style Dataset: one cache row per item (the standard PyTorch way)."""

    def __init__(self, path: str, rows: np.ndarray, labels: np.ndarray, seq: bool):
        self.path, self.rows, self.labels, self.seq = path, rows, labels, seq
        self.cache = None

    def __len__(self) -> int:
        return len(self.rows)

    def _arrays(self):
        names = ["audio/clip", "face/clip", "has_audio", "has_face"]
        if self.seq:
            names += ["audio/segments", "audio/segment_valid", "face/frames", "face/frame_valid"]
        return names

    def __getitem__(self, i: int) -> dict:
        if self.cache is None:          # opened lazily: once per DataLoader worker
            from pipeline.cache.reader import open_cache
            self.cache = open_cache(self.path)
        r = int(self.rows[i])
        item = {name: np.asarray(self.cache.array(name)[r:r + 1])[0] for name in self._arrays()}
        item["label"] = int(self.labels[i])
        return item


class MemoryItems(CacheItems):
    """The same per-item Dataset over in-memory numpy arrays (no I/O per item)."""

    def __init__(self, arrays: dict, labels: np.ndarray, seq: bool):
        self.arrays, self.labels, self.seq = arrays, labels, seq
        self.rows = np.arange(len(labels))

    def __getitem__(self, i: int) -> dict:
        item = {name: self.arrays[name][i] for name in self._arrays()}
        item["label"] = int(self.labels[i])
        return item


FIELD = {"audio/clip": "audio_clip", "face/clip": "face_clip", "has_audio": "has_audio", "has_face": "has_face",
         "audio/segments": "audio_seq", "audio/segment_valid": "audio_seq_valid", "face/frames": "face_seq",
         "face/frame_valid": "face_seq_valid"}


def phase_naive(args, source: str) -> dict:
    import torch
    from torch.utils.data import DataLoader

    from fusion.batch import EmbeddingBatch, resolve_device
    from fusion.losses import make_loss
    from fusion.registry import get_head
    from fusion.trainer import TrainConfig, _mask_modalities, build_for_training, resolve_config
    from pipeline.cache.reader import open_cache

    cache = open_cache(args.cache)
    entry = get_head(args.head)
    rows = cache.split_rows("train")
    labels = np.unique(cache.speakers[rows], return_inverse=True)[1]
    if source == "cache":
        ds = CacheItems(str(cache.path), rows, labels, entry.needs_sequences)
        workers = args.workers
    else:
        names = CacheItems("", rows, labels, entry.needs_sequences)._arrays()
        arrays = {nm: cache.to_numpy(nm, None, dtype=None) for nm in names}
        ds = MemoryItems(arrays, labels, entry.needs_sequences)
        workers = 0
    dev = resolve_device(args.device)
    cfg = resolve_config(TrainConfig(epochs=1, batch_size=args.batch_size, mask_prob=0.3, optimizer="adamw",
                                     grad_clip=5.0), args.head)
    torch.manual_seed(0)
    head = build_for_training(args.head, cfg, cache.layout.audio_dim, cache.layout.face_dim).to(dev).train()
    loss_fn = make_loss("aam", head.embedding_dim, int(labels.max()) + 1, head.default_margin,
                        head.default_scale).to(dev)
    params = list(head.parameters()) + list(loss_fn.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)   # as the trainer's
    gen = torch.Generator(device=dev).manual_seed(0)
    loader = DataLoader(ds, batch_size=args.batch_size, shuffle=True, num_workers=workers,
                        persistent_workers=workers > 0, drop_last=True)
    use_amp = dev.type == "cuda"
    # the data path alone: batches from the DataLoader to float tensors on the device, no model
    it = iter(loader)
    t_prev = time.perf_counter()
    data_times = []
    for b in range(args.naive_batches + 2):
        item = next(it)
        y = item.pop("label").to(dev)
        mb = _mask_modalities(EmbeddingBatch(**{FIELD[k]: v.to(dev) for k, v in item.items()}).float(),
                              cfg.mask_prob, gen)
        now = time.perf_counter()
        if b >= 2:
            data_times.append(now - t_prev)
        t_prev = now
    it = iter(loader)
    times = []
    t_prev = time.perf_counter()
    for b in range(args.naive_batches + 2):
        item = next(it)
        y = item.pop("label").to(dev)
        mb = EmbeddingBatch(**{FIELD[k]: v.to(dev) for k, v in item.items()}).float()
        mb = _mask_modalities(mb, cfg.mask_prob, gen)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=use_amp):
            losses = [loss_fn(emb[r], y[r])[0] for _v, emb, r in head.train_views(mb)]
            loss = torch.stack(losses).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        opt.step()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        now = time.perf_counter()
        if b >= 2:
            times.append(now - t_prev)
        t_prev = now
    per_batch = float(np.mean(times))
    n_batches = math.ceil(len(ds) / args.batch_size)
    data_per_batch = float(np.mean(data_times))
    return {"per_batch_s": per_batch, "timed_batches": len(times), "epoch_batches": n_batches,
            "data_path_per_batch_s": data_per_batch, "data_path_epoch_s_extrapolated": data_per_batch * n_batches,
            "epoch_s_extrapolated": per_batch * n_batches, "clips_per_s": args.batch_size / per_batch,
            "workers": workers, "peak_rss_mb": peak_rss_mb()}


# ---------------------------------------------------------------------- main
def run_child(args, phase: str, head: str) -> dict:
    cmd = [sys.executable, __file__, "--phase", phase, "--head", head, "--cache", str(args.cache_path),
           "--batch-size", str(args.batch_size), "--naive-batches", str(args.naive_batches),
           "--workers", str(args.workers), "--device", args.device]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    if args.quiet:
        cmd.append("--quiet")
    res = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--scale", type=float, default=0.1, help="fraction of VoxCeleb2-dev's 1,092,009 clips")
    p.add_argument("--ids", type=int, default=VOX2_IDS)
    p.add_argument("--audio-dim", type=int, default=192)
    p.add_argument("--face-dim", type=int, default=512)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--shard-size", type=int, default=256, help="rows per shard (avfuse extract's default)")
    p.add_argument("--dir", default="/tmp/avfuse-train-speed", help="where the synthetic cache is kept (reused)")
    p.add_argument("--heads", default="mlp,dca")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--naive-batches", type=int, default=20, help="DataLoader batches timed (after 2 warm-up)")
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers for the cache-reading baseline")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=0, help="torch threads in the children (0: torch default)")
    p.add_argument("--json", default=str(REPO / "benchmarks" / "train_speed.json"))
    p.add_argument("--quiet", action="store_true")
    # child-process mode
    p.add_argument("--phase", choices=["ours", "dataloader-cache", "dataloader-memory"], help=argparse.SUPPRESS)
    p.add_argument("--head", help=argparse.SUPPRESS)
    p.add_argument("--cache", help=argparse.SUPPRESS)
    args = p.parse_args()

    if args.phase:
        import torch
        if args.threads:
            torch.set_num_threads(args.threads)
        if args.device == "auto":
            args.device = "cuda" if torch.cuda.is_available() else "cpu"
        out = phase_ours(args) if args.phase == "ours" else phase_naive(args, args.phase.split("-")[1])
        print(json.dumps(out))
        return

    n = int(round(VOX2_CLIPS * args.scale))
    path = Path(args.dir) / f"vox2dev-{n}x{args.ids}-{args.audio_dim}a{args.face_dim}v{args.steps}.zarr"
    args.cache_path = path
    t0 = time.perf_counter()
    make_cache(path, n, args.ids, args.audio_dim, args.face_dim, args.steps, args.shard_size)
    make_s = time.perf_counter() - t0
    import torch
    report = {"machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(),
                          "torch": torch.__version__, "threads": args.threads or torch.get_num_threads(),
                          "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
                          "loadavg_start": os.getloadavg()},
              "scale": args.scale, "clips": n, "identities": args.ids, "audio_dim": args.audio_dim,
              "face_dim": args.face_dim, "steps": args.steps, "batch_size": args.batch_size,
              "cache": str(path), "cache_gb_on_disk": sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 1e9,
              "cache_prepare_s": make_s, "heads": {}}
    for head in args.heads.split(","):
        r = {"ours": run_child(args, "ours", head),
             "dataloader_cache": run_child(args, "dataloader-cache", head),
             "dataloader_memory": run_child(args, "dataloader-memory", head)}
        ours = r["ours"]["epoch_s"]
        r["ratio_vs_dataloader_cache"] = r["dataloader_cache"]["epoch_s_extrapolated"] / ours
        r["ratio_vs_dataloader_cache_incl_load"] = (r["dataloader_cache"]["epoch_s_extrapolated"]
                                                   / (ours + r["ours"]["load_s"]))
        r["ratio_vs_dataloader_memory"] = r["dataloader_memory"]["epoch_s_extrapolated"] / ours
        r["data_path_ratio_vs_dataloader_cache"] = (r["dataloader_cache"]["data_path_epoch_s_extrapolated"]
                                                    / r["ours"]["data_path_epoch_s"])
        r["data_path_ratio_vs_dataloader_memory"] = (r["dataloader_memory"]["data_path_epoch_s_extrapolated"]
                                                     / r["ours"]["data_path_epoch_s"])
        r["full_vox2_epoch_s_extrapolated"] = ours * VOX2_CLIPS / n
        report["heads"][head] = r
        print(f"{head}: ours {ours:.1f} s/epoch ({r['ours']['clips_per_s']:.0f} clips/s, load "
              f"{r['ours']['load_s']:.1f} s, peak RSS {r['ours']['peak_rss_mb']:.0f} MB) | DataLoader on cache "
              f"{r['dataloader_cache']['epoch_s_extrapolated']:.0f} s/epoch (extrapolated from "
              f"{r['dataloader_cache']['timed_batches']} batches, {r['dataloader_cache']['clips_per_s']:.0f} clips/s, "
              f"peak RSS {r['dataloader_cache']['peak_rss_mb']:.0f} MB) -> {r['ratio_vs_dataloader_cache']:.1f}x "
              f"({r['ratio_vs_dataloader_cache_incl_load']:.1f}x incl. our load) | DataLoader in memory "
              f"{r['dataloader_memory']['epoch_s_extrapolated']:.0f} s/epoch -> "
              f"{r['ratio_vs_dataloader_memory']:.1f}x | full VoxCeleb2-dev epoch (ours, extrapolated) "
              f"{r['full_vox2_epoch_s_extrapolated']:.0f} s", flush=True)
        print(f"{head} data path only (no model): ours {r['ours']['data_path_epoch_s']:.2f} s/epoch | DataLoader "
              f"on cache {r['dataloader_cache']['data_path_epoch_s_extrapolated']:.0f} s -> "
              f"{r['data_path_ratio_vs_dataloader_cache']:.0f}x | DataLoader in memory "
              f"{r['dataloader_memory']['data_path_epoch_s_extrapolated']:.1f} s -> "
              f"{r['data_path_ratio_vs_dataloader_memory']:.0f}x", flush=True)
    report["machine"]["loadavg_end"] = os.getloadavg()
    Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
