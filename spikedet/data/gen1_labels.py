"""Prophesee Gen1 labels: ``<stem>_bbox.npy`` box files and the recording pairs (no torch).

Both box dtypes of the real releases are read (prophesee-ai/prophesee-automotive-dataset-toolbox @ c09d34a,
``src/io/box_loading.py``, and the original 2020 release): the toolbox
layout (40 bytes: ``t``, ..., ``class_confidence``) and the original packed one (33 bytes:
``ts``, ..., ``confidence``); every box array is normalised to ``BBOX_DTYPE``. A recording is a
``<stem>_td.dat`` (read by ``gen1``) paired with its ``<stem>_bbox.npy``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from spikedet.errors import SpikedetError

CLASS_NAMES = ("car", "pedestrian")  # class_id 0, 1
# Toolbox "new" box layout (40 bytes); the names every box array is normalised to.
BBOX_DTYPE = np.dtype({"names": ["t", "x", "y", "w", "h", "class_id", "track_id",
                                 "class_confidence"],
                       "formats": ["<i8", "<f4", "<f4", "<f4", "<f4", "<u4", "<u4", "<f4"],
                       "offsets": [0, 8, 12, 16, 20, 24, 28, 32], "itemsize": 40})  # fmt: skip
# Gen1 original release layout (packed, 33 bytes).
BBOX_DTYPE_ORIGINAL = np.dtype([("ts", "<u8"), ("x", "<f4"), ("y", "<f4"), ("w", "<f4"),
                                ("h", "<f4"), ("class_id", "u1"), ("confidence", "<f4"),
                                ("track_id", "<u4")])  # fmt: skip


def read_bbox(path: str | os.PathLike) -> np.ndarray:
    """Read a ``_bbox.npy`` (original 33-byte or toolbox 40-byte dtype) -> ``BBOX_DTYPE`` [N].

    Renames ``ts`` -> ``t`` and ``confidence`` -> ``class_confidence``; refuses other dtypes,
    non-finite values, negative w/h, class ids other than 0/1 and rows not sorted by t.
    """
    path = Path(path)
    where = str(path)
    if not path.is_file():
        raise SpikedetError("box file not found", where)
    try:
        arr = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise SpikedetError(f"not a readable .npy file: {err}", where) from None
    names = arr.dtype.names or ()
    renamed = tuple({"ts": "t", "confidence": "class_confidence"}.get(n, n) for n in names)
    if arr.ndim != 1 or sorted(renamed) != sorted(BBOX_DTYPE.names):
        raise SpikedetError(
            f"unexpected box array {arr.dtype} {arr.shape}; expected fields "
            f"{', '.join(BBOX_DTYPE.names)} (or ts/confidence)", where)  # fmt: skip
    out = np.empty(len(arr), BBOX_DTYPE)
    for old, new in zip(names, renamed):
        out[new] = arr[old]
    for field in ("x", "y", "w", "h", "class_confidence"):
        if not np.all(np.isfinite(out[field])):
            raise SpikedetError(f"non-finite {field} in a box row", where)
    for field in ("w", "h"):
        if np.any(out[field] < 0):
            k = int(np.argmax(out[field] < 0))
            raise SpikedetError(f"row {k}: negative box {field} {float(out[field][k])}", where)
    if np.any(out["class_id"] >= len(CLASS_NAMES)):
        raise SpikedetError(f"class_id outside 0..{len(CLASS_NAMES) - 1}", where)
    if np.any(np.diff(out["t"]) < 0):
        raise SpikedetError("box rows are not sorted by t", where)
    return out


@dataclass(frozen=True)
class Gen1Recording:
    """One recording: ``stem`` and its two files."""

    stem: str
    dat: Path
    bbox: Path


def find_recordings(root: str | os.PathLike, split: str) -> list[Gen1Recording]:
    """Pair ``<stem>_td.dat`` with ``<stem>_bbox.npy`` in ``root/split`` by stem, sorted by stem.

    A file whose partner is missing raises ``SpikedetError`` naming it.
    """
    folder = Path(root) / split
    if not folder.is_dir():
        raise SpikedetError(f"split folder '{split}' not found", str(folder))
    dats = {p.name[: -len("_td.dat")]: p for p in folder.glob("*_td.dat")}
    boxes = {p.name[: -len("_bbox.npy")]: p for p in folder.glob("*_bbox.npy")}
    for stem in sorted(dats.keys() ^ boxes.keys()):
        lonely = dats.get(stem) or boxes[stem]
        raise SpikedetError("no matching _td.dat / _bbox.npy partner", str(lonely))
    return [Gen1Recording(stem, dats[stem], boxes[stem]) for stem in sorted(dats)]
