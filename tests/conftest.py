"""Shared fixtures: the real VoxCeleb lists in ../shared, one torch thread, the CLI invoker."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("AVFUSE_SHARED", REPO.parent / "shared"))
VOXCELEB = SHARED / "voxceleb"


@pytest.fixture(scope="session")
def voxceleb_dir() -> Path:
    if not VOXCELEB.is_dir():
        pytest.skip(f"shared VoxCeleb lists not found at {VOXCELEB}")
    return VOXCELEB


@pytest.fixture(scope="module")
def one_thread():
    """One torch intra-op thread for a module, restored after it. On the shared 2-core box two
    threads contend (OpenMP spinning) and small models run several times slower.

    A module asks for it with ``pytestmark = pytest.mark.usefixtures("one_thread")``: then it
    is in force before the module's own module-scoped fixtures are built."""
    import torch
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def invoke(capsys):
    """Run ``avfuse ARGS`` in this process through the real entry point (``pipeline.cli.main``);
    returns ``(exit code, stdout, stderr)`` of that call."""
    from pipeline.cli import main

    def run(args):
        capsys.readouterr()
        with pytest.raises(SystemExit) as ex:
            main([str(a) for a in args])
        out = capsys.readouterr()
        return ex.value.code, out.out, out.err
    return run
