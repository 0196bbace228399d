"""COCO mAP: faster-coco-eval equals pycocotools, the GT round trip scores 1.0, edge cases."""

from __future__ import annotations

import contextlib
import copy
import io
import json
from pathlib import Path

import numpy as np
import pytest

from spikedet.data.coco import CocoDetectionSet
from spikedet.data.synth_coco import write_synthetic_coco
from spikedet.errors import SpikedetError
from spikedet.metrics.coco_map import (
    METRIC_KEYS,
    coco_map,
    evaluate,
    to_coco_results,
    write_results_json,
)


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synth_eval")
    write_synthetic_coco(root, n_train=0, n_val=16, imgsz=64, seed=11)
    return root


def _gt_dets(ds: CocoDetectionSet) -> list[np.ndarray]:
    """Every Sample's boxes as detections (score 1) in letterboxed coordinates."""
    dets = []
    for i in range(len(ds)):
        s = ds[i]
        dets.append(
            np.concatenate(
                [s.boxes, np.ones((len(s.boxes), 1)), s.classes[:, None]], axis=1
            ).astype(np.float32)
        )
    return dets


def _pycocotools_stats(ann_file: Path, results: list[dict]) -> np.ndarray:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(ann_file))
        ev = COCOeval(gt, gt.loadRes(copy.deepcopy(results)), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev.stats[:6]


def _jitter(
    results: list[dict], rng, frac: float, n_fp: int, images: list[dict], cats: list[int]
) -> list[dict]:
    out = []
    for res in results:
        x, y, w, h = res["bbox"]
        dx, dy, dw, dh = rng.normal(0, frac, 4) * [w, h, w, h]
        out.append(
            {
                **res,
                "bbox": [x + dx, y + dy, max(1.0, w + dw), max(1.0, h + dh)],
                "score": float(rng.uniform(0.3, 1)),
            }
        )
    for img in images:
        for _ in range(n_fp):
            x, y = rng.uniform(0, img["width"] - 10, 2)
            w, h = rng.uniform(5, 30, 2)
            out.append(
                {
                    "image_id": img["id"],
                    "category_id": int(rng.choice(cats)),
                    "bbox": [x, y, w, h],
                    "score": float(rng.uniform(0, 0.8)),
                }
            )
    return out


def test_faster_coco_eval_equals_pycocotools(synth: Path) -> None:
    ann_file = synth / "annotations" / "instances_val.json"
    ds = CocoDetectionSet.from_root(synth, "val", imgsz=64)
    perfect = to_coco_results(_gt_dets(ds), [ds.meta(i) for i in range(len(ds))], ds.cat_ids)
    images = ds.coco.dataset["images"]
    rng = np.random.default_rng(0)
    sets = {
        "perfect": perfect,
        "jitter": _jitter(perfect, rng, 0.05, 0, images, ds.cat_ids),
        "jitter+fp": _jitter(perfect, rng, 0.15, 3, images, ds.cat_ids),
        "half": perfect[::2],
    }
    seen = set()
    for name, results in sets.items():
        frozen = copy.deepcopy(results)
        gt_before = copy.deepcopy(ds.coco.dataset)
        ours = coco_map(ds.coco, results)
        assert results == frozen and ds.coco.dataset == gt_before, name  # nothing mutated
        ref = _pycocotools_stats(ann_file, results)
        np.testing.assert_allclose([ours[k] for k in METRIC_KEYS], ref, atol=1e-12, err_msg=name)
        assert coco_map(ann_file, results) == ours  # ground truth given as a path
        seen.add(round(ours["map"], 6))
    assert len(seen) == 4  # the sets really score differently
    assert sets["jitter+fp"] is not None and coco_map(ds.coco, sets["jitter+fp"])["map"] < 0.9


@pytest.mark.parametrize("imgsz", [64, 48, 80])
def test_ground_truth_round_trip_scores_one(synth: Path, imgsz: int) -> None:
    ds = CocoDetectionSet.from_root(synth, "val", imgsz=imgsz)
    metrics = evaluate(ds, _gt_dets(ds))
    assert metrics["map"] == 1.0 and metrics["map50"] == 1.0 and metrics["map75"] == 1.0
    assert set(metrics) == set(METRIC_KEYS)


def test_round_trip_non_square_images(tmp_path: Path) -> None:
    """Padding is non-zero here, so to_coco_results must really undo the letterbox."""
    from PIL import Image

    (tmp_path / "img").mkdir()
    rng = np.random.default_rng(2)
    images, anns = [], []
    for k, (h, w) in enumerate([(40, 90), (120, 50), (64, 64)], start=1):
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(
            tmp_path / "img" / f"{k}.png"
        )
        images.append({"id": k, "file_name": f"{k}.png", "width": w, "height": h})
        for _ in range(3):
            x, y = rng.uniform(0, [w - 20, h - 20])
            bw, bh = rng.uniform(6, 20, 2)
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": k,
                    "category_id": 4,
                    "bbox": [x, y, bw, bh],
                    "area": bw * bh,
                    "iscrowd": 0,
                }
            )
    ann_file = tmp_path / "instances.json"
    ann_file.write_text(
        json.dumps(
            {"images": images, "annotations": anns, "categories": [{"id": 4, "name": "thing"}]}
        )
    )
    ds = CocoDetectionSet(tmp_path / "img", ann_file, imgsz=64)
    dets = _gt_dets(ds)
    assert evaluate(ds, dets)["map"] == 1.0
    shifted = [d + np.array([3, 3, 3, 3, 0, 0], np.float32) for d in dets]  # 3 letterboxed px off
    assert evaluate(ds, shifted)["map"] < 1.0


def test_empty_detections_score_zero(synth: Path) -> None:
    ds = CocoDetectionSet.from_root(synth, "val")
    empty = [np.zeros((0, 6), np.float32) for _ in range(len(ds))]
    assert evaluate(ds, empty) == {k: 0.0 for k in METRIC_KEYS}
    assert coco_map(ds.coco, []) == {k: 0.0 for k in METRIC_KEYS}


def test_bad_inputs(synth: Path) -> None:
    ds = CocoDetectionSet.from_root(synth, "val")
    with pytest.raises(SpikedetError, match="detection arrays"):
        evaluate(ds, [])
    bad_cls = [np.array([[0, 0, 10, 10, 0.9, 7]], np.float32)] + [np.zeros((0, 6))] * (len(ds) - 1)
    with pytest.raises(SpikedetError, match="class index"):
        evaluate(ds, bad_cls)
    with pytest.raises(SpikedetError, match="unknown image id"):
        coco_map(ds.coco, [{"image_id": 999, "category_id": 1, "bbox": [0, 0, 5, 5], "score": 1.0}])
    with pytest.raises(SpikedetError, match="not found"):
        coco_map(
            synth / "missing.json",
            [{"image_id": 1, "category_id": 1, "bbox": [0, 0, 5, 5], "score": 1.0}],
        )


def test_write_results_json(synth: Path, tmp_path: Path) -> None:
    ds = CocoDetectionSet.from_root(synth, "val", imgsz=48)
    results = to_coco_results(_gt_dets(ds), [ds.meta(i) for i in range(len(ds))], ds.cat_ids)
    out = tmp_path / "sub" / "results.json"
    write_results_json(out, results)
    loaded = json.loads(out.read_text())
    assert loaded == results and not list(out.parent.glob(".*tmp*"))
    assert _pycocotools_stats(synth / "annotations" / "instances_val.json", loaded)[0] == 1.0
