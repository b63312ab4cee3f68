"""The ground of avfuse: what every package may import, importing nothing else of avfuse.

errors (one typed hierarchy), config (JSON round-trip and fingerprints), fsio (atomic
writes, fsync, sha256, temp sweeping, pid liveness), outputs (the one output-path guard), registry (one name -> entry
mechanism), modes (the modality modes and vocabulary), metrics (EER, minDCF, error
curves; numpy only), linalg (L2 normalisation), progress (the one tqdm factory),
safeload (``torch.load(weights_only=True)`` with one-line refusals).
"""

# names are loaded on first use (PEP 562): `import pipeline.core.errors` (every CLI start)
# must not pay for numpy, which the metrics and linalg modules import
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

_SURFACE = {  # submodule: the names it gives the package surface
    "config": "canonical_json fingerprint from_dict to_dict",
    "errors": "AvfuseError BackboneError CacheError ClusterError ConfigError DecodeError HeadError ManifestError "
              "OutputError ScoringError TrainingError TrialListError",
    "fsio": "atomic_write_bytes atomic_write_json atomic_write_text fsync_dir fsync_file is_dead_local_writer "
            "pid_alive sha256_file sweep_dead_temps writer_tag",
    "linalg": "l2_normalize",
    "metrics": "ErrorCurves compute_metrics eer error_curves min_dcf",
    "modes": "MODALITIES MODALITY_NAMES MODES parse_mode",
    "outputs": "as_output_error check_output",
    "progress": "progress progress_bar",
    "registry": "Registry",
}
_WHERE = {name: mod for mod, names in _SURFACE.items() for name in names.split()}

__all__ = [
    "AvfuseError", "BackboneError", "CacheError", "ClusterError", "ConfigError", "DecodeError", "HeadError",
    "ManifestError", "OutputError", "ScoringError", "TrainingError", "TrialListError",
    "canonical_json", "fingerprint", "from_dict", "to_dict",
    "atomic_write_bytes", "atomic_write_json", "atomic_write_text", "fsync_dir", "fsync_file",
    "is_dead_local_writer", "pid_alive", "sha256_file", "sweep_dead_temps", "writer_tag",
    "l2_normalize", "as_output_error", "check_output", "ErrorCurves", "compute_metrics", "eer", "error_curves", "min_dcf",
    "MODALITIES", "MODALITY_NAMES", "MODES", "parse_mode", "progress", "progress_bar", "Registry",
]



def __getattr__(name: str):
    mod = _WHERE.get(name)
    if mod is None:
        raise AttributeError(f"module 'pipeline.core' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"pipeline.core.{mod}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # for type checkers and IDEs: the eager form
    from pipeline.core.config import canonical_json, fingerprint, from_dict, to_dict
    from pipeline.core.errors import (
        AvfuseError,
        BackboneError,
        CacheError,
        ClusterError,
        ConfigError,
        DecodeError,
        HeadError,
        ManifestError,
        OutputError,
        ScoringError,
        TrainingError,
        TrialListError,
    )
    from pipeline.core.fsio import (
        atomic_write_bytes,
        atomic_write_json,
        atomic_write_text,
        fsync_dir,
        fsync_file,
        is_dead_local_writer,
        pid_alive,
        sha256_file,
        sweep_dead_temps,
        writer_tag,
    )
    from pipeline.core.linalg import l2_normalize
    from pipeline.core.metrics import ErrorCurves, compute_metrics, eer, error_curves, min_dcf
    from pipeline.core.modes import MODALITIES, MODALITY_NAMES, MODES, parse_mode
    from pipeline.core.outputs import as_output_error, check_output
    from pipeline.core.progress import progress, progress_bar
    from pipeline.core.registry import Registry
