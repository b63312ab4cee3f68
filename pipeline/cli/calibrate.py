"""``avfuse calibrate fit`` / ``avfuse calibrate apply``: scores -> log-likelihood ratios.

``apply`` writes the scores TSV format of ``avfuse score`` (``label enrol test score``,
the scores now LLRs) and the sidecar ``<out>.json``::

    {"avfuse_version", "created_utc", "score_kind": "llr",
     "calibration": {"path", "sha256", "fingerprint", "features", "prior"},
     "inputs": [{"path", "sha256", "config_fingerprint"}],   # each input's own sidecar fingerprint
     "cache": null | {"path", "fingerprint"},
     "counts": {"n_scored", "n_target", "n_nontarget"},
     "config_fingerprint"}
"""

from __future__ import annotations

import datetime as _dt
from pathlib import Path

import click

from pipeline import __version__

CTX = {"help_option_names": ["-h", "--help"]}


@click.group("calibrate", context_settings=CTX)
def calibrate_group():
    """Calibrate scores to log-likelihood ratios, or fuse several systems' scores (trained late fusion).

    \b
    Prior-weighted logistic regression (as BOSARIS / PYLLR) on a labeled dev list:
      avfuse calibrate fit --scores dev_A.tsv --scores dev_V.tsv --out cal.json
      avfuse calibrate apply --model cal.json --scores eval_A.tsv --scores eval_V.tsv --out eval_AV.tsv
      avfuse evaluate --scores eval_AV.tsv          # actDCF / Cllr are now meaningful
    """


def _open_cache(path):
    if path is None:
        return None
    from pipeline.cache.reader import open_cache
    return open_cache(path)


@calibrate_group.command("fit", context_settings=CTX)
@click.option("--scores", "scores_paths", required=True, multiple=True, type=click.Path(),
              help="Labeled dev scores TSV (from `avfuse score`). Repeat with files of the same trials "
                   "(e.g. AxA and VxV) for linear late fusion.")
@click.option("--quality", default=None, metavar="durations,norms,cohort",
              help="Quality measures added as features (WeSpeaker QMF style), each as the smaller and "
                   "larger value of the two sides: 'durations' = log clip duration, 'norms' = raw "
                   "embedding norm per modality, 'cohort' = mean of the top-k cosines against the "
                   "--cohort speakers per modality. Needs --cache.")
@click.option("--cohort", default=None, metavar="SPLIT|CACHE[:SPLIT]",
              help="Cohort for --quality cohort: a split of --cache (e.g. 'train') or another cache; one "
                   "mean embedding per speaker (as `avfuse score --norm`).")
@click.option("--top-k", type=click.IntRange(min=1), default=300, show_default=True,
              help="--quality cohort: cohort scores averaged per utterance (the k best).")
@click.option("--cache", "cache_path", type=click.Path(), default=None,
              help="Embedding cache holding the trials' utterances (for --quality).")
@click.option("--prior", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.5,
              show_default=True, help="Effective target prior of the training objective (each class "
                                      "weighs as its prior, not its count).")
@click.option("--l2", type=click.FloatRange(min=0), default=1e-6, show_default=True,
              help="L2 penalty on the (standardised) feature weights.")
