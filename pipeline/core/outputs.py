"""The one output-path guard: an output never destroys an input, a file output is never a folder.

Every command that writes calls ``check_output`` before doing any work::

    check_output(out, inputs=[trials, cache, head], flag="--out")          # a file output
    check_output(out_dir, inputs=[cache, trials], flag="--out", folder=True)

Refusals are one ``ConfigError`` line (exit 2) naming the path and the flag:

* the output resolves to the same file as an input (same path through links or ``..``,
  ``os.path.samefile``, hard links included), or lies inside an input folder (a cache);
* a file output that is an existing folder or not a regular file (a device such as
  ``/dev/full``), a folder output that is an existing file, a parent that is a file;
* a file name longer than the file system allows (``NAME_MAX``, 255 bytes).

Write errors met later (read-only or full file system) are ``OutputError`` lines from
``pipeline.core.fsio.atomic_write_bytes`` and from ``as_output_error``.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterable, Iterator

from pipeline.core.errors import ConfigError
from pipeline.core.fsio import NAME_MAX, output_error


def _real(p: str | Path) -> str:
    return os.path.realpath(os.path.abspath(os.fspath(p)))


def _same(a: str | Path, b: str | Path) -> bool:
    if _real(a) == _real(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _inside(child: str, parent: str) -> bool:
    return child == parent or child.startswith(parent.rstrip(os.sep) + os.sep)


def check_output(out: str | Path | None, inputs: Iterable[str | Path | None] = (), *, flag: str = "--out",
                 folder: bool = False, also: Iterable[str | Path] = ()) -> None:
    """Refuse an output that would destroy an input or cannot be a file/folder (module doc).

    ``also``: further files the command writes next to ``out`` (e.g. ``<out>.json``),
    checked against the inputs the same way.
    """
    if out is None:
        return
    out = Path(out)
    name = os.fsencode(out.name)
    if len(name) > NAME_MAX:
        raise ConfigError(f"{flag}: file name is {len(name)} bytes, longer than the file system's "
                          f"{NAME_MAX}", path=out, hint="use a shorter name")
    if folder and out.exists() and not out.is_dir():
        raise ConfigError(f"{flag} must be a folder, but this is a file", path=out,
                          hint="name a new or existing folder")
    if not folder and out.is_dir():
        raise ConfigError(f"{flag} is an existing folder, not a file", path=out,
                          hint="name a file inside it, e.g. " + str(out / "out"))
    if not folder and out.exists() and not out.is_file():
        raise ConfigError(f"{flag} exists and is not a regular file (a device, pipe or socket)", path=out,
                          hint="name a regular file")
    bad_parent = next((p for p in out.parents if p.exists() and not p.is_dir()), None)
    if bad_parent is not None:
        raise ConfigError(f"{flag}: {bad_parent} is a file, not a folder", path=out, hint="fix the path")
    ins = [Path(p) for p in inputs if p is not None and str(p) != ""]
    for target in [out, *(Path(a) for a in also)]:
        for src in ins:
            inside = src.is_dir() and _inside(_real(target), _real(src))
            if _same(target, src) or inside:
                what = "lies inside the input" if inside and not _same(target, src) else "is the input"
                raise ConfigError(f"{flag}: {target} {what} {src}; writing it would destroy the input",
                                  path=out, hint=f"give {flag} a new path")


@contextlib.contextmanager
def as_output_error(path: str | Path) -> Iterator[None]:
    """Turn an ``OSError`` of the writes inside the block into one ``OutputError`` naming ``path``."""
    try:
        yield
    except OSError as e:
        raise output_error(e, path) from None
