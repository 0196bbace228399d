"""COCO-format detection data as numpy samples (no torch): letterbox plus optional augmentation.

An image of size (h, w) is scaled by ``ratio = min(S/h, S/w)`` (aspect kept), centred on an S x S
canvas filled with 114 and offset by ``pad = (padx, pady)``; a box maps as ``x' = x·ratio + padx``
(``to_original`` inverts this). With ``augment=True`` a scale jitter (content scaled by
U(0.75, 1.25), then cropped or padded back to S at a random offset) and a horizontal flip
(p = 0.5) follow, with their randomness drawn from ``default_rng([seed, epoch, index])``, so any
epoch can be reproduced on its own (resumable training). Boxes are x1, y1, x2, y2 pixel edges
(pixel i covers [i, i + 1)); boxes narrower or lower than 1 px after the transforms are dropped.

Bad data (``skip_bad=True``): an image whose file is missing or fails Pillow's cheap
``verify()`` / header size check, or that an ``images`` / ``annotations`` entry describes
badly, is left out of the set (and of ``coco``, so mAP covers the remaining images) with one
``spikedet: warning:`` line on stderr naming it; ``skipped`` lists (file, reason). Without it the
first such problem raises ``SpikedetError`` (a broken image file only when it is read).

Pillow and pycocotools are imported where used so that ``to_original`` also works without them.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import sys
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from spikedet.data.letterbox import (  # noqa: F401  (re-exported API)
    FLIP_P,
    MIN_BOX_SIDE,
    PAD_VALUE,
    SCALE_JITTER,
    _clip_and_keep,
    hflip,
    letterbox,
    letterbox_geometry,
    scale_jitter,
    to_original,
)
from spikedet.errors import SpikedetError


class Sample(NamedTuple):
    image: np.ndarray  # float32 [3, S, S] = uint8 value / 255
    boxes: np.ndarray  # float32 [N, 4] x1, y1, x2, y2 in letterboxed pixels
    classes: np.ndarray  # int64 [N] contiguous class index 0..nc-1
    meta: dict  # image_id, orig_hw (h, w), ratio, pad (padx, pady), file


class CocoDetectionSet:
    """Images + COCO instances JSON -> ``Sample`` (see the module docstring for the transforms).

    ``cat_ids[k]`` is the COCO category id of contiguous class k (ids sorted); ``image_ids`` is the
    dataset order (sorted). Crowd annotations are kept in ``coco`` (for evaluation) but not in
    the samples.
    """

    def __init__(
        self,
        images_dir: str | os.PathLike,
        ann_file: str | os.PathLike,
        imgsz: int = 64,
        augment: bool = False,
        seed: int = 0,
        skip_bad: bool = False,
    ):
        self.images_dir = Path(images_dir)
        self.ann_file = Path(ann_file)
        if not self.images_dir.is_dir():
            raise SpikedetError("images directory not found", str(self.images_dir))
        if not self.ann_file.is_file():
            raise SpikedetError("annotation file not found", str(self.ann_file))
        if imgsz < 8:
            raise SpikedetError(f"imgsz must be >= 8, got {imgsz}", str(self.ann_file))
        if seed < 0:
            raise SpikedetError(f"seed must be >= 0, got {seed}", str(self.ann_file))
        self.imgsz = int(imgsz)
        self.augment = bool(augment)
        self.seed = int(seed)
        self.epoch = 0
        self.skipped: list[tuple[str, str]] = []  # (file, reason) left out under skip_bad

        bad: dict[int, str] | None = {} if skip_bad else None  # image id -> reason
        dataset = _load_instances(self.ann_file, bad)
        if bad is not None:
            self._drop_bad_images(dataset, bad)
        self.coco = _make_coco(dataset)
        self.cat_ids: list[int] = sorted(c["id"] for c in dataset["categories"])
        by_id = {c["id"]: c for c in dataset["categories"]}
        self.names: list[str] = [str(by_id[c]["name"]) for c in self.cat_ids]
        cls_of = {cat: k for k, cat in enumerate(self.cat_ids)}
        self._images = {img["id"]: img for img in dataset["images"]}
        self.image_ids: list[int] = sorted(self._images)
        # Per image: original-pixel xyxy boxes and class indices of the non-crowd annotations.
        self._targets: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        grouped: dict[int, list[dict]] = {i: [] for i in self.image_ids}
        for ann in dataset["annotations"]:
            if not ann.get("iscrowd", 0):
                grouped[ann["image_id"]].append(ann)
        for image_id, anns in grouped.items():
            xywh = np.array([a["bbox"] for a in anns], dtype=np.float64).reshape(-1, 4)
            xyxy = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)
            classes = np.array([cls_of[a["category_id"]] for a in anns], dtype=np.int64)
            self._targets[image_id] = (xyxy, classes)
        for image_id in self.image_ids:
            path = self.images_dir / self._images[image_id]["file_name"]
            if not path.is_file():
                raise SpikedetError(f"image file of image id {image_id} not found", str(path))

    def _drop_bad_images(self, dataset: dict, bad: dict[int, str]) -> None:
        """Add images whose file is unreadable to ``bad``, then remove every bad image and its
        annotations from ``dataset`` (in place) and warn once per image."""
        for info in dataset["images"]:
            if info["id"] not in bad:
                problem = _image_problem(self.images_dir / info["file_name"], info)
                if problem:
                    bad[info["id"]] = problem
        names = {im["id"]: im.get("file_name") for im in dataset["images"]}
        for image_id, reason in sorted(bad.items()):
            name = names.get(image_id)
            where = str(self.images_dir / name) if isinstance(name, str) else None
            where = where or f"{self.ann_file} image id {image_id}"
            self.skipped.append((where, reason))
            sys.stderr.write(f"spikedet: warning: skipped bad file: {reason} ({where})\n")
        dataset["images"] = [im for im in dataset["images"] if im["id"] not in bad]
        dataset["annotations"] = [a for a in dataset["annotations"] if a["image_id"] not in bad]

    @classmethod
    def from_root(
        cls,
        root: str | os.PathLike,
        split: str,
        imgsz: int = 64,
        augment: bool = False,
        seed: int = 0,
        skip_bad: bool = False,
    ) -> CocoDetectionSet:
        """``root/split/`` images with ``root/annotations/instances_{split}.json``."""
        root = Path(root)
        ann_file = root / "annotations" / f"instances_{split}.json"
        return cls(root / split, ann_file, imgsz, augment, seed, skip_bad)

    def __len__(self) -> int:
        return len(self.image_ids)

    def set_epoch(self, epoch: int) -> None:
        """Augmentation randomness is a function of (seed, epoch, index) only."""
        if epoch < 0:
            raise SpikedetError(f"epoch must be >= 0, got {epoch}", str(self.ann_file))
        self.epoch = int(epoch)

    def meta(self, i: int) -> dict:
        """The letterbox ``meta`` of item ``i`` from the annotation file alone (no image read)."""
        info = self._images[self.image_ids[i]]
        h, w = int(info["height"]), int(info["width"])
        ratio, _, (padx, pady) = letterbox_geometry(h, w, self.imgsz)
        return {
            "image_id": int(info["id"]),
            "orig_hw": (h, w),
            "ratio": ratio,
            "pad": (float(padx), float(pady)),
            "file": str(self.images_dir / info["file_name"]),
        }

    def __getitem__(self, i: int) -> Sample:
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} images")
        i = i % len(self)
        meta = self.meta(i)
        pixels = _read_rgb(Path(meta["file"]))
        if pixels.shape[:2] != meta["orig_hw"]:
            raise SpikedetError(
                f"image is {pixels.shape[1]}x{pixels.shape[0]} but the annotations say "
                f"{meta['orig_hw'][1]}x{meta['orig_hw'][0]}",
                meta["file"],
            )
        canvas, ratio, (padx, pady) = letterbox(pixels, self.imgsz)
        xyxy, classes = self._targets[meta["image_id"]]
        h, w = meta["orig_hw"]
        boxes = xyxy.copy()
        boxes[:, 0::2] = boxes[:, 0::2].clip(0.0, w) * ratio + padx
        boxes[:, 1::2] = boxes[:, 1::2].clip(0.0, h) * ratio + pady
        if self.augment:
            rng = np.random.default_rng([self.seed, self.epoch, i])
            scale = rng.uniform(*SCALE_JITTER)
            offset = (float(rng.random()), float(rng.random()))
            flip = rng.random() < FLIP_P
            canvas, boxes = scale_jitter(canvas, boxes, scale, offset)
            if flip:
                canvas, boxes = hflip(canvas, boxes)
        keep = _clip_and_keep(boxes, self.imgsz)
        image = canvas.astype(np.float32).transpose(2, 0, 1) / np.float32(255.0)
        return Sample(
            image=np.ascontiguousarray(image),
            boxes=boxes[keep].astype(np.float32).reshape(-1, 4),
            classes=classes[keep].copy(),
            meta=meta,
        )


def _read_rgb(path: Path) -> np.ndarray:
    """Decode an image file fully into HWC uint8 RGB; any decoding problem is a SpikedetError."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()  # decode now: a truncated file fails here, not later
            return np.asarray(im.convert("RGB"))
    except FileNotFoundError:
        raise SpikedetError("cannot read image: file not found", str(path)) from None
    except UnidentifiedImageError:
        raise SpikedetError("cannot read image: not an image file", str(path)) from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        reason = "truncated file" if "truncated" in str(err).lower() else str(err)
        raise SpikedetError(f"cannot read image: {reason}", str(path)) from None


