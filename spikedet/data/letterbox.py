"""Letterbox geometry and the COCO reader's augmentations on HWC uint8 images (numpy, no torch).

An image of size (h, w) is scaled by ``ratio = min(S/h, S/w)`` (aspect kept), centred on an S x S
canvas filled with 114 and offset by ``pad = (padx, pady)``; a box maps as ``x' = x·ratio + padx``
(``to_original`` inverts this). Scale jitter and horizontal flip move boxes with the pixels.
Boxes are x1, y1, x2, y2 pixel edges (pixel i covers [i, i + 1)). Pillow is imported where used,
so ``to_original`` and ``letterbox_geometry`` work without it.
"""

from __future__ import annotations

import math

import numpy as np

from spikedet.errors import SpikedetError

PAD_VALUE = 114
SCALE_JITTER = (0.75, 1.25)
FLIP_P = 0.5
MIN_BOX_SIDE = 1.0  # boxes with w or h <= this (pixels) are dropped


def letterbox_geometry(h: int, w: int, size: int) -> tuple[float, tuple[int, int], tuple[int, int]]:
    """``ratio = min(S/h, S/w)``, the resized (new_h, new_w) and the integer (padx, pady)."""
    ratio = min(size / h, size / w)
    new_h = min(size, max(1, round(h * ratio)))
    new_w = min(size, max(1, round(w * ratio)))
    return ratio, (new_h, new_w), ((size - new_w) // 2, (size - new_h) // 2)


def _resize(img: np.ndarray, new_h: int, new_w: int) -> np.ndarray:
    from PIL import Image

    if img.shape[:2] == (new_h, new_w):
        return img
    return np.asarray(Image.fromarray(img).resize((new_w, new_h), Image.Resampling.BILINEAR))


def letterbox(img: np.ndarray, size: int) -> tuple[np.ndarray, float, tuple[float, float]]:
    """HWC uint8 RGB -> (S x S x 3 uint8, ratio, (padx, pady)); aspect kept, centred, pad 114."""
    if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
        raise SpikedetError(
            f"expected an HxWx3 uint8 image, got {img.dtype} {img.shape}", "letterbox"
        )
    ratio, (new_h, new_w), (padx, pady) = letterbox_geometry(img.shape[0], img.shape[1], size)
    out = np.full((size, size, 3), PAD_VALUE, dtype=np.uint8)
    out[pady : pady + new_h, padx : padx + new_w] = _resize(img, new_h, new_w)
    return out, ratio, (float(padx), float(pady))


def to_original(boxes_xyxy: np.ndarray, meta: dict) -> np.ndarray:
    """Undo the letterbox: ``x = (x' − padx) / ratio`` (same for y), clipped to the original image.

    Returns float64 [N, 4]. Valid for samples read without augmentation (``meta`` describes the
    letterbox only).
    """
    boxes = np.asarray(boxes_xyxy, dtype=np.float64).reshape(-1, 4)
    padx, pady = meta["pad"]
    h, w = meta["orig_hw"]
    out = (boxes - np.array([padx, pady, padx, pady])) / float(meta["ratio"])
    out[:, 0::2] = out[:, 0::2].clip(0.0, float(w))
    out[:, 1::2] = out[:, 1::2].clip(0.0, float(h))
    return out


def _clip_and_keep(boxes: np.ndarray, size: int) -> np.ndarray:
    """Clip xyxy boxes to [0, size] and return the mask of those wider and higher than 1 px."""
    np.clip(boxes, 0.0, float(size), out=boxes)
    return ((boxes[:, 2] - boxes[:, 0]) > MIN_BOX_SIDE) & (
        (boxes[:, 3] - boxes[:, 1]) > MIN_BOX_SIDE
    )


def scale_jitter(
    img: np.ndarray, boxes: np.ndarray, scale: float, offset_frac: tuple[float, float]
) -> tuple[np.ndarray, np.ndarray]:
    """Scale S x S content by ``scale``, then crop (scale > 1) or pad with 114 (scale < 1) back
    to S. The crop/pad offset per axis is ``floor(offset_frac · (|new − S| + 1))``, a uniform
    integer in 0..|new − S| for offset_frac ~ U[0, 1). Boxes follow (not clipped).
    """
    size = img.shape[0]
    new = max(2, round(size * scale))
    factor = new / size
    resized = _resize(img, new, new)
    ox, oy = (math.floor(f * (abs(new - size) + 1)) for f in offset_frac)
    ox, oy = min(ox, abs(new - size)), min(oy, abs(new - size))
    if new >= size:
        out = resized[oy : oy + size, ox : ox + size]
        shift = -np.array([ox, oy, ox, oy], dtype=np.float64)
    else:
        out = np.full((size, size, 3), PAD_VALUE, dtype=np.uint8)
        out[oy : oy + new, ox : ox + new] = resized
        shift = np.array([ox, oy, ox, oy], dtype=np.float64)
    return np.ascontiguousarray(out), boxes * factor + shift


def hflip(img: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mirror left-right: ``x1' = S − x2``, ``x2' = S − x1``."""
    size = img.shape[1]
    flipped = boxes.copy()
    flipped[:, 0], flipped[:, 2] = size - boxes[:, 2], size - boxes[:, 0]
    return np.ascontiguousarray(img[:, ::-1]), flipped
