"""Click options shared by several commands: the training recipe flags and ``--option``/``--config`` parsing."""

from __future__ import annotations

import json

import click


# ---------------------------------------------------------------------- train
def _parse_options(items: tuple[str, ...]) -> dict:
    from pipeline.core.errors import ConfigError

    out = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"bad --option {item!r}", hint="use KEY=VALUE, e.g. --option d_model=128")
        k, v = item.split("=", 1)
        try:
            out[k.strip()] = json.loads(v)
        except ValueError:
            out[k.strip()] = v
    return out


def train_config(config_path=None, **flags):
    """A ``TrainConfig`` from an optional JSON file, overridden by the flags that are not None
    (``avfuse train`` and ``avfuse ablate --train``); validated."""
    from fusion.trainer import TrainConfig
    from pipeline.core.config import from_dict
    from pipeline.core.errors import ConfigError

    cfg = TrainConfig()
    if config_path:
        with open(config_path, encoding="utf-8") as f:
            try:
                data = json.load(f)
            except ValueError as e:  # bad JSON, or not UTF-8
                raise ConfigError(f"not a valid UTF-8 JSON TrainConfig: {e}", path=config_path) from None
        try:
            cfg = from_dict(TrainConfig, data)
        except ConfigError as e:
            raise ConfigError(e.message, path=config_path, hint=e.hint) from None
    for k, v in flags.items():
        if v is not None:
            setattr(cfg, k, v)
    try:
        cfg.validate()
    except ConfigError as e:
        raise ConfigError(e.message, path=config_path, hint=e.hint) from None
    return cfg


def recipe_options(fn):
    """The training-recipe flags ``avfuse train`` and ``avfuse ablate`` share (all default to
    None: the --config file's value, else the head's recipe, ``fusion.recipes``)."""
    options = [
        click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False), default=None,
                     help="TrainConfig JSON (any field, e.g. optimizer, schedule, lr_decay, weight_decay); flags "
                          "given on the command line override it, and both override the head's recipe."),
        click.option("--epochs", type=click.IntRange(min=1), default=None,
                     help="Epochs. [default: the head's recipe: 30 clip heads, 20 attention heads]"),
        click.option("--batch-size", type=click.IntRange(min=2), default=None,
                     help="Clips per step. [default: the head's recipe: 256 clip heads, 100 attention heads]"),
        click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=None,
                     help="Peak LR. [default: the head's recipe: AdamW 2e-3 cosine (clip heads), Adam 1e-3 "
                          "x0.65 per epoch (attention heads, the DCA authors'); see `avfuse heads --json`]"),
        click.option("--mask-prob", type=click.FloatRange(0, 1, max_open=True), default=None,
                     help="P(a sample loses its audio or its face) per step (never both). [default: the "
                          "head's recipe: 0.3 clip heads, 0 attention heads]"),
        click.option("--seed", type=int, default=None, help="Seed (same seed, same head). [default: 0]"),
        click.option("--split", default=None, help="Cache split to train on. [default: train; dev when the cache has "
                                                   "no train split but a dev one, as VoxCeleb caches]"),
        click.option("--device", default=None, help="auto, cpu, cuda[:N]. [default: auto]"),
    ]
    for opt in reversed(options):
        fn = opt(fn)
    return fn


def default_split(cfg, split_flag: str | None, config_path: str | None, cache) -> None:
    """The training split when neither ``--split`` nor the ``--config`` file names one: ``train``, or
    ``dev`` when the cache has no ``train`` split but a ``dev`` one (VoxCeleb calls its training part
    dev), said on stderr."""
    from pathlib import Path

    import numpy as np
    if split_flag is not None or (config_path and "split" in json.loads(Path(config_path).read_text())):
        return
    have = set(np.asarray(cache.splits).tolist())
    if cfg.split not in have and "dev" in have:
        cfg.split = "dev"
        click.echo("avfuse: note: training on split 'dev' (this cache has no 'train' split; VoxCeleb names its "
                   "training part dev); --split chooses", err=True)
