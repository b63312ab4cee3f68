"""The one progress-bar factory: tqdm on stderr, every long job of avfuse goes through it.

``enabled=False`` (a command's ``--quiet``) shows nothing. Otherwise the bar shows when
stderr is a terminal; ``tty_only=False`` shows it in logs too (long extraction runs,
where a log line per refresh is what a person tailing the log wants).
"""

from __future__ import annotations

import sys
from typing import Any, Iterable


def progress(iterable: Iterable | None = None, *, desc: str, total: int | None = None, unit: str = "it",
             enabled: bool | None = True, tty_only: bool = True, leave: bool = False, **kw: Any):
    """A tqdm bar (usable as a context manager and as an iterable wrapper)."""
    from tqdm.auto import tqdm

    disable = True if enabled is False else (None if tty_only else False)
    return tqdm(iterable, total=total, desc=desc, unit=unit, leave=leave, disable=disable,
                file=sys.stderr, dynamic_ncols=True, **kw)


def progress_bar(desc: str, total: int, enabled: bool):
    """``progress`` with a scaled count, or None when disabled (callers test ``if bar``)."""
    if not enabled:
        return None
    return progress(desc=desc, total=total, unit_scale=True)
