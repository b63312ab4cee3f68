"""``avfuse score`` and ``avfuse evaluate``.

``score`` writes ``scores.tsv`` (``label enrol test score``, trial-list order) and
the sidecar ``scores.tsv.json``::

    {"avfuse_version", "created_utc",
     "cache": {"path", "fingerprint"},
     "trials": {"path", "sha256", "n_trials", "labeled"},
     "mode", "enrol_use", "test_use", "channels", "score_kind",
     "head": null | {"path", "sha256", "name", "config_fingerprint", "cache_fingerprint"},
     "norm": {"method", "cohort", "cohort_cache", "cohort_cache_fingerprint", "cohort_split",
              "top_k", "top_k_effective", "cohort_speakers"},   # effective: min(top_k, cohort speakers)
     "mean_sub": null | {"source", "cache", "cache_fingerprint", "split", "clips", "mean_norm"},
     "skip_missing", "force",
     "counts": {"n_trials_in_list", "n_scored", "n_skipped", "n_skipped_missing",
                "n_skipped_unscorable", "n_partial", "n_utterances_missing", "n_embedded", "n_target",
                "n_nontarget"},      # n_partial: scored on one modality of a two-modality mode
     "timings_s": {"read_or_embed", "cohort", "norm_stats", "score"},
     "config_fingerprint"}

``config_fingerprint`` (``pipeline.core.config.fingerprint``) covers what determines
the scores: cache fingerprint, trials sha256, mode, head sha256, norm settings
(with the cohort cache fingerprint and split), ``skip_missing`` and, when on, ``--mean-sub``'s
cache fingerprint and split.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from pipeline.core.errors import ConfigError, ScoringError
from pipeline.score.files import build_sidecar

MODE_NAMES = ("AxA", "VxV", "AVxAV", "AVxA", "AVxV")
PLOT_FORMATS = ("png", "pdf", "svg")


def _head_info(path: str, head, meta: dict) -> dict:
    from pipeline.core.config import fingerprint
    from pipeline.core.fsio import sha256_file
    return {"path": str(Path(path).resolve()), "sha256": sha256_file(path),
            "name": getattr(head, "name", None),
            "config_fingerprint": fingerprint(getattr(head, "config", {}) or {}),
            "cache_fingerprint": meta.get("cache_fingerprint")}


@click.command("score", context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--cache", "cache_path", required=True, type=click.Path(),
              help="Embedding cache (.zarr / .h5) holding every utterance of the trial list.")
@click.option("--trials", "trials_paths", required=True, multiple=True, type=click.Path(),
              help="Trial list, 'label enrol test' or 'enrol test' (.txt or .txt.gz). Repeat (with one "
                   "--out each) to score several lists, e.g. Vox1-O/E/H, in one pass: each utterance "
                   "is read or embedded once.")
@click.option("--mode", required=True, type=click.Choice(MODE_NAMES),
              help="Enrol x test modalities. Without --head: A = audio clip embedding, "
                   "V = mean face embedding, AV = mean of the A and V cosine scores; AVxA/AVxV "
                   "then compare the enrolment's audio/face only (same-modality scores).")
@click.option("--head", "head_path", type=click.Path(), default=None,
              help="Fusion head checkpoint (from `avfuse train`): embed each side through it.")
@click.option("--norm", type=click.Choice(("none", "snorm", "asnorm")), default="none", show_default=True,
              help="Score normalisation against the --cohort speakers.")
@click.option("--cohort", default=None, metavar="SPLIT|CACHE[:SPLIT]",
              help="Cohort for --norm: a split of this cache (e.g. 'train'), another cache, or "
                   "CACHE:SPLIT. One mean embedding per speaker.")
@click.option("--mean-sub", "mean_sub", default=None, metavar="SPLIT|CACHE[:SPLIT]",
              help="Subtract the mean embedding of this source (--cohort's syntax; WeSpeaker uses its "
                   "training set, vox2_dev) from every embedding before cosine scoring and before the "
                   "--norm cohort scores (cohort clips too). One mean per scored embedding space: per "
                   "modality of the raw backbone embeddings without --head (over the clips that have it), "
                   "per side's modalities of the head's output with --head (before L2 normalisation). "
                   "Off by default.")
@click.option("--top-k", type=click.IntRange(min=1), default=300, show_default=True,
              help="AS-norm: cohort scores kept per utterance (the k best).")
@click.option("--skip-missing", is_flag=True,
              help="Drop trials naming utterances absent from the cache (or lacking every "
                   "modality the mode compares) instead of failing; the sidecar counts them.")
@click.option("--force", is_flag=True,
              help="Score even if the head was trained in another embedding space (other backbones or "
                   "segment/frame settings; another corpus with the same ones is fine), or the cohort "
                   "cache comes from other backbones.")
@click.option("--out", "out_paths", required=True, multiple=True, type=click.Path(),
              help="Scores TSV to write (one per --trials, in order); provenance goes to <out>.json.")
@click.option("--batch-size", type=click.IntRange(min=1), default=4096, show_default=True,
              help="Utterances per head batch.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars or summary.")
def score_cmd(cache_path, trials_paths, mode, head_path, norm, cohort, mean_sub, top_k, skip_missing, force,
              out_paths, batch_size, quiet):
    """Score a trial list from the embedding cache.

    Each unique utterance is read (or embedded through --head) once, then all trials
    are scored in vectorised chunks. Writes OUT (TSV: label enrol test score, in the
    trial list's order; label NA for unlabeled lists) and OUT.json (provenance).

    \b
    Examples:
      avfuse score --cache emb.zarr --trials veri_test2.txt --mode AxA --out a.tsv
      avfuse score --cache emb.zarr --trials list_test_all.txt.gz --mode AVxAV \\
          --head runs/dca.pt --norm asnorm --cohort vox2.zarr:dev --out e.tsv
    """
    from data_manifests.trials import read_trials
    from pipeline.cache.reader import open_cache
    from pipeline.core.fsio import sha256_file
    from pipeline.core.metrics import compute_metrics
    from pipeline.core.outputs import check_output
    from pipeline.score.engine import check_scored, score_from_cache
    from pipeline.score.files import sidecar_path, write_scores

    inputs = [cache_path, *trials_paths, head_path, *(cohort.rsplit(":", 1) if cohort else ()),
              *(mean_sub.rsplit(":", 1) if mean_sub else ())]
    for op in out_paths:
        check_output(op, inputs, also=[sidecar_path(op)])
    if norm != "none" and not cohort:
        raise ConfigError(f"--norm {norm} needs --cohort", hint="e.g. --cohort dev (a split of this cache) or --cohort vox2.zarr:dev")
    if norm == "none" and cohort:
        raise ConfigError("--cohort given without --norm", hint="add --norm snorm or --norm asnorm")
    if len(trials_paths) != len(out_paths):
        raise ConfigError(f"{len(trials_paths)} --trials but {len(out_paths)} --out",
                          hint="give one --out per --trials, in the same order")
    cache = open_cache(cache_path)
    head = head_info = meta = None
    if head_path:
        from fusion.checkpoint import check_dims, check_provenance, load_head
        head, meta = load_head(head_path)
        check_dims(head, cache, path=head_path)
        check_provenance(meta, cache, force=force, path=head_path)
        head_info = _head_info(head_path, head, meta)
    if len(trials_paths) > 1:
        from pipeline.score.multi import score_lists
        done = score_lists(cache, trials_paths, out_paths, mode, head=head, head_meta=meta, head_info=head_info,
                           norm=norm, cohort=cohort, top_k=top_k, skip_missing=skip_missing, force=force,
                           batch_size=batch_size, progress=not quiet, mean_sub=mean_sub)
        for tp, op, sc in ([] if quiet else done):
            m = compute_metrics(sc.scores, sc.labels) if sc.labeled and 0 < sc.labels.sum() < len(sc) else None
            click.echo(f"{tp}: {len(sc):,} trials -> {op}" + (f"  {_format_metrics(m)}" if m else ""))
        return
    trials_path, out_path = trials_paths[0], out_paths[0]
    trials = read_trials(trials_path)
    result = score_from_cache(cache, trials, mode, head=head, head_meta=meta, norm=norm, cohort=cohort,
                              top_k=top_k, skip_missing=skip_missing, force=force, batch_size=batch_size,
                              progress=not quiet, mean_sub=mean_sub)
    check_scored(result, trials, head is not None)   # 0 scored or a NaN score: nothing is written
    sidecar = build_sidecar(cache=cache, trials=trials, trials_sha=sha256_file(trials_path), mode=mode,
                            result=result, head_info=head_info, skip_missing=skip_missing, force=force)
    write_scores(out_path, result, sidecar)
    c = result.info["counts"]
    nrm = result.info["norm"]
    if nrm.get("top_k") and nrm.get("top_k_effective", nrm["top_k"]) < nrm["top_k"]:
        click.echo(f"avfuse: note: the cohort has {nrm['top_k_effective']} speakers, fewer than --top-k "
                   f"{nrm['top_k']}: AS-norm used every cohort score, i.e. it is S-norm here (a cohort of "
                   "hundreds of speakers, e.g. VoxCeleb2 dev's 5,994, is what --top-k 300 is for)", err=True)
    if c.get("n_partial"):
        click.echo(f"avfuse: note: {c['n_partial']:,} of {c['n_scored']:,} trials were scored on one modality "
                   f"alone ({mode} falls back to the modality both sides have; has_audio/has_face of the cache "
                   "say which clips lack one, `avfuse cache info` counts them)", err=True)
    if quiet:
        return
    msg = f"scored {c['n_scored']:,} of {c['n_trials_in_list']:,} trials ({mode}"
    msg += f", head {head_info['name']}" if head_info else ""
    msg += f", {norm}" if norm != "none" else ""
    msg += f", mean-sub {mean_sub}" if mean_sub else ""
    msg += f") -> {out_path}"
    click.echo(msg)
    if c["n_skipped"]:
        click.echo(f"skipped {c['n_skipped']:,} trials: {c['n_skipped_missing']:,} name utterances missing "
                   f"from the cache, {c['n_skipped_unscorable']:,} lack the compared modalities")
    if result.labeled and c["n_target"] and c["n_nontarget"]:
        click.echo(_format_metrics(compute_metrics(result.scores, result.labels)))


def _note_uncalibrated(paths) -> None:
    """One note when a scores file's sidecar says its scores are not LLRs (cosines, dots): actDCF and
    Cllr read scores as LLRs, so for raw scores they measure the miscalibration, not the system."""
    from pipeline.score.files import sidecar_path
    raw = []
    for p in paths:
        try:
            kind = json.loads(sidecar_path(p).read_text()).get("score_kind")
        except (OSError, ValueError, AttributeError):
            continue                        # no sidecar (scores from elsewhere): nothing known
        if kind and kind != "llr":
            raw.append(f"{Path(p).name} ({kind})")
    if raw:
        click.echo(f"avfuse: note: not LLRs: {', '.join(raw)}; actDCF and Cllr read scores as LLRs, so here they "
                   "measure the miscalibration (minDCF, minCllr and EER do not depend on it); `avfuse calibrate "
                   "fit/apply` maps scores to LLRs", err=True)


def _format_metrics(m: dict, name: str | None = None) -> str:
    from pipeline.report.evaluation import llr_text
    head = f"{name}: " if name else ""
    return (f"{head}EER {m['eer_percent']:.3f}%  minDCF(p=0.01) {m['min_dcf_p0.01']:.4f}  "
            f"minDCF(p=0.05) {m['min_dcf_p0.05']:.4f}{llr_text(m)}  trials {m['n_trials']:,} "
            f"({m['n_target']:,} target, {m['n_nontarget']:,} non-target)")


JSON_KEYS = ("eer_percent", "min_dcf_p0.01", "min_dcf_p0.05", "act_dcf_p0.01", "act_dcf_p0.05", "cllr",
             "min_cllr", "n_trials", "n_target", "n_nontarget")


def evaluate_files(paths: list[str], thresholds=()) -> list[tuple[str, dict, object]]:
    """``[(path, metrics, ErrorCurves)]`` for scores files; unlabeled -> ``ScoringError``.
    ``thresholds``: ``eval_report.parse_thresholds`` specs, answered in ``metrics["thresholds"]``."""
    from pipeline.core.metrics import compute_metrics, error_curves
    from pipeline.report.evaluation import extend_metrics
    from pipeline.score.files import read_scores

    out = []
    for p in paths:
        s = read_scores(p)
        n_na = int((s.labels < 0).sum())
        if n_na:
            raise ScoringError(f"{n_na:,} of {len(s):,} trials are unlabeled (label NA)", path=p,
                               hint="EER/minDCF need a labeled trial list ('label enrol test'); "
                                    "rescore with one")
        try:
            m = compute_metrics(s.scores, s.labels)
            c = error_curves(s.scores, s.labels)
            extend_metrics(m, s.scores, s.labels, c, thresholds)
        except ScoringError as e:
            raise ScoringError(e.message, path=p, hint=e.hint) from None
        out.append((p, m, c))
    return out


@click.command("evaluate", context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--scores", "scores_paths", required=True, multiple=True, type=click.Path(),
              help="Scores TSV from `avfuse score` (repeat to compare systems on one DET plot).")
@click.option("--json", "as_json", is_flag=True,
              help="Print JSON: one object (eer_percent, min_dcf_p0.01, min_dcf_p0.05, act_dcf_p0.01, "
                   "act_dcf_p0.05, cllr, min_cllr, n_trials, n_target, n_nontarget, and thresholds with "
                   "--threshold-at); with several --scores, an object per file keyed by path.")
@click.option("--det-plot", type=click.Path(), default=None,
              help="Write a DET plot (.png/.pdf/.svg): normal-deviate axes, EER points marked.")
@click.option("--label", "labels", multiple=True,
              help="Curve name per --scores, in order (default: the file name).")
@click.option("--title", default="DET curve", show_default=True, help="DET plot title.")
@click.option("--threshold-at", "threshold_at", multiple=True, metavar="far=1%|frr=X",
              help="Also print the score threshold (accept if score > it) at this false-acceptance or "
                   "false-rejection rate, e.g. far=1% or frr=0.05 (repeatable).")
@click.option("--by-list", is_flag=True,
              help="Print systems x trial lists (e.g. Vox1-O/E/H as papers do): EER and minDCF(p=0.05, the "
                   "VoxSRC setting; --json has p=0.01 too) per list. Name each file SYSTEM:LIST with --label, or let the sidecars name them.")
def evaluate_cmd(scores_paths, as_json, det_plot, labels, title, threshold_at, by_list):
    """EER (%), normalised minDCF and actDCF (Cmiss = Cfa = 1, p_target 0.01 and 0.05), Cllr and
    minCllr of scores files; several --scores give one table.

    actDCF and Cllr read the scores as log-likelihood ratios (Bayes threshold
    log((1-p)/p)): meaningful after `avfuse calibrate apply`, not for raw cosines.

    Thresholds lie between distinct scores (tied trials are accepted or rejected
    together); the EER interpolates linearly between the two operating points that
    bracket Pmiss = Pfa. Exact definitions: docs/metrics.md.
    """
    from pipeline.report.det import plot_det

    if labels and len(labels) != len(scores_paths):
        raise ConfigError(f"{len(labels)} --label for {len(scores_paths)} --scores",
                          hint="give one --label per --scores, or none")
    from pipeline.core.outputs import check_output

    check_output(det_plot, scores_paths, flag="--det-plot")
    if det_plot and Path(det_plot).suffix.lower().lstrip(".") not in PLOT_FORMATS:
        raise ConfigError(f"unsupported plot format {Path(det_plot).suffix or '(none)'}", path=det_plot,
                          hint=f"name the plot *.{' / *.'.join(PLOT_FORMATS)}")
    from pipeline.report.evaluation import parse_thresholds, results_table, threshold_lines
    results = evaluate_files(list(scores_paths), parse_thresholds(threshold_at))
    if as_json:
        keys = JSON_KEYS + (("thresholds",) if threshold_at else ())
        objs = {p: {k: m[k] for k in keys} for p, m, _ in results}
        obj = next(iter(objs.values())) if len(objs) == 1 else objs
        click.echo(json.dumps(obj, indent=None, sort_keys=False))
    elif by_list:
        from pipeline.report.evaluation import by_list_table, list_entry
        click.echo(by_list_table([(*list_entry(p, labels[i] if labels else None), m)
                                  for i, (p, m, _) in enumerate(results)]))
    elif len(results) == 1:
        click.echo(_format_metrics(results[0][1]))
        for line in threshold_lines(results[0][1]):
            click.echo(line)
    else:
        names = list(labels) if labels else [p for p, _, _ in results]
        click.echo(results_table([(n, m) for n, (_, m, _) in zip(names, results)]))
    if not as_json:
        _note_uncalibrated([p for p, _, _ in results])
    if det_plot:
        names = list(labels) if labels else [Path(p).name for p, _, _ in results]
        plot_det([(n, c) for n, (_, _, c) in zip(names, results)], det_plot, title=title)
        click.echo(f"DET plot -> {det_plot}", err=as_json)
