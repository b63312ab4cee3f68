"""``avfuse analyze``: embedding geometry and score analysis of the raw backbones and fusion heads.

For the clips of one cache split (``split``, default ``test``; a seeded sample of
``max_clips`` when larger) and every system (``none`` = raw backbone embeddings,
plus each head checkpoint), with the definitions of ``pipeline.experiments.stats``:

* embeddings per clip: audio-only ``e_A`` (clips with audio), face-only ``e_V`` (clips
  with a face) and fused ``e_AV`` (clips with both). A head embeds with
  ``head.embed(batch, use=("A",) / ("V",) / ("A", "V"))`` through
  ``pipeline.score.embed_rows`` (the code of ``avfuse score``). For ``none``:
  ``e_A`` = ``audio/clip``, ``e_V`` = ``face/clip`` and ``e_AV`` = the concatenation
  ``[a/|a| ; v/|v|] / sqrt(2)`` (its cosine is the mean of the two cosines: score averaging);
* silhouette (cosine distance, speaker labels) of ``e_A``, ``e_V`` and ``e_AV``;
* the angle between ``e_A`` and ``e_V`` of each clip with both modalities, and per
  identity between the means of its clips' ``e_A`` and ``e_V``. It needs one shared
  space: the raw backbones have none (different networks, generally different
  dimensions), and ``score_avg`` places A and V in orthogonal blocks by construction,
  so for those the report says so instead of giving an angle;
* a PCA projection (2-D) of ``e_A``, ``e_V``, ``e_AV`` coloured by identity, and with
  ``umap=True`` a UMAP one beside it (``pipeline.experiments.umap``);
* within- and between-speaker variance of each embedding space (``pipeline.experiments.variance``);
* with ``clip_seconds=L``: all of the above on fixed L-second pieces of the clips built from
  the cached segment / frame embeddings (``pipeline.experiments.pieces``); scores stay per clip;
* with ``trials``: scores of every mode (``score_from_cache``, skipping unscorable
  trials), EER/minDCF, target / non-target score histograms, DET curves of all modes on
  one plot per system and of all systems in AVxAV.

Files in ``out_dir``: ``geometry.{md,csv,json}``, ``metrics.{md,csv,json}``, ``variance.{md,csv,json}``,
``silhouette.png``, ``angles.png``, ``pca_<system>.png``, ``umap_<system>.png``, ``scores_<system>.png``,
``det_<system>.png``, ``det_AVxAV.png``, ``analysis.json`` and ``index.html``.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from pipeline.cache.view import CacheView
from pipeline.core.errors import ConfigError
from pipeline.core.modes import MODES as ALL_MODES
from pipeline.core.progress import progress as progress_
from pipeline.experiments.pieces import piece_view
from pipeline.experiments.stats import angles_deg, l2n, per_identity_mean, silhouette_cosine
from pipeline.experiments.systems import System, resolve_systems
from pipeline.experiments.variance import variance_rows

MODES = tuple(ALL_MODES)
NO_SHARED_SPACE = "no shared A/V space (separate backbones): angle not defined"
BLOCK_ORTHOGONAL = "A and V occupy orthogonal blocks (concatenation): angle is 90 deg by construction"


def system_embeddings(system: System, view: CacheView, rows: np.ndarray) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{"A"|"V"|"AV": (view rows used, embeddings)}`` of one system (module docstring)."""
    from pipeline.score.rows import embed_rows

    has_a = view.to_numpy("has_audio", rows, dtype=bool).astype(bool) if view.has("has_audio") else \
        np.zeros(len(rows), bool)
    has_v = view.to_numpy("has_face", rows, dtype=bool).astype(bool) if view.has("has_face") else \
        np.zeros(len(rows), bool)
    sel = {"A": rows[has_a], "V": rows[has_v], "AV": rows[has_a & has_v]}
    out = {}
    if system.head is None:
        if view.has("audio/clip"):
            out["A"] = (sel["A"], view.to_numpy("audio/clip", sel["A"]))
        if view.has("face/clip"):
            out["V"] = (sel["V"], view.to_numpy("face/clip", sel["V"]))
        if "A" in out and "V" in out:
            a = l2n(view.to_numpy("audio/clip", sel["AV"]))
            v = l2n(view.to_numpy("face/clip", sel["AV"]))
            out["AV"] = (sel["AV"], np.concatenate([a, v], axis=1) / math.sqrt(2.0))
        return out
    for key, use in (("A", ("A",)), ("V", ("V",)), ("AV", ("A", "V"))):
        out[key] = (sel[key], embed_rows(view, sel[key], system.head, use))
    return out


