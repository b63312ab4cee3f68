"""Manifests and trial lists: ``manifest`` (``ClipRecord`` JSONL, resumable writer),
``splits`` (train/dev/test assignment), ``voxceleb`` (the VoxCeleb1/2 tree scanner),
``trials`` (trial-list reading and writing; ``trials_parse`` the vectorised parser;
``trials_make`` draws a labelled list from a split),
``ids`` (the utterance-id normal form) and ``synth/`` (the synthetic toy corpus)."""

from data_manifests.ids import normalize_id, speaker_of
from data_manifests.manifest import (
    ClipRecord,
    ManifestWriter,
    check_manifest,
    iter_manifest,
    manifest_fingerprint,
    read_manifest,
    write_manifest,
)
from data_manifests.splits import SplitAssigner, read_split_source
from data_manifests.trials import TrialList, read_trials, write_trials
from data_manifests.trials_make import SampledTrials, sample_trials
from data_manifests.voxceleb import discover, scan, scan_to_manifest

__all__ = ["ClipRecord", "ManifestWriter", "SampledTrials", "SplitAssigner", "TrialList", "check_manifest", "discover",
           "iter_manifest", "manifest_fingerprint", "normalize_id", "read_manifest", "read_split_source",
           "read_trials", "sample_trials", "scan", "scan_to_manifest", "speaker_of", "write_manifest", "write_trials"]