@click.option("--out", "out_path", required=True, type=click.Path(), help="Calibration model JSON to write.")
@click.option("--quiet", is_flag=True, help="No summary.")
def fit_cmd(scores_paths, quality, cohort, top_k, cache_path, prior, l2, out_path, quiet):
    """Fit a linear LLR map (calibration, or late fusion of several files) on labeled dev trials.

    The model, llr = w . [scores, quality] + b, is written as JSON with a fingerprint.
    The trials of every --scores file must match line by line (same enrol, test and
    label). Prints the dev Cllr of each input and of the calibrated output.
    """
    from pipeline.core.outputs import check_output
    from pipeline.score.calibrate import fit
    from pipeline.score.quality import parse_quality

    check_output(out_path, [*scores_paths, cache_path])

    q = parse_quality(quality)
    if cohort and "cohort" not in q:
        from pipeline.core.errors import ConfigError
        raise ConfigError("--cohort given without --quality cohort", hint="add cohort to --quality, or drop --cohort")
    model = fit(list(scores_paths), quality=q, cache=_open_cache(cache_path) if q else None, prior=prior, l2=l2,
                cohort=cohort, top_k=top_k)
    model.save(out_path)
    if quiet:
        return
    t = model.train
    terms = " + ".join(f"{w:.4g}*{n}" for w, n in zip(model.weights, model.features))
    click.echo(f"llr = {terms} + {model.bias:.4g}   (prior {model.prior:g}, {t['iterations']} L-BFGS iterations)")
    for p, c, mc in zip(scores_paths, t["cllr_raw"], t["min_cllr_raw"]):
        click.echo(f"dev {p}: Cllr {c:.4f}  minCllr {mc:.4f}")
    click.echo(f"dev calibrated: Cllr {t['cllr']:.4f}  minCllr {t['min_cllr']:.4f}  "
               f"({t['n_target']:,} target, {t['n_nontarget']:,} non-target) -> {out_path}")


@calibrate_group.command("apply", context_settings=CTX)
@click.option("--model", "model_path", required=True, type=click.Path(), help="Model JSON from `calibrate fit`.")
@click.option("--scores", "scores_paths", required=True, multiple=True, type=click.Path(),
              help="Scores TSV(s) to map, one per system in the order used at fit, of the same trials.")
@click.option("--cache", "cache_path", type=click.Path(), default=None,
              help="Embedding cache (needed when the model uses quality measures).")
@click.option("--out", "out_path", required=True, type=click.Path(),
              help="Output scores TSV (scores are LLRs); provenance goes to <out>.json.")
@click.option("--quiet", is_flag=True, help="No summary.")
def apply_cmd(model_path, scores_paths, cache_path, out_path, quiet):
    """Map scores (and quality measures) to log-likelihood ratios with a fitted model.

    Writes the `avfuse score` TSV format, so `avfuse evaluate` reads it; the sidecar
    names the model (path, sha256, fingerprint) and each input.
    """
    from pipeline.core.config import fingerprint
    from pipeline.core.fsio import sha256_file
    from pipeline.core.outputs import check_output
    from pipeline.score.calibrate import CalibrationModel, apply
    from pipeline.score.files import sidecar_path

    check_output(out_path, [model_path, *scores_paths, cache_path], also=[sidecar_path(out_path)])
    from pipeline.score.files import sidecar_path, write_scores

    model = CalibrationModel.load(model_path)
    cache = _open_cache(cache_path) if model.quality else None
    out = apply(model, list(scores_paths), cache=cache)
    inputs = []
    for p in scores_paths:
        side = sidecar_path(p)
        fp = None
        if side.is_file():
            import json
            try:
                fp = json.loads(side.read_text()).get("config_fingerprint")
            except (ValueError, AttributeError):
                fp = None
        inputs.append({"path": str(Path(p).resolve()), "sha256": sha256_file(p), "config_fingerprint": fp})
    cal = {"path": str(Path(model_path).resolve()), "sha256": sha256_file(model_path),
           "fingerprint": model.fingerprint, "features": model.features, "prior": model.prior}
    cache_info = None if cache is None else {"path": str(cache.path), "fingerprint": cache.fingerprint}
    sidecar = {
        "avfuse_version": __version__,
        "created_utc": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "score_kind": "llr", "calibration": cal, "inputs": inputs, "cache": cache_info,
        "counts": {"n_scored": len(out), "n_target": int((out.labels == 1).sum()),
                   "n_nontarget": int((out.labels == 0).sum())},
        "config_fingerprint": fingerprint({"model": model.fingerprint,
                                           "inputs": [i["sha256"] for i in inputs],
                                           "cache": cache_info and cache_info["fingerprint"]}),
    }
    write_scores(out_path, out, sidecar)
    if not quiet:
        click.echo(f"calibrated {len(out):,} trials with {model_path} ({model.fingerprint}) -> {out_path}")
