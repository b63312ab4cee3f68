"""Split assignment: which clips are train/dev/test, from a durations file, a meta CSV or a fixed name."""

from __future__ import annotations

import dataclasses
import os
import zlib
from dataclasses import dataclass
from typing import Iterable

from data_manifests.manifest import _open_text


@dataclass
class SplitSource:
    """Split labels read from one ``--split-from FILE[:SPLIT]``.

    ``clips`` maps clip ids and ``speakers`` maps speaker ids to a split name.
    """

    spec: str
    path: str
    split: str | None
    clips: dict[str, str]
    speakers: dict[str, str]
    matched_clips: int = 0
    matched_speakers: set = dataclasses.field(default_factory=set)


def read_split_source(spec: str) -> SplitSource:
    """Parse ``FILE[:SPLIT]`` (``FILE`` may be ``.gz``).

    * A CSV (``.csv``/``.csv.gz``, e.g. ``vox2_meta.csv``; BOM and padded cells are fine):
      the first column is a speaker id and the column named ``Set`` (or ``split``) is that
      speaker's split. ``:SPLIT`` is not allowed here.
    * Any other text file: one entry per line, its first field an id; the rest of the line
      is ignored (so durations files ``spk/video/utt seconds`` work). An id with a ``/`` is
      a clip id (extension stripped), one without is a speaker id. Every listed clip or
      speaker gets ``SPLIT``, which is then required. Blank and ``#`` lines are skipped.
    """
    from data_manifests.ids import normalize_id
    from pipeline.core.errors import ConfigError, ManifestError

    fname, split = spec, None
    if not os.path.exists(spec) and ":" in spec:
        fname, split = spec.rsplit(":", 1)
        if not split or any(c.isspace() for c in split):
            raise ConfigError(f"bad split name {split!r} in --split-from {spec!r}",
                              hint="write FILE:SPLIT, e.g. vox1_tst_duration.txt.gz:test")
    if not os.path.isfile(fname):
        raise ConfigError("--split-from file not found", path=fname, hint="write FILE[:SPLIT] with an existing FILE")
    clips: dict[str, str] = {}
    speakers: dict[str, str] = {}
    is_csv = fname.endswith((".csv", ".csv.gz"))
    try:
        with _open_text(fname, "r") as f:
            text = f.read()
    except (EOFError, OSError, zlib.error, UnicodeDecodeError) as e:
        what = ("not UTF-8 text" if isinstance(e, UnicodeDecodeError) else
                "a truncated or damaged compressed file" if fname.endswith(".gz") else "unreadable")
        raise ManifestError(f"cannot read --split-from file: {what} ({type(e).__name__}: {str(e)[:120]})",
                            path=fname, hint="re-download or regenerate it") from None
    text = text.lstrip("\ufeff")
    if is_csv:
        import csv
        if split is not None:
            raise ConfigError("a CSV split source gives each speaker its own split; drop ':" + split + "'",
                              path=fname, hint="the CSV's Set/split column is used")
        rows = list(csv.reader(text.splitlines()))
        header = [c.strip().lower() for c in rows[0]] if rows else []
        col = next((i for i, c in enumerate(header) if c in ("set", "split")), None)
        if col is None:
            raise ConfigError("CSV has no 'Set' or 'split' column", path=fname, line=1,
                              hint="expected a header like 'VoxCeleb2 ID,VGGFace2 ID,Gender,Set'")
        for i, row in enumerate(rows[1:], start=2):
            cells = [c.strip() for c in row]
            if not any(cells):
                continue
            if len(cells) <= col or not cells[0] or not cells[col]:
                raise ConfigError(f"expected {len(header)} cells with an id and a split", path=fname, line=i)
            speakers[cells[0]] = cells[col]
    else:
        if split is None:
            raise ConfigError("a list file needs a split name", path=fname,
                              hint=f"write --split-from {fname}:SPLIT (e.g. :test)")
        for line in text.splitlines():
            parts = line.split(None, 1)
            if not parts or parts[0].startswith("#"):
                continue
            cid = normalize_id(parts[0])
            (clips if "/" in cid else speakers)[cid] = split
    return SplitSource(spec=spec, path=fname, split=split, clips=clips, speakers=speakers)


class SplitAssigner:
    """Applies splits in order: the current value, then ``split`` (all clips), then each
    source (its speaker entries, then its clip entries); a later source wins."""

    def __init__(self, split: str | None = None, sources: Iterable[SplitSource] = ()):
        self.split = split
        self.sources = list(sources)

    def assign(self, clip_id: str, current: str | None = None) -> str | None:
        out = self.split if self.split is not None else current
        spk = clip_id.split("/", 1)[0]
        for s in self.sources:
            if spk in s.speakers:
                out = s.speakers[spk]
                s.matched_speakers.add(spk)
            if clip_id in s.clips:
                out = s.clips[clip_id]
                s.matched_clips += 1
        return out

    def report(self) -> list[dict]:
        """Per source: how many listed clips/speakers were found in the scan."""
        return [{"source": s.spec, "split": s.split, "n_clips_listed": len(s.clips),
                 "n_clips_matched": s.matched_clips, "n_speakers_listed": len(s.speakers),
                 "n_speakers_matched": len(s.matched_speakers)} for s in self.sources]
