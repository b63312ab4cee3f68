"""Shared fixtures: the real VoxCeleb lists in ../shared, a small toy corpus."""

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