def geometry(system: System, view: CacheView, rows: np.ndarray) -> tuple[dict, dict]:
    """``(table row, embeddings)`` of one system: silhouettes and angles (module docstring)."""
    emb = system_embeddings(system, view, rows)
    spk = view.speakers
    row: dict = {"system": system.label, "n_clips": int(len(rows)), "n_identities": int(len(np.unique(spk[rows])))}
    for key, name in (("A", "audio"), ("V", "face"), ("AV", "fused")):
        if key in emb and len(emb[key][0]) >= 3:
            row[f"silhouette_{name}"] = silhouette_cosine(emb[key][1], spk[emb[key][0]])
        else:
            row[f"silhouette_{name}"] = None
    row.update(angle_clip_mean_deg=None, angle_clip_median_deg=None, angle_identity_mean_deg=None, note="")
    if system.head is None:
        row["note"] = NO_SHARED_SPACE
    elif getattr(system.head, "score_kind", "cosine") != "cosine":
        row["note"] = BLOCK_ORTHOGONAL
    elif "A" in emb and "V" in emb:
        both = np.intersect1d(emb["A"][0], emb["V"][0])
        a = emb["A"][1][np.searchsorted(emb["A"][0], both)]
        v = emb["V"][1][np.searchsorted(emb["V"][0], both)]
        if len(both):
            ang = angles_deg(a, v)
            ids_a, mean_a = per_identity_mean(a, spk[both])
            _ids_v, mean_v = per_identity_mean(v, spk[both])
            ang_id = angles_deg(mean_a, mean_v)
            row.update(angle_clip_mean_deg=float(ang.mean()), angle_clip_median_deg=float(np.median(ang)),
                       angle_identity_mean_deg=float(ang_id.mean()))
            emb["angles_clip"] = ang
            emb["angles_identity"] = (ids_a, ang_id)
    return row, emb


def _open_systems(cache, heads, force) -> list[System]:
    systems = [System("none")]
    paths = [h for h in heads if not isinstance(h, System)]
    bad = [p for p in paths if not str(p).endswith(".pt")]
    if bad:
        raise ConfigError(f"--head expects head checkpoints (*.pt), got {', '.join(map(str, bad))}",
                          hint="train one with `avfuse train ... --out runs/NAME.pt`")
    systems += resolve_systems(cache, [str(p) for p in paths], force=force)
    systems += [h for h in heads if isinstance(h, System)]
    labels = [s.label for s in systems]
    dup = sorted({x for x in labels if labels.count(x) > 1})
    if dup:
        raise ConfigError(f"two systems are labelled {', '.join(dup)}", hint="give the checkpoints distinct file names")
    return systems


