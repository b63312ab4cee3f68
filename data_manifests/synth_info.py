"""``synth_info.json`` of a synthetic corpus: what it records of the config, and reading its
per-clip conditions back (the file itself is written by ``data_manifests.synth.synthesize``)."""

from __future__ import annotations

import json
from pathlib import Path

from pipeline.errors import ConfigError

INFO_NAME = "synth_info.json"


def info_config(cfg: dict) -> dict:
    """The config as ``synth_info.json`` records it: ``av_correlation`` only when it is not 0
    (so the info file of an R = 0 corpus is byte for byte the one from before the option)."""
    return {k: v for k, v in cfg.items() if not (k == "av_correlation" and not v)}


def read_conditions(corpus_dir: str | Path) -> dict[str, dict[str, str]]:
    """Per-clip conditions ``{clip_id: {"audio": clean|noisy, "face": ok|occluded|absent}}``."""
    p = Path(corpus_dir) / INFO_NAME
    if not p.exists():
        raise ConfigError("not a synthetic corpus (no synth_info.json)", path=p, hint="create one with `avfuse synth`")
    return json.loads(p.read_text())["conditions"]


__all__ = ["INFO_NAME", "info_config", "read_conditions"]
