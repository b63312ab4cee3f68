"""``avfuse trials``: inspect a VoxCeleb-format trial list (``info``) or draw a labelled one from a
manifest's or a cache's clips (``make``, ``data_manifests.trials_make``)."""

from __future__ import annotations

import json
from pathlib import Path

import click

@click.group("trials", context_settings={"help_option_names": ["-h", "--help"]})
def trials_group() -> None:
    """VoxCeleb-format trial lists ('label enrol test' or unlabeled 'enrol test', .txt or .txt.gz):
    inspect one, or draw a labelled one from a split."""


@trials_group.command("info")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of a table.")
def trials_info(file: str, as_json: bool) -> None:
    """Counts of a trial list.

    \b
    n_trials      lines (trials)
    n_target      label-1 trials     (null for an unlabeled list)
    n_nontarget   label-0 trials     (null for an unlabeled list)
    n_utterances  distinct clip ids on either side (extensions stripped)
    n_speakers    distinct speaker ids (the part before the first '/')
    """
    from data_manifests.trials import read_trials

    info = read_trials(file).summary()
    if as_json:
        click.echo(json.dumps(info))
        return
    info["format"] = "labeled (label enrol test)" if info.pop("labeled") else "unlabeled (enrol test)"
    for k in ("path", "format", "n_trials", "n_target", "n_nontarget", "n_utterances", "n_speakers"):
        v = info[k]
        click.echo(f"{k:<13} {'NA' if v is None else v}")


@trials_group.command("make", short_help="Draw a labelled trial list from a manifest's or a cache's clips.")
@click.option("--manifest", "-m", type=click.Path(dir_okay=False, path_type=Path),
              help="Draw from this manifest's clips (ids, speakers, videos, splits).")
@click.option("--cache", "-c", type=click.Path(path_type=Path), help="... or from this cache's rows.")
@click.option("--split", metavar="NAME", help="Only the clips of this split (e.g. test for VoxCeleb2 test); default: all.")
@click.option("--targets", type=click.IntRange(min=0), default=20000, show_default=True,
              help="Same-speaker trials.")
@click.option("--nontargets", type=click.IntRange(min=0), help="Different-speaker trials [default: as many as --targets].")
@click.option("--same-video-ok", is_flag=True,
              help="Allow target pairs from one video (by default a target pair's clips come from two videos of "
                   "the speaker: one session, room and microphone make verification easy).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the draws (same seed and clips, same list).")
@click.option("--ext", default="", metavar="EXT", help="Appended to every id, e.g. .wav as the VoxCeleb lists write them.")
@click.option("--out", "-o", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Trial list to write ('label enrol test' lines; .gz compresses).")
def trials_make(manifest, cache, split, targets, nontargets, same_video_ok, seed, ext, out) -> None:
    """Draw a labelled trial list from a manifest's or a cache's clips: the dev list that `avfuse
    calibrate fit` and head selection need, from speakers no test list holds.

    \b
    avfuse trials make -m vox2.jsonl --split test --targets 20000 --out vox2_test_trials.txt
    avfuse score --cache vox2.zarr --trials vox2_test_trials.txt --mode AxA --out dev_AxA.tsv

    Targets: an enrolment clip drawn uniformly, then another clip of its speaker (from another video,
    unless --same-video-ok). Non-targets: two clips of different speakers drawn uniformly. Each pair
    at most once; sorted by enrolment id. The same seed and clips give the same list.
    """
    import numpy as np

    from data_manifests.trials import write_trials
    from data_manifests.trials_make import sample_trials
    from pipeline.core.errors import ConfigError
    from pipeline.core.outputs import check_output

    if (manifest is None) == (cache is None):
        raise ConfigError("give one clip source: --manifest or --cache")
    check_output(out, [manifest, cache])
    if manifest is not None:
        from data_manifests.manifest import read_manifest
        recs = read_manifest(manifest)
        ids = np.array([r.clip_id for r in recs], dtype=str)
        spk = np.array([r.speaker for r in recs], dtype=str)
        splits = np.array([r.split or "" for r in recs], dtype=str)
        videos = [r.video for r in recs]
    else:
        from pipeline.cache.reader import open_cache
        c = open_cache(cache)
        ids, spk, splits, videos = np.asarray(c.ids, str), np.asarray(c.speakers, str), np.asarray(c.splits, str), None
    source = manifest or cache
    if split is not None:
        keep = splits == split
        if not keep.any():
            have = ", ".join(sorted(set(splits.tolist()) - {""})) or "none"
            raise ConfigError(f"no clips of split {split!r} in {source}", hint=f"splits there: {have}")
        ids, spk = ids[keep], spk[keep]
        videos = None if videos is None else [v for v, k in zip(videos, keep.tolist()) if k]
    res = sample_trials(ids, spk, targets, nontargets, seed=seed, videos=videos, cross_video=not same_video_ok)
    if not same_video_ok and not res.cross_video:
        click.echo("avfuse: note: no clip names its video (ids are not SPEAKER/VIDEO/UTT), so target pairs "
                   "may come from one video", err=True)
    n = write_trials(out, res.labels, res.enrol, res.test, ext=ext)
    n_t = int(res.labels.sum())
    click.echo(f"{out}: {n:,} trials ({n_t:,} target, {n - n_t:,} non-target) over "
               f"{len(np.unique(np.concatenate([res.enrol, res.test]))):,} clips of {len(np.unique(spk)):,} speakers"
               f"{' of split ' + split if split else ''}")
    for s in res.short:
        click.echo(f"avfuse: note: {s} (the split holds no more)", err=True)
