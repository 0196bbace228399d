"""DFL decoding and NMS (numpy only) against hand-made cases and brute-force references."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from spikedet.detection import decode_dfl, make_anchors, nms, postprocess
from spikedet.errors import SpikedetError


def test_make_anchors_order() -> None:
    centres, strides = make_anchors([(2, 3), (1, 1)], [8, 32])
    expected = [(4, 4), (12, 4), (20, 4), (4, 12), (12, 12), (20, 12), (16, 16)]
    assert centres.tolist() == [list(map(float, p)) for p in expected]
    assert strides.tolist() == [8.0] * 6 + [32.0]


def test_decode_known_distribution() -> None:
    """One-hot bins give integer distances; two equal bins give their mean; large logits stay finite."""
    reg_max, stride = 16, 8
    box = np.full((1, 4 * reg_max, 2, 2), -1e4, np.float32)
    # Cell (y=1, x=0): centre (4, 12). left bin 2, top bin 1, right bins 3 & 5 (mean 4), bottom 15.
    for side, bins in enumerate([(2,), (1,), (3, 5), (15,)]):
        for b in bins:
            box[0, side * reg_max + b, 1, 0] = 1e4  # huge logits: the stable softmax must cope
    cls = np.zeros((1, 2, 2, 2), np.float32)
    cls[0, 1, 1, 0] = 3.0
    cls[0, 0, 0, 0] = -800.0  # sigmoid must not overflow
    boxes, probs = decode_dfl([box], [cls], [stride], reg_max)
    assert boxes.shape == (1, 4, 4) and probs.shape == (1, 4, 2)
    assert np.all(np.isfinite(boxes)) and np.all(np.isfinite(probs))
    np.testing.assert_allclose(
        boxes[0, 2], [4 - 2 * 8, 12 - 1 * 8, 4 + 4 * 8, 12 + 15 * 8], atol=1e-4
    )
    assert probs[0, 2, 1] == pytest.approx(1 / (1 + math.exp(-3.0)), rel=1e-6)
    assert probs[0, 0, 0] == 0.0 and probs[0, 2, 0] == 0.5


def _reference_decode(box_maps, cls_maps, strides, reg_max):
    """Loop-per-anchor decode written straight from the docstring equations."""
    b = box_maps[0].shape[0]
    boxes, probs = [[] for _ in range(b)], [[] for _ in range(b)]
    for box, cls, s in zip(box_maps, cls_maps, strides):
        _, _, h, w = box.shape
        for n in range(b):
            for y in range(h):
                for x in range(w):
                    d = []
                    for side in range(4):
                        logit = box[n, side * reg_max : (side + 1) * reg_max, y, x].astype(
                            np.float64
                        )
                        p = np.exp(logit - logit.max())
                        d.append(s * float((p / p.sum()) @ np.arange(reg_max)))
                    cx, cy = (x + 0.5) * s, (y + 0.5) * s
                    boxes[n].append([cx - d[0], cy - d[1], cx + d[2], cy + d[3]])
                    probs[n].append([1 / (1 + math.exp(-float(v))) for v in cls[n, :, y, x]])
    return np.array(boxes), np.array(probs)


def _random_head(rng, b=2, nc=3, reg_max=8, shapes=((4, 4), (2, 2)), strides=(8, 16)):
    box_maps = [rng.normal(0, 2, (b, 4 * reg_max, h, w)).astype(np.float32) for h, w in shapes]
    cls_maps = [rng.normal(-2, 2, (b, nc, h, w)).astype(np.float32) for h, w in shapes]
    return box_maps, cls_maps, list(strides), reg_max


def test_decode_matches_reference() -> None:
    head = _random_head(np.random.default_rng(0))
    boxes, probs = decode_dfl(*head)
    ref_boxes, ref_probs = _reference_decode(*head)
    np.testing.assert_allclose(boxes, ref_boxes, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(probs, ref_probs, rtol=1e-5, atol=1e-7)


def test_decode_rejects_bad_shapes() -> None:
    box_maps, cls_maps, strides, reg_max = _random_head(np.random.default_rng(1))
    with pytest.raises(SpikedetError, match="4\\*reg_max"):
        decode_dfl(box_maps, cls_maps, strides, reg_max + 1)
    with pytest.raises(SpikedetError, match="does not match"):
        decode_dfl(box_maps, [cls_maps[1], cls_maps[0]], strides, reg_max)
    with pytest.raises(SpikedetError, match="one box map"):
        decode_dfl(box_maps, cls_maps, strides[:1], reg_max)


def _iou(a, b) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - iw * ih
    return iw * ih / union if union > 0 else 0.0


def _reference_nms(boxes, scores, conf, iou_thres, max_det, multi_label):
    """Per class, plain Python greedy NMS; then merge all classes by score."""
    cands = []
    for a in range(len(boxes)):
        classes = range(scores.shape[1]) if multi_label else [int(np.argmax(scores[a]))]
        cands += [(float(scores[a, c]), a, c) for c in classes if scores[a, c] > conf]
    cands.sort(key=lambda t: -t[0])
    kept = []
    for score, a, c in cands:
        if all(c2 != c or _iou(boxes[a], boxes[a2]) <= iou_thres for _, a2, c2 in kept):
            kept.append((score, a, c))
    return np.array([[*boxes[a], s, c] for s, a, c in kept[:max_det]], dtype=np.float64).reshape(
        -1, 6
    )


@pytest.mark.parametrize("multi_label", [True, False])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_nms_matches_reference(seed: int, multi_label: bool) -> None:
    rng = np.random.default_rng(seed)
    n, nc = 150, 4
    xy = rng.uniform(0, 100, (n, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(5, 40, (n, 2))], axis=1)
    scores = rng.uniform(0, 1, (n, nc)) ** 3  # distinct scores, many low ones
    for iou_thres, max_det in ((0.5, 300), (0.7, 300), (0.3, 10)):
        got = nms(boxes, scores, 0.05, iou_thres, max_det, multi_label)
        ref = _reference_nms(boxes, scores, 0.05, iou_thres, max_det, multi_label)
        assert got.shape == ref.shape and got.dtype == np.float32
        np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-4)
        assert np.all(np.diff(got[:, 4]) <= 0)


def test_nms_hand_made() -> None:
    boxes = np.array([[10, 10, 50, 50], [12, 12, 52, 52], [100, 100, 120, 130]], np.float64)
    same = np.array([[0.9, 0.0], [0.8, 0.0], [0.0, 0.3]])
    out = nms(boxes, same, iou_thres=0.5)
    assert out[:, 4].tolist() == pytest.approx([0.9, 0.3]) and out[:, 5].tolist() == [0, 1]
    np.testing.assert_array_equal(out[0, :4], boxes[0])
    diff = np.array([[0.9, 0.0], [0.0, 0.8], [0.0, 0.0]])
    out = nms(boxes, diff, iou_thres=0.5)
    assert out[:, 5].tolist() == [0, 1] and len(out) == 2  # different classes: both kept
    assert len(nms(boxes, same, iou_thres=0.95)) == 3  # IoU 0.82 is under the threshold
    assert len(nms(boxes, same, conf_thres=0.5)) == 1
    assert len(nms(boxes, same, iou_thres=0.95, max_det=2)) == 2
    assert nms(boxes, np.zeros((3, 2))).shape == (0, 6)
    assert nms(np.zeros((0, 4)), np.zeros((0, 2))).shape == (0, 6)
    # multi-label: one anchor may give several classes
    out = nms(boxes[:1], np.array([[0.7, 0.6]]))
    assert out[:, 5].tolist() == [0, 1]
    assert nms(boxes[:1], np.array([[0.7, 0.6]]), multi_label=False)[:, 5].tolist() == [0]


def test_nms_candidate_cap() -> None:
    boxes = np.array([[i * 20.0, 0, i * 20.0 + 10, 10] for i in range(50)])
    scores = np.linspace(0.9, 0.1, 50)[:, None]
    assert len(nms(boxes, scores, max_candidates=7)) == 7
    assert len(nms(boxes, scores)) == 50


def test_postprocess_per_image() -> None:
    head = _random_head(np.random.default_rng(3), b=3)
    dets = postprocess(*head, conf_thres=0.25, iou_thres=0.6, max_det=20)
    boxes, probs = decode_dfl(*head)
    assert len(dets) == 3
    for b, det in enumerate(dets):
        assert det.shape[1] == 6 and len(det) <= 20
        np.testing.assert_array_equal(det, nms(boxes[b], probs[b], 0.25, 0.6, 20))


_SCRIPT = """
import json, sys
import numpy as np
from spikedet.detection import postprocess
rng = np.random.default_rng(5)
box = [rng.normal(0, 2, (1, 32, 4, 4)).astype(np.float32)]
cls = [rng.normal(-1, 2, (1, 3, 4, 4)).astype(np.float32)]
det = postprocess(box, cls, [8], 8, conf_thres=0.1, iou_thres=0.5)[0]
print(json.dumps({"torch": "torch" in sys.modules, "numpy": np.__version__, "det": det.tolist()}))
"""


def _run(python: Path) -> dict:
    out = subprocess.run([str(python), "-c", _SCRIPT], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def test_torch_free_and_same_result_under_lava_env(lava_python: Path) -> None:
    core = _run(Path(sys.executable))
    lava = _run(lava_python)
    assert not core["torch"] and not lava["torch"]
    assert lava["numpy"].startswith("1.") and len(core["det"]) > 0
    np.testing.assert_allclose(np.array(lava["det"]), np.array(core["det"]), rtol=1e-6, atol=1e-5)
