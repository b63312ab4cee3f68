"""``avfuse preflight``: decode a manifest as ``extract`` would, report failures and the decode budget."""

from __future__ import annotations

import json

import click


@click.command("preflight", context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--manifest", "-m", required=True, type=click.Path(dir_okay=False),
              help="Clip manifest (.jsonl/.jsonl.gz) from `avfuse manifest` or `avfuse synth`.")
@click.option("--sample", type=click.IntRange(min=1), default=None,
              help="Decode a seeded random sample of N clips instead of all of them.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of --sample.")
@click.option("--workers", type=click.IntRange(min=0), default=0, show_default=True,
              help="Decode worker processes (0: in this process; extract's --num-workers). CPU time is measured "
                   "per clip either way.")
@click.option("--cores", type=click.IntRange(min=1), default=16, show_default=True,
              help="Cores of the machine to project the decode time on (the GPU box).")
@click.option("--sample-rate", type=click.IntRange(min=1), default=16000, show_default=True,
              help="Audio rate the audio backbone eats (all registered audio backbones: 16000).")
@click.option("--face-size", type=click.IntRange(min=1), default=112, show_default=True,
              help="Face crop the face backbone eats (iresnet*: 112, resnet18/50: 224; see `avfuse backbones`).")
@click.option("--frames", type=click.IntRange(min=1), default=8, show_default=True,
              help="F evenly spaced face frames per clip (as extract --frames).")
@click.option("--resize-on", type=click.Choice(["device", "cpu"]), default="device", show_default=True,
              help="Decode faces as `extract --device cuda` does by default (device: centre crop only, the GPU "
                   "resizes) or as on a CPU (cpu: + PIL resize in the decode workers, ~2 CPU-ms (7 %) per clip more).")
@click.option("--no-audio", is_flag=True, help="Decode the faces only.")
@click.option("--no-faces", is_flag=True, help="Decode the audio only.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as one JSON object on stdout.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
def preflight_cmd(manifest, sample, seed, workers, cores, sample_rate, face_size, frames, resize_on, no_audio,
                  no_faces, as_json, quiet) -> None:
    """Decode every clip of a manifest (or --sample N of them) exactly as `avfuse extract`
    would, without backbones: run it before booking the GPU box.

    \b
    Reports the clips that will fail (with the message extract's failures log will hold),
    the decode CPU time per clip (audio and video, in process CPU time, which a busy
    machine stretches much less than wall time), and the projected decode time of the
    whole manifest on this machine and on --cores cores (clips x CPU-ms per clip / cores;
    decode only; optimistic: with every core decoding a clip costs more). With --workers N
    (4 clips per worker or more) also the rate the N processes decoded at here, and the
    manifest at that rate: on the GPU box itself, with N = its cores - 1, the figure to plan by.
    Exit 0 when every clip decodes, 1 when some fail, 2 on a bad manifest or option.

    \b
    Example:
      avfuse preflight -m vox2.jsonl --sample 2000 --workers 4 --cores 16
    """
    from pipeline.extract.config import usable_cores
    from pipeline.extract.preflight import run_preflight
    if workers > usable_cores():
        click.echo(f"avfuse: note: --workers {workers} on {usable_cores()} usable cores: the decoders share them "
                   "(CPU per clip is still measured right; the wall time is not this machine's best)", err=True)
    res = run_preflight(manifest, sample=sample, seed=seed, workers=workers, cores=cores,
                        audio_sr=None if no_audio else sample_rate, face_size=None if no_faces else face_size,
                        frames=frames, resize_on=resize_on, progress=not quiet)
    if as_json:
        click.echo(json.dumps(res.to_json(), ensure_ascii=False))
    else:
        click.echo(res.text())
    if res.n_failed:
        raise SystemExit(1)
