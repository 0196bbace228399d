"""Event streams -> dense time-binned tensors float32 [T, C, H, W] (vectorized, no torch).

The window [t_start, t_end) is cut into T equal steps; an event at time t falls in step
``b = floor(T · (t − t_start) / (t_end − t_start))`` (integer arithmetic, so exact). Events outside
the window are ignored. Representations (``REPRESENTATIONS``):

- ``polarity3``: the EMS-YOLO / SpikeYOLO Gen1 frame. Background 127; a pixel hit in step b takes
  255 if the **last** event there had p = 1 and 0 if it had p = 0; C = 3 identical channels.
- ``counts2``: C = 2 event counts per pixel, channel = polarity (0 = OFF, 1 = ON).
- ``histogram``: RVT-style stacked histogram, C = 2·bins: each step is cut again into ``bins``
  equal sub-steps ``s``; channel ``p·bins + s`` (polarity-major) counts events, clipped at 10.
  Unlike RVT, sub-steps use the window edges (not the first/last event), so channels are aligned
  in time across samples.

All three build one flat index per event and use ``np.bincount`` (counts) or an ordered scatter
(``polarity3``: with events sorted by time, the last write to a pixel is the latest event).
"""

from __future__ import annotations

import numpy as np

from spikedet.errors import SpikedetError

REPRESENTATIONS = ("polarity3", "counts2", "histogram")
HISTOGRAM_CLIP = 10
BACKGROUND = 127.0  # polarity3 value of a pixel without events


def channels(representation: str, bins: int = 10) -> int:
    """Number of channels C of ``representation``."""
    if representation == "polarity3":
        return 3
    if representation == "counts2":
        return 2
    if representation == "histogram":
        return 2 * bins
    raise SpikedetError(
        f"unknown representation '{representation}' (choose {', '.join(REPRESENTATIONS)})",
        "representation",
    )


def events_to_tensor(
    events: np.ndarray,
    t_start: int,
    t_end: int,
    steps: int,
    height: int,
    width: int,
    representation: str = "polarity3",
    bins: int = 10,
) -> np.ndarray:
    """``events`` (fields t, x, y, p; sorted by t) -> float32 [steps, C, height, width].

    Raises ``SpikedetError`` for an empty window, steps < 1, bins < 1, or coordinates outside the
    frame.
    """
    n_channels = channels(representation, bins)
    if t_end <= t_start or steps < 1 or bins < 1:
        raise SpikedetError(
            f"need t_end > t_start, steps >= 1, bins >= 1 (got {t_start}, {t_end}, {steps}, "
            f"{bins})", "events_to_tensor")  # fmt: skip
    t = np.asarray(events["t"], dtype=np.int64)
    lo, hi = np.searchsorted(t, [t_start, t_end], side="left")
    t = t[lo:hi]
    x = np.asarray(events["x"][lo:hi], dtype=np.int64)
    y = np.asarray(events["y"][lo:hi], dtype=np.int64)
    p = np.asarray(events["p"][lo:hi], dtype=np.int64)
    if t.size and (x.min() < 0 or y.min() < 0 or x.max() >= width or y.max() >= height):
        raise SpikedetError(f"event outside the {width}x{height} frame", "events_to_tensor")
    duration = t_end - t_start
    pixel = y * width + x
    plane = height * width
    if representation == "histogram":
        # Global sub-step g in 0..steps·bins−1; step = g // bins, sub-step = g % bins.
        g = (t - t_start) * (steps * bins) // duration
        channel = (g // bins) * n_channels + p * bins + (g % bins)
        counts = np.bincount(channel * plane + pixel, minlength=steps * n_channels * plane)
        np.minimum(counts, HISTOGRAM_CLIP, out=counts)
        return counts.astype(np.float32).reshape(steps, n_channels, height, width)
    step = (t - t_start) * steps // duration
    if representation == "counts2":
        flat = (step * 2 + p) * plane + pixel
        counts = np.bincount(flat, minlength=steps * 2 * plane)
        return counts.astype(np.float32).reshape(steps, 2, height, width)
    frame = np.full(steps * plane, BACKGROUND, dtype=np.float32)
    # Sequential fancy assignment: for repeated indices the later event (in time) wins.
    frame[step * plane + pixel] = np.where(p > 0, 255.0, 0.0).astype(np.float32)
    frame = frame.reshape(steps, 1, height, width)
    return np.repeat(frame, 3, axis=1)
