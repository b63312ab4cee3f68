"""`avfuse score` with VoxCeleb1-O, -E and -H in one pass vs one call per list.

The real lists (``veri_test2.txt``, ``list_test_all.txt.gz``, ``list_test_hard.txt.gz``:
37,611 + 581,480 + 552,536 trials over 145,375 utterances... O's 4,708 are among them)
scored AxA from a real Zarr cache of synthetic 192-d embeddings (the cache of
``benchmarks/score_speed.py``, built under ``--work`` if absent). Measured in this
process, median of ``--repeat``, process CPU and wall:

* **one pass**: ``pipeline.score.multi.score_lists`` (read the three lists, one
  ``score_from_cache`` over their concatenation, split, write three scores files + sidecars);
* **three calls**: for each list ``read_trials`` + ``score_from_cache`` + ``write_scores`` with
  its sidecar (what three ``avfuse score`` runs do, minus interpreter start-up).

``--head mlp`` scores through a freshly built ``mlp`` fusion head (random weights: the
embedding cost is that of a trained one; torch's default threads) instead of the cached
embeddings: then every utterance goes through the head, once in the one pass, once per
list in the three calls. The outputs are compared (identical scores). Usage::

    python benchmarks/score_lists_speed.py [--work /tmp/avfuse-score-bench] [--repeat 3] [--head mlp]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
VOX = Path(os.environ.get("AVFUSE_SHARED", REPO.parent / "shared")) / "voxceleb"
LISTS = {"O": VOX / "veri_test2.txt", "E": VOX / "list_test_all.txt.gz", "H": VOX / "list_test_hard.txt.gz"}


def _score_speed():
    spec = importlib.util.spec_from_file_location("score_speed", REPO / "benchmarks" / "score_speed.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def build_cache(work: Path) -> Path:
    from data_manifests.trials import read_trials

    utts = np.unique(np.concatenate([read_trials(p).utterances() for p in LISTS.values()]))
    return _score_speed()._write(work / "vox1-oeh.zarr", utts, "test", "vox1-oeh")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=Path("/tmp/avfuse-score-bench"))
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--head", default=None, help="build this fusion head (random weights) and score through it")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)

    from data_manifests.trials import read_trials
    from pipeline.cache.reader import open_cache
    from pipeline.core.fsio import sha256_file
    from pipeline.score.engine import score_from_cache
    from pipeline.score.files import build_sidecar, read_scores, write_scores
    from pipeline.score.multi import score_lists

    cache = open_cache(build_cache(args.work))
    head = None
    if args.head:
        from fusion.registry import build_head
        head = build_head(args.head, 192, 512)
        head.eval()
    outs = {k: args.work / f"multi_{k}.tsv" for k in LISTS}
    alone = {k: args.work / f"alone_{k}.tsv" for k in LISTS}

    def one_pass():
        score_lists(cache, [str(p) for p in LISTS.values()], [str(p) for p in outs.values()], "AxA", head=head)

    def three_calls():
        for k, p in LISTS.items():
            tl = read_trials(p)
            res = score_from_cache(cache, tl, "AxA", head=head)
            write_scores(alone[k], res, build_sidecar(cache=cache, trials=tl, trials_sha=sha256_file(p), mode="AxA",
                                                      result=res, head_info=None, skip_missing=False, force=False))

    res = {}
    for name, fn in (("one_pass", one_pass), ("three_calls", three_calls)):
        walls, cpus = [], []
        for _ in range(args.repeat):
            w0, c0 = time.perf_counter(), time.process_time()
            fn()
            walls.append(time.perf_counter() - w0)
            cpus.append(time.process_time() - c0)
        res[name] = (statistics.median(walls), statistics.median(cpus))
        print(f"{name}: {res[name][0]:.2f} s wall, {res[name][1]:.2f} s CPU "
              f"(walls {[round(w, 2) for w in walls]}); load average {os.getloadavg()[0]:.1f}")
    for k in LISTS:
        a, b = read_scores(outs[k]), read_scores(alone[k])
        assert (a.enrol == b.enrol).all(), k
        if head is None:
            assert np.array_equal(a.scores, b.scores), k
        else:      # batches differ between the runs: float32 rounding of the head's matmuls
            np.testing.assert_allclose(a.scores, b.scores, atol=1e-5)
    print(f"same scores; one pass is x{res['three_calls'][1] / res['one_pass'][1]:.2f} (CPU), "
          f"x{res['three_calls'][0] / res['one_pass'][0]:.2f} (wall) of three calls")


if __name__ == "__main__":
    main()
