"""``avfuse ablate``: head x mode table, missing-modality and clip-length ablations, sweeps, DCA gates.

Every cell is scored by ``pipeline.score.score_from_cache`` (the code of ``avfuse
score``) on a ``CacheView`` of the trial list's clips held in memory (read from the
cache once), and evaluated by ``pipeline.core.metrics.compute_metrics`` (the code of
``avfuse evaluate``): a plain cell equals ``avfuse score ... --skip-missing`` then
``avfuse evaluate`` on the same cache, trials, mode and head.

Parts (all on the labelled trial list ``trials``):

(a) ``table``: EER (%), minDCF (p=0.01, 0.05) for every system x mode. Systems: ``none``
    (raw backbone embeddings) and fusion heads (``pipeline.experiments.systems``); ``cal_fusion``
    adds the calibrated late fusion of the A and V cosines fitted on ``dev_trials``, one
    AVxAV cell (``pipeline.experiments.late_fusion``).
(b) ``missing``: a share p of the trial list's clips that have both modalities loses the
    face (or, in the second panel, the audio) on both sides of every trial, scored in
    AVxAV. The clips are the first ``round(p n)`` of one seeded permutation (nested
    across shares, the same clips in both panels); ``p = 0`` is the plain AVxAV cell.
(c) ``length``: only the first k cached segments / frames of every clip
    (``pipeline.experiments.degradations.truncate_steps``), scored in AVxAV; the ``full`` column is
    the plain AVxAV cell (cached whole-utterance clip embeddings).
(d) ``sweeps``: each ``--sweep HEAD.FIELD=v1,...`` retrains HEAD per value and scores every
    mode; ``gates``: the DCA gate statistics (``pipeline.experiments.gates``) of every gated
    system (e.g. ``dca`` and the variants of ``--sweep dca.temperature=...``).

``skip_missing`` (default True) drops trials a mode cannot score (a clip lacking every
modality the mode compares); each cell records ``n_trials`` and ``n_skipped``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Sequence

import numpy as np

from pipeline.cache.view import CLIP_ARRAYS, CacheView
from pipeline.core.errors import ConfigError, ScoringError
from pipeline.core.progress import progress as progress_
from pipeline.experiments.degradations import drop_modality, drop_order, max_steps, n_to_drop, truncate_steps
from pipeline.experiments.systems import (
    HeadTrainer,
    Sweep,
    System,
    needs_sequences,
    parse_sweep,
    resolve_systems,
    value_text,
    variant_config,
)
from pipeline.report.tables import METRIC_KEYS, safe_name, text_table

DEFAULT_HEADS = ("none", "score_avg", "mean", "mlp", "multiview", "cross_attention", "jca", "dca")
MODE_ORDER = ("AxA", "VxV", "AVxAV", "AVxA", "AVxV")
DEFAULT_MISSING = (0.0, 0.1, 0.25, 0.5)
DEFAULT_LENGTHS = (1, 2, 4, 8)
CELL_KEYS = METRIC_KEYS + ("n_trials", "n_target", "n_nontarget", "n_skipped")


def score_cell(view, trials, mode: str, system: System, *, skip_missing: bool = True) -> dict:
    """Metrics of one system in one mode on ``view`` (``score_from_cache`` + ``compute_metrics``)."""
    from pipeline.core.metrics import compute_metrics
    from pipeline.score.engine import score_from_cache

    res = score_from_cache(view, trials, mode, head=system.head, skip_missing=skip_missing)
    m = compute_metrics(res.scores, res.labels)
    cell = {k: m[k] for k in CELL_KEYS if k in m}
    cell["n_skipped"] = int(res.info["counts"]["n_skipped"])
    return cell


def _open(cache, trials):
    from data_manifests.trials import TrialList, read_trials
    from pipeline.cache.reader import open_cache

    cache = open_cache(cache) if isinstance(cache, (str, Path)) else cache
    trials = trials if isinstance(trials, TrialList) else read_trials(trials)
    if not trials.labeled or (np.asarray(trials.labels) < 0).any():
        raise ScoringError("ablations need a labelled trial list ('label enrol test')", path=trials.path,
                           hint="pass a list with target/non-target labels")
    return cache, trials


def _check_args(modes, missing, lengths) -> None:
    from pipeline.core.modes import MODES
    bad = [m for m in modes if m not in MODES]
    if bad or not modes:
        raise ConfigError(f"unknown mode(s) {', '.join(bad) or '(none given)'}", hint=f"modes: {', '.join(MODES)}")
    bad = [p for p in missing if not 0.0 <= float(p) <= 1.0]
    if bad:
        raise ConfigError(f"missing-modality shares must be in [0, 1], got {bad}", hint="e.g. --missing 0,0.1,0.25,0.5")
    bad = [k for k in lengths if int(k) != k or k < 1]
    if bad:
        raise ConfigError(f"clip lengths must be whole numbers of steps >= 1, got {bad}", hint="e.g. --lengths 1,2,4,8")


def run_ablation(cache, trials, heads: Sequence[str] = DEFAULT_HEADS, modes: Sequence[str] = MODE_ORDER,
                 out_dir: str | Path = "ablation", *, runs_dir=None, train: bool = False, dev_trials=None,
                 train_cfg=None, missing: Sequence[float] = DEFAULT_MISSING,
                 lengths: Sequence[int] | None = None, sweeps: Sequence[str | Sweep] = (),
                 corpus_dir=None, missing_seed: int = 0, skip_missing: bool = True, force: bool = False,
                 progress: bool = True) -> dict:
    """Run the ablations of the module docstring and write them to ``out_dir``.

    Returns ``{"table", "missing", "length", "sweeps", "gates"}`` (lists of row dicts:
    ``table``/``sweeps`` rows ``system, mode, eer_percent, min_dcf_p0.01, min_dcf_p0.05,
    n_trials, n_target, n_nontarget, n_skipped`` (sweeps also ``head, field, value``);
    ``missing`` rows add ``dropped`` (face|audio), ``share``, ``n_dropped``; ``length``
    rows add ``steps`` (int, or "full")), plus ``systems``, ``files`` and ``meta``.
    ``missing=()``/``lengths=()`` skip those parts; ``lengths=None``: 1, 2, 4, ... up to the
    cached steps S (and S). ``train_cfg``: a ``TrainConfig``
    for heads trained now (default ``TrainConfig()``).
    """

    from fusion.trainer import TrainConfig
    from pipeline.score.engine import check_missing

    t_start = time.perf_counter()
    cache, trials = _open(cache, trials)
    heads, modes = list(dict.fromkeys(heads)), list(dict.fromkeys(modes))
    missing = sorted({float(p) for p in missing})
    _check_args(modes, missing, lengths or ())
    lengths = None if lengths is None else sorted({int(k) for k in lengths})
    sweeps = [s if isinstance(s, Sweep) else parse_sweep(s) for s in sweeps]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfg = train_cfg or TrainConfig()
    cfg.validate()
    notes: list[str] = []

    # systems (load or train), training from one in-memory copy of the split
    from pipeline.experiments.late_fusion import LABEL as CAL_FUSION
    cal_fusion, heads = CAL_FUSION in heads, [h for h in heads if h != CAL_FUSION]
    if cal_fusion and dev_trials is None:
        raise ConfigError(f"system {CAL_FUSION} needs --dev-trials", hint="pass a labelled dev list to fit it on")
    from fusion.registry import get_head
    for h in heads:
        if h != "none" and not str(h).endswith(".pt"):
            get_head(h)
    to_train = [h for h in heads if h != "none" and not str(h).endswith(".pt")
                and not (runs_dir and (Path(runs_dir) / f"{h}.pt").is_file())]
    need_seq = any(needs_sequences(h) for h in to_train if train) or any(needs_sequences(s.head) for s in sweeps)
    trainer = HeadTrainer(cache, cfg, dev_trials, need_sequences=need_seq, progress=progress)
    heads_dir = out / "heads"
    systems = resolve_systems(cache, heads, runs_dir=runs_dir, train=train, trainer=trainer, save_dir=heads_dir,
                              force=force)

    # the trial list's clips, read once
    rows, keep = check_missing(cache, trials, skip_missing=skip_missing)
    seq_heads = any(getattr(s.head, "needs_sequences", False) for s in systems) or \
        any(needs_sequences(s.head) for s in sweeps)
    names = None if (seq_heads or lengths is None or lengths) else CLIP_ARRAYS   # sequences only when used
    view = CacheView.load(cache, rows[rows >= 0], names)

    n_cells = len(systems) * len(modes)
    has_av = view.has("has_audio") and view.has("has_face") and view.has("audio/clip") and view.has("face/clip")
    if missing and not has_av:
        notes.append("missing-modality ablation skipped: the cache lacks audio or face embeddings")
        missing = []
    steps_max = max_steps(view)
    if lengths is None:   # auto: 1, 2, 4, ... up to the cached steps, and the cached steps
        lengths = sorted({2 ** i for i in range(8) if 2 ** i <= steps_max} | ({steps_max} if steps_max else set()))
    if lengths and (not has_av or steps_max == 0):
        notes.append("clip-length ablation skipped: the cache has no per-step sequences (or lacks a modality)")
        lengths = []
    too_long = [k for k in lengths if k > steps_max]
    if too_long:
        raise ConfigError(f"clip lengths {too_long} exceed the cached steps (segments/frames: {steps_max})",
                          hint=f"use lengths between 1 and {steps_max}")
    n_cells += len(systems) * (2 * len(missing) + len(lengths))
    n_cells += sum(len(s.values) for s in sweeps) * (len(modes) + 1)
    bar = progress_(total=n_cells, desc="ablate", unit="cell", enabled=progress)

    def cell(v, mode, system, **extra):
        c = score_cell(v, trials, mode, system, skip_missing=skip_missing)
        bar.update(1)
        return {"system": system.label, "mode": mode, **extra, **c}

    try:
        table = [cell(view, mode, s) for s in systems for mode in modes]
        if cal_fusion and "AVxAV" in modes:   # calibrated late fusion (A + V): pipeline.experiments.late_fusion
            from pipeline.experiments.late_fusion import fusion_cell
            row, cal_info = fusion_cell(cache, view, dev_trials, trials)
            table.append(row)
            notes.append(f"{CAL_FUSION}: {cal_info['kind']} fitted on {cal_info['dev_trials']}, "
                         f"weights (wA, wV, b) {cal_info['weights']['AV']}")
        plain = {(r["system"], r["mode"]): r for r in table}

        miss_rows = []
        order = drop_order(view, seed=missing_seed) if missing else np.zeros(0, np.int64)
        for dropped in ("face", "audio") if missing else ():
            for p in missing:
                k = n_to_drop(p, len(order))
                v = drop_modality(view, order[:k], dropped)
                for s in systems:
                    miss_rows.append(cell(v, "AVxAV", s, dropped=dropped, share=p, n_dropped=k,
                                          n_candidates=int(len(order))))

        len_rows = []
        for k in lengths:
            v = truncate_steps(view, k)
            for s in systems:
                len_rows.append(cell(v, "AVxAV", s, steps=k))
        if lengths:
            for s in systems:
                ref = plain.get((s.label, "AVxAV")) or cell(view, "AVxAV", s)
                len_rows.append({**ref, "system": s.label, "mode": "AVxAV", "steps": "full"})

        sweep_rows, variants = [], []
        for sw in sweeps:
            for value in sw.values:
                vcfg = variant_config(cfg, sw, value)
                head, history, secs = trainer.train(sw.head, vcfg)
                label = sw.label(value)
                path = trainer.save(heads_dir / f"{safe_name(label)}.pt", head, vcfg, history)
                system = System(label, head, "trained", path, history, secs,
                                sweep={"head": sw.head, "field": sw.field, "value": value})
                variants.append(system)
                bar.update(1)
                for mode in modes:
                    sweep_rows.append(cell(view, mode, system, head=sw.head, field=sw.field,
                                           value=value_text(value)))

        gate_rows = []
        gated = [s for s in systems + variants if s.gated]
        if gated:
            from pipeline.experiments.gates import gate_stats, read_conditions
            conditions = None
            if corpus_dir:
                conditions = read_conditions(corpus_dir)
            for s in gated:
                gate_rows += gate_stats(s, view, trials, conditions=conditions)
        elif any(h == "dca" for h in heads):
            notes.append("no gated head scored: gate analysis skipped")
    finally:
        bar.close()

    result = {"table": table, "missing": miss_rows, "length": len_rows, "sweeps": sweep_rows, "gates": gate_rows,
              "systems": [s.describe() for s in systems + variants], "notes": notes}
    result["meta"] = _meta(cache, trials, modes, missing, lengths, sweeps, cfg, train, dev_trials, runs_dir,
                           missing_seed, skip_missing, steps_max, trainer, time.perf_counter() - t_start)
    from pipeline.report.ablation import write_ablation
    result["files"] = write_ablation(result, out, modes=modes)
    return result


def _meta(cache, trials, modes, missing, lengths, sweeps, cfg, train, dev_trials, runs_dir, seed, skip_missing,
          steps_max, trainer, seconds) -> dict:
    from pipeline import __version__
    from pipeline.core.config import to_dict
    from pipeline.core.fsio import sha256_file

    return {"avfuse_version": __version__, "cache": {"path": str(cache.path), "fingerprint": cache.fingerprint},
            "trials": {"path": str(trials.path), "sha256": sha256_file(trials.path), "n_trials": trials.n_trials,
                       "n_target": trials.n_target, "n_nontarget": trials.n_nontarget},
            "modes": list(modes), "missing_shares": list(missing), "lengths": list(lengths),
            "max_steps": int(steps_max), "sweeps": [s.text for s in sweeps], "train": bool(train),
            "train_config": to_dict(cfg), "dev_trials": None if dev_trials is None else str(getattr(
                dev_trials, "path", dev_trials)), "runs_dir": None if runs_dir is None else str(runs_dir),
            "missing_seed": int(seed), "skip_missing": bool(skip_missing),
            "split_load_seconds": round(trainer.load_seconds, 3), "seconds": round(seconds, 3)}


# ------------------------------------------------------------------ text output
def format_table(result: dict, metric: str = "eer_percent") -> str:
    """The head x mode table as fixed-width text: one row per system, one column per mode,
    cells ``EER% / minDCF(0.01)``."""
    rows = result["table"]
    systems = list(dict.fromkeys(r["system"] for r in rows))
    modes = list(dict.fromkeys(r["mode"] for r in rows))
    cells = {(r["system"], r["mode"]): r for r in rows}
    wide = []
    for s in systems:
        row = {"system": s}
        for m in modes:
            c = cells.get((s, m))
            row[m] = "-" if c is None else f"{c['eer_percent']:.2f} / {c['min_dcf_p0.01']:.3f}"
        wide.append(row)
    n = rows[0]["n_trials"] if rows else 0
    head = f"EER (%) / minDCF (p=0.01) on {n:,} trials (rows: systems, columns: enrol x test modes)\n"
    return head + text_table(wide, ["system"] + modes)
