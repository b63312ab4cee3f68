"""``avfuse score`` and ``avfuse evaluate``.

``score`` writes ``scores.tsv`` (``label enrol test score``, trial-list order) and
the sidecar ``scores.tsv.json``::

    {"avfuse_version", "created_utc",
     "cache": {"path", "fingerprint"},
     "trials": {"path", "sha256", "n_trials", "labeled"},
     "mode", "enrol_use", "test_use", "channels", "score_kind",
     "head": null | {"path", "sha256", "name", "config_fingerprint", "cache_fingerprint"},
     "norm": {"method", "cohort", "cohort_cache", "cohort_cache_fingerprint", "cohort_split",
              "top_k", "cohort_speakers"},
     "skip_missing", "force",
     "counts": {"n_trials_in_list", "n_scored", "n_skipped", "n_skipped_missing",
                "n_skipped_unscorable", "n_utterances_missing", "n_embedded", "n_target", "n_nontarget"},
     "timings_s": {"read_or_embed", "cohort", "norm_stats", "score"},
     "config_fingerprint"}

``config_fingerprint`` (``pipeline.core.config.fingerprint``) covers what determines
the scores: cache fingerprint, trials sha256, mode, head sha256, norm settings
(with the cohort cache fingerprint and split) and ``skip_missing``.
"""

from __future__ import annotations

import datetime as _dt
import json
from pathlib import Path

import click

from pipeline import __version__
from pipeline.core.errors import ConfigError, ScoringError

MODE_NAMES = ("AxA", "VxV", "AVxAV", "AVxA", "AVxV")
PLOT_FORMATS = ("png", "pdf", "svg")


def _head_info(path: str, head, meta: dict) -> dict:
    from pipeline.core.config import fingerprint
    from pipeline.core.fsio import sha256_file
    return {"path": str(Path(path).resolve()), "sha256": sha256_file(path),
            "name": getattr(head, "name", None),
            "config_fingerprint": fingerprint(getattr(head, "config", {}) or {}),
            "cache_fingerprint": meta.get("cache_fingerprint")}


def build_sidecar(*, cache, trials, trials_sha: str, mode: str, result, head_info: dict | None,
                  skip_missing: bool, force: bool) -> dict:
    """The provenance sidecar of a scores file (see the module docstring)."""
    from pipeline.core.config import fingerprint
    from pipeline.core.modes import MODES

    info = result.info
    norm = info["norm"]
    config = {"cache_fingerprint": cache.fingerprint, "trials_sha256": trials_sha, "mode": mode,
              "head_sha256": head_info["sha256"] if head_info else None,
              "norm": {k: norm.get(k) for k in ("method", "cohort_cache_fingerprint", "cohort_split",
                                                "top_k")},
              "skip_missing": bool(skip_missing)}
    enrol_use, test_use = MODES[mode]
    return {
        "avfuse_version": __version__,
        "created_utc": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "cache": {"path": str(Path(cache.path).resolve()), "fingerprint": cache.fingerprint},
        "trials": {"path": str(Path(trials.path).resolve()), "sha256": trials_sha,
                   "n_trials": int(trials.n_trials), "labeled": bool(trials.labeled)},
        "mode": mode, "enrol_use": list(enrol_use), "test_use": list(test_use),
        "channels": info["channels"], "score_kind": info["score_kind"],
        "head": head_info, "norm": norm, "skip_missing": bool(skip_missing), "force": bool(force),
        "counts": info["counts"], "timings_s": info.get("timings_s"),
        "config_fingerprint": fingerprint(config),
    }


@click.command("score", context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--cache", "cache_path", required=True, type=click.Path(),
              help="Embedding cache (.zarr / .h5) holding every utterance of the trial list.")
@click.option("--trials", "trials_path", required=True, type=click.Path(),
              help="Trial list, 'label enrol test' or 'enrol test' (.txt or .txt.gz).")
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
@click.option("--top-k", type=click.IntRange(min=1), default=300, show_default=True,
              help="AS-norm: cohort scores kept per utterance (the k best).")
@click.option("--skip-missing", is_flag=True,
              help="Drop trials naming utterances absent from the cache (or lacking every "
                   "modality the mode compares) instead of failing; the sidecar counts them.")
@click.option("--force", is_flag=True,
              help="Score even if the head was trained on a cache with another fingerprint "
                   "(or the cohort cache comes from other backbones).")
@click.option("--out", "out_path", required=True, type=click.Path(),
              help="Scores TSV to write; provenance goes to <out>.json.")
@click.option("--batch-size", type=click.IntRange(min=1), default=4096, show_default=True,
              help="Utterances per head batch.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars or summary.")
