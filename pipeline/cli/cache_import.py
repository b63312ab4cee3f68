"""``avfuse cache import``: embeddings from other toolkits into an avfuse cache (logic in
``pipeline.cache_import``)."""

from __future__ import annotations

from pathlib import Path

import click

SRC_HELP = ("a Kaldi .scp or .ark (WeSpeaker, 3D-Speaker, Kaldi), a folder of per-utterance .npy files "
            "(SpeechBrain; relative path = utterance id) or an .npz with an 'ids' array (FILE.npz:ARRAY "
            "names the embedding array). Repeat to combine several files of one modality.")


@click.command("import", context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--out", "-o", required=True, type=click.Path(path_type=Path),
              help="Cache to create: C.zarr (default backend) or C.h5.")
@click.option("--audio", "audio", multiple=True, metavar="SRC", help="Audio clip embeddings (N x D): " + SRC_HELP)
@click.option("--face", "face", multiple=True, metavar="SRC", help="Face clip embeddings (N x D), same forms.")
@click.option("--audio-segments", multiple=True, metavar="SRC",
              help="Per-segment audio embeddings (N x S x D: Kaldi matrices, (S, D) .npy files, an N x S x D "
                   ".npz array). Variable S is padded; all-zero steps count as padding.")
@click.option("--face-frames", multiple=True, metavar="SRC", help="Per-frame face embeddings (N x F x D), same forms.")
@click.option("--manifest", "-m", type=click.Path(dir_okay=False, path_type=Path),
              help="avfuse manifest (JSONL) giving each id its split, speaker and duration.")
@click.option("--split", default="train", show_default=True,
              help="Split of ids without a manifest entry (all ids when no --manifest).")
@click.option("--dtype", type=click.Choice(["float16", "float32"]), default="float16", show_default=True,
              help="Stored float type of the embeddings.")
@click.option("--shard-size", type=click.IntRange(min=1), default=16384, show_default=True,
              help="Rows per shard (the unit of writing and reading).")
@click.option("--audio-model", metavar="NAME",
              help="What made the audio embeddings, e.g. wespeaker_resnet34_vox2. Caches imported with the same "
                   "name are one embedding space: a head trained on one (VoxCeleb2 dev) scores another "
                   "(VoxCeleb1). Without a name only a cache of the same source files is.")
@click.option("--face-model", metavar="NAME", help="The same for the face embeddings.")
@click.option("--overwrite", is_flag=True, help="Replace an existing cache at --out.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
def import_cmd(out, audio, face, audio_segments, face_frames, manifest, split, dtype, shard_size,
               audio_model, face_model, overwrite, quiet) -> None:
    """Build an avfuse cache from embeddings made by another toolkit, so that `avfuse
    train`, `score`, `ablate` and `analyze` run on them.

    \b
    avfuse cache import --out C.zarr --audio wespeaker/xvector.scp --face faces.npz
    avfuse cache import --out C.h5 --audio sb_embeddings/ --manifest vox1.jsonl
    avfuse cache import --out vox2.zarr --audio vox2_dev/xvector.scp --audio-model wespeaker_r34 -m vox2.jsonl

    Utterance ids are normalised to the VoxCeleb trial-list keys: id10270/5r0dWxy17C8/00001.wav,
    id10270/5r0dWxy17C8/00001 and the Kaldi id10270-5r0dWxy17C8-00001 are one row. Rows are the
    union of all sources' ids; has_audio / has_face say which modality a row has. Without
    --audio-segments (--face-frames) a clip is stored as a one-step sequence. Any bad input
    (dimension mismatch, NaN/Inf, duplicate ids, unrecognised ids, truncated ark) stops the
    import with an error naming the file and the id; nothing is written until all sources
    are read, and the cache appears at --out only when complete.
    """
    from pipeline.cache.importer import ImportConfig, import_cache
    from pipeline.core.outputs import check_output

    check_output(out, [*audio, *face, *audio_segments, *face_frames, manifest], folder=Path(out).suffix != ".h5")
    summary = import_cache(out, audio=audio, face=face, audio_segments=audio_segments, face_frames=face_frames,
                           manifest=manifest, cfg=ImportConfig(split=split, dtype=dtype, shard_size=shard_size,
                                                                   audio_model=audio_model, face_model=face_model),
                           overwrite=overwrite, progress=not quiet)
    click.echo(summary.text())
