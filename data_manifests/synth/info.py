"""``synth_info.json`` of a synthetic corpus: what it records of the config (the file is
written by ``data_manifests.synth.synthesize``; ``avfuse ablate --corpus`` reads its per-clip
conditions back through ``pipeline.experiments.read_conditions``)."""

from __future__ import annotations

INFO_NAME = "synth_info.json"


def info_config(cfg: dict) -> dict:
    """The config as ``synth_info.json`` records it: ``av_correlation`` only when it is not 0
    (so the info file of an R = 0 corpus is byte for byte the one from before the option)."""
    return {k: v for k, v in cfg.items() if not (k == "av_correlation" and not v)}


__all__ = ["INFO_NAME", "info_config"]
