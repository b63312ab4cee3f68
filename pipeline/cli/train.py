"""``avfuse heads`` (the compute-cost table) and ``avfuse train`` (stage 2)."""

from __future__ import annotations

import json
import sys
import time

import click

from pipeline.cli.options import _parse_options, default_split, recipe_options, train_config

_CTX = {"help_option_names": ["-h", "--help"], "max_content_width": 100}
#: fewer optimiser updates than this in a whole run gets a note (a VoxCeleb-sized recipe barely moves a head)
FEW_UPDATES = 200


# ---------------------------------------------------------------------- heads
def _random_batch(n: int, audio_dim: int, face_dim: int, steps: int, frames: int, seed: int = 0):
    import torch

    from fusion.batch import EmbeddingBatch

    g = torch.Generator().manual_seed(seed)
    return EmbeddingBatch(
        audio_clip=torch.randn(n, audio_dim, generator=g), face_clip=torch.randn(n, face_dim, generator=g),
        audio_seq=torch.randn(n, steps, audio_dim, generator=g), face_seq=torch.randn(n, frames, face_dim, generator=g),
        audio_seq_valid=torch.ones(n, steps, dtype=torch.bool), face_seq_valid=torch.ones(n, frames, dtype=torch.bool),
        has_audio=torch.ones(n, dtype=torch.bool), has_face=torch.ones(n, dtype=torch.bool))


def rnn_flops(head, steps: int, frames: int) -> int:
    """FLOPs of the head's LSTM/GRU modules for one clip (2 per multiply-add of the gate matmuls, all
    steps), which ``FlopCounterMode`` does not count; modules under ``enc_v`` run over ``frames``."""
    import torch

    total = 0
    for name, m in head.named_modules():
        if not isinstance(m, (torch.nn.LSTM, torch.nn.GRU)):
            continue
        gates = 4 if isinstance(m, torch.nn.LSTM) else 3
        dirs = 2 if m.bidirectional else 1
        t = frames if "enc_v" in name else steps
        for layer in range(m.num_layers):
            d_in = m.input_size if layer == 0 else m.hidden_size * dirs
            total += 2 * gates * m.hidden_size * (d_in + m.hidden_size) * dirs * t
    return total


