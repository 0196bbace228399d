"""Shared fixtures. Tests that need the Lava environment use ``lava_python``: it skips when
``.venv-lava`` is missing, except under CI (``CI`` set), where a missing Lava environment fails."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _lava_python() -> Path | None:
    override = os.environ.get("SPIKEDET_LAVA_PYTHON")
    cand = Path(override) if override else REPO / ".venv-lava" / "bin" / "python"
    return cand if cand.exists() else None


@pytest.fixture(scope="session")
def lava_python() -> Path:
    path = _lava_python()
    if path is None:
        msg = "Lava environment missing (.venv-lava); run 'make setup' with Python 3.10 available"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    return path


@pytest.fixture(scope="session")
def core_python() -> Path:
    return Path(sys.executable)


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO
