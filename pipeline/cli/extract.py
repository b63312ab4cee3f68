"""``avfuse extract``: stage 1, frozen backbones over a manifest into an embedding cache."""

from __future__ import annotations

import click

from pipeline.cli.dask_options import dask_options, run_with_options
from pipeline.extract.config import default_batch_size, default_workers


def _resolve_device(device: str, remote: bool = False) -> str:
    """``auto`` -> cuda/cpu; bad names, and (unless the backbones run on a remote ``--scheduler``'s
    workers, whose GPUs this machine need not have) CUDA devices this machine lacks: one line."""
    import torch

    from fusion.batch import resolve_device  # the one device check
    if remote and device != "auto":
        try:
            torch.device(device)
        except (RuntimeError, ValueError, TypeError):
            resolve_device(device)  # raises the one-line ConfigError
        return device
    dev = resolve_device(device)
    return device if device != "auto" else dev.type


def _default_decoders(device: str, dask: dict) -> int:
    """``--num-workers``' default: a local CUDA cluster's share of the cores per shard task,
    else ``default_workers``."""
    from pipeline.extract.dask.cluster import ClusterOptions
    opts = ClusterOptions(cluster=dask["cluster"], scheduler=dask["scheduler"], workers=dask.get("workers"),
                          devices=dask.get("devices"), threads_per_worker=dask.get("threads_per_worker"))
    return opts.default_decoders(device) or default_workers(device, distributed=opts.enabled)


@click.command("extract", context_settings={"help_option_names": ["-h", "--help"],
                                            "max_content_width": 100})
@click.option("--manifest", "-m", required=True, type=click.Path(dir_okay=False),
              help="Clip manifest (.jsonl/.jsonl.gz) from `avfuse manifest` or `avfuse synth`.")
@click.option("--cache", "-c", required=True, type=click.Path(),
              help="Output cache: *.zarr (default backend) or *.h5. An existing cache with the same "
                   "provenance is resumed.")
@click.option("--audio-backbone", default=None, help="Audio backbone name (see `avfuse backbones`).")
@click.option("--audio-weights", default=None,
              help="Checkpoint path, 'random' (seeded random init) or 'pretrained' (the packaged "
                   "weights, ge2e_lstm only, with resemblyzer's preprocessing: volume to -30 dBFS and "
                   "webrtcvad silence trimming of each clip before its segments are cut; "
                   "'pretrained-novad': the same weights without the trimming). Required with --audio-backbone.")
@click.option("--face-backbone", default=None, help="Face backbone name (see `avfuse backbones`).")
@click.option("--face-weights", default=None,
              help="Checkpoint path or 'random'. Required with --face-backbone.")
@click.option("--device", default="auto", show_default=True,
              help="cpu, cuda, cuda:N, or auto (cuda when available).")
@click.option("--batch-size", type=click.IntRange(min=1), default=None,
              help="Clips per forward batch (audio; faces on CUDA: batch-size x frames images, on CPU at "
                   "most 8 images). "
                   "[default: 8 on CPU; on CUDA 128 with 40 GiB of GPU memory or more, else 64]")
@click.option("--num-workers", type=click.IntRange(min=0), default=None,
              help="Decode worker processes (0: decode in the main process); on a cluster, decode processes per "
                   f"shard task (threads where the Dask worker is daemonic; --workers is the number of Dask workers). [default: with --device cuda, every usable core but one ({default_workers('cuda')} "
                   f"here): decode bounds a GPU box; --cluster local on CUDA: the cores but one per worker, "
                   f"shared by its --threads-per-worker tasks; else min(4, cores) ({default_workers()} here)]")
@click.option("--segments", type=click.IntRange(min=1), default=8, show_default=True,
              help="S audio segments per clip (audio/segments; their windows: --segment-windows).")
@click.option("--frames", type=click.IntRange(min=1), default=8, show_default=True,
              help="F evenly spaced face frames per clip.")
@click.option("--shard-size", type=click.IntRange(min=1), default=256, show_default=True,
              help="Rows per shard: the unit of writing and resuming.")
@click.option("--dtype", type=click.Choice(["float16", "float32"]), default="float16", show_default=True,
              help="Storage dtype of the embeddings.")
@click.option("--precision", type=click.Choice(["auto", "fp32", "bf16"]), default="auto", show_default=True,
              help="Compute precision: auto = bf16 autocast on CUDA, fp32 on CPU (recorded in the provenance).")
@click.option("--min-segment-seconds", type=click.FloatRange(min=0, min_open=True), default=0.5,
              show_default=True, help="Shortest audio segment; shorter clips get repeat-padded, flagged segments.")
