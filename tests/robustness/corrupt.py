"""Generators of corrupted inputs for the bad-input suite (``test_bad_inputs.py``).

Shared pieces live here; the cases are in ``corrupt_data.py`` (Gen1 .dat/_bbox.npy, COCO JSON,
images) and ``corrupt_model.py`` (weights, NIR, hardware profiles, reports), re-exported below.

Every ``Case`` damages one copy of a valid file in place: ``damage(path)`` rewrites (or deletes)
``path`` and returns the text the one-line error must contain (``None``: the file's own name).
The case lists are built at import time, so pytest ids are stable and the count is known before
any fixture runs. Nothing here imports torch; the weight-file cases do so inside ``damage``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

Damage = Callable[[Path], "str | None"]
GARBAGE = bytes(np.random.default_rng(1234).integers(0, 256, 4096, dtype=np.uint8))


@dataclass(frozen=True)
class Case:
    """One corruption: ``id`` (the pytest id) and the in-place ``damage`` of a valid file."""

    id: str
    damage: Damage


def _write(data: bytes) -> Damage:
    def damage(path: Path) -> None:
        path.write_bytes(data)

    return damage


def _truncate(keep: Callable[[int], int]) -> Damage:
    """Keep the first ``keep(size)`` bytes of the file."""

    def damage(path: Path) -> None:
        data = path.read_bytes()
        path.write_bytes(data[: keep(len(data))])

    return damage


def _delete(path: Path) -> None:
    path.unlink()


def _json(edit: Callable[[Any], Any]) -> Damage:
    """Load the JSON, let ``edit`` mutate it (or return a replacement), dump it back."""

    def damage(path: Path) -> None:
        data = json.loads(path.read_text())
        new = edit(data)
        path.write_text(json.dumps(data if new is None else new))

    return damage


# The case tables (imported last: those modules import the shared pieces above).
from tests.robustness.corrupt_data import BBOX_CASES, COCO_CASES, DAT_CASES, IMAGE_CASES  # noqa: E402
from tests.robustness.corrupt_model import (  # noqa: E402
    NIR_CASES,
    PROFILE_CASES,
    REPORT_CASES,
    WEIGHT_CASES,
    code_pickle,
    code_torch_zip,
    marker_of,
)

__all__ = [
    "BBOX_CASES",
    "COCO_CASES",
    "DAT_CASES",
    "IMAGE_CASES",
    "NIR_CASES",
    "PROFILE_CASES",
    "REPORT_CASES",
    "WEIGHT_CASES",
    "Case",
    "Damage",
    "GARBAGE",
    "code_pickle",
    "code_torch_zip",
    "marker_of",
]
