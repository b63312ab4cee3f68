"""Fixtures of the reliability suite."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def base(tmp_path_factory):
    """Where the toy corpus, the fault corpus and its reference caches are made, once per session."""
    return tmp_path_factory.getbasetemp() / "reliability-toy"
