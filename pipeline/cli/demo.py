"""`avfuse demo`: the whole pipeline, end to end, on the built-in synthetic toy corpus.

Steps (each one is also a command a user runs on real data):

1. ``avfuse synth``    a toy VoxCeleb2-style corpus (real m4a/mp4 media, train/dev/test identities)
2. ``avfuse manifest`` scan that tree as a user scans VoxCeleb, and check it against the corpus manifest
3. ``avfuse extract``  ge2e_lstm (real pretrained weights) + iresnet18 (seeded random init) into a Zarr cache
4. ``avfuse train``    every fusion head on the train split, early-stopped on the dev trials
5. ``avfuse ablate``   the head x mode table on the test trials, missing modalities, clip length
6. ``avfuse analyze``  the embedding-analysis report (PNGs + index.html)

Every step resumes: a second ``make demo`` reuses the corpus, the cache and the trained heads
whose config has not changed, so it finishes in seconds.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import click

from pipeline.core.modes import MODES as ALL_MODES

DEMO_HEADS = ("score_avg", "mean", "mlp", "multiview", "cross_attention", "jca", "dca")
ATTENTION_HEADS = ("cross_attention", "jca", "dca")
DEMO_MODES = tuple(ALL_MODES)
DEMO_CORPUS = dict(layout="vox2", speakers=40, videos_per_speaker=3, clips_per_video=2, seed=0)


def _step(n: int, text: str) -> None:
    click.secho(f"\n[{n}/6] {text}", fg="cyan", bold=True, err=True)


def _corpus(out: Path, quick: bool) -> dict:
    from data_manifests.synth.corpus import synthesize
    corpus = out / "corpus"
    params = dict(DEMO_CORPUS)
    if quick:
        params.update(speakers=12, videos_per_speaker=2)
    info = corpus / "synth_info.json"
    if (corpus / "manifest.jsonl").exists() and info.exists():
        cfg = json.loads(info.read_text()).get("config", {})
        if all(cfg.get(k) == v for k, v in params.items()):
            n = sum(1 for _ in open(corpus / "manifest.jsonl"))
            click.echo(f"    reusing {corpus} ({n} clips)", err=True)
            return {"manifest": str(corpus / "manifest.jsonl"),
                    "trials": {s: str(corpus / "trials" / f"{s}.txt") for s in ("dev", "test")}}
    report = synthesize(corpus, overwrite=True, **params)
    click.echo(f"    {report['n_clips']} clips of {report['n_speakers']} speakers, "
               f"{report['total_seconds'] / 60:.1f} min of audio-video, in {report['elapsed_s']:.1f} s", err=True)
    return report


def _scan_check(out: Path, report: dict) -> None:
    from data_manifests.manifest import read_manifest
    from data_manifests.voxceleb import scan
    records, scan_report = scan([str(out / "corpus")], "vox2", progress=False)
    ours = {r.clip_id for r in read_manifest(report["manifest"])}
    scanned = {r.clip_id for r in records}
    if ours != scanned:
        raise click.ClickException(f"the scanner found {len(scanned)} clips, the corpus manifest lists {len(ours)}")
    click.echo(f"    scanner found the same {len(scanned)} clips as the corpus manifest", err=True)


def _extract(out: Path, report: dict):
    from pipeline.extract.config import ExtractConfig
    from pipeline.extract.run import run_extract
    cache = out / "toy.zarr"
    cfg = ExtractConfig(audio_backbone="ge2e_lstm", audio_weights="pretrained",
                        face_backbone="iresnet18", face_weights="random", shard_size=64,
                        batch_size=32, num_workers=1, device="cpu")
    summary = run_extract(report["manifest"], cache, cfg, progress=sys.stderr.isatty())
    click.echo("    " + summary.text().replace("\n", "\n    "), err=True)
    return cache


def _train(out: Path, cache_path: Path, report: dict, heads, epochs: int) -> Path:
    from fusion.checkpoint import load_head, save_head
    from fusion.recipes import CLIP_RECIPE
    from fusion.registry import get_head
    from fusion.trainer import TrainConfig
    from pipeline.cache.reader import open_cache
    from pipeline.core.config import fingerprint
    from pipeline.train.run import checkpoint_meta, train_head
    cache = open_cache(cache_path)
    runs = out / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    for name in heads:
        # toy scale, as the quality gates: the clip recipe for every head (the attention heads' own,
        # the DCA authors' x0.65 LR per epoch, leaves a few dozen updates on 4-step toy epochs) and
        # d_model 64 for the attention heads (native widths are sized for thousands of identities)
        cfg = TrainConfig(**{**CLIP_RECIPE, "epochs": epochs}, seed=0, device="cpu",
                          head_options={"d_model": 64} if name in ATTENTION_HEADS else {})
        path = runs / f"{name}.pt"
        if path.exists():
            try:
                old, meta = load_head(path)
                want = {**get_head(name).options(), **cfg.head_options}   # today's defaults included
                if (meta.get("cache_fingerprint") == cache.fingerprint
                        and fingerprint(meta.get("train_config")) == fingerprint(cfg)
                        and all(old.config.get(k) == v for k, v in want.items())):
                    click.echo(f"    {name:16s} reusing {path}", err=True)
                    continue
            except Exception:  # noqa: BLE001 - an unreadable old checkpoint is simply retrained
                pass
        t0 = time.perf_counter()
        head, history = train_head(cache, name, cfg, dev_trials=report["trials"]["dev"], progress=False)
        save_head(path, head, checkpoint_meta(cfg, cache, history, head_name=name))
        last = history[-1] if history else {}
        dev = min((h["dev_eer"] for h in history if h.get("dev_eer") is not None), default=None)
        dev_txt = f"best dev EER {100 * dev:.2f}%" if dev is not None else ""
        click.echo(f"    {name:16s} {len(history)} epoch(s) in {time.perf_counter() - t0:5.1f} s  {dev_txt}"
                   f"{'  (calibrated, no training)' if 'epoch' not in last else ''}", err=True)
    return runs


@click.command("demo", context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--out", "-o", default="demo_run", show_default=True, type=click.Path(file_okay=False),
              help="Working folder: corpus, cache, trained heads, tables and report go here.")
@click.option("--quick", is_flag=True, help="A smaller corpus and fewer epochs (about a third of the time).")
@click.option("--epochs", type=click.IntRange(min=1), default=None,
              help="Training epochs per head. [default: 30, --quick: 10]")
def demo_cmd(out: str, quick: bool, epochs: int | None) -> None:
    """Run the whole pipeline end to end on a synthetic toy corpus and print the results table.

    Needs no data, no GPU and no network: the audio backbone is the real pretrained GE2E
    speaker encoder shipped in the `resemblyzer` wheel; the face backbone is a seeded
    random-init IResNet-18 (the toy faces are procedural). Rerunning resumes every step.
    """
    from pipeline.core.outputs import check_output
    check_output(out, folder=True)
    t0 = time.perf_counter()
    outp = Path(out)
    outp.mkdir(parents=True, exist_ok=True)
    _step(1, "synth: toy VoxCeleb2 corpus (real m4a + mp4 media)")
    report = _corpus(outp, quick)
    _step(2, "manifest: scan the corpus tree like a real VoxCeleb2 download")
    _scan_check(outp, report)
    _step(3, "extract: ge2e_lstm (pretrained) + iresnet18 (random init) -> Zarr cache")
    cache = _extract(outp, report)
    _step(4, f"train: {len(DEMO_HEADS)} fusion heads on the train split (dev trials for early stopping)")
    runs = _train(outp, cache, report, DEMO_HEADS, epochs or (10 if quick else 30))
    _step(5, "ablate: head x mode table on the test trials")
    from pipeline.experiments.ablate import format_table, run_ablation
    result = run_ablation(str(cache), report["trials"]["test"], heads=("none",) + DEMO_HEADS, modes=DEMO_MODES,
                          out_dir=outp / "ablation", runs_dir=runs, progress=False)
    _step(6, "analyze: embedding analysis report")
    from pipeline.experiments.analyze import run_analysis
    analysis = run_analysis(str(cache), outp / "report", heads=[runs / f"{h}.pt" for h in ("mean", "mlp", "multiview", "dca")],
                            trials=report["trials"]["test"], split="test")
    click.echo("")
    click.echo(f"EER (%) on the toy test trials ({outp / 'ablation'}; 'none' = raw backbone embeddings):")
    click.echo(format_table(result))
    click.echo(f"\nreport: {analysis.get('index', outp / 'report' / 'index.html')}")
    click.echo(f"demo finished in {time.perf_counter() - t0:.0f} s")
