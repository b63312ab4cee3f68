"""``avfuse ablate``: the head x mode table and the ablations of both papers, one command."""

from __future__ import annotations

import click

from pipeline.cli.options import default_split, recipe_options, train_config
from pipeline.core.errors import ConfigError

_CTX = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


def _split(text: str | None) -> list[str]:
    return [t.strip() for t in (text or "").split(",") if t.strip()]


def parse_modes(text: str | None, flag: str = "--modes") -> list[str]:
    """Comma-separated mode names, all known and at least one; else ``ConfigError``."""
    from pipeline.core.modes import MODES
    modes = _split(text)
    unknown = [m for m in modes if m not in MODES]
    if unknown or not modes:
        raise ConfigError(f"{flag}: unknown mode(s) {', '.join(unknown)}" if unknown else f"{flag} is empty",
                          hint=f"known modes: {','.join(MODES)}")
    return modes


def parse_floats(text: str, what: str) -> list[float]:
    """``"0,0.1,0.25"`` -> floats (``"none"``/empty: no values); bad -> ``ConfigError``."""
    if text.strip().lower() in ("", "none", "off"):
        return []
    try:
        return [float(t) for t in _split(text)]
    except ValueError:
        raise ConfigError(f"--{what} must be comma-separated numbers, got {text!r}",
                          hint=f"e.g. --{what} 0,0.1,0.25,0.5 (or 'none' to skip)") from None


def parse_ints(text: str, what: str) -> list[int] | None:
    """``"1,2,4,8"`` -> ints; ``"auto"`` -> None; ``"none"`` -> []."""
    t = text.strip().lower()
    if t == "auto":
        return None
    if t in ("", "none", "off"):
        return []
    try:
        return [int(x) for x in _split(text)]
    except ValueError:
        raise ConfigError(f"--{what} must be comma-separated whole numbers, got {text!r}",
                          hint=f"e.g. --{what} 1,2,4,8, 'auto' or 'none'") from None


@click.command("ablate", context_settings=_CTX)
@click.option("--cache", "-c", "cache_path", required=True, type=click.Path(), help="Embedding cache.")
@click.option("--trials", "-t", "trials_path", required=True, type=click.Path(),
              help="Labelled trial list to evaluate on (label enrol test).")
@click.option("--out", "-o", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Folder for the tables, figures, trained heads and index.html.")
@click.option("--heads", default="none,score_avg,mean,mlp,multiview,cross_attention,jca,dca", show_default=True,
              help="Comma-separated systems: 'none' (raw backbones), head names, head checkpoints (*.pt), or "
                   "'cal_fusion' (A and V cosines fused by logistic regression on --dev-trials; AVxAV cell).")
@click.option("--modes", default="AxA,VxV,AVxAV,AVxA,AVxV", show_default=True, help="Comma-separated modes.")
@click.option("--runs", "runs_dir", type=click.Path(file_okay=False), default=None,
              help="Folder of trained heads NAME.pt (from `avfuse train`).")
@click.option("--train", is_flag=True, help="Train heads missing from --runs now (back to back, in memory).")
@click.option("--dev-trials", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Labelled dev list for early stopping / score_avg calibration of heads trained now.")
@recipe_options
@click.option("--missing", "missing_text", default="0,0.1,0.25,0.5", show_default=True,
              help="Shares of clips whose face (or audio) is dropped at test time; 'none' to skip.")
@click.option("--missing-seed", type=int, default=0, show_default=True, help="Seed of the dropped clips.")
@click.option("--lengths", "lengths_text", default="auto", show_default=True,
              help="Clip lengths in cached steps (e.g. 1,2,4,8); 'auto': 1, 2, 4, ... up to the cache's; "
                   "'none' to skip.")
@click.option("--sweep", "sweeps", multiple=True, metavar="HEAD.FIELD=V1,V2,...",
              help="Retrain HEAD per value (repeatable), e.g. dca.temperature=0.05,0.1,0.5,1, mlp.dropout=0,0.2,0.5, "
                   "multiview.dim=128,256,512, mean.mask_prob=0,0.25,0.5.")
@click.option("--corpus", "corpus_dir", type=click.Path(exists=True, file_okay=False), default=None,
              help="Synthetic corpus folder (synth_info.json): DCA gate statistics by clip condition.")
@click.option("--no-skip", "no_skip", is_flag=True,
              help="Fail on trials a mode cannot score instead of skipping them (and counting them).")
@click.option("--force", is_flag=True, help="Use head checkpoints trained in another embedding space "
                                                 "(other backbones or segment/frame settings).")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars; print only the table.")
def ablate_cmd(cache_path, trials_path, out_dir, heads, modes, runs_dir, train, dev_trials, config_path, epochs,
               batch_size, lr, mask_prob, seed, split, device, missing_text, missing_seed, lengths_text, sweeps,
               corpus_dir, no_skip, force, quiet) -> None:
    """Head x mode table, test-time missing modality, clip length, sweeps and DCA gates.

    \b
    Writes to --out: table.{md,csv,json} (EER %, minDCF at p=0.01 and 0.05 for
    every system x mode), missing.* + missing.png, length.* + length.png,
    sweeps.* + sweeps.png, gates.* + gates.png, ablation.json, index.html,
    and heads/NAME.pt for every head trained now. Every cell is scored with
    the code of `avfuse score` and evaluated with that of `avfuse evaluate`.

    \b
    Examples:
      avfuse ablate -c toy.zarr -t toy/trials/test.txt --train \\
          --dev-trials toy/trials/dev.txt --epochs 20 -o ablation/
      avfuse ablate -c toy.zarr -t toy/trials/test.txt --heads none,dca --train \\
          --sweep dca.temperature=0.05,0.1,0.5,1 --missing none -o dca_t/
    """
    from pipeline.core.outputs import check_output
    from pipeline.experiments.ablate import format_table, run_ablation

    systems = _split(heads)
    if not systems:
        raise ConfigError("--heads is empty: no system to evaluate",
                          hint="e.g. --heads none,mean,dca (see `avfuse heads`)")
    check_output(out_dir, [cache_path, trials_path, dev_trials, *[h for h in systems if h.endswith(".pt")]],
                  folder=True)
    mode_list = parse_modes(modes)

    cfg = train_config(config_path, epochs=epochs, batch_size=batch_size, lr=lr, mask_prob=mask_prob, seed=seed,
                       split=split, device=device)
    if train:                                # the split heads are trained on, when they are
        from pipeline.cache.reader import open_cache
        default_split(cfg, split, config_path, open_cache(cache_path))
    result = run_ablation(
        cache_path, trials_path, systems, mode_list, out_dir, runs_dir=runs_dir, train=train,
        dev_trials=dev_trials, train_cfg=cfg, missing=parse_floats(missing_text, "missing"),
        lengths=parse_ints(lengths_text, "lengths"), sweeps=list(sweeps), corpus_dir=corpus_dir,
        missing_seed=missing_seed, skip_missing=not no_skip, force=force, progress=not quiet)
    click.echo(format_table(result), nl=False)
    for note in result["notes"]:
        click.echo(f"note: {note}", err=True)
    if not quiet:
        click.echo(f"report: {result['files']['index_html']}", err=True)
