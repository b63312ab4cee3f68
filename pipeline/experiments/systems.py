"""The systems an ablation compares: raw backbones, head checkpoints, heads trained now, sweeps.

* ``"none"``: the raw backbone embeddings (``avfuse score`` without ``--head``).
* a head name (``mean``, ``dca``...): ``RUNS/NAME.pt`` when ``runs_dir`` has it, else
  trained now when ``train`` is set, else a ``HeadError`` naming the missing file.
* a path ending in ``.pt``: that checkpoint, labelled by its file stem.

``HeadTrainer`` trains heads back to back in one process: the training split (and
the dev trials) are read from the cache into memory once (with the per-step
sequences when any head to train needs them) and reused by every head and every
sweep value (``fusion.trainer.train_head`` on ``(batch, labels)``).

Sweeps: ``HEAD.FIELD=v1,v2,...`` retrains HEAD once per value. ``FIELD`` is a
``TrainConfig`` field (``epochs``, ``lr``, ``mask_prob``, ``temperature`` (gated heads
only), ``margin``, ``seed``...) or one of the head's options (``dim``, ``dropout``,
``hidden``, ``d_model``...); each ``--sweep`` is its own one-dimensional grid around
the base config.
"""

from __future__ import annotations

import dataclasses
import math
import re
import time
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.core.errors import ConfigError, HeadError
from pipeline.report.tables import safe_name

# TrainConfig fields a sweep may vary (the others pick the data or the device)
TRAIN_SWEEPABLE = ("epochs", "batch_size", "lr", "weight_decay", "warmup", "grad_clip", "mask_prob", "loss",
                   "margin", "scale", "temperature", "seed", "patience", "optimizer", "schedule", "lr_decay")


@dataclass
class System:
    """One scored system. ``head`` None = raw backbone embeddings."""

    label: str
    head: Any = None
    source: str = "backbones"          # backbones | checkpoint | trained
    path: str | None = None
    history: list = field(default_factory=list)
    train_seconds: float | None = None
    sweep: dict | None = None          # {"head", "field", "value"} for sweep variants

    @property
    def gated(self) -> bool:
        return bool(getattr(self.head, "gate", False)) and hasattr(self.head, "gate_weights")

    def describe(self) -> dict:
        d = {"label": self.label, "head": getattr(self.head, "name", None), "source": self.source,
             "path": self.path, "train_seconds": self.train_seconds, "sweep": self.sweep}
        if self.history:
            last = self.history[-1]
            d["epochs_run"] = len(self.history) if "epoch" in last else None
            if any("dev_eer" in h for h in self.history):
                d["best_dev_eer_percent"] = 100 * min(h["dev_eer"] for h in self.history if "dev_eer" in h)
        return d


# ------------------------------------------------------------------ sweeps
@dataclass
class Sweep:
    """``head.field`` over ``values``; ``target`` is ``"train"`` (a TrainConfig field) or ``"head"``."""

    head: str
    field: str
    values: list
    target: str
    text: str = ""

    def label(self, value: Any) -> str:
        return f"{self.head}[{self.field}={value_text(value)}]"


def value_text(v: Any) -> str:
    if isinstance(v, bool) or v is None:
        return str(v).lower()
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


def _train_types() -> dict[str, Any]:
    from fusion.trainer import TrainConfig
    return typing.get_type_hints(TrainConfig)


def sweep_fields(head: str) -> dict[str, tuple[str, Any]]:
    """``{field: (target, type or default value)}`` a sweep may vary for ``head``."""
    from fusion.registry import get_head

    entry = get_head(head)
    opts = entry.options()
    fixed = set(entry.defaults or {})
    gated = bool(opts.get("gate", False))
    out: dict[str, tuple[str, Any]] = {}
    if entry.trainable:
        hints = _train_types()
        for f in TRAIN_SWEEPABLE:
            if f == "temperature" and not gated:
                continue
            out[f] = ("train", hints[f])
    for k, default in opts.items():
        if k in fixed or k in out or (k == "temperature" and not gated):
            continue
        out[k] = ("head", default)
    return out


