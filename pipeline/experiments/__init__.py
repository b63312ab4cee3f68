"""Experiments on a cache: ablations (head x mode, missing modality, clip length, sweeps,
DCA gates) and the embedding analysis.

``systems`` (what is compared: raw backbones, trained or loaded heads), ``degradations``
(dropping a modality, truncating clips), ``ablate``, ``gates``, ``analyze``, ``stats``
(angles, silhouettes, PCA). Their reports are written by ``pipeline.report``.
"""

from pipeline.experiments.ablate import format_table, run_ablation
from pipeline.experiments.analyze import run_analysis
from pipeline.experiments.degradations import drop_modality, drop_order, truncate_steps
from pipeline.experiments.gates import gate_stats, read_conditions
from pipeline.experiments.stats import angles_deg, pca2, per_identity_mean, silhouette_cosine
from pipeline.experiments.systems import System, parse_sweep, resolve_systems

__all__ = ["System", "angles_deg", "drop_modality", "drop_order", "format_table", "gate_stats", "parse_sweep",
           "pca2", "per_identity_mean", "read_conditions", "resolve_systems", "run_ablation", "run_analysis",
           "silhouette_cosine", "truncate_steps"]
