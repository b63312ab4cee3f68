"""``avfuse manifest``: scan a VoxCeleb tree / check a manifest."""

from __future__ import annotations

import os

import click

from pipeline.core.errors import ManifestError

SHOW = 5  # how many problem entries to print before "... and N more"


@click.command("manifest", context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--root", "roots", multiple=True, type=click.Path(file_okay=False), metavar="DIR",
              help="Corpus folder (repeatable; trees are merged). It holds the modality folders "
                   "(vox1: wav/, mp4/ or video/, frames/ or jpg/; vox2: aac/ or wav/, mp4/ or video/) "
                   "or dev/ and test/ folders that hold them.")
@click.option("--layout", type=click.Choice(["vox1", "vox2"]),
              help="vox1: wav + mp4 or jpg frame folders; vox2: m4a + mp4.")
@click.option("--out", type=click.Path(dir_okay=False), metavar="FILE",
              help="Manifest to write (.jsonl or .jsonl.gz), sorted by clip id; a report goes to FILE.scan.json.")
@click.option("--split-from", "split_from", multiple=True, metavar="FILE[:SPLIT]",
              help="Mark clips with a split (repeatable, later wins). A list file (e.g. vox1_tst_duration.txt.gz:test) "
                   "marks each listed 'spk/video/utt' clip (or bare speaker id) with SPLIT; a CSV such as "
                   "vox2_meta.csv gives each speaker its Set column.")
@click.option("--split", metavar="NAME", help="Mark every clip with this split (before --split-from is applied). "
                                               "Clips under a dev/ or test/ folder default to that name.")
@click.option("--dataset", metavar="NAME", help="Dataset name recorded in each record (default: the layout).")
@click.option("--durations", "durations", type=click.Path(dir_okay=False), metavar="FILE", multiple=True,
              help="Take each clip's duration from a VoxCeleb durations file ('spk/video/utt seconds' per line, "
                   ".txt or .txt.gz, e.g. vox2_dev_duration.txt.gz) instead of reading headers; repeatable "
                   "(e.g. VoxCeleb2's dev and test files). Clips no file lists keep an empty duration (counted "
                   "in the report); other listed ids are ignored.")
@click.option("--probe/--no-probe", default=False, show_default=True,
              help="Read every media header (in parallel) for duration, sample_rate, fps, num_frames and list "
                   "unreadable files. About 1-2 CPU-ms per m4a/mp4: an hour of 16 cores for VoxCeleb2 dev.")
@click.option("--workers", type=click.IntRange(1, 256), help="Threads for listing and header reads "
                                                              "(default: 4 per core, at most 16).")
@click.option("--relative", is_flag=True, help="Store media paths relative to the manifest's folder (movable corpus).")
@click.option("--no-resume", is_flag=True, help="Start over instead of resuming an interrupted scan of the same tree.")
@click.option("--check", "check_path", type=click.Path(dir_okay=False), metavar="MANIFEST",
              help="Instead of scanning: report entries of MANIFEST whose media files are gone (exit 2 if any).")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars.")