def _convert(raw: str, kind: Any, where: str) -> Any:
    """``raw`` as the type of a TrainConfig field (a type hint) or of a head option's default."""
    s = raw.strip()
    if s == "":
        raise ConfigError(f"{where}: empty value", hint="give comma-separated values, e.g. dca.temperature=0.05,0.1")
    args = typing.get_args(kind)
    optional = type(None) in args or kind is None
    if optional and s.lower() in ("none", "null"):
        return None
    base = kind
    if args:
        base = next(a for a in args if a is not type(None))
    elif not isinstance(kind, type):
        base = type(kind)
    try:
        if base is bool:
            if s.lower() in ("1", "true", "yes", "on"):
                return True
            if s.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(s)
        if base is int:
            f = float(s)
            if not f.is_integer():
                raise ValueError(s)
            return int(f)
        if base is float:
            v = float(s)
            if not math.isfinite(v):
                raise ValueError(s)
            return v
        return s
    except ValueError:
        raise ConfigError(f"{where}: {s!r} is not a valid {base.__name__}",
                          hint=f"give {base.__name__} values, comma-separated") from None


def parse_sweep(text: str) -> Sweep:
    """``"HEAD.FIELD=v1,v2,..."`` -> ``Sweep``; anything wrong -> ``ConfigError`` with a hint."""
    from fusion.registry import get_head, list_heads

    m = re.fullmatch(r"\s*([A-Za-z0-9_]+)\.([A-Za-z0-9_]+)\s*=\s*(.*)", text or "")
    if not m:
        raise ConfigError(f"bad --sweep {text!r}",
                          hint="use HEAD.FIELD=v1,v2,..., e.g. dca.temperature=0.05,0.1,0.5,1 or mlp.dropout=0,0.2,0.5")
    head, fld, vals = m.groups()
    try:
        get_head(head)
    except HeadError:
        raise ConfigError(f"--sweep {text!r}: unknown head '{head}'",
                          hint=f"heads: {', '.join(e.name for e in list_heads())}") from None
    fields = sweep_fields(head)
    if fld not in fields:
        raise ConfigError(f"--sweep {text!r}: '{fld}' is not a sweepable field of head '{head}'",
                          hint=f"valid fields for {head}: {', '.join(sorted(fields))}")
    target, kind = fields[fld]
    values = [_convert(v, kind, f"--sweep {head}.{fld}") for v in vals.split(",")]
    if len(set(map(value_text, values))) != len(values):
        raise ConfigError(f"--sweep {text!r}: repeated values", hint="list each value once")
    return Sweep(head=head, field=fld, values=values, target=target, text=text.strip())


def variant_config(base, sweep: Sweep, value: Any):
    """The TrainConfig of one sweep value (a copy of ``base``)."""
    cfg = dataclasses.replace(base, head_options=dict(base.head_options))
    if sweep.target == "train":
        setattr(cfg, sweep.field, value)
    else:
        cfg.head_options[sweep.field] = value
    cfg.validate()
    return cfg


