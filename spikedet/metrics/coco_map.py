"""COCO box mAP of detections (no torch): results conversion and faster-coco-eval.

Detections are [K, 6] arrays (x1, y1, x2, y2, score, cls) in letterboxed pixels, one per image in
dataset order; they are mapped back to the original image (``to_original``), converted to COCO
results ``{"image_id", "category_id", "bbox": [x, y, w, h], "score"}`` and scored with
faster-coco-eval's ``COCOeval_faster`` (the same 12 numbers as pycocotools' COCOeval, faster).
Area ranges without ground truth give −1, as in COCO; no detections at all give 0.0 everywhere.

faster-coco-eval is imported where used, so this module also imports where it is not installed.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from spikedet.data.coco import to_original
from spikedet.errors import SpikedetError
from spikedet.fileio import write_text

if TYPE_CHECKING:
    from spikedet.data.coco import CocoDetectionSet

METRIC_KEYS = ("map", "map50", "map75", "maps", "mapm", "mapl")  # COCOeval stats[0:6]


def to_coco_results(dets: list[np.ndarray], metas: list[dict], cat_ids: list[int]) -> list[dict]:
    """[K, 6] letterboxed xyxy detections -> COCO results in original-image xywh pixels."""
    if len(dets) != len(metas):
        raise SpikedetError(f"{len(dets)} detection arrays for {len(metas)} images", "results")
    results: list[dict] = []
    for det, meta in zip(dets, metas):
        det = np.asarray(det, dtype=np.float64)
        if det.size == 0:
            continue
        if det.ndim != 2 or det.shape[1] != 6:
            raise SpikedetError(
                f"detections must be [K, 6], got {det.shape}", f"image {meta['image_id']}"
            )
        cls = det[:, 5].astype(np.int64)
        if cls.min() < 0 or cls.max() >= len(cat_ids) or not np.all(cls == det[:, 5]):
            raise SpikedetError(
                f"class index outside 0..{len(cat_ids) - 1}", f"image {meta['image_id']}"
            )
        xyxy = to_original(det[:, :4], meta)
        image_id = int(meta["image_id"])
        for (x1, y1, x2, y2), score, c in zip(xyxy.tolist(), det[:, 4].tolist(), cls.tolist()):
            results.append(
                {
                    "image_id": image_id,
                    "category_id": int(cat_ids[c]),
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "score": float(score),
                }
            )
    return results


def _gt_for_faster_eval(coco_gt: Any) -> Any:
    """A faster-coco-eval ``COCO`` from a path or from any object with a COCO ``dataset`` dict."""
    from faster_coco_eval import COCO

    quiet = {"print_function": lambda *args, **kwargs: None}
    if isinstance(coco_gt, (str, os.PathLike)):
        path = Path(coco_gt)
        if not path.is_file():
            raise SpikedetError("ground-truth annotation file not found", str(path))
        try:
            dataset = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise SpikedetError(f"malformed JSON: {err}", str(path)) from None
    elif isinstance(getattr(coco_gt, "dataset", None), dict):
        # A deep copy: building the index (and loadRes) must not touch the caller's objects.
        dataset = copy.deepcopy(coco_gt.dataset)
    else:
        raise SpikedetError(f"unsupported ground truth {type(coco_gt).__name__}", "coco_map")
    return COCO(dataset, **quiet)


def coco_map(coco_gt: Any, results: list[dict]) -> dict[str, float]:
    """COCO bbox AP: ``map`` (IoU .50:.95), ``map50``, ``map75``, ``maps``/``mapm``/``mapl``.

    ``coco_gt``: a pycocotools / faster-coco-eval ``COCO`` or the instances JSON path. The
    caller's ground truth and result dicts are never modified (both are copied).
    """
    if not results:
        return {key: 0.0 for key in METRIC_KEYS}
    from faster_coco_eval import COCOeval_faster

    gt = _gt_for_faster_eval(coco_gt)
    known_images, known_cats = set(gt.getImgIds()), set(gt.getCatIds())
    for k, res in enumerate(results):
        if res.get("image_id") not in known_images:
            raise SpikedetError(f"result {k} has unknown image id {res.get('image_id')}", "results")
        if res.get("category_id") not in known_cats:
            raise SpikedetError(
                f"result {k} has unknown category id {res.get('category_id')}", "results"
            )
    dets = gt.loadRes([{**res, "bbox": [float(v) for v in res["bbox"]]} for res in results])
    evaluator = COCOeval_faster(gt, dets, "bbox", print_function=lambda *args, **kwargs: None)
    # summarize() may still print the table through plain print in some versions: keep it quiet.
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return {key: float(evaluator.stats[i]) for i, key in enumerate(METRIC_KEYS)}


def evaluate(dataset: CocoDetectionSet, dets: list[np.ndarray]) -> dict[str, float]:
    """mAP of ``dets`` (one [K, 6] array per dataset item, in dataset order) against its COCO."""
    if len(dets) != len(dataset):
        raise SpikedetError(
            f"{len(dets)} detection arrays for {len(dataset)} images", str(dataset.ann_file)
        )
    metas = [dataset.meta(i) for i in range(len(dataset))]
    return coco_map(dataset.coco, to_coco_results(dets, metas, dataset.cat_ids))


def write_results_json(path: str | os.PathLike, results: list[dict]) -> None:
    """Write COCO results (a JSON list) atomically."""
    write_text(path, json.dumps(results, separators=(",", ":")) + "\n")
