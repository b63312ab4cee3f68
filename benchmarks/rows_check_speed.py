"""Cost of checking a cache's row metadata against its fingerprint at open (issue 19).

Builds a 1M-row Zarr cache (audio 1-d, nothing written but the header and the row
metadata), then measures process CPU time of: opening it and reading the ids without
the check (the state before issue 19), with the check, and the check alone by the
fingerprint's naive form (``json.dumps`` of each list) vs. the join used now.

    python benchmarks/rows_check_speed.py [N_ROWS] [FOLDER]
"""

from __future__ import annotations

import hashlib
import json
import sys
import tempfile
import time
from pathlib import Path


def naive_fingerprint(rows: dict) -> str:
    h = hashlib.sha256()
    for key in ("ids", "speakers", "splits"):
        h.update(json.dumps(list(rows[key].tolist()), ensure_ascii=False).encode())
    return h.hexdigest()[:16]


def best(fn, repeats: int = 3) -> float:
    out = []
    for _ in range(repeats):
        t = time.process_time()
        fn()
        out.append(time.process_time() - t)
    return min(out)


def main(n: int = 1_000_000, folder: str | None = None) -> None:
    from pipeline.cache.layout import CacheLayout, rows_fingerprint
    from pipeline.cache.reader import open_cache
    from pipeline.cache.writer import create_cache

    base = Path(folder or tempfile.mkdtemp())
    path = base / "rows1m.zarr"
    if not path.exists():
        ids = [f"id{i // 50:05d}/vid{i % 7:08d}x/{i % 50:05d}" for i in range(n)]
        create_cache(path, ids=ids, speakers=[x.split("/")[0] for x in ids], splits=["train"] * n,
                     layout=CacheLayout(audio_dim=1, face_dim=None, shard_size=65536),
                     provenance={"bench": "rows"})

    def open_unchecked():
        c = open_cache(path)
        c._row_meta("ids", check=False)

    def open_checked():
        c = open_cache(path)
        c._row_meta("ids")

    c = open_cache(path)
    rows = {k: c._backend.read_row_meta(k) for k in ("ids", "speakers", "splits")}
    assert naive_fingerprint(rows) == rows_fingerprint(rows)
    from pipeline.cache import layout
    t_before = best(open_unchecked)
    t_after = best(lambda: (layout._ROWS_CHECKED.clear(), open_checked()))
    t_again = best(open_checked)
    t_naive, t_join = best(lambda: naive_fingerprint(rows)), best(lambda: rows_fingerprint(rows))
    print(f"rows: {n:,}")
    print(f"open + read row metadata, no check (before): {t_before:.3f} s CPU")
    print(f"open + read row metadata + check (after):    {t_after:.3f} s CPU  (+{t_after - t_before:.3f} s)")
    print(f"open again in the same process (check remembered): {t_again:.3f} s CPU")
    print(f"fingerprint alone: naive json.dumps {t_naive:.3f} s, join {t_join:.3f} s "
          f"(ratio naive/join {t_naive / max(t_join, 1e-9):.2f})")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000, sys.argv[2] if len(sys.argv) > 2 else None)