@click.option("--segment-windows", type=click.Choice(["equal", "centre"]), default="equal", show_default=True,
              help="audio/segments: 'equal' = S equal parts of the utterance; 'centre' = the DCA authors' "
                   "windows: S windows of 1.015 s at the centres of S equal spans, clips up to S x 1.015 s "
                   "zero-padded in front (their dataLoader.py); recorded in the provenance.")
@click.option("--resize-on", type=click.Choice(["auto", "cpu", "device"]), default="auto", show_default=True,
              help="Where video faces are resized to the backbone's crop: 'cpu' = PIL bilinear in the decode "
                   "workers; 'device' = the workers hand over the centre square at the source size (4x the "
                   "bytes for VoxCeleb2's 224 -> 112; ~2 CPU-ms (7 %) less decode per clip) and torch's antialiased bilinear "
                   "resizes it on --device (frame folders stay on the CPU); 'auto' = device on CUDA, cpu on "
                   "the CPU, or as an existing cache was begun. Pixels differ by at most 1 level, embeddings "
                   "by cosine > 0.9999 (docs/BENCHMARKS.md); 'device' is recorded in the provenance.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of 'random' weights.")
@click.option("--max-failures", type=click.FloatRange(0, 1), default=0.01, show_default=True,
              help="Exit 1 when more than this share of clips failed (they are still cached, flagged).")
@click.option("--overwrite", is_flag=True, help="Replace an existing cache made with a different provenance.")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="torch threads for the backbones in this process [default: torch's choice]. "
                   "On a busy or small CPU box, 1 thread beside the decode workers is often fastest.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
@dask_options
@click.pass_context
def extract_cmd(ctx: click.Context, manifest, cache, audio_backbone, audio_weights, face_backbone, face_weights,
                device, batch_size, num_workers, segments, frames, shard_size, dtype, precision,
                min_segment_seconds, segment_windows, resize_on, seed, max_failures, overwrite, threads, quiet,
                **dask) -> None:
    """Run frozen backbones over the manifest's clips into an embedding cache.

    \b
    Per clip: audio/clip (whole utterance), audio/segments (S equal parts, or
    --segment-windows centre),
    face/frames (F evenly spaced frames), face/clip (mean of valid frames),
    has_audio/has_face, duration. Rows follow the manifest order.
    Resumable: rerun the same command after Ctrl-C or a crash; done shards are skipped.
    Multi-GPU / multi-node: --cluster local or --scheduler tcp://HOST:8786 (Dask).
    Bad media (corrupt, truncated, missing streams) are logged in
    <cache>.failures.jsonl and flagged; the run goes on.

    \b
    Example:
      avfuse extract -m toy/manifest.jsonl -c toy.zarr \\
          --audio-backbone ge2e_lstm --audio-weights pretrained \\
          --face-backbone iresnet18 --face-weights random
    """
    from pipeline.extract.config import ExtractConfig
    for mod, name, w in (("audio", audio_backbone, audio_weights), ("face", face_backbone, face_weights)):
        if name and not w:
            raise click.UsageError(f"--{mod}-backbone {name} needs --{mod}-weights: a checkpoint path, "
                                   f"or 'random' for a seeded random init (no silent default weights)")
        if w and not name:
            raise click.UsageError(f"--{mod}-weights needs --{mod}-backbone")
    if not audio_backbone and not face_backbone:
        raise click.UsageError("give --audio-backbone and/or --face-backbone (see `avfuse backbones`)")
    from pipeline.core.outputs import check_output
    check_output(cache, [manifest], flag="--cache", folder=not str(cache).lower().endswith((".h5", ".hdf5")))
    device = _resolve_device(device, remote=bool(dask.get("scheduler")))
    if threads is not None:
        import torch
        torch.set_num_threads(threads)
    cfg = ExtractConfig(audio_backbone=audio_backbone, audio_weights=audio_weights,
                        face_backbone=face_backbone, face_weights=face_weights,
                        segments=segments, frames=frames, dtype=dtype, shard_size=shard_size,
                        min_segment_seconds=min_segment_seconds, seed=seed, precision=precision,
                        segment_windows=segment_windows, resize_on=resize_on,
                        batch_size=batch_size or default_batch_size(device),
                        num_workers=num_workers if num_workers is not None else _default_decoders(device, dask),
                        device=device)
    summary = run_with_options(manifest, cache, cfg, overwrite=overwrite, progress=not quiet,
                               torch_threads=threads, log=lambda m: click.echo(m, err=True), **dask)
    click.echo(summary.text(), err=True)
    if not summary.within(max_failures):
        click.echo(f"avfuse: {100 * summary.failed_share:.2f}% of clips failed, more than --max-failures "
                   f"{100 * max_failures:.2f}%; the cache is complete, failed clips are flagged "
                   f"(has_audio/has_face False)", err=True)
        raise SystemExit(1)  # (ctx.exit would be swallowed by the non-standalone main)
