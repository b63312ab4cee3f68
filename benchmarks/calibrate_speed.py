"""Speed of `avfuse calibrate fit` and `avfuse evaluate` (with minCllr) at VoxCeleb1-E scale.

The real VoxCeleb1-E list (581,480 trials; labels and ids from ``list_test_all.txt.gz``)
with synthetic Gaussian scores for two systems ("A": cosine-like, "V": weaker), written
as scores TSVs under ``--work``. Measured in one run (median of ``--repeat``; wall and
process CPU via ``time.process_time``), in this process with modules imported:

* **fit**: ``pipeline.score.calibrate.fit`` on the two files (late fusion): read both TSVs,
  check the trials match, standardise, L-BFGS with the analytic gradient, then the dev
  diagnostics it stores (Cllr and minCllr of each input and of the output);
* **evaluate**: ``score_cli.evaluate_files`` of the calibrated file: read the TSV, EER,
  minDCF x2, actDCF x2, Cllr, minCllr (PAV), threshold at FAR 1%;
* the same two as **fresh processes** (``python -m pipeline calibrate fit`` /
  ``evaluate``: interpreter start and imports included), wall only.

Against the naive ways, on the same in-memory data:

* ``LogisticRegression`` of scikit-learn (lbfgs, ``C=1e6``, sample weights giving each
  class its prior weight) on the same two features, vs our ``train_logreg``; the
  weights are compared (they fit the same objective);
* minCllr with a pure-Python PAV (stack of blocks, one Python step per distinct score)
  vs ours (``error_curves`` blocks + scipy's PAV); values compared.

Usage::

    python benchmarks/calibrate_speed.py [--work /tmp/avfuse-cal-bench] [--repeat 3]
        [--out benchmarks/calibrate_speed.json]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

VOX = Path(os.environ.get("AVFUSE_SHARED", REPO.parent / "shared")) / "voxceleb"


def clock() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def timed(fn, repeat: int):
    walls, cpus, out = [], [], None
    for _ in range(repeat):
        w0, c0 = clock()
        out = fn()
        w1, c1 = clock()
        walls.append(w1 - w0)
        cpus.append(c1 - c0)
    return {"wall_s": statistics.median(walls), "cpu_s": statistics.median(cpus),
            "wall_all": [round(x, 4) for x in walls], "cpu_all": [round(x, 4) for x in cpus]}, out


def make_files(work: Path) -> tuple[list[Path], np.ndarray]:
    from data_manifests.trials import read_trials
    from pipeline.score.files import Scores, write_scores

    trials = read_trials(VOX / "list_test_all.txt.gz")
    y = np.asarray(trials.labels, dtype=np.int8)
    n = len(y)
    rng = np.random.default_rng(0)
    a = np.where(y == 1, rng.normal(0.55, 0.1, n), rng.normal(0.3, 0.1, n))
    v = np.where(y == 1, rng.normal(0.4, 0.2, n), rng.normal(0.1, 0.2, n))
    paths = [work / "e_A.tsv", work / "e_V.tsv"]
    for p, s in zip(paths, (a, v)):
        if not p.is_file():
            write_scores(p, Scores(y, trials.enrol, trials.test, s.astype(np.float32)))
    return paths, y


def python_pav(y: list[float], w: list[float]) -> list[float]:
    """Textbook pool-adjacent-violators: a stack of (mean, weight, count) blocks."""
    means, weights, counts = [], [], []
    for yi, wi in zip(y, w):
        m, ww, c = yi, wi, 1
        while means and means[-1] > m:
            pm, pw, pc = means.pop(), weights.pop(), counts.pop()
            m = (pm * pw + m * ww) / (pw + ww)
            ww += pw
            c += pc
        means.append(m)
        weights.append(ww)
        counts.append(c)
    out = []
    for m, c in zip(means, counts):
        out.extend([m] * c)
    return out


def naive_min_cllr(s: np.ndarray, y: np.ndarray) -> float:
    """Sort, count per distinct score with Python dicts, Python PAV, Python Cllr sum."""
    order = sorted(range(len(s)), key=s.__getitem__)
    vals, tar, cnt = [], [], []
    for i in order:
        if vals and vals[-1] == s[i]:
            tar[-1] += int(y[i])
            cnt[-1] += 1
        else:
            vals.append(s[i])
            tar.append(int(y[i]))
            cnt.append(1)
    p = python_pav([t / c for t, c in zip(tar, cnt)], cnt)
    n_tar = sum(tar)
    n_non = len(s) - n_tar
    off = math.log(n_tar / n_non)
    ct = cn = 0.0
    for pi, t, c in zip(p, tar, cnt):
        if t:
            ct += t * (math.log2(1 + math.exp(-(math.log(pi / (1 - pi)) - off))) if pi < 1 else 0.0)
        if c - t:
            cn += (c - t) * (math.log2(1 + math.exp(math.log(pi / (1 - pi)) - off)) if pi > 0 else 0.0)
    return 0.5 * (ct / n_tar + cn / n_non)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=Path("/tmp/avfuse-cal-bench"))
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "calibrate_speed.json")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)

    from pipeline.cli.score import evaluate_files
    from pipeline.core.llr_metrics import min_cllr
    from pipeline.report.evaluation import parse_thresholds
    from pipeline.score.calibrate import apply, fit, load_aligned, train_logreg
    from pipeline.score.files import write_scores

    paths, y = make_files(args.work)
    res: dict = {"n_trials": int(len(y)), "n_target": int(y.sum()), "machine": platform.platform(),
                 "cpus": os.cpu_count(), "load_avg_start": os.getloadavg()}
    print(f"VoxCeleb1-E: {len(y):,} trials ({int(y.sum()):,} target); load average {os.getloadavg()[0]:.1f}")

    t_fit, model = timed(lambda: fit(paths), args.repeat)
    res["fit"] = t_fit
    llr_path = args.work / "e_AV_llr.tsv"
    write_scores(llr_path, apply(model, paths))
    X = load_aligned(paths).X
    t_lr, (w, b, _) = timed(lambda: train_logreg(X, y), args.repeat)
    res["fit_logreg_only"] = t_lr
    print(f"calibrate fit (2 files, incl. reading them + dev Cllr/minCllr): {t_fit['wall_s']:.2f} s wall, "
          f"{t_fit['cpu_s']:.2f} s CPU; L-BFGS alone {t_lr['wall_s']:.3f} s wall, {t_lr['cpu_s']:.3f} s CPU")

    ths = parse_thresholds(["far=1%"])
    t_ev, ev = timed(lambda: evaluate_files([str(llr_path)], ths), args.repeat)
    res["evaluate"] = t_ev
    res["evaluate_metrics"] = {k: v for k, v in ev[0][1].items() if k != "thresholds"}
    print(f"evaluate (read + EER, minDCF x2, actDCF x2, Cllr, minCllr, FAR-1% threshold): "
          f"{t_ev['wall_s']:.2f} s wall, {t_ev['cpu_s']:.2f} s CPU")

    # --- naive: scikit-learn logistic regression on the same features and objective
    try:
        from sklearn.linear_model import LogisticRegression
        n_tar = int(y.sum())
        sw = np.where(y == 1, 0.5 / n_tar, 0.5 / (len(y) - n_tar)) * len(y)

        def sk():
            m = LogisticRegression(C=1e6, solver="lbfgs", max_iter=1000)
            m.fit(X, y, sample_weight=sw)
            return m
        t_sk, m = timed(sk, args.repeat)
        res["sklearn_logreg"] = {**t_sk, "weights": m.coef_[0].tolist(), "bias": float(m.intercept_[0]),
                                 "ours_weights": w.tolist(), "ours_bias": b}
        print(f"scikit-learn LogisticRegression: {t_sk['wall_s']:.3f} s wall, {t_sk['cpu_s']:.3f} s CPU "
              f"-> ours x{t_sk['cpu_s'] / t_lr['cpu_s']:.2f} (CPU); weights {np.round(m.coef_[0], 3)} "
              f"{m.intercept_[0]:.3f} vs ours {np.round(w, 3)} {b:.3f}")
    except ImportError:
        res["sklearn_logreg"] = None
        print("scikit-learn not installed: `pip install scikit-learn` for the naive logistic regression")

    # --- naive: pure-Python PAV minCllr
    s = np.asarray(__import__("pipeline.score", fromlist=["read_scores"]).read_scores(llr_path).scores,
                   dtype=np.float64)
    t_mc, ours = timed(lambda: min_cllr(s, y), args.repeat)
    t_py, theirs = timed(lambda: naive_min_cllr(s, y), 1)
    res["min_cllr_ours"] = {**t_mc, "value": ours}
    res["min_cllr_python_pav"] = {**t_py, "value": theirs}
    print(f"minCllr: ours {t_mc['cpu_s']:.3f} s CPU, Python PAV {t_py['cpu_s']:.2f} s CPU "
          f"-> x{t_py['cpu_s'] / t_mc['cpu_s']:.0f}; values {ours:.6f} vs {theirs:.6f}")

    # --- fresh processes (what one CLI call costs), wall
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cal = args.work / "cal.json"
    for name, cmd in (("cli_fit", ["calibrate", "fit", "--scores", str(paths[0]), "--scores", str(paths[1]),
                                   "--out", str(cal), "--quiet"]),
                      ("cli_evaluate", ["evaluate", "--scores", str(llr_path), "--threshold-at", "far=1%"])):
        walls = []
        for _ in range(args.repeat):
            w0 = time.perf_counter()
            subprocess.run([sys.executable, "-m", "pipeline", *cmd], env=env, check=True, capture_output=True)
            walls.append(time.perf_counter() - w0)
        res[name] = {"wall_s": statistics.median(walls), "wall_all": [round(x, 3) for x in walls]}
        print(f"fresh `avfuse {cmd[0]}{' ' + cmd[1] if cmd[0] == 'calibrate' else ''}`: "
              f"{statistics.median(walls):.2f} s wall")
    res["load_avg_end"] = os.getloadavg()
    args.out.write_text(json.dumps(res, indent=1) + "\n")
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
