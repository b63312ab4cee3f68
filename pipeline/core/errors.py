"""The one typed error hierarchy of avfuse.

Every error a user can cause (bad file, bad flag, mismatched checkpoint) is an
``AvfuseError``. The CLI prints it as a single line::

    avfuse: error: trials.txt:17: expected 'label enrol test' (3 fields), got 2 -- fix or remove the line

and exits with status 2; ``avfuse --debug`` shows the traceback instead.
"""

from __future__ import annotations

from pathlib import Path


class AvfuseError(Exception):
    """Base class. ``path``/``line`` say where, ``hint`` says what to do."""

    def __init__(self, message: str, *, path: str | Path | None = None,
                 line: int | None = None, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.path = str(path) if path is not None else None
        self.line = line
        self.hint = hint

    def __str__(self) -> str:
        where = ""
        if self.path is not None:
            where = self.path + (f":{self.line}" if self.line is not None else "") + ": "
        text = where + self.message
        if self.hint:
            text += f" -- {self.hint}"
        return text


class ConfigError(AvfuseError):
    """A bad flag value, config file or config combination."""


class ManifestError(AvfuseError):
    """A malformed manifest line, duplicate clip id, or an unreadable corpus root."""


class TrialListError(AvfuseError):
    """A malformed trial list line or an unreadable trial list."""


class DecodeError(AvfuseError):
    """A media file that cannot be decoded (corrupt, empty, no such stream)."""


class BackboneError(AvfuseError):
    """Unknown backbone name, or a checkpoint that does not match the backbone."""


class CacheError(AvfuseError):
    """A missing, damaged, locked or mismatched embedding cache."""


class HeadError(AvfuseError):
    """Unknown fusion head, bad head config, or a head checkpoint that does not fit."""


class TrainingError(AvfuseError):
    """Training cannot run on this data (too few identities, NaN rows, ...)."""


class ScoringError(AvfuseError):
    """Trials that cannot be scored (missing utterances, bad mode, bad cohort)."""


class OutputError(AvfuseError):
    """An output that cannot be written: read-only or full file system, a folder, a name too long."""


class ClusterError(AvfuseError):
    """A Dask cluster that cannot be started or reached."""