def run_analysis(cache, out_dir: str | Path = "analysis", heads: Sequence = (), trials=None, split: str = "test", *,
                 modes: Sequence[str] = MODES, max_clips: int = 5000, seed: int = 0, force: bool = False,
                 progress: bool = True, umap: bool = False, clip_seconds: float | None = None) -> dict:
    """Analyse ``cache`` (see the module docstring) and write the report to ``out_dir``.

    ``heads``: head checkpoint paths (``*.pt``) or ``System`` objects. Returns
    ``{"geometry": rows, "metrics": rows, "figures": {...}, "files": {...}, "meta": {...}}``.
    """

    from data_manifests.trials import TrialList, read_trials
    from pipeline.cache.reader import open_cache

    t0 = time.perf_counter()
    cache = open_cache(cache) if isinstance(cache, (str, Path)) else cache
    if trials is not None and not isinstance(trials, TrialList):
        trials = read_trials(trials)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    systems = _open_systems(cache, list(heads), force)

    rows = np.asarray(cache.split_rows(split), dtype=np.int64)
    if rows.size == 0:
        splits = sorted(set(np.asarray(cache.splits).tolist()))
        raise ConfigError(f"split '{split}' has no rows in this cache", path=cache.path,
                          hint=f"splits in this cache: {', '.join(map(str, splits)) or '(none)'}; "
                               "pick one with --split")
    sampled = rows.size > max_clips
    if sampled:
        rows = np.sort(np.random.default_rng(seed).choice(rows, size=max_clips, replace=False))
    load = rows
    trial_rows = None
    if trials is not None:
        from pipeline.score.engine import check_missing
        trial_rows, _keep = check_missing(cache, trials, skip_missing=True)
        load = np.union1d(rows, trial_rows[trial_rows >= 0])
    view = CacheView.load(cache, load)
    vrows = view.rows(np.asarray(cache.ids)[rows])
    gview, grows = (view, vrows) if clip_seconds is None else piece_view(view, vrows, clip_seconds)

    bar = progress_(total=len(systems) * (1 + (len(modes) if trials is not None else 0)), desc="analyze",
                    unit="step", enabled=progress)
    geo_rows, embs, metric_rows, scores = [], {}, [], {}
    try:
        for s in systems:
            row, emb = geometry(s, gview, grows)
            geo_rows.append(row)
            embs[s.label] = emb
            bar.update(1)
            if trials is None:
                continue
            for mode in modes:
                m, res = _score(view, trials, mode, s)
                bar.update(1)
                if m is None:
                    continue
                metric_rows.append({"system": s.label, "mode": mode, **m})
                scores[(s.label, mode)] = res
    finally:
        bar.close()

    from pipeline.report.analysis import write_figures
    figures = write_figures(out, systems, embs, geo_rows, gview, scores, modes, umap=umap, seed=seed)
    meta = {"cache": {"path": str(cache.path), "fingerprint": cache.fingerprint}, "split": split,
            "n_clips": int(len(rows)), "clip_seconds": clip_seconds, "n_pieces": None if clip_seconds is None
            else int(len(grows)), "sampled": bool(sampled), "max_clips": int(max_clips), "seed": int(seed),
            "trials": None if trials is None else {"path": str(trials.path), "n_trials": int(trials.n_trials)},
            "systems": [s.describe() for s in systems], "seconds": round(time.perf_counter() - t0, 3)}
    result = {"geometry": geo_rows, "metrics": metric_rows, "figures": figures, "meta": meta,
              "variance": variance_rows(embs, gview.speakers)}
    from pipeline.report.analysis import write_analysis_files
    result["files"] = write_analysis_files(result, out)
    return result


def _score(view, trials, mode, system):
    """``(metrics or None, Scores)``; None when the mode has no scorable target+non-target trials."""
    from pipeline.core.errors import ScoringError
    from pipeline.core.metrics import compute_metrics
    from pipeline.score.engine import score_from_cache

    try:
        res = score_from_cache(view, trials, mode, head=system.head, skip_missing=True)
        m = compute_metrics(res.scores, res.labels)
    except ScoringError:
        return None, None
    keep = ("eer_percent", "min_dcf_p0.01", "min_dcf_p0.05", "n_trials", "n_target", "n_nontarget")
    return {k: m[k] for k in keep}, res


__all__ = ["run_analysis", "geometry", "system_embeddings"]
