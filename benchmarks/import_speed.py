"""Import speed: `avfuse cache import` of VoxCeleb2-dev-sized audio embeddings from a Kaldi
ark/scp vs the naive way (a Python loop of per-utterance reads and writes), same run.

Builds a Kaldi ark + scp of ``--rows`` x ``--dim`` float32 vectors (default 1,092,009 x 192,
the VoxCeleb2 dev set with ECAPA-sized embeddings; keys = the real VoxCeleb2 dev ids from
``../shared/voxceleb/vox2_dev_duration.txt.gz`` in the WeSpeaker form
``id00012/21Uxsk56VDQ/00001.wav``) with the vectorised writer, then

* fast: ``pipeline.cache_import.import_cache`` into a Zarr cache (float16, 16384-row
  shards): scp parsed at once, records gathered with numpy from the memory-mapped ark,
  ids normalised vectorised, checksums, whole-shard writes;
* naive: ``kaldiio.load_scp_sequential`` + ``normalize_id`` per utterance and one
  ``zarr_array[row] = vector`` per utterance into a Zarr array chunked like an avfuse cache
  (256 rows), on the first ``--naive-rows`` utterances, extrapolated linearly to ``--rows``.

Both read an ark that was just written (page cache): this measures CPU, not disk.
Process CPU time (``time.process_time``, all threads) and wall time are printed, with
the ratio naive / fast, and saved to ``--json``. A sample of rows is read back and
compared with the source (float16 tolerance).

    python benchmarks/import_speed.py [--rows 1092009] [--dim 192] [--naive-rows 3000] [--json FILE]
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

VOX2_DEV = Path(__file__).resolve().parents[2] / "shared" / "voxceleb" / "vox2_dev_duration.txt.gz"


def vox2_keys(n: int) -> np.ndarray:
    path = Path(os.environ.get("AVFUSE_SHARED", VOX2_DEV.parents[1])) / "voxceleb" / VOX2_DEV.name
    if path.is_file():
        with gzip.open(path, "rb") as f:
            ids = np.array(f.read().split()[0::2][:n]).astype(str)
        if len(ids) >= n:
            return np.strings.add(ids, ".wav")
    return np.array([f"id{i // 200:05d}/vid{(i // 10) % 20:08d}/{i % 10 + 1:05d}.wav" for i in range(n)])


def timed(fn):
    w0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - w0, time.process_time() - c0


def naive_import(scp: Path, out: Path, n_total: int, dim: int, limit: int) -> int:
    """The loop a short script would write: read each utterance, normalise its id, write its row."""
    import kaldiio
    import zarr

    from data_manifests.ids import normalize_id
    arr = zarr.create_array(str(out), shape=(n_total, dim), chunks=(256, dim), dtype="float16", fill_value=0)
    done = 0
    for i, (key, vec) in enumerate(kaldiio.load_scp_sequential(str(scp))):
        if i >= limit:
            break
        normalize_id(key)
        arr[i] = np.asarray(vec, dtype=np.float16)
        done += 1
    return done


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=1_092_009)
    ap.add_argument("--dim", type=int, default=192)
    ap.add_argument("--naive-rows", type=int, default=3000)
    ap.add_argument("--workdir", type=Path, default=None, help="scratch folder (default: a temp dir)")
    ap.add_argument("--json", type=Path, default=Path(__file__).with_suffix(".json"))
    args = ap.parse_args()

    from pipeline.cache.importer import import_cache
    from pipeline.cache.kaldi_ark import write_ark_scp
    from pipeline.cache.reader import open_cache

    work = Path(tempfile.mkdtemp(prefix="avfuse-import-", dir=args.workdir))
    try:
        keys = vox2_keys(args.rows)
        rng = np.random.default_rng(0)
        data = rng.standard_normal((args.rows, args.dim), dtype=np.float32)
        _, gen_wall, _ = timed(lambda: write_ark_scp(work / "xvector.ark", work / "xvector.scp", keys, data))
        ark_mb = (work / "xvector.ark").stat().st_size / 2**20
        print(f"wrote {args.rows} x {args.dim} float32 ark ({ark_mb:.0f} MiB) + scp in {gen_wall:.1f} s", flush=True)

        summary, fast_wall, fast_cpu = timed(lambda: import_cache(work / "emb.zarr", audio=[work / "xvector.scp"],
                                                                  progress=False))
        print(f"fast : {fast_wall:.1f} s wall, {fast_cpu:.1f} s CPU ({summary.text()})", flush=True)

        c = open_cache(work / "emb.zarr")
        sample = rng.choice(args.rows, size=min(2000, args.rows), replace=False)
        rows = c.rows(np.strings.replace(keys[sample], ".wav", ""))
        err = float(np.abs(c.to_numpy("audio/clip", rows) - data[sample]).max())
        assert c.n_rows == args.rows and err < 1e-2, (c.n_rows, err)
        del c

        n_naive, naive_wall, naive_cpu = timed(lambda: naive_import(work / "xvector.scp", work / "naive.zarr",
                                                                    args.rows, args.dim, args.naive_rows))
        scale = args.rows / n_naive
        naive_wall_x, naive_cpu_x = naive_wall * scale, naive_cpu * scale
        print(f"naive: {naive_wall:.1f} s wall, {naive_cpu:.1f} s CPU for {n_naive} utterances -> "
              f"{naive_wall_x:.0f} s wall, {naive_cpu_x:.0f} s CPU extrapolated to {args.rows}", flush=True)
        res = {"rows": args.rows, "dim": args.dim, "ark_mib": round(ark_mb, 1),
               "fast": {"wall_s": round(fast_wall, 2), "cpu_s": round(fast_cpu, 2),
                        "read_s": round(summary.read_seconds, 2), "write_s": round(summary.write_seconds, 2),
                        "cpu_us_per_row": round(1e6 * fast_cpu / args.rows, 2)},
               "naive": {"rows_measured": n_naive, "wall_s_measured": round(naive_wall, 2),
                         "cpu_s_measured": round(naive_cpu, 2), "wall_s_extrapolated": round(naive_wall_x, 1),
                         "cpu_s_extrapolated": round(naive_cpu_x, 1),
                         "cpu_us_per_row": round(1e6 * naive_cpu / n_naive, 1)},
               "ratio_wall": round(naive_wall_x / fast_wall, 1), "ratio_cpu": round(naive_cpu_x / fast_cpu, 1),
               "target_s": 60, "met": fast_wall < 60, "sample_max_abs_err": err,
               "machine": f"{platform.machine()} {os.cpu_count()} CPUs (shared)"}
        print(f"ratio naive/fast: {res['ratio_wall']}x wall, {res['ratio_cpu']}x CPU; target < 60 s: "
              f"{'met' if res['met'] else 'NOT met'}")
        args.json.write_text(json.dumps(res, indent=2) + "\n")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
