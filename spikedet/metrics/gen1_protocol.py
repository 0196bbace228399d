"""Gen1 evaluation protocol (Prophesee toolbox with RVT's corrected parameters), no torch.

1. Ground truth and detections alike keep boxes with ``t > 500000`` µs (strictly),
   ``w² + h² >= 30²``, ``w >= 10`` and ``h >= 10``. With ``clip=True`` (RVT's label
   preprocessing, on both sides) boxes are first clipped to the 304 x 240 frame and empty ones
   dropped.
2. Each unique GT timestamp of each recording is one COCO image (304 x 240) holding the GT boxes
   with exactly that t; a detection is assigned to it when ``|t_det − t_gt| <= 50 ms`` (an image
   per matching timestamp, so a detection may count for several).
3. ``category_id = class_id + 1`` (1 car, 2 pedestrian), ``area = w·h``; faster-coco-eval
   ``bbox`` gives ``map, map50, map75, maps, mapm, mapl`` (``evaluate.coco_map``).

Box arrays use ``gen1_labels.BBOX_DTYPE`` (or the original dtype); detections score with
``class_confidence``.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import SimpleNamespace

import numpy as np

from spikedet.data.coco import to_original
from spikedet.data.gen1 import SENSOR_HW
from spikedet.data.gen1_labels import BBOX_DTYPE, CLASS_NAMES
from spikedet.errors import SpikedetError
from spikedet.metrics.coco_map import coco_map

SKIP_US = 500_000
MIN_DIAG = 30.0
MIN_SIDE = 10.0
TIME_TOLERANCE_US = 50_000


def normalise(boxes: np.ndarray, where: str) -> np.ndarray:
    """Any Gen1 box array (``ts``/``confidence`` or ``t``/``class_confidence``) -> ``BBOX_DTYPE``."""
    names = boxes.dtype.names or ()
    renamed = {"ts": "t", "confidence": "class_confidence"}
    if sorted(renamed.get(n, n) for n in names) != sorted(BBOX_DTYPE.names):
        raise SpikedetError(f"unexpected box dtype {boxes.dtype}", where)
    out = np.empty(len(boxes), BBOX_DTYPE)
    for name in names:
        out[renamed.get(name, name)] = boxes[name]
    return out


def filter_boxes(
    boxes: np.ndarray,
    skip_us: int = SKIP_US,
    min_diag: float = MIN_DIAG,
    min_side: float = MIN_SIDE,
) -> np.ndarray:
    """Keep rows with ``t > skip_us``, ``w² + h² >= min_diag²``, ``w >= min_side``, ``h >= min_side``."""
    w, h = boxes["w"].astype(np.float64), boxes["h"].astype(np.float64)
    keep = (boxes["t"] > skip_us) & (w**2 + h**2 >= min_diag**2) & (w >= min_side) & (h >= min_side)
    return boxes[keep]


def clip_to_frame(
    boxes: np.ndarray, height: int = SENSOR_HW[0], width: int = SENSOR_HW[1]
) -> np.ndarray:
    """Clip x, y, w, h to the frame's pixel edges and drop rows left with zero area."""
    out = boxes.copy()
    x1, y1 = np.clip(boxes["x"], 0, width), np.clip(boxes["y"], 0, height)
    x2 = np.clip(boxes["x"] + boxes["w"], 0, width)
    y2 = np.clip(boxes["y"] + boxes["h"], 0, height)
    out["x"], out["y"], out["w"], out["h"] = x1, y1, x2 - x1, y2 - y1
    return out[(out["w"] > 0) & (out["h"] > 0)]


def evaluate_gen1(
    gt: Mapping[str, np.ndarray],
    dets: Mapping[str, np.ndarray],
    clip: bool = True,
    height: int = SENSOR_HW[0],
    width: int = SENSOR_HW[1],
    time_tolerance_us: int = TIME_TOLERANCE_US,
) -> dict[str, float]:
    """COCO mAP of Gen1 detections ``dets[stem]`` against ground truth ``gt[stem]`` (see module).

    Recordings in ``dets`` but not in ``gt`` raise; recordings without detections score as misses.
    """
    unknown = sorted(set(dets) - set(gt))
    if unknown:
        raise SpikedetError(f"detections for unknown recordings {unknown[:3]}", "evaluate_gen1")
    images, annotations, results = [], [], []
    for stem in sorted(gt):
        gt_rows = normalise(np.asarray(gt[stem]), f"ground truth {stem}")
        det_rows = normalise(
            np.asarray(dets.get(stem, np.zeros(0, BBOX_DTYPE))), f"detections {stem}"
        )
        if clip:
            gt_rows, det_rows = (
                clip_to_frame(gt_rows, height, width),
                clip_to_frame(det_rows, height, width),
            )
        gt_rows, det_rows = filter_boxes(gt_rows), filter_boxes(det_rows)
        bad = det_rows["class_id"] >= len(CLASS_NAMES)
        if np.any(bad) or np.any(gt_rows["class_id"] >= len(CLASS_NAMES)):
            raise SpikedetError(f"class_id outside 0..{len(CLASS_NAMES) - 1}", stem)
        order = np.argsort(det_rows["t"], kind="stable")
        det_rows, det_t = det_rows[order], det_rows["t"][order]
        for t in np.unique(gt_rows["t"]).tolist():
            image_id = len(images) + 1
            images.append(
                {"id": image_id, "width": width, "height": height, "file_name": f"{stem}@{t}"}
            )
            for row in gt_rows[gt_rows["t"] == t]:
                annotations.append(_annotation(row, image_id, len(annotations) + 1))
            # Both ends inclusive: t - tol <= t_det <= t + tol.
            lo = np.searchsorted(det_t, t - time_tolerance_us, side="left")
            hi = np.searchsorted(det_t, t + time_tolerance_us, side="right")
            for row in det_rows[lo:hi]:
                results.append(
                    {**_annotation(row, image_id, 0), "score": float(row["class_confidence"])}
                )
    if not annotations:
        raise SpikedetError("no ground-truth boxes left after the protocol filter", "evaluate_gen1")
    categories = [{"id": k + 1, "name": name} for k, name in enumerate(CLASS_NAMES)]
    dataset = {"images": images, "annotations": annotations, "categories": categories}
    for res in results:
        del res["id"], res["area"], res["iscrowd"]
    return coco_map(SimpleNamespace(dataset=dataset), results)


def _annotation(row: np.void, image_id: int, ann_id: int) -> dict:
    w, h = float(row["w"]), float(row["h"])
    return {"id": ann_id, "image_id": image_id, "category_id": int(row["class_id"]) + 1,
            "bbox": [float(row["x"]), float(row["y"]), w, h], "area": w * h, "iscrowd": 0}  # fmt: skip


def detections_to_gen1(det: np.ndarray, meta: dict) -> np.ndarray:
    """A sample's [K, 6] letterboxed (x1, y1, x2, y2, score, cls) -> ``BBOX_DTYPE`` rows at
    ``meta["t_us"]`` in sensor pixels (letterbox undone and clipped to the frame)."""
    det = np.asarray(det, dtype=np.float64).reshape(-1, 6)
    cls = det[:, 5]
    if np.any((cls < 0) | (cls >= len(CLASS_NAMES)) | (cls != np.round(cls))):
        raise SpikedetError(f"class index outside 0..{len(CLASS_NAMES) - 1}", meta.get("file"))
    xyxy = to_original(det[:, :4], meta)
    out = np.zeros(len(det), BBOX_DTYPE)
    out["t"] = int(meta["t_us"])
    out["x"], out["y"] = xyxy[:, 0], xyxy[:, 1]
    out["w"], out["h"] = xyxy[:, 2] - xyxy[:, 0], xyxy[:, 3] - xyxy[:, 1]
    out["class_id"], out["class_confidence"] = cls.astype(np.uint32), det[:, 4]
    return out


def collect_detections(metas: list[dict], dets: list[np.ndarray]) -> dict[str, np.ndarray]:
    """Per-sample detections (dataset order) -> ``{stem: BBOX_DTYPE rows sorted by t}``."""
    if len(metas) != len(dets):
        raise SpikedetError(f"{len(dets)} detection arrays for {len(metas)} samples", "detections")
    per_file: dict[str, list[np.ndarray]] = {}
    for meta, det in zip(metas, dets):
        per_file.setdefault(meta["file"], []).append(detections_to_gen1(det, meta))
    out = {}
    for stem, parts in per_file.items():
        rows = np.concatenate(parts)
        out[stem] = rows[np.argsort(rows["t"], kind="stable")]
    return out
