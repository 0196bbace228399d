"""Gen1 detection samples: one per unique label timestamp of every recording (no torch).

For a label time t the events in [t − window_us, t) are cut into T equal bins and turned into a
[T, C, 240, 304] tensor (``events.events_to_tensor``), then letterboxed to S x S by nearest-pixel
sampling (``ratio = min(S/240, S/304)``, centred, ``x' = x·ratio + padx``); nearest keeps the
3-level ``polarity3`` values and integer counts intact. ``polarity3`` is scaled by 1/255 (pad
127/255), count representations are raw counts (pad 0).

Boxes at t: the last row per track_id (as EMS-YOLO / SpikeYOLO), clipped to the 304 x 240 frame
(pixel edges [0, 304] x [0, 240]) and dropped when the clipped area is zero (as RVT; a
RuntimeWarning per file counts the rows reaching outside the frame), then mapped
into the letterbox. With ``augment=True`` a horizontal flip (p = 0.5) is drawn from
``default_rng([seed, epoch, index])``.

Bad recordings: every recording's ``.dat`` header (format, size, 304 x 240 sensor) and
``_bbox.npy`` are checked when the set is built, so a corrupt file stops the run before the
first epoch, naming the file; with ``skip_bad=True`` the recording is left out instead (one
``spikedet: warning:`` line on stderr; ``skipped`` lists (file, reason)) and ``labels`` holds only
the remaining recordings, so Gen1 mAP covers those.

Memory: events are read lazily per recording through ``gen1.DatFile`` (a memmap plus a cached
int64 t column, 8 bytes per event); the ``cache_files`` most recently used recordings stay open
(a 60 s Gen1 file with ~20 M events costs ~160 MB per cached file).
"""

from __future__ import annotations

import os
import sys
import warnings
from collections import OrderedDict
from pathlib import Path

import numpy as np

from spikedet.data.coco import Sample, letterbox_geometry
from spikedet.data.events import BACKGROUND, channels, events_to_tensor
from spikedet.data.gen1 import SENSOR_HW, DatFile, read_dat_header
from spikedet.data.gen1_labels import Gen1Recording, find_recordings, read_bbox
from spikedet.errors import SpikedetError


def last_per_track(rows: np.ndarray) -> np.ndarray:
    """Rows of one timestamp -> the last row of each track_id, in file order."""
    if rows.size == 0:
        return rows
    reversed_ids = rows["track_id"][::-1]
    _, first_in_reversed = np.unique(reversed_ids, return_index=True)
    keep = np.sort(len(rows) - 1 - first_in_reversed)
    return rows[keep]