# ------------------------------------------------------------------ training
class HeadTrainer:
    """Trains heads back to back from one in-memory copy of the training split (module docstring)."""

    def __init__(self, cache, cfg, dev_trials=None, *, need_sequences: bool = False, progress: bool = True):
        self.cache, self.cfg, self.dev_trials = cache, cfg, dev_trials
        self.need_sequences, self.progress = need_sequences, progress
        self._data = None
        self.load_seconds = 0.0

    def _load(self):
        if self._data is None:
            from fusion.batch import resolve_device
            from pipeline.train.data import dev_set_from_trials, load_split

            t0 = time.perf_counter()
            device = resolve_device(self.cfg.device)
            batch, labels, _ids = load_split(self.cache, self.cfg.split, self.need_sequences, device=device,
                                             drop_bad_rows=self.cfg.drop_bad_rows)
            dev = (dev_set_from_trials(self.cache, self.dev_trials, self.need_sequences, device=device)
                   if self.dev_trials is not None else None)
            self._data = (batch, labels, dev)
            self.load_seconds = time.perf_counter() - t0
        return self._data

    def data_for(self, needs_sequences: bool):
        """``(batch, labels, dev)``; clip-level heads get views without the sequences (no copy)."""
        from fusion.evaluation import DevSet

        batch, labels, dev = self._load()
        if needs_sequences and not batch.has_sequences:
            raise HeadError("internal: sequences were not loaded for a sequence head")
        if not needs_sequences:
            strip = dict(audio_seq=None, audio_seq_valid=None, face_seq=None, face_seq_valid=None)
            batch = dataclasses.replace(batch, **strip)
            if dev is not None:
                dev = DevSet(dataclasses.replace(dev.batch, **strip), dev.enrol_idx, dev.test_idx, dev.labels,
                             dev.ids)
        return batch, labels, dev

    def train(self, head_name: str, cfg=None):
        """``(head in eval mode, history, seconds)``."""
        from fusion.registry import get_head
        from pipeline.train.run import train_head

        cfg = cfg or self.cfg
        entry = get_head(head_name)
        batch, labels, dev = self.data_for(entry.needs_sequences)
        t0 = time.perf_counter()
        head, history = train_head((batch, labels), head_name, cfg, dev,
                                   progress=None if self.progress else False)
        return head, history, time.perf_counter() - t0

    def save(self, path: Path, head, cfg, history) -> str:
        from fusion.checkpoint import save_head
        from pipeline.train.run import checkpoint_meta

        _batch, labels, _dev = self._load()
        meta = checkpoint_meta(cfg, self.cache, history, n_classes=int(labels.max()) + 1,
                               head_name=getattr(head, "name", None))
        meta["trained_by"] = "avfuse ablate"
        meta["dev_trials"] = getattr(self.dev_trials, "path", self.dev_trials)
        save_head(path, head, meta)
        return str(path)


def needs_sequences(name: str) -> bool:
    from fusion.registry import get_head
    return get_head(name).needs_sequences


def resolve_systems(cache, heads, *, runs_dir=None, train: bool = False, trainer: HeadTrainer | None = None,
                    save_dir: Path | None = None, force: bool = False, on_done=None) -> list[System]:
    """Systems for ``heads`` (see the module docstring); trains what is missing when ``train``."""
    from fusion.checkpoint import check_provenance, load_head
    from fusion.registry import get_head

    systems = []
    for name in heads:
        if name == "none":
            systems.append(System("none"))
            continue
        if str(name).endswith(".pt"):
            head, meta = load_head(name)
            check_provenance(meta, cache, force=force, path=name)
            systems.append(System(Path(name).stem, head, "checkpoint", str(name), meta.get("history", [])))
            continue
        get_head(name)  # unknown -> HeadError listing the heads
        ckpt = Path(runs_dir) / f"{name}.pt" if runs_dir else None
        if ckpt is not None and ckpt.is_file():
            head, meta = load_head(ckpt)
            check_provenance(meta, cache, force=force, path=ckpt)
            systems.append(System(name, head, "checkpoint", str(ckpt), meta.get("history", [])))
        elif train and trainer is not None:
            head, history, secs = trainer.train(name)
            path = trainer.save(save_dir / f"{safe_name(name)}.pt", head, trainer.cfg, history) if save_dir else None
            systems.append(System(name, head, "trained", path, history, secs))
        else:
            where = f"{ckpt}" if ckpt is not None else f"{name}.pt (no --runs folder given)"
            raise HeadError(f"no trained '{name}' head: {where} does not exist",
                            path=ckpt, hint="pass --train (with --dev-trials for early stopping) to train "
                                            "missing heads now, or --runs DIR holding NAME.pt checkpoints")
        if on_done is not None:
            on_done(systems[-1])
    return systems