def head_costs(audio_dim: int = 192, face_dim: int = 512, *, steps: int = 8, frames: int = 8,
               clips: int = 1000, repeats: int = 3, device: str = "cpu", threads: int | None = None) -> list[dict]:
    """One row per registered head: parameters, MFLOPs per clip, ms per ``clips`` clips (AVxAV embed).

    MFLOPs: ``torch.utils.flop_counter.FlopCounterMode`` over one AV ``embed`` of 64
    clips, divided by 64 (matmul/conv/attention FLOPs, 2 per multiply-add; elementwise
    ops not counted), plus the LSTM/GRU gate matmuls it does not see (``rnn_flops``). Time: median of ``repeats`` ``embed`` calls on ``clips`` random
    clips after one warm-up, eval mode, no grad.
    """
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from fusion.batch import resolve_device
    from fusion.registry import list_heads

    if threads:
        torch.set_num_threads(threads)
    dev = resolve_device(device)
    small = _random_batch(64, audio_dim, face_dim, steps, frames).to(dev)
    big = _random_batch(clips, audio_dim, face_dim, steps, frames, seed=1).to(dev)
    rows = []
    for entry in list_heads():
        torch.manual_seed(0)
        head = entry.build(audio_dim, face_dim).to(dev).eval()
        with torch.no_grad():
            fc = FlopCounterMode(display=False)
            with fc:
                head.embed(small)
            mflops = (fc.get_total_flops() / 64 + rnn_flops(head, steps, frames)) / 1e6
            head.embed(big)  # warm-up
            times = []
            for _ in range(repeats):
                if dev.type == "cuda":
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
                head.embed(big)
                if dev.type == "cuda":
                    torch.cuda.synchronize()
                times.append(time.perf_counter() - t0)
        ms = 1000 * sorted(times)[len(times) // 2] * 1000 / clips
        rows.append({"name": entry.name, "parameters": head.n_parameters(), "mflops_per_clip": round(mflops, 3),
                     "ms_per_1000_clips": round(ms, 2), "embedding_dim": head.embedding_dim,
                     "score_kind": head.score_kind, "needs_sequences": entry.needs_sequences,
                     "trainable": entry.trainable, "description": entry.description,
                     "recipe": entry.train_recipe() if entry.trainable else None, "options": entry.options()})
    return rows


@click.command("heads", context_settings=_CTX)
@click.option("--json", "as_json", is_flag=True, help="Print the table as JSON.")
@click.option("--audio-dim", type=click.IntRange(min=1), default=192, show_default=True,
              help="Audio embedding size to cost the heads at (ECAPA-TDNN: 192, ge2e_lstm: 256).")
@click.option("--face-dim", type=click.IntRange(min=1), default=512, show_default=True,
              help="Face embedding size (iresnet: 512).")
@click.option("--steps", type=click.IntRange(min=1), default=8, show_default=True,
              help="Audio segments / face frames per clip for the sequence heads.")
@click.option("--clips", type=click.IntRange(min=1), default=1000, show_default=True,
              help="Clips per timed embed call (time is reported per 1,000 clips).")
@click.option("--repeats", type=click.IntRange(min=1), default=3, show_default=True, help="Timed repeats (median).")
@click.option("--device", default="cpu", show_default=True, help="cpu or cuda[:N].")
@click.option("--options", "show_options", is_flag=True,
              help="Only list each head's options (what `avfuse train --option KEY=VALUE` sets) with their "
                   "defaults; nothing is timed.")
def heads_cmd(as_json, audio_dim, face_dim, steps, clips, repeats, device, show_options) -> None:
    """List the fusion heads with parameters, MFLOPs per clip and inference time.

    \b
    The inference time is measured now, on this machine: one AVxAV embed of
    --clips random clips (median of --repeats), reported per 1,000 clips.
    MFLOPs count matmul/conv FLOPs (2 per multiply-add) of embedding one clip.
    "recipe" is the head's training defaults (optimizer, LR, schedule, weight
    decay, batch, epochs, masking) that `avfuse train` uses unless flags say
    otherwise; --json lists every field under "recipe", and each head's options
    under "options" (--options lists only those, at once).
    """
    if show_options:
        from fusion.registry import list_heads
        opts = {e.name: e.options() for e in list_heads()}
        if as_json:
            click.echo(json.dumps(opts, indent=2))
            return
        for name, o in opts.items():
            click.echo(f"{name:<16}" + (", ".join(f"{k}={v!r}" for k, v in o.items()) or "(none)"))
        click.echo("\nmeanings: the head classes' docstrings (fusion/heads/clip.py, fusion/heads/attention.py); "
                   "the attention heads' against the papers: docs/FIDELITY.md")
        return
    rows = head_costs(audio_dim, face_dim, steps=steps, frames=steps, clips=clips, repeats=repeats, device=device)
    if as_json:
        click.echo(json.dumps({"audio_dim": audio_dim, "face_dim": face_dim, "steps": steps, "device": device,
                               "heads": rows}, indent=2))
        return
    click.echo(f"fusion heads at audio {audio_dim}-d, face {face_dim}-d, {steps} steps; time on {device}")
    from fusion.recipes import describe

    click.echo(f"{'head':<16}{'params':>11}{'MFLOPs/clip':>13}{'ms/1k clips':>13}  {'dim':>4}  input  "
               f"{'recipe':<48}description")
    for r in rows:
        inp = "seq" if r["needs_sequences"] else "clip"
        rec = describe(r["recipe"]) if r["recipe"] else "(calibrated, not trained)"
        click.echo(f"{r['name']:<16}{r['parameters']:>11,}{r['mflops_per_clip']:>13.2f}"
                   f"{r['ms_per_1000_clips']:>13.1f}  {r['embedding_dim']:>4}  {inp:<5}  {rec:<48}{r['description']}")


@click.command("train", context_settings=_CTX)
@click.option("--cache", "-c", "cache_path", required=True, type=click.Path(),
              help="Embedding cache from `avfuse extract`.")
@click.option("--head", "head_name", required=True, help="Fusion head (see `avfuse heads`), e.g. dca, mean, mlp.")
@click.option("--out", "-o", required=True, type=click.Path(dir_okay=False),
              help="Checkpoint to write (weights + head config + TrainConfig + cache fingerprint).")
@recipe_options
@click.option("--loss", type=click.Choice(["aam", "softmax"]), default=None, help="Loss. [default: aam]")
@click.option("--margin", type=float, default=None, help="AAM margin. [default: head's: dca 0.4, mean/mlp 0.2]")
@click.option("--scale", type=float, default=None, help="AAM scale. [default: head's: dca 64, mean/mlp 30]")
@click.option("--temperature", type=click.FloatRange(min=0, min_open=True), default=None,
              help="DCA gate softmax temperature T. [default: 0.1]")
@click.option("--option", "options", multiple=True, metavar="KEY=VALUE",
              help="Head option (repeatable), e.g. --option d_model=128 --option iterations=2; "
                   "`avfuse heads --options` lists them.")
@click.option("--dev-trials", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Labelled trial list on clips of this cache: dev EER after each epoch, early stopping.")
@click.option("--patience", type=click.IntRange(min=0), default=None,
              help="Stop after this many epochs without dev improvement (0: never). [default: 5]")
@click.option("--drop-bad-rows", is_flag=True, help="Drop rows with NaN/inf embeddings instead of failing.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
def train_cmd(cache_path, head_name, out, config_path, epochs, batch_size, lr, mask_prob, loss, margin, scale,
              temperature, options, seed, dev_trials, patience, split, device, drop_bad_rows, quiet) -> None:
    """Train a fusion head on the cached embeddings (stage 2, seconds to minutes).

    \b
    The training split is loaded into memory once (GPU when available), then
    batched by permuting indices; the bar shows loss, accuracy and clips/s.
    score_avg is not trained but calibrated on --dev-trials (or on random
    pairs of the training split).

    \b
    Example:
      avfuse train --cache toy.zarr --head dca --epochs 20 \\
          --dev-trials toy/trials/dev.txt --out runs/dca.pt
    """
    from fusion.checkpoint import save_head
    from fusion.registry import get_head
    from pipeline.cache.reader import open_cache
    from pipeline.core.outputs import check_output
    from pipeline.train.run import checkpoint_meta, train_head
    check_output(out, [cache_path, config_path, dev_trials])
    cfg = train_config(config_path, epochs=epochs, batch_size=batch_size, lr=lr, mask_prob=mask_prob, loss=loss,
                       margin=margin, scale=scale, temperature=temperature, seed=seed, patience=patience,
                       split=split, device=device)
    if drop_bad_rows:
        cfg.drop_bad_rows = True
    if options:
        cfg.head_options = {**cfg.head_options, **_parse_options(options)}
    entry = get_head(head_name)
    if cfg.temperature is not None and not {**entry.options(), **cfg.head_options}.get("gate", False):
        from pipeline.core.errors import ConfigError
        raise ConfigError(f"--temperature applies to gated heads only, not '{head_name}'", hint="use --head dca")
    cache = open_cache(cache_path)
    default_split(cfg, split, config_path, cache)
    lay = cache.layout
    if entry.needs_sequences and (lay.segments == 1 or lay.frames == 1):
        click.echo(f"avfuse: note: '{head_name}' attends over audio segments and face frames, but this cache has "
                   f"{lay.segments} segment(s) and {lay.frames} frame(s) per clip (an import of clip vectors only?):"
                   " attention over one step reduces to a projection; import --audio-segments/--face-frames "
                   "or extract with --segments/--frames for what the head is made for", err=True)
    t0 = time.perf_counter()
    head, history = train_head(cache, head_name, cfg, dev_trials, progress=None if not quiet else False)
    secs = time.perf_counter() - t0
    meta = checkpoint_meta(cfg, cache, history, head_name=head_name)
    meta["dev_trials"] = dev_trials
    meta["train_seconds"] = round(secs, 3)
    save_head(out, head, meta)
    last = history[-1] if history else {}
    if entry.trainable and last.get("updates", FEW_UPDATES) < FEW_UPDATES:
        from fusion.recipes import RECIPE_FIELDS, describe
        from fusion.trainer import resolve_config
        used = resolve_config(cfg, head_name)
        click.echo(f"avfuse: note: {last['updates']} optimiser updates in all "
                   f"({describe({k: getattr(used, k) for k in RECIPE_FIELDS})}); "
                   f"a recipe sized for VoxCeleb (thousands of updates) barely moves a head in so few: on a small "
                   "cache give more --epochs or a smaller --batch-size, or the clip recipe (--config FILE holding "
                   '{"optimizer": "adamw", "lr": 0.002, "schedule": "cosine"}) as the demo and the quality gates do',
                   err=True)
    if entry.trainable:
        bits = [f"{len(history)} epochs in {secs:.1f} s", f"loss {last.get('loss', float('nan')):.3f}",
                f"acc {last.get('acc', float('nan')):.3f}", f"{last.get('clips_per_s', 0):.0f} clips/s"]
        if "dev_eer" in last:
            best = min(h["dev_eer"] for h in history)
            bits.append(f"best dev EER {100 * best:.2f}%")
    else:
        bits = [f"calibrated on {last.get('calibrated_on')}", f"w = {last.get('w'):.2f}",
                f"dev EER {100 * last.get('dev_eer', float('nan')):.2f}%"]
    click.echo(f"{head_name}: " + ", ".join(bits) + f" -> {out}", err=True)


if __name__ == "__main__":  # pragma: no cover
    heads_cmd(sys.argv[1:])