def _image_problem(path: Path, info: dict) -> str | None:
    """Why ``path`` cannot serve as image ``info`` (cheap: header and chunk checks, no decode)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            size = im.size
            im.verify()  # walks the chunks/CRCs: catches truncated and damaged files
    except FileNotFoundError:
        return "image file not found"
    except Exception as err:  # noqa: BLE001 - any Pillow failure means "cannot use this image"
        reason = " ".join(str(err).split())[:120] or type(err).__name__
        return f"cannot read image: {reason}"
    if size != (info["width"], info["height"]):
        return (
            f"image is {size[0]}x{size[1]} but the annotations say {info['width']}x{info['height']}"
        )
    return None


# ---------------------------------------------------------------------------------------------
# Annotation file: strict validation, so a bad file fails here with its name, not deep in COCO.


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _load_instances(ann_file: Path, bad: dict[int, str] | None = None) -> dict:
    """Read and validate an instances JSON; fills the optional ``area`` (w·h) and ``iscrowd``.

    With a ``bad`` dict, a broken ``images`` / ``annotations`` entry whose image id is known is
    recorded there (image id -> reason) instead of raising; the caller drops those images.
    """
    where = str(ann_file)
    try:
        data = json.loads(ann_file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise SpikedetError(f"malformed JSON: {err}", where) from None
    except OSError as err:
        raise SpikedetError(f"cannot read annotation file: {err.strerror}", where) from None
    if not isinstance(data, dict):
        raise SpikedetError("top level must be a JSON object", where)
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise SpikedetError(f"missing key '{key}' (a list)", where)

    # The image ids a broken entry can be blamed on.
    image_ids = {
        im["id"] for im in data["images"] if isinstance(im, dict) and _is_int(im.get("id"))
    }

    def problem(section: str, k: int, item: Any, what: str) -> None:
        """Raise, or (skip mode) mark the entry's image bad when the entry names a known one."""
        # Categories are never skipped: they define the classes.
        image_id = item.get("image_id" if section == "annotations" else "id")
        skippable = bad is not None and section != "categories"
        if not (skippable and _is_int(image_id) and image_id in image_ids):
            raise SpikedetError(f"{section}[{k}]{what}", where)
        bad.setdefault(image_id, f"broken {section}[{k}] entry in {ann_file.name}")

    def check(items: list, section: str, keys: dict[str, Any]) -> None:
        for k, item in enumerate(items):
            if not isinstance(item, dict):
                raise SpikedetError(f"{section}[{k}] is not an object", where)
            for key, ok in keys.items():
                if key not in item:
                    problem(section, k, item, f" misses key '{key}'")
                    break
                if not ok(item[key]):
                    problem(section, k, item, f".{key} has a bad value {item[key]!r}")
                    break

    check(data["categories"], "categories", {"id": _is_int, "name": lambda v: isinstance(v, str)})
    size_ok = lambda v: _is_int(v) and v > 0  # noqa: E731
    check(
        data["images"],
        "images",
        {
            "id": _is_int,
            "file_name": lambda v: isinstance(v, str),
            "width": size_ok,
            "height": size_ok,
        },
    )
    check(
        data["annotations"],
        "annotations",
        {"id": _is_int, "image_id": _is_int, "category_id": _is_int, "bbox": lambda v: True},
    )
    cat_ids = [c["id"] for c in data["categories"]]
    img_ids = [im["id"] for im in data["images"]]
    if not cat_ids:
        raise SpikedetError("no categories", where)
    if len(set(cat_ids)) != len(cat_ids) or len(set(img_ids)) != len(img_ids):
        raise SpikedetError("duplicate category or image ids", where)
    known_cats, known_imgs = set(cat_ids), set(img_ids)
    for k, ann in enumerate(data["annotations"]):
        if bad is not None and ann.get("image_id") in bad:
            continue  # its image is dropped anyway (this entry may be the broken one)
        bbox = ann["bbox"]
        if not (isinstance(bbox, list) and len(bbox) == 4 and all(map(_is_number, bbox))):
            what = f".bbox must be 4 numbers, got {bbox!r}"
        elif bbox[2] < 0 or bbox[3] < 0:
            what = f".bbox has a negative size {bbox!r}"
        elif ann["category_id"] not in known_cats:
            what = f" has unknown category id {ann['category_id']}"
        elif ann["image_id"] not in known_imgs:
            what = f" has unknown image id {ann['image_id']}"
        else:
            what = ""
        if what:
            problem("annotations", k, ann, what)  # raises unless its image can be skipped
            continue
        ann.setdefault("area", float(bbox[2]) * float(bbox[3]))
        ann.setdefault("iscrowd", 0)
    return data


def _make_coco(dataset: dict) -> Any:
    """A pycocotools ``COCO`` over an already loaded dict (its index messages silenced)."""
    from pycocotools.coco import COCO

    coco = COCO()
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco
