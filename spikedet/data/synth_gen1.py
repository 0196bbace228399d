"""Synthetic Gen1-layout recordings: ``out/{train,val,test}/<stem>_td.dat`` + ``<stem>_bbox.npy``.

Scene (304 x 240): a static textured background with car-like objects (wide dark body, bright
window band, two dark wheels; class 0) and pedestrian-like ones (tall thin body with a head;
class 1) moving at constant velocity. Events come from a log-intensity change model simulated at
1 kHz: each pixel keeps a reference log intensity ``L_ref``; after rendering frame k with
log intensity ``L`` (plus Gaussian sensor noise), a pixel emits ``n = floor(|L − L_ref| / C)``
events of polarity ``L > L_ref`` (C = per-pixel threshold, 0.15 · (1 + 0.1·N(0,1)) fixed per
recording) and moves ``L_ref`` by ``n·C`` towards ``L``. The n events of a pixel get timestamps
spread evenly over the 1 ms frame interval plus jitter, and each frame's events are sorted, so the
file is sorted by t.

Labels: one row per visible object (at least half of its box inside the frame) at regular
timestamps every ``label_period`` (50, 100, 200 or 250 ms, drawn per recording) starting after
0.5 s (the first at 550 ms), with a track id per object and confidence 1. Stems follow the real naming
``YY-MM-DD_HH-MM-SS_<start_us>_<end_us>``. Everything derives from ``default_rng([seed, split,
index])``, so the output is byte-identical for a seed.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from spikedet.data.gen1 import SENSOR_HW
from spikedet.data.gen1_labels import BBOX_DTYPE, BBOX_DTYPE_ORIGINAL
from spikedet.errors import SpikedetError
from spikedet.fileio import atomic_path

FRAME_US = 1000  # simulation step (1 kHz)
THRESHOLD = 0.15  # mean contrast threshold C (log units)
NOISE_SIGMA = 0.02  # per-frame log-intensity noise
FIRST_LABEL_US = 500_000
SPLITS = ("train", "val", "test")


def _texture(rng: np.random.Generator, h: int, w: int, cell: int) -> np.ndarray:
    """Blocky random texture in [0.15, 0.85] (nearest-upsampled noise)."""
    coarse = rng.uniform(0.15, 0.85, size=(h // cell + 2, w // cell + 2))
    return np.repeat(np.repeat(coarse, cell, 0), cell, 1)[:h, :w]


def _make_objects(rng: np.random.Generator, seconds: float) -> list[dict]:
    """2-4 objects with class, size, start position (top-left, px) and velocity (px/s)."""
    height, width = SENSOR_HW
    objects = []
    for track in range(int(rng.integers(2, 5))):
        cls = int(rng.integers(0, 2))
        if cls == 0:
            w, h = rng.uniform(45, 90), rng.uniform(28, 45)
            speed = rng.uniform(20, 60) * rng.choice([-1, 1])
        else:
            w, h = rng.uniform(12, 20), rng.uniform(38, 65)
            speed = rng.uniform(8, 25) * rng.choice([-1, 1])
        # Start so that the object stays mostly in view for the recording.
        travel = abs(speed) * seconds
        x_lo, x_hi = (0.0, max(1.0, width - w - travel)) if speed > 0 else (
            min(width - w - 1.0, travel), width - w)  # fmt: skip
        x0 = rng.uniform(x_lo, max(x_lo + 1.0, x_hi))
        y0 = rng.uniform(20, height - h - 5)
        vy = rng.uniform(-4, 4)
        shade = rng.uniform(0.05, 0.3) if rng.random() < 0.5 else rng.uniform(0.7, 0.95)
        objects.append(dict(cls=cls, w=w, h=h, x0=x0, y0=y0, vx=speed, vy=vy,
                            shade=shade, track=track + 1))  # fmt: skip
    return objects


def _box(obj: dict, t_us: float) -> tuple[float, float, float, float]:
    s = t_us * 1e-6
    return obj["x0"] + obj["vx"] * s, obj["y0"] + obj["vy"] * s, obj["w"], obj["h"]


def _paint(log_img: np.ndarray, obj: dict, t_us: float) -> None:
    """Draw one object into the log-intensity image ``log_img`` (in place, only its box)."""
    height, width = log_img.shape
    x, y, w, h = _box(obj, t_us)
    x0, y0 = max(0, int(np.floor(x))), max(0, int(np.floor(y)))
    x1, y1 = min(width, int(np.ceil(x + w)) + 1), min(height, int(np.ceil(y + h)) + 1)
    if x1 <= x0 or y1 <= y0:
        return
    roi = log_img[y0:y1, x0:x1]
    yy, xx = np.ogrid[y0:y1, x0:x1]
    dark, light = np.log(obj["shade"] + 0.05), np.log(1.05 - obj["shade"])
    if obj["cls"] == 0:
        body = (xx >= x) & (xx < x + w) & (yy >= y) & (yy < y + 0.8 * h)
        roi[body] = dark
        window = (xx >= x + 0.25 * w) & (xx < x + 0.75 * w) & (yy >= y + 0.1 * h)
        roi[window & (yy < y + 0.4 * h)] = light
        radius = 0.2 * h
        for cx in (x + 0.22 * w, x + 0.78 * w):
            roi[(xx - cx) ** 2 + (yy - (y + h - radius)) ** 2 < radius**2] = np.log(0.08)
    else:
        cx = x + w / 2
        roi[(np.abs(xx - cx) < w / 2) & (yy >= y + 0.2 * h) & (yy < y + h)] = dark
        roi[(xx - cx) ** 2 + (yy - (y + 0.1 * h)) ** 2 < (0.1 * h) ** 2] = light


def simulate_events(rng: np.random.Generator, objects: list[dict], seconds: float) -> np.ndarray:
    """Run the log-intensity change model; returns raw ``(t, w)`` uint32 records sorted by t."""
    height, width = SENSOR_HW
    background = 0.6 * _texture(rng, height, width, 8) + 0.4 * _texture(rng, height, width, 3)
    log_background = np.log(background + 0.05).astype(np.float32)
    threshold = (THRESHOLD * (1.0 + 0.1 * rng.standard_normal((height, width)))).clip(0.05)
    threshold = threshold.astype(np.float32)
    ref = log_background.copy()
    chunks = []
    for k in range(int(round(seconds * 1e6 / FRAME_US))):
        t0 = k * FRAME_US
        log_i = log_background + NOISE_SIGMA * rng.standard_normal((height, width), np.float32)
        for obj in objects:
            _paint(log_i, obj, t0 + FRAME_US)
        delta = log_i - ref
        pix = np.flatnonzero(np.abs(delta) >= threshold)
        if pix.size == 0:
            continue
        n = np.floor(np.abs(delta.flat[pix]) / threshold.flat[pix]).astype(np.int64)
        sign = np.sign(delta.flat[pix])
        ref.flat[pix] += sign * n * threshold.flat[pix]
        # Event j (of n) of a pixel at t0 + (j + U) * FRAME_US / n: spread over the interval.
        ev_pix = np.repeat(pix, n)
        j = np.arange(ev_pix.size) - np.repeat(np.cumsum(n) - n, n)
        frac = (j + rng.uniform(0.0, 1.0, ev_pix.size)) / np.repeat(n, n)
        t = t0 + np.minimum((frac * FRAME_US).astype(np.int64), FRAME_US - 1)
        pol = np.repeat(sign > 0, n).astype(np.uint32)
        order = np.argsort(t, kind="stable")
        word = (ev_pix % width).astype(np.uint32) | ((ev_pix // width).astype(np.uint32) << 14)
        rec = np.empty(ev_pix.size, [("t", "<u4"), ("w", "<u4")])
        rec["t"] = t[order]
        rec["w"] = (word | (pol << 28))[order]
        chunks.append(rec)
    return np.concatenate(chunks) if chunks else np.zeros(0, [("t", "<u4"), ("w", "<u4")])


def make_labels(rng: np.random.Generator, objects: list[dict], seconds: float) -> np.ndarray:
    """Box rows (``BBOX_DTYPE``) at regular label times after 0.5 s, sorted by t then track."""
    height, width = SENSOR_HW
    period = int(rng.choice([50_000, 100_000, 200_000, 250_000]))
    rows = []
    for t in range(FIRST_LABEL_US + 50_000, int(seconds * 1e6), period):
        for obj in objects:
            x, y, w, h = _box(obj, t)
            inside_w = min(x + w, width) - max(x, 0.0)
            inside_h = min(y + h, height) - max(y, 0.0)
            if inside_w > 0 and inside_h > 0 and inside_w * inside_h >= 0.5 * w * h:
                rows.append((t, x, y, w, h, obj["cls"], obj["track"], 1.0))
    return np.array(rows, dtype=BBOX_DTYPE)


def _stem(rng: np.random.Generator, seconds: float) -> str:
    month, day = int(rng.integers(1, 13)), int(rng.integers(1, 29))
    hh, mm, ss = int(rng.integers(7, 19)), int(rng.integers(0, 60)), int(rng.integers(0, 60))
    start = int(rng.integers(0, 3000)) * 500_000
    return (
        f"17-{month:02d}-{day:02d}_{hh:02d}-{mm:02d}-{ss:02d}_{start}_{start + int(seconds * 1e6)}"
    )


def write_dat(path: str | os.PathLike, raw: np.ndarray, header_lines: list[str]) -> None:
    """Write a ``.dat``: ``% ``-prefixed header lines, bytes (0, 8), raw records (atomic)."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            for line in header_lines:
                fh.write(f"% {line}\n".encode("latin-1"))
            fh.write(bytes([0, 8]))
            np.ascontiguousarray(raw, dtype=[("t", "<u4"), ("w", "<u4")]).tofile(fh)


