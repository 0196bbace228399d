"""Gen1 evaluation protocol: filter, time matching, COCO mAP, dataset round trip."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from spikedet.data.gen1_dataset import Gen1DetectionSet
from spikedet.data.gen1_labels import BBOX_DTYPE, BBOX_DTYPE_ORIGINAL, read_bbox
from spikedet.data.synth_gen1 import write_synthetic_gen1
from spikedet.errors import SpikedetError
from spikedet.metrics.gen1_protocol import collect_detections, evaluate_gen1, filter_boxes


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("gen1eval")
    write_synthetic_gen1(root, n_train=0, n_val=2, seconds=1.2, seed=3)
    return root


def grid_gt(n_times: int = 6, seed: int = 0) -> dict[str, np.ndarray]:
    """Two recordings, 3 boxes per label time every 250 ms from 0.75 s."""
    rng = np.random.default_rng(seed)
    out = {}
    for stem in ("rec_a", "rec_b"):
        rows = []
        for k in range(n_times):
            for track in range(3):
                w, h = rng.uniform(20, 80), rng.uniform(20, 60)
                rows.append((750_000 + 250_000 * k, rng.uniform(0, 200), rng.uniform(0, 160),
                             w, h, track % 2, track, 1.0))  # fmt: skip
        out[stem] = np.array(rows, dtype=BBOX_DTYPE)
    return out


def test_ground_truth_as_predictions_scores_one(synth: Path) -> None:
    ds = Gen1DetectionSet(synth, "val", T=2, window_us=100_000, imgsz=128)
    gt = {rec.stem: read_bbox(rec.bbox) for rec in ds.recordings}
    direct = evaluate_gen1(gt, gt)
    assert direct["map"] == direct["map50"] == direct["map75"] == 1.0
    metas, dets = [], []
    for i in range(len(ds)):
        sample = ds[i]
        metas.append(sample.meta)
        score = np.linspace(1.0, 0.5, len(sample.boxes))[:, None]
        dets.append(np.concatenate([sample.boxes, score, sample.classes[:, None]], axis=1))
    back = collect_detections(metas, dets)
    assert set(back) == set(gt)
    result = evaluate_gen1(gt, back)
    assert result["map"] == pytest.approx(1.0) and result["map50"] == 1.0
    assert set(result) == {"map", "map50", "map75", "maps", "mapm", "mapl"}


def test_time_tolerance_and_equal_score_copies() -> None:
    gt = grid_gt()
    shifted = {s: r.copy() for s, r in gt.items()}
    for rows in shifted.values():
        rows["t"] += 50_000  # inclusive edge: still matched
    assert evaluate_gen1(gt, shifted)["map"] == 1.0
    for rows in shifted.values():
        rows["t"] += 1  # 50.001 ms: outside
    assert evaluate_gen1(gt, shifted)["map"] == 0.0
    copies = {}
    for stem, rows in gt.items():
        early, late = rows.copy(), rows.copy()
        early["t"] -= 40_000
        late["t"] += 40_000
        copies[stem] = np.sort(np.concatenate([rows, early, late]), order="t", kind="stable")
    equal = evaluate_gen1(gt, copies)["map"]
    assert equal < 0.9  # boxes of the neighbouring label time count as false positives here
    for stem in copies:
        copies[stem]["class_confidence"][copies[stem]["t"] % 250_000 != 0] = 0.5
    assert evaluate_gen1(gt, copies)["map"] == 1.0  # lower-scored neighbours cannot outrank


def test_protocol_filter_rules() -> None:
    rows = np.array([(500_000, 0, 0, 50, 50, 0, 1, 1.0),    # t not > 0.5 s
                     (500_001, 0, 0, 50, 50, 0, 1, 1.0),    # kept
                     (600_000, 0, 0, 9.9, 50, 0, 1, 1.0),   # w < 10
                     (600_000, 0, 0, 50, 9.9, 0, 1, 1.0),   # h < 10
                     (600_000, 0, 0, 21, 21, 0, 1, 1.0),    # diagonal 29.7 < 30
                     (600_000, 0, 0, 10, 28.3, 1, 2, 1.0)],  # diagonal 30.01: kept
                    dtype=BBOX_DTYPE)  # fmt: skip
    kept = filter_boxes(rows)
    assert kept["t"].tolist() == [500_001, 600_000] and kept["h"][1] == pytest.approx(28.3)


def test_original_dtype_and_misses() -> None:
    gt = grid_gt(seed=1)
    original = {}
    for stem, rows in gt.items():
        arr = np.empty(len(rows), BBOX_DTYPE_ORIGINAL)
        for name in BBOX_DTYPE_ORIGINAL.names:
            arr[name] = rows[{"ts": "t", "confidence": "class_confidence"}.get(name, name)]
        original[stem] = arr
    assert evaluate_gen1(original, original)["map"] == 1.0
    half = {"rec_a": gt["rec_a"]}  # rec_b has no detections: its boxes are misses
    partial = evaluate_gen1(gt, half)
    assert 0.3 < partial["map"] < 0.7
    assert evaluate_gen1(gt, {})["map"] == 0.0
    with pytest.raises(SpikedetError, match="unknown recordings"):
        evaluate_gen1(gt, {"rec_c": gt["rec_a"]})
    with pytest.raises(SpikedetError, match="no ground-truth boxes left"):
        evaluate_gen1({"rec_a": gt["rec_a"][:0]}, {})
    with pytest.raises(SpikedetError, match="class index"):
        collect_detections([{"file": "rec_a", "t_us": 1, "ratio": 1.0, "pad": (0, 0),
                             "orig_hw": (240, 304)}], [np.array([[0, 0, 5, 5, 0.9, 2]])])  # fmt: skip
