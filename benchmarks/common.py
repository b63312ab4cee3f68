"""What the benchmark scripts share: writing their figures as JSON beside the printed table."""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
from pathlib import Path
from typing import Iterator


def save_json(path: str | Path | None, result: dict, indent: int = 2) -> None:
    """Write ``result`` to ``path`` (nothing when ``path`` is None) and say so."""
    if path is None:
        return
    Path(path).write_text(json.dumps(result, indent=indent) + "\n")
    print(f"wrote {path}")


@contextlib.contextmanager
def scratch_dir(prefix: str) -> Iterator[Path]:
    """A temporary folder for a benchmark's media and caches, removed afterwards."""
    tmp = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
