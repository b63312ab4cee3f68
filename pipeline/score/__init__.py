"""Offline scoring of trial lists from the cache, in every modality mode.

``engine`` (``score_from_cache``: trials -> scores, each utterance embedded once),
``channels`` (vectorised chunked row-wise dot products), ``rows`` (reading clip
embeddings or a head's embeddings), ``norm`` (S-norm / AS-norm with out-of-core
cohorts), ``centering`` (``--mean-sub``: WeSpeaker's mean subtraction), ``files`` (the scores
TSV and its provenance sidecar).
"""

from pipeline.score.centering import embedding_means
from pipeline.score.channels import Channel, row_dot, score_channels
from pipeline.score.engine import check_cohort_cache, check_missing, score_from_cache
from pipeline.score.files import Scores, read_scores, sidecar_path, write_scores
from pipeline.score.norm import NORMS, cohort_stats, normalize_channel, resolve_cohort
from pipeline.score.rows import embed_rows, present_rows, read_rows

__all__ = ["NORMS", "Channel", "Scores", "check_cohort_cache", "check_missing", "cohort_stats", "embed_rows",
           "embedding_means", "normalize_channel", "present_rows", "read_rows", "read_scores", "resolve_cohort", "row_dot",
           "score_channels", "score_from_cache", "sidecar_path", "write_scores"]