def score_cmd(cache_path, trials_path, mode, head_path, norm, cohort, top_k, skip_missing, force,
              out_path, batch_size, quiet):
    """Score a trial list from the embedding cache.

    Each unique utterance is read (or embedded through --head) once, then all trials
    are scored in vectorised chunks. Writes OUT (TSV: label enrol test score, in the
    trial list's order; label NA for unlabeled lists) and OUT.json (provenance).

    \b
    Examples:
      avfuse score --cache emb.zarr --trials veri_test2.txt --mode AxA --out a.tsv
      avfuse score --cache emb.zarr --trials list_test_all.txt.gz --mode AVxAV \\
          --head runs/dca.pt --norm asnorm --cohort train --out e.tsv
    """
    from data_manifests.trials import read_trials
    from pipeline.cache.reader import open_cache
    from pipeline.core.fsio import sha256_file
    from pipeline.core.metrics import compute_metrics
    from pipeline.core.outputs import check_output
    from pipeline.score.engine import check_scored, score_from_cache
    from pipeline.score.files import sidecar_path, write_scores

    check_output(out_path, [cache_path, trials_path, head_path, *(cohort.rsplit(":", 1) if cohort else ())],
                 also=[sidecar_path(out_path)])
    if norm != "none" and not cohort:
        raise ConfigError(f"--norm {norm} needs --cohort", hint="e.g. --cohort train")
    if norm == "none" and cohort:
        raise ConfigError("--cohort given without --norm", hint="add --norm snorm or --norm asnorm")
    cache = open_cache(cache_path)
    trials = read_trials(trials_path)
    head = head_info = meta = None
    if head_path:
        from fusion.checkpoint import check_dims, check_provenance, load_head
        head, meta = load_head(head_path)
        check_dims(head, cache, path=head_path)
        check_provenance(meta, cache, force=force, path=head_path)
        head_info = _head_info(head_path, head, meta)
    result = score_from_cache(cache, trials, mode, head=head, head_meta=meta, norm=norm, cohort=cohort,
                              top_k=top_k, skip_missing=skip_missing, force=force, batch_size=batch_size,
                              progress=not quiet)
    check_scored(result, trials, head is not None)   # 0 scored or a NaN score: nothing is written
    sidecar = build_sidecar(cache=cache, trials=trials, trials_sha=sha256_file(trials_path), mode=mode,
                            result=result, head_info=head_info, skip_missing=skip_missing, force=force)
    write_scores(out_path, result, sidecar)
    if quiet:
        return
    c = result.info["counts"]
    msg = f"scored {c['n_scored']:,} of {c['n_trials_in_list']:,} trials ({mode}"
    msg += f", head {head_info['name']}" if head_info else ""
    msg += f", {norm}" if norm != "none" else ""
    msg += f") -> {out_path}"
    click.echo(msg)
    if c["n_skipped"]:
        click.echo(f"skipped {c['n_skipped']:,} trials: {c['n_skipped_missing']:,} name utterances missing "
                   f"from the cache, {c['n_skipped_unscorable']:,} lack the compared modalities")
    if result.labeled and c["n_target"] and c["n_nontarget"]:
        click.echo(_format_metrics(compute_metrics(result.scores, result.labels)))


def _format_metrics(m: dict, name: str | None = None) -> str:
    head = f"{name}: " if name else ""
    return (f"{head}EER {m['eer_percent']:.3f}%  minDCF(p=0.01) {m['min_dcf_p0.01']:.4f}  "
            f"minDCF(p=0.05) {m['min_dcf_p0.05']:.4f}  trials {m['n_trials']:,} "
            f"({m['n_target']:,} target, {m['n_nontarget']:,} non-target)")


JSON_KEYS = ("eer_percent", "min_dcf_p0.01", "min_dcf_p0.05", "n_trials", "n_target", "n_nontarget")


def evaluate_files(paths: list[str]) -> list[tuple[str, dict, object]]:
    """``[(path, metrics, ErrorCurves)]`` for scores files; unlabeled -> ``ScoringError``."""
    from pipeline.core.metrics import compute_metrics, error_curves
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
        except ScoringError as e:
            raise ScoringError(e.message, path=p, hint=e.hint) from None
        out.append((p, m, c))
    return out


@click.command("evaluate", context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--scores", "scores_paths", required=True, multiple=True, type=click.Path(),
              help="Scores TSV from `avfuse score` (repeat to compare systems on one DET plot).")
@click.option("--json", "as_json", is_flag=True,
              help="Print JSON: one object (eer_percent, min_dcf_p0.01, min_dcf_p0.05, n_trials, "
                   "n_target, n_nontarget); with several --scores, an object per file keyed by path.")
@click.option("--det-plot", type=click.Path(), default=None,
              help="Write a DET plot (.png/.pdf/.svg): normal-deviate axes, EER points marked.")
@click.option("--label", "labels", multiple=True,
              help="Curve name per --scores, in order (default: the file name).")
@click.option("--title", default="DET curve", show_default=True, help="DET plot title.")
def evaluate_cmd(scores_paths, as_json, det_plot, labels, title):
    """EER (%) and normalised minDCF (Cmiss = Cfa = 1, p_target 0.01 and 0.05) of scores files.

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
    results = evaluate_files(list(scores_paths))
    if as_json:
        objs = {p: {k: m[k] for k in JSON_KEYS} for p, m, _ in results}
        obj = next(iter(objs.values())) if len(objs) == 1 else objs
        click.echo(json.dumps(obj, indent=None, sort_keys=False))
    else:
        for p, m, _ in results:
            click.echo(_format_metrics(m, p if len(results) > 1 else None))
    if det_plot:
        names = list(labels) if labels else [Path(p).name for p, _, _ in results]
        plot_det([(n, c) for n, (_, _, c) in zip(names, results)], det_plot, title=title)
        click.echo(f"DET plot -> {det_plot}", err=as_json)