def clip_boxes(rows: np.ndarray, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Box rows -> (xyxy float64 [N, 4] clipped to the frame, class ids) without empty boxes."""
    xyxy = np.stack(
        [rows["x"], rows["y"], rows["x"] + rows["w"], rows["y"] + rows["h"]], axis=1
    ).astype(np.float64)
    xyxy[:, 0::2] = xyxy[:, 0::2].clip(0.0, float(width))
    xyxy[:, 1::2] = xyxy[:, 1::2].clip(0.0, float(height))
    keep = (xyxy[:, 2] > xyxy[:, 0]) & (xyxy[:, 3] > xyxy[:, 1])
    return xyxy[keep], rows["class_id"][keep].astype(np.int64)


def warn_outside_frame(rows: np.ndarray, height: int, width: int, where: str) -> int:
    """Count box rows reaching outside the frame and warn once per file (RuntimeWarning).

    Policy: such boxes are not refused; ``clip_boxes`` clips them to the frame and drops the
    ones left empty (as RVT), so the user is told how many rows that concerns.
    """
    x1, y1 = rows["x"], rows["y"]
    outside = (x1 < 0) | (y1 < 0) | (x1 + rows["w"] > width) | (y1 + rows["h"] > height)
    count = int(np.count_nonzero(outside))
    if count:
        warnings.warn(
            f"{count} of {len(rows)} boxes reach outside the {width}x{height} frame; clipped, "
            f"empty ones dropped ({where})",
            RuntimeWarning,
            stacklevel=3,
        )
    return count


def _check_header(rec: Gen1Recording) -> None:
    """The ``.dat`` header parses (format, event size, whole events) and is a 304 x 240 sensor."""
    header = read_dat_header(rec.dat)
    if (header.height, header.width) != SENSOR_HW:
        raise SpikedetError(
            f"sensor {header.width}x{header.height}, expected 304x240", str(rec.dat)
        )


class Gen1DetectionSet:
    """``root/split`` of a Gen1-layout folder -> ``Sample`` per unique label timestamp.

    Items are ordered by recording stem, then time; ``index[i] = (recording, t_us)``.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        split: str,
        T: int = 5,
        window_us: int = 250_000,
        representation: str = "polarity3",
        imgsz: int = 320,
        augment: bool = False,
        seed: int = 0,
        bins: int = 10,
        cache_files: int = 2,
        skip_bad: bool = False,
    ):
        self.root = Path(root)
        where = str(self.root / split)
        if T < 1 or window_us < T or imgsz < 8 or cache_files < 1 or seed < 0:
            raise SpikedetError(
                f"need T >= 1, window_us >= T, imgsz >= 8, cache_files >= 1, seed >= 0 (got T={T}, "
                f"window_us={window_us}, imgsz={imgsz}, cache_files={cache_files}, seed={seed})",
                where,
            )
        self.n_channels = channels(representation, bins)
        self.split, self.T, self.window_us = split, int(T), int(window_us)
        self.representation, self.bins, self.imgsz = representation, int(bins), int(imgsz)
        self.augment, self.seed, self.epoch = bool(augment), int(seed), 0
        self.skipped: list[tuple[str, str]] = []  # (file, reason) left out under skip_bad
        self.recordings: list[Gen1Recording] = []
        self.labels: dict[str, np.ndarray] = {}
        for rec in find_recordings(self.root, split):
            try:
                _check_header(rec)
                labels = read_bbox(rec.bbox)
            except SpikedetError as err:
                if not skip_bad:
                    raise
                self.skipped.append((str(err.where), str(err.what)))
                sys.stderr.write(f"spikedet: warning: skipped bad file: {err.one_line()}\n")
                continue
            self.recordings.append(rec)
            self.labels[rec.stem] = labels
        for rec in self.recordings:
            warn_outside_frame(self.labels[rec.stem], *SENSOR_HW, str(rec.bbox))
        self.index: list[tuple[int, int]] = []
        for k, rec in enumerate(self.recordings):
            for t in np.unique(self.labels[rec.stem]["t"]).tolist():
                self.index.append((k, int(t)))
        self.orig_hw = SENSOR_HW
        self._cache: OrderedDict[int, DatFile] = OrderedDict()
        self._cache_files = int(cache_files)
        ratio, (new_h, new_w), (padx, pady) = letterbox_geometry(*SENSOR_HW, self.imgsz)
        self.ratio, self.pad, self._new_hw = ratio, (float(padx), float(pady)), (new_h, new_w)
        # Nearest source pixel of each letterboxed pixel centre.
        self._rows = np.minimum(
            ((np.arange(new_h) + 0.5) / ratio).astype(np.int64), SENSOR_HW[0] - 1
        )
        self._cols = np.minimum(
            ((np.arange(new_w) + 0.5) / ratio).astype(np.int64), SENSOR_HW[1] - 1
        )

    def __len__(self) -> int:
        return len(self.index)

    def set_epoch(self, epoch: int) -> None:
        """Augmentation randomness is a function of (seed, epoch, index) only."""
        if epoch < 0:
            raise SpikedetError(f"epoch must be >= 0, got {epoch}", str(self.root / self.split))
        self.epoch = int(epoch)

    def meta(self, i: int) -> dict:
        rec_index, t = self.index[i]
        return {"file": self.recordings[rec_index].stem, "t_us": t, "ratio": self.ratio,
                "pad": self.pad, "orig_hw": self.orig_hw}  # fmt: skip

    def _dat(self, rec_index: int) -> DatFile:
        if rec_index in self._cache:
            self._cache.move_to_end(rec_index)
        else:
            self._cache[rec_index] = DatFile(self.recordings[rec_index].dat)
            while len(self._cache) > self._cache_files:
                self._cache.popitem(last=False)
        return self._cache[rec_index]

    def events_tensor(self, i: int) -> np.ndarray:
        """The sample's events before letterboxing: float32 [T, C, 240, 304]."""
        rec_index, t = self.index[i]
        dat = self._dat(rec_index)
        if (dat.header.height, dat.header.width) != SENSOR_HW:
            raise SpikedetError(
                f"sensor {dat.header.width}x{dat.header.height}, expected 304x240", dat.header.path
            )
        events = dat.window(t - self.window_us, t)
        return events_to_tensor(
            events, t - self.window_us, t, self.T, *SENSOR_HW, self.representation, self.bins
        )

    def __getitem__(self, i: int) -> Sample:
        if not -len(self) <= i < len(self):
            raise IndexError(i)
        i %= len(self)
        rec_index, t = self.index[i]
        frames = self.events_tensor(i)
        scale = 255.0 if self.representation == "polarity3" else 1.0
        pad_value = BACKGROUND / scale if self.representation == "polarity3" else 0.0
        size = self.imgsz
        image = np.full((self.T, self.n_channels, size, size), pad_value, dtype=np.float32)
        new_h, new_w = self._new_hw
        padx, pady = int(self.pad[0]), int(self.pad[1])
        image[:, :, pady : pady + new_h, padx : padx + new_w] = (
            frames[:, :, self._rows[:, None], self._cols[None, :]] / scale
        )
        labels = self.labels[self.recordings[rec_index].stem]
        lo, hi = np.searchsorted(labels["t"], [t, t + 1])
        xyxy, classes = clip_boxes(last_per_track(labels[lo:hi]), *SENSOR_HW)
        boxes = xyxy * self.ratio + np.array([padx, pady, padx, pady], dtype=np.float64)
        if self.augment and np.random.default_rng([self.seed, self.epoch, i]).random() < 0.5:
            image = np.ascontiguousarray(image[..., ::-1])
            boxes[:, [0, 2]] = size - boxes[:, [2, 0]]
        return Sample(image, boxes.astype(np.float32), classes, self.meta(i))
