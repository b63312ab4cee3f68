"""``avfuse analyze``: the embedding analysis report (angles, silhouettes, PCA, score histograms, DET)."""

from __future__ import annotations

import click

_CTX = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


@click.command("analyze", context_settings=_CTX)
@click.option("--cache", "-c", "cache_path", required=True, type=click.Path(), help="Embedding cache.")
@click.option("--out", "-o", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Folder for the PNGs, tables and index.html.")
@click.option("--head", "heads", multiple=True, type=click.Path(dir_okay=False),
              help="Head checkpoint (*.pt, from `avfuse train` or `avfuse ablate`); repeatable. The raw "
                   "backbones ('none') are always analysed.")
@click.option("--trials", "-t", "trials_path", type=click.Path(), default=None,
              help="Labelled trial list: adds EER/minDCF, score histograms and DET curves of every mode.")
@click.option("--split", default="test", show_default=True, help="Cache split whose clips are analysed.")
@click.option("--modes", default="AxA,VxV,AVxAV,AVxA,AVxV", show_default=True,
              help="Modes scored with --trials (comma-separated).")
@click.option("--max-clips", type=click.IntRange(min=3), default=5000, show_default=True,
              help="Analyse a seeded sample of at most this many clips (silhouettes cost O(clips^2)).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the clip sample.")
@click.option("--umap", "with_umap", is_flag=True,
              help="Also draw a 2-D UMAP projection (cosine, random_state --seed) beside each PCA figure. "
                   "umap-learn compiles numba code on first use: allow a minute on a small CPU box.")
@click.option("--clip-seconds", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Analyse fixed pieces of this many seconds (2311.05071: 3) built from the cached segment and "
                   "frame embeddings, instead of whole clips; clips shorter than one piece are left out. "
                   "Scores (--trials) stay per clip.")
@click.option("--force", is_flag=True, help="Use heads trained in another embedding space "
                                                 "(other backbones or segment/frame settings).")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
def analyze_cmd(cache_path, out_dir, heads, trials_path, split, modes, max_clips, seed, with_umap, clip_seconds, force,
                quiet) -> None:
    """Embedding analysis report: angles, silhouettes, projections, scores, DET.

    \b
    For the clips of --split and every system (raw backbones + each --head):
    silhouette scores and within/between-speaker variance of the audio-only, face-only and fused embeddings, the
    angle between a clip's audio and face embeddings in a head's shared space
    (per clip and per identity), PCA projections coloured by identity, and
    with --trials the target/non-target score histograms and the DET curves of
    all modes on one plot. Writes PNGs, geometry/metrics tables (md/csv/json),
    analysis.json and a self-contained index.html to --out.

    \b
    Example:
      avfuse analyze -c toy.zarr --head runs/mean.pt --head runs/dca.pt \\
          --trials toy/trials/test.txt -o report/
    """
    from pipeline.cli.ablate import parse_modes
    from pipeline.core.outputs import check_output
    from pipeline.experiments.analyze import run_analysis
    from pipeline.report.analysis import GEOMETRY_COLUMNS
    from pipeline.report.tables import text_table

    check_output(out_dir, [cache_path, trials_path, *heads], folder=True)
    mode_list = parse_modes(modes)
    result = run_analysis(cache_path, out_dir, heads=list(heads), trials=trials_path, split=split,
                          modes=mode_list, max_clips=max_clips, seed=seed, force=force, progress=not quiet,
                          umap=with_umap, clip_seconds=clip_seconds)
    cols = GEOMETRY_COLUMNS[:-1]
    click.echo(text_table(result["geometry"], cols,
                          ["system", "sil A", "sil V", "sil AV", "angle/clip", "median", "angle/id", "clips", "ids"]),
               nl=False)
    for r in result["geometry"]:
        if r["note"]:
            click.echo(f"{r['system']}: {r['note']}")
    click.echo(f"report: {result['files']['index_html']}", err=True)
