"""The modality modes (AxA, VxV, AVxAV, AVxA, AVxV) and the one modality vocabulary.

A modality is ``"A"`` (audio, the voice) or ``"V"`` (visual, the face). Where a file
or a flag spells it out (cache array groups, failure records, ``--modality``), the
long names of ``MODALITY_NAMES`` are used; nothing else.
"""

from __future__ import annotations

from pipeline.core.errors import ScoringError

MODALITIES: tuple[str, ...] = ("A", "V")
MODALITY_NAMES: dict[str, str] = {"A": "audio", "V": "face"}

# mode -> (enrol side modalities, test side modalities)
MODES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "AxA": (("A",), ("A",)),
    "VxV": (("V",), ("V",)),
    "AVxAV": (("A", "V"), ("A", "V")),
    "AVxA": (("A", "V"), ("A",)),
    "AVxV": (("A", "V"), ("V",)),
}


def parse_mode(mode: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """``(enrol_use, test_use)`` of a mode name; unknown -> ``ScoringError``."""
    if mode not in MODES:
        raise ScoringError(f"unknown mode {mode!r}", hint=f"use one of {', '.join(MODES)}")
    return MODES[mode]
