"""``avfuse backbones``: list the registered audio and face backbones with their input
spec, embedding size, accepted checkpoint formats, parameter count and (``--macs``)
compute cost; ``--markdown`` prints the table of ``docs/backbones.md``.

Cost definitions (:func:`measure_gmacs`, counting with
:func:`extractors.checkpoints.forward_gmacs`): multiply-accumulates of one forward pass
counted with ``torch.utils.flop_counter.FlopCounterMode`` (convolutions, linear layers,
matmuls -- the mel projections included; FFTs, norms, activations and pooling not
counted), MACs = FLOPs / 2. ``nn.LSTM`` (not seen by the counter on CPU) is counted
analytically: ``steps x 4H(I + H)`` per layer. Audio: a 10 s clip at the backbone's
rate, divided by 10 (GMACs per second of audio; GE2E's overlapping 1.6 s partials make
its cost per second about 1.6 frames per 10 ms). Face: one ``(1, 3, crop, crop)`` frame.
"""

from __future__ import annotations

import json
import sys

import click

from pipeline.core.progress import progress as progress_

AUDIO_SECONDS = 10.0


def measure_gmacs(entry, module, seconds: float = AUDIO_SECONDS) -> float:
    """GMACs per second of audio (audio: one ``seconds``-long clip of seeded noise at the
    backbone's rate, divided by ``seconds``) or per face frame (face:
    :func:`extractors.face.common.face_gmacs`); counting as in
    :func:`extractors.checkpoints.forward_gmacs` (see module doc)."""
    import torch

    from extractors.counting import face_gmacs, forward_gmacs

    spec = entry.spec
    if spec.modality != "audio":
        return face_gmacs(module, spec.crop)
    n = int(round(seconds * spec.sample_rate))
    g = torch.Generator().manual_seed(0)
    return forward_gmacs(module, 0.1 * torch.randn(1, n, generator=g), torch.tensor([n])) / seconds


def input_text(spec) -> str:
    """One-line description of an input spec, e.g. ``16 kHz wave -> fbank80``."""
    if spec.modality == "audio":
        return f"{spec.sample_rate / 1000:g} kHz wave -> {spec.features}"
    return f"RGB {spec.crop}x{spec.crop}, mean {list(spec.mean)} std {list(spec.std)}"


def backbone_rows(modality: str | None = None, macs: bool = False, progress: bool = False) -> list[dict]:
    """One dict per registered backbone: name, modality, input spec, embedding size,
    formats, parameter count, description and (``macs``) GMACs."""
    import torch

    from extractors.counting import count_params
    from extractors.registry import list_backbones

    rows = []
    entries = list_backbones(modality)
    it = entries
    if progress:
        it = progress_(entries, desc="backbones", unit="model")
    for entry in it:
        torch.manual_seed(0)
        module = entry.build(**entry.build_kwargs)
        row = {"name": entry.name, "modality": entry.modality, "input": input_text(entry.spec),
               "spec": entry.spec.to_dict(), "embedding_dim": entry.spec.embedding_dim,
               "formats": list(entry.formats), "params": count_params(module), "description": entry.description}
        if macs:
            row["gmacs"] = round(measure_gmacs(entry, module), 4)
            row["gmacs_unit"] = "per second of audio" if entry.modality == "audio" else "per face frame"
        rows.append(row)
    return rows


def markdown_table(rows: list[dict]) -> str:
    """The ``docs/backbones.md`` table (EER column left for the docs page)."""
    head = "| name | modality | input | embedding | params | GMACs | formats |\n|---|---|---|---|---|---|---|\n"
    lines = []
    for r in rows:
        g = f"{r['gmacs']:.3g} /{'s' if r['modality'] == 'audio' else 'frame'}" if "gmacs" in r else "-"
        lines.append(f"| `{r['name']}` | {r['modality']} | {r['input']} | {r['embedding_dim']} | "
                     f"{r['params'] / 1e6:.2f} M | {g} | {'; '.join(r['formats'])} |")
    return head + "\n".join(lines) + "\n"


@click.command("backbones")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list (one object per backbone) instead of a table.")
@click.option("--modality", type=click.Choice(["audio", "face"]), default=None, help="Only audio or only face backbones.")
@click.option("--macs", is_flag=True, help="Also measure GMACs per second of audio / per face frame (a few seconds per model).")
@click.option("--markdown", is_flag=True, help="Print the docs/backbones.md table (markdown).")
def backbones_cmd(as_json: bool, modality: str | None, macs: bool, markdown: bool) -> None:
    """List the audio and face backbones and their input specs.

    For each registered backbone: its modality, what it eats (sample rate and
    front-end for audio; crop and normalisation for face), its embedding size, the
    checkpoint formats its loader accepts (pass the file with --audio-weights /
    --face-weights to `avfuse extract`, or the word 'random'), and its parameter count.

    \b
    Examples:
      avfuse backbones
      avfuse backbones --modality audio --macs
      avfuse backbones --json > backbones.json
    """
    rows = backbone_rows(modality, macs=macs, progress=sys.stderr.isatty())
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if markdown:
        click.echo(markdown_table(rows), nl=False)
        return
    w = max((len(r["name"]) for r in rows), default=4)
    wi = max((len(r["input"]) for r in rows), default=5)
    header = f"{'name':<{w}}  {'modality':<8}  {'input':<{wi}}  {'dim':>5}  {'params':>9}"
    header += f"  {'GMACs':>12}" if macs else ""
    click.echo(header)
    for r in rows:
        line = (f"{r['name']:<{w}}  {r['modality']:<8}  {r['input']:<{wi}}  {r['embedding_dim']:>5}  "
                f"{r['params'] / 1e6:>8.2f}M")
        if macs:
            line += f"  {r['gmacs']:>7.3f}/{'s' if r['modality'] == 'audio' else 'fr'}"
        click.echo(line)
    click.echo("\naccepted checkpoint formats (or the word 'random' for a seeded random init):")
    for r in rows:
        click.echo(f"  {r['name']}:")
        for f in r["formats"]:
            click.echo(f"    - {f}")