def write_bbox(path: str | os.PathLike, boxes: np.ndarray, bbox_dtype: str = "original") -> None:
    """Write ``BBOX_DTYPE`` rows as ``_bbox.npy`` in the original 33-byte or toolbox dtype."""
    if bbox_dtype == "toolbox":
        out = boxes.astype(BBOX_DTYPE)
    elif bbox_dtype == "original":
        out = np.empty(len(boxes), BBOX_DTYPE_ORIGINAL)
        for name in BBOX_DTYPE_ORIGINAL.names:
            src = {"ts": "t", "confidence": "class_confidence"}.get(name, name)
            out[name] = boxes[src]
    else:
        raise SpikedetError(
            f"bbox_dtype must be 'original' or 'toolbox', got '{bbox_dtype}'", str(path)
        )
    with atomic_path(path, suffix=".npy") as tmp:
        np.save(tmp, out, allow_pickle=False)


def write_synthetic_gen1(
    out: str | os.PathLike,
    n_train: int = 4,
    n_val: int = 2,
    n_test: int = 0,
    seconds: float = 5.0,
    seed: int = 0,
    bbox_dtype: str = "original",
) -> dict:
    """Write the synthetic set; returns ``{"root", "seed", "seconds", "splits": {split:
    {"recordings", "events", "boxes", "labels"}}}`` (labels = unique label timestamps)."""
    counts = {"train": n_train, "val": n_val, "test": n_test}
    if min(counts.values()) < 0 or seed < 0:
        raise SpikedetError("recording counts and seed must be >= 0", str(out))
    if not 0.6 <= seconds <= 600:
        raise SpikedetError(f"seconds must be in [0.6, 600], got {seconds}", str(out))
    if bbox_dtype not in ("original", "toolbox"):
        raise SpikedetError(
            f"bbox_dtype must be 'original' or 'toolbox', got '{bbox_dtype}'", str(out)
        )
    root = Path(out)
    # The first existing path on the way up must be a folder, or mkdir fails half-way through.
    existing = next((p for p in (Path(root), *Path(root).parents) if p.exists()), None)
    if existing is not None and not existing.is_dir():
        raise SpikedetError(f"cannot create the output folder: {existing} is a file", str(root))
    height, width = SENSOR_HW
    summary: dict = {"root": str(root), "seed": seed, "seconds": seconds, "splits": {}}
    for split_index, split in enumerate(SPLITS):
        stats = {"recordings": counts[split], "events": 0, "boxes": 0, "labels": 0}
        for index in range(counts[split]):
            rng = np.random.default_rng([seed, split_index, index])
            stem = _stem(rng, seconds)
            objects = _make_objects(rng, seconds)
            labels = make_labels(rng, objects, seconds)
            raw = simulate_events(rng, objects, seconds)
            date = f"20{stem[:8]} {stem[9:17].replace('-', ':')}"
            header = ["Data file containing Event2D events", "Version 2", f"Date {date}",
                      f"Height {height}", f"Width {width}"]  # fmt: skip
            write_dat(root / split / f"{stem}_td.dat", raw, header)
            write_bbox(root / split / f"{stem}_bbox.npy", labels, bbox_dtype)
            stats["events"] += int(raw.size)
            stats["boxes"] += int(labels.size)
            stats["labels"] += int(np.unique(labels["t"]).size)
        summary["splits"][split] = stats
    return summary
