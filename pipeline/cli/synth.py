"""``avfuse synth``: write the synthetic toy VoxCeleb corpus (see :mod:`data_manifests.synth`)."""

from __future__ import annotations

import json

import click


@click.command("synth", context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Folder to write the corpus to (new or empty; see --overwrite).")
@click.option("--layout", type=click.Choice(["vox2", "vox1"]), default="vox2", show_default=True,
              help="vox2: dev|test/aac/*.m4a + dev|test/mp4/*.mp4; vox1: wav/*.wav + mp4/*.mp4 or frames/*/*.jpg.")
@click.option("--speakers", type=int, default=40, show_default=True,
              help="Number of identities (split into train/dev/test by --split-fractions; at least 6).")
@click.option("--split-fractions", default="0.6,0.2,0.2", show_default=True, metavar="TRAIN,DEV,TEST",
              help="Shares of the identities in train, dev and test (the quality gates' corpus: 0.6,0.1,0.3).")
@click.option("--videos-per-speaker", type=int, default=2, show_default=True,
              help="Videos (recording sessions) per identity; target trials pair different videos.")
@click.option("--clips-per-video", type=int, default=2, show_default=True, help="Utterances per video.")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seed: the same seed gives the same media, manifest and trials.")
@click.option("--clip-seconds", type=float, default=1.0, show_default=True,
              help="Mean clip length; each clip is 0.75-1.25 x this, in whole 40 ms video frames.")
@click.option("--frames-format", type=click.Choice(["mp4", "jpg"]), default="mp4", show_default=True,
              help="vox1 only: faces as mp4 videos or as folders of jpg frames (0001.jpg ...).")
@click.option("--noisy-share", type=float, default=0.15, show_default=True,
              help="Share of clips with very noisy audio.")
@click.option("--occluded-share", type=float, default=0.10, show_default=True,
              help="Share of clips with the face heavily occluded.")
@click.option("--absent-share", type=float, default=0.05, show_default=True,
              help="Share of clips with no face (blank frames).")
@click.option("--audio-variation", type=float, default=1.0, show_default=True,
              help="Scale of per-video channel variation (EQ, reverb, band limits); higher is harder.")
@click.option("--face-variation", type=float, default=1.0, show_default=True,
              help="Scale of per-video lighting/pose/blur variation; higher is harder.")
@click.option("--av-correlation", type=float, default=0.0, show_default=True,
              help="Correlation R in [0, 1] of latent traits (sex, age, size) shared by a speaker's voice "
                   "(pitch, formants, rate) and face (shape, proportions, hair, beard). 0: independent, as "
                   "before the option (same bytes); 1: voice and face see the same traits.")
@click.option("--max-trials", type=int, default=None,
              help="Cap on trials per split (default: every cross-video target pair plus as many non-targets).")
@click.option("--workers", type=int, default=2, show_default=True,
              help="Processes rendering videos in parallel (the output does not depend on it).")
@click.option("--overwrite", is_flag=True, help="Replace an existing synthetic corpus in --out.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def synth_cmd(out_dir, layout, speakers, split_fractions, videos_per_speaker, clips_per_video, seed, clip_seconds, frames_format,
              noisy_share, occluded_share, absent_share, audio_variation, face_variation, av_correlation, max_trials,
              workers, overwrite, as_json, quiet):
    """Write a synthetic toy VoxCeleb corpus: real media in the real layout, a manifest and trials.

    Each identity has a procedural voice (pitch, formants, timbre, speaking rate) and a
    procedural face (shape, colours, features), varied per video (channel, noise, lighting,
    pose, blur); some clips have noisy audio or an occluded/absent face. Identities are split
    into disjoint train/dev/test sets. Writes DIR/manifest.jsonl, DIR/trials/dev.txt,
    DIR/trials/test.txt (VoxCeleb1 format) and DIR/synth_info.json (per-clip conditions).

    \b
    Example:
      avfuse synth --out toy --layout vox2 --speakers 40 --seed 0
      avfuse synth --out toy1 --layout vox1 --frames-format jpg --speakers 6
      avfuse synth --out toy_linked --av-correlation 1   # voice and face share sex/age/size
    """
    from data_manifests.synth.corpus import synthesize
    from data_manifests.synth.face import FaceVariation
    from data_manifests.synth.voice import VoiceVariation
    from pipeline.core.errors import ConfigError
    from pipeline.core.outputs import check_output
    check_output(out_dir, folder=True)
    for name, v in (("--audio-variation", audio_variation), ("--face-variation", face_variation)):
        if not 0 <= v <= 3:
            raise ConfigError(f"{name} must be in [0, 3], got {v}", hint="1.0 is the default difficulty")
    if workers < 1:
        raise ConfigError(f"--workers must be >= 1, got {workers}", hint="use 1 to run in this process")
    try:
        fractions = tuple(float(x) for x in split_fractions.split(","))
    except ValueError:
        fractions = ()
    if len(fractions) != 3:
        raise ConfigError(f"--split-fractions takes three numbers TRAIN,DEV,TEST, got {split_fractions!r}",
                          hint="e.g. --split-fractions 0.6,0.1,0.3")
    report = synthesize(
        out_dir, layout=layout, speakers=speakers, videos_per_speaker=videos_per_speaker,
        clips_per_video=clips_per_video, seed=seed, clip_seconds=clip_seconds, frames_format=frames_format,
        workers=workers, overwrite=overwrite, progress=not quiet,
        noisy_audio_share=noisy_share, occluded_share=occluded_share, absent_share=absent_share,
        max_trials=max_trials, av_correlation=av_correlation, split_fractions=fractions, voice=VoiceVariation(channel=audio_variation),
        face=FaceVariation(scene=face_variation))
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    sp, cl, dg = report["speakers_per_split"], report["clips_per_split"], report["degraded"]
    click.echo(f"wrote {report['n_clips']} clips ({report['total_seconds']:.1f} s of audio-video) of "
               f"{report['n_speakers']} speakers to {report['out_dir']} in {report['elapsed_s']:.1f} s")
    click.echo(f"  splits: train {sp['train']} speakers / {cl['train']} clips, dev {sp['dev']} / {cl['dev']}, "
               f"test {sp['test']} / {cl['test']}")
    click.echo(f"  degraded clips: {dg['noisy_audio']} noisy audio, {dg['face_occluded']} occluded face, "
               f"{dg['face_absent']} no face")
    click.echo(f"  manifest: {report['manifest']}")
    for split, path in report["trials"].items():
        n = report["n_trials"][split]
        click.echo(f"  trials {split}: {path} ({n['n_trials']} trials, {n['n_target']} target)")
