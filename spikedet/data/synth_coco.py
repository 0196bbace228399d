"""A small synthetic detection data set in real COCO format: coloured shapes on clutter.

Each image is a textured background (colour gradient, pixel noise, small distractor dots and thin
lines that are not objects) with 0-3 shapes of three classes drawn over it. A shape has a random
size (12-36 px at 64 px, scaling with the image), colour, fill texture (solid / stripes / noise)
and may partly cover an earlier one. Its ``bbox`` is the tight box of its visible pixels, so it is
always inside the image. Category ids are deliberately non-contiguous (1, 3, 7), as in COCO.

Every image draws from its own generator ``default_rng([seed, split, index])``: the output is a
pure function of the arguments, byte for byte (no global random state).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from spikedet.errors import SpikedetError
from spikedet.fileio import atomic_path, write_json

CATEGORIES: tuple[dict[str, Any], ...] = (
    {"id": 1, "name": "circle", "supercategory": "shape"},
    {"id": 3, "name": "square", "supercategory": "shape"},
    {"id": 7, "name": "triangle", "supercategory": "shape"},
)
SPLITS = ("train", "val")

# Sizes are given at the 64 px reference and scaled with the image size.
_REF_SIZE = 64.0
_OBJ_MIN_PX, _OBJ_MAX_PX = 12.0, 36.0
_P_EMPTY = 0.05  # share of images without objects
_MIN_VISIBLE = 0.6  # an earlier shape keeps at least this share of its pixels when overlapped
_MIN_CONTRAST = 90.0  # minimum RGB distance between a shape's colour and the background under it


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Gradient between two muted colours, pixel noise, distractor dots and thin lines (HWC f64)."""
    from PIL import Image, ImageDraw

    c0, c1 = rng.uniform(40, 215, size=(2, 3))
    angle = rng.uniform(0, 2 * math.pi)
    ys, xs = np.mgrid[0:size, 0:size] / max(size - 1, 1)
    ramp = np.cos(angle) * xs + np.sin(angle) * ys
    ramp = (ramp - ramp.min()) / max(float(np.ptp(ramp)), 1e-9)
    img = c0 + ramp[..., None] * (c1 - c0)
    img += rng.normal(0.0, rng.uniform(4, 14), size=img.shape)

    canvas = Image.fromarray(np.clip(np.rint(img), 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(canvas)
    scale = size / _REF_SIZE
    # Dots stay well below the smallest object (radius <= 3 px vs >= 6 px at 64 px).
    for _ in range(int(rng.integers(3, 9))):
        cx, cy = rng.uniform(0, size, 2)
        r = rng.uniform(1.0, 3.0) * scale
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=colour)
    for _ in range(int(rng.integers(1, 4))):
        x0, y0, x1, y1 = rng.uniform(0, size, 4)
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        draw.line([x0, y0, x1, y1], fill=colour, width=max(1, round(scale)))
    return np.asarray(canvas, dtype=np.float64)


def _shape_mask(rng: np.random.Generator, cls: int, size: int) -> np.ndarray:
    """Boolean [S, S] mask of one shape of class index ``cls`` (0 circle, 1 square, 2 triangle)."""
    from PIL import Image, ImageDraw

    scale = size / _REF_SIZE
    extent = rng.uniform(_OBJ_MIN_PX, _OBJ_MAX_PX) * scale  # rough box side
    # Centres may lie near the border so some shapes are cut by the image edge.
    cx, cy = rng.uniform(0.12 * size, 0.88 * size, 2)
    mask = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(mask)
    if cls == 0:  # circle, slightly elliptic
        aspect = rng.uniform(0.9, 1.1)
        rx, ry = extent / 2 * aspect, extent / 2 / aspect
        draw.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=255)
    elif cls == 1:  # square, rotated by up to 20 degrees
        theta = math.radians(rng.uniform(-20, 20))
        half = extent / 2 / (abs(math.cos(theta)) + abs(math.sin(theta)))
        corners = [(-half, -half), (half, -half), (half, half), (-half, half)]
        draw.polygon([_rotate(p, theta, cx, cy) for p in corners], fill=255)
    else:  # triangle, equilateral, any orientation
        theta = rng.uniform(0, 2 * math.pi)
        radius = extent / math.sqrt(3) * 1.1
        pts = [
            (radius * math.cos(a), radius * math.sin(a))
            for a in (0.0, 2 * math.pi / 3, 4 * math.pi / 3)
        ]
        draw.polygon([_rotate(p, theta, cx, cy) for p in pts], fill=255)
    return np.asarray(mask) > 0


def _rotate(p: tuple[float, float], theta: float, cx: float, cy: float) -> tuple[float, float]:
    c, s = math.cos(theta), math.sin(theta)
    return (cx + c * p[0] - s * p[1], cy + s * p[0] + c * p[1])


def _texture(rng: np.random.Generator, colour: np.ndarray, size: int) -> np.ndarray:
    """Fill [S, S, 3]: solid (faint noise), stripes (colour / darker colour) or strong noise."""
    kind = int(rng.integers(0, 3))
    if kind == 0:
        return colour + rng.normal(0.0, 3.0, size=(size, size, 3))
    if kind == 1:
        period = rng.uniform(3.0, 6.0) * size / _REF_SIZE
        angle = rng.uniform(0, math.pi)
        ys, xs = np.mgrid[0:size, 0:size]
        phase = (math.cos(angle) * xs + math.sin(angle) * ys) / period
        dark = (np.floor(phase) % 2 == 1)[..., None]
        return np.where(dark, colour * 0.55, colour) + rng.normal(0.0, 3.0, size=(size, size, 3))
    grain = rng.normal(0.0, 28.0, size=(size, size, 1))  # luminance grain keeps the hue
    return colour + grain


