"""Utterance ids: the one normal form of VoxCeleb keys (``id10270/5r0dWxy17C8/00001``), and its speaker."""

from __future__ import annotations

MEDIA_EXTENSIONS = (".wav", ".flac", ".m4a", ".aac", ".mp4", ".ogg", ".opus")


def normalize_id(s: str) -> str:
    """The clip id of a trial-list token.

    Surrounding whitespace is stripped, backslashes become ``/``, a leading ``./`` is
    dropped and one media extension (``.wav .flac .m4a .aac .mp4 .ogg .opus``, any case)
    is removed: ``"id10270/x6uYqmx31kE/00001.wav" -> "id10270/x6uYqmx31kE/00001"``.
    """
    s = s.strip().replace("\\", "/")
    while s.startswith("./"):
        s = s[2:]
    dot = s.rfind(".")
    if dot > s.rfind("/") and s[dot:].lower() in MEDIA_EXTENSIONS:
        s = s[:dot]
    return s


def speaker_of(clip_id: str) -> str:
    """The speaker part of a clip id: everything before the first ``/``."""
    return clip_id.split("/", 1)[0]