def manifest_cmd(roots, layout, out, split_from, split, dataset, durations, probe, workers, relative, no_resume,
                 check_path, quiet) -> None:
    """Scan a VoxCeleb1/2 tree into a JSONL clip manifest, or check one.

    \b
    avfuse manifest --root /data/vox2 --layout vox2 --out vox2.jsonl --split-from vox2_meta.csv \\
        --durations vox2_dev_duration.txt.gz
    avfuse manifest --root /data/vox1 --layout vox1 --out vox1.jsonl \\
        --split dev --split-from vox1_tst_duration.txt.gz:test
    avfuse manifest --check vox2.jsonl

    One record per clip id SPK/VIDEO/UTT; a clip found in only one modality is kept with the
    other one empty. The tree is listed with os.scandir; no media file is opened unless
    --probe is given (VoxCeleb2 dev's 2.2M files: about 25 CPU-seconds, one core).

    \b
    Durations and stream facts (duration, sample_rate, fps, num_frames):
      default      left empty; `avfuse extract` decodes every clip anyway and stores the
                   decoded audio's duration in the cache; unreadable media show up in
                   <cache>.failures.jsonl (flagged, the run goes on).
      --durations  duration from the file; the rest empty, filled at extraction as above.
      --probe      read from every header (slow); a file that cannot be read keeps its
                   record (duration empty) and is listed in the report.
    An interrupted scan resumes.
    """
    if check_path is not None:
        if roots or out or layout:
            raise click.UsageError("--check takes only a manifest; drop --root/--layout/--out")
        _check(check_path, quiet)
        return
    missing = [n for n, v in (("--root", roots), ("--layout", layout), ("--out", out)) if not v]
    if missing:
        raise click.UsageError(f"missing {', '.join(missing)} (or use --check MANIFEST)")
    from data_manifests.voxceleb import scan_to_manifest
    from pipeline.core.outputs import check_output

    sources = [x if os.path.exists(x) or ":" not in x else x.rsplit(":", 1)[0] for x in split_from]
    check_output(out, sources, also=[f"{out}.scan.json"])

    if probe and durations:
        raise click.UsageError("--probe reads durations from the headers; drop --durations or --probe")
    report = scan_to_manifest(out, list(roots), layout, dataset=dataset, split=split, split_from=split_from,
                              probe=probe, durations=list(durations) or None, workers=workers, relative=relative,
                              resume=not no_resume, progress=not quiet)
    splits = ", ".join(f"{k} {v}" for k, v in sorted(report.split_counts.items()))
    resumed = f", {report.n_resumed} resumed" if report.n_resumed else ""
    click.echo(f"wrote {out}: {report.n_clips} clips ({report.n_audio_and_face} audio+face, "
               f"{report.n_audio_only} audio only, {report.n_face_only} face only{resumed}); splits: {splits}; "
               f"{report.seconds:.1f} s")
    if report.durations is not None:
        d = report.durations
        click.echo(f"durations: {d['n_listed']} listed in {d['file']}; {report.n_clips - d['n_missing']} clips "
                   f"matched, {d['n_missing']} not listed (duration empty), {d['n_unused']} listed ids not in the tree")
        if d["n_missing"]:
            click.echo(f"avfuse: warning: {d['n_missing']} clip(s) not in {d['file']}, e.g. "
                       f"{', '.join(d['missing_sample'][:3])}; their duration is filled at extraction", err=True)
    for s in report.split_sources:
        if s["n_clips_matched"] == 0 and s["n_speakers_matched"] == 0:
            click.echo(f"avfuse: warning: --split-from {s['source']} matched no scanned clip", err=True)
    if report.n_ignored_files:
        click.echo(f"note: {report.n_ignored_files} files/folders at an unexpected depth or with another "
                   f"extension were ignored", err=True)
    if report.unreadable:
        click.echo(f"avfuse: warning: {report.n_unreadable} unreadable media file(s); their records are kept "
                   f"with an empty duration (all listed in {out}.scan.json):", err=True)
        for e in report.unreadable[:SHOW]:
            click.echo(f"  {e['path']}: {e['error']}", err=True)
        if report.n_unreadable > SHOW:
            click.echo(f"  ... and {report.n_unreadable - SHOW} more", err=True)


def _check(path: str, quiet: bool) -> None:
    from data_manifests.manifest import check_manifest

    rep = check_manifest(path, progress=not quiet)
    if rep.ok:
        click.echo(f"{path}: {rep.n_records} records, all media present")
        return
    click.echo(f"{path}: {rep.n_missing_records} of {rep.n_records} records have missing media "
               f"({len(rep.missing)} paths):", err=True)
    for m in rep.missing[:SHOW]:
        click.echo(f"  {m['clip_id']}  {m['field']}  {m['path']}", err=True)
    if len(rep.missing) > SHOW:
        click.echo(f"  ... and {len(rep.missing) - SHOW} more", err=True)
    raise ManifestError(f"{rep.n_missing_records} of {rep.n_records} records have missing media files",
                        path=path, hint="restore the files, or rescan the tree with `avfuse manifest`")