def _pick_colour(rng: np.random.Generator, under: np.ndarray) -> np.ndarray:
    """A saturated colour far (RGB distance) from ``under``, the mean background below the shape."""
    best, best_dist = None, -1.0
    for _ in range(12):
        colour = rng.uniform(0, 255, 3)
        colour[int(rng.integers(0, 3))] = rng.uniform(200, 255)  # one strong channel
        dist = float(np.linalg.norm(colour - under))
        if dist >= _MIN_CONTRAST:
            return colour
        if dist > best_dist:
            best, best_dist = colour, dist
    return 255.0 - under if best_dist < _MIN_CONTRAST / 2 else best


def render_image(rng: np.random.Generator, size: int) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """One image (uint8 [S, S, 3]) and its objects ``{"category_id", "bbox": [x, y, w, h]}``."""
    img = _background(rng, size)
    n_obj = 0 if rng.random() < _P_EMPTY else int(rng.integers(1, 4))
    classes: list[int] = []
    full: list[int] = []  # pixel count of each shape as drawn
    visible: list[np.ndarray] = []  # its pixels not covered by later shapes
    for _ in range(n_obj):
        cls = int(rng.integers(0, len(CATEGORIES)))
        for _attempt in range(20):
            mask = _shape_mask(rng, cls, size)
            area = int(mask.sum())
            if area < 16:
                continue
            if all((vis & ~mask).sum() >= _MIN_VISIBLE * n for vis, n in zip(visible, full)):
                break
        else:
            continue  # no placement keeps the earlier shapes visible enough: skip this one
        colour = _pick_colour(rng, img[mask].mean(axis=0))
        img[mask] = _texture(rng, colour, size)[mask]
        visible = [vis & ~mask for vis in visible]
        visible.append(mask)
        full.append(area)
        classes.append(cls)
    out = np.clip(np.rint(img), 0, 255).astype(np.uint8)

    objects = []
    for cls, vis in zip(classes, visible):
        ys, xs = np.nonzero(vis)
        # Pixel i covers [i, i+1): the tight box spans min .. max + 1.
        x0, y0 = int(xs.min()), int(ys.min())
        w, h = int(xs.max()) + 1 - x0, int(ys.max()) + 1 - y0
        bbox = [float(x0), float(y0), float(w), float(h)]
        objects.append({"category_id": CATEGORIES[cls]["id"], "bbox": bbox})
    return out, objects


def write_synthetic_coco(
    out: Path, n_train: int = 200, n_val: int = 50, imgsz: int = 64, seed: int = 0
) -> dict:
    """Write ``out/{train,val}/NNNNNN.png`` and ``out/annotations/instances_{split}.json``.

    Returns ``{"root", "imgsz", "seed", "categories", "splits": {split: {"images", "boxes",
    "empty_images", "boxes_per_category"}}}``. Files are written atomically.
    """
    from PIL import Image

    out = Path(out)
    if n_train < 0 or n_val < 0:
        raise SpikedetError(f"image counts must be >= 0, got {n_train} and {n_val}", "synth-coco")
    if imgsz < 32:
        raise SpikedetError(f"image size must be >= 32, got {imgsz}", "synth-coco")
    if seed < 0:
        raise SpikedetError(f"seed must be >= 0, got {seed}", "synth-coco")
    # The first existing path on the way up must be a folder, or mkdir fails half-way through.
    existing = next((p for p in (Path(out), *Path(out).parents) if p.exists()), None)
    if existing is not None and not existing.is_dir():
        raise SpikedetError(f"cannot create the output folder: {existing} is a file", str(out))

    summary: dict[str, Any] = {
        "root": str(out),
        "imgsz": imgsz,
        "seed": seed,
        "categories": [dict(c) for c in CATEGORIES],
        "splits": {},
    }
    for split_code, (split, count) in enumerate(zip(SPLITS, (n_train, n_val))):
        images, annotations = [], []
        per_cat = {c["name"]: 0 for c in CATEGORIES}
        empty = 0
        for index in range(count):
            rng = np.random.default_rng([seed, split_code, index])
            pixels, objects = render_image(rng, imgsz)
            image_id = index + 1
            file_name = f"{image_id:06d}.png"
            with atomic_path(out / split / file_name, suffix=".png") as tmp:
                Image.fromarray(pixels, "RGB").save(tmp, format="PNG")
            images.append({"id": image_id, "file_name": file_name, "width": imgsz, "height": imgsz})
            empty += not objects
            for obj in objects:
                w, h = obj["bbox"][2], obj["bbox"][3]
                annotations.append(
                    {
                        "id": len(annotations) + 1,
                        "image_id": image_id,
                        "category_id": obj["category_id"],
                        "bbox": obj["bbox"],
                        "area": w * h,
                        "iscrowd": 0,
                    }
                )
                per_cat[_name_of(obj["category_id"])] += 1
        write_json(
            out / "annotations" / f"instances_{split}.json",
            {
                "info": {"description": "spikedet synthetic shapes", "seed": seed},
                "licenses": [],
                "images": images,
                "annotations": annotations,
                "categories": [dict(c) for c in CATEGORIES],
            },
        )
        summary["splits"][split] = {
            "images": count,
            "boxes": len(annotations),
            "empty_images": empty,
            "boxes_per_category": per_cat,
        }
    return summary


def _name_of(category_id: int) -> str:
    return next(c["name"] for c in CATEGORIES if c["id"] == category_id)
