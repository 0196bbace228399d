"""EMS-YOLO anchor head: numpy decode, torch decode, YOLOv5 matching and loss, post-processing."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from spikedet.anchor_decode import decode_anchor_maps, postprocess_anchor
from spikedet.errors import SpikedetError
from spikedet.train.anchor_loss import (
    AnchorLoss,
    decode_outputs,
    fit_anchors,
    match_targets,
    matched_share,
)
from spikedet.train.models.ems import build_ems, ems_config

STRIDES = [16, 32]
ANCHORS = np.array([[[2, 2], [3, 3], [4, 6]], [[8, 8], [14, 17], [22, 27]]], dtype=np.float32)


def _logit(p: float) -> float:
    return math.log(p / (1.0 - p))


def _fake_model(nc: int = 2, imgsz: int = 64) -> SimpleNamespace:
    """What AnchorLoss reads from an EMSYOLO, with known anchors."""
    detect = SimpleNamespace(anchors=torch.tensor(ANCHORS))
    return SimpleNamespace(strides=STRIDES, nc=nc, imgsz=imgsz, detect=detect)


def _encode(
    maps: list[np.ndarray], b: int, level: int, a: int, cell: tuple[int, int], box, nc: int
) -> None:
    """Write logits at (image b, level, anchor a, cell (x, y)) that decode to ``box`` (xyxy px):
    the inverse of centre = (2σ − ½ + cell)·s, size = (2σ)²·anchor."""
    no = nc + 5
    s = STRIDES[level]
    x1, y1, x2, y2 = box
    gx, gy = (x1 + x2) / 2 / s, (y1 + y2) / 2 / s
    aw, ah = ANCHORS[level, a]
    ch = maps[level][b, a * no : (a + 1) * no, cell[1], cell[0]]
    ch[0] = _logit((gx - cell[0] + 0.5) / 2)
    ch[1] = _logit((gy - cell[1] + 0.5) / 2)
    ch[2] = _logit(math.sqrt((x2 - x1) / aw) / 2)
    ch[3] = _logit(math.sqrt((y2 - y1) / ah) / 2)


def test_decode_hand_made_map():
    no = 2 + 5  # nc = 2
    level0 = np.full((1, 3 * no, 2, 2), -8.0, dtype=np.float32)
    level1 = np.full((1, 3 * no, 1, 1), -8.0, dtype=np.float32)
    # Anchor 1 (3x3 px) at cell x=1, y=0: σ(tx)=0.75 -> centre x (1.0 + 1)·16 = 32; ty=0 ->
    # centre y (0.5 + 0)·16 = 8; tw=0 -> w = 3; σ(th)=0.75 -> h = 1.5²·3 = 6.75.
    level0[0, no : 2 * no, 0, 1] = [math.log(3), 0, 0, math.log(3), 2.0, 1.0, -1.0]
    boxes, obj, prob = decode_anchor_maps([level0, level1], STRIDES, ANCHORS)
    assert boxes.shape == (1, 3 * 4 + 3, 4) and obj.shape == (1, 15) and prob.shape == (1, 15, 2)
    n = 1 * 4 + 0 * 2 + 1  # level 0, anchor 1, row 0, column 1
    np.testing.assert_allclose(boxes[0, n], [30.5, 8 - 3.375, 33.5, 8 + 3.375], atol=1e-5)
    np.testing.assert_allclose(obj[0, n], 1 / (1 + math.exp(-2)), rtol=1e-6)
    np.testing.assert_allclose(prob[0, n], [1 / (1 + math.exp(-1)), 1 / (1 + math.exp(1))], 1e-6)
    # Level 1 anchor 2 (22x27) at its only cell, all logits -8: σ ≈ 0.0003, so the centre is
    # (2σ − ½)·32 ≈ −16 (half a cell left of the cell) and the size ≈ (2σ)²·22.
    sig = 1 / (1 + math.exp(8))
    c, w = (2 * sig - 0.5) * 32, (2 * sig) ** 2 * 22
    np.testing.assert_allclose(boxes[0, 12 + 2, [0, 2]], [c - w / 2, c + w / 2], atol=1e-5)
    with pytest.raises(SpikedetError):
        decode_anchor_maps([level0], STRIDES, ANCHORS)
    with pytest.raises(SpikedetError):
        decode_anchor_maps([level0[:, :-1], level1], STRIDES, ANCHORS)


def test_torch_decode_matches_numpy():
    gen = torch.Generator().manual_seed(0)
    outputs = [
        torch.randn(2, 3 * 8, 4, 4, generator=gen),
        torch.randn(2, 3 * 8, 2, 2, generator=gen),
    ]
    t_boxes, t_obj, t_prob = decode_outputs(outputs, STRIDES, torch.tensor(ANCHORS))
    n_boxes, n_obj, n_prob = decode_anchor_maps([o.numpy() for o in outputs], STRIDES, ANCHORS)
    np.testing.assert_allclose(t_boxes.numpy(), n_boxes, atol=1e-4)
    np.testing.assert_allclose(t_obj.numpy(), n_obj, atol=1e-6)
    np.testing.assert_allclose(t_prob.numpy(), n_prob, atol=1e-6)


def test_matching_anchor_rule_and_neighbour_cells():
    anchors_grid = torch.tensor([[1.0, 1.0], [2.0, 2.0], [8.0, 8.0]])
    targets = torch.tensor(
        [
            [0, 0, 1.3, 2.7, 1.5, 1.5],  # anchors 0, 1 (8/1.5 > 4); left + bottom neighbours
            [1, 1, 0.4, 0.6, 7.0, 7.0],  # anchors 1, 2; x < 1: no left; bottom neighbour
            [0, 1, 3.8, 0.2, 4.0, 1.0],  # ratio exactly 4 vs anchor 0 is out; only anchor 1
        ]
    )
    rows, anchor_idx, cells = match_targets(targets, anchors_grid, (4, 4), anchor_t=4.0)
    got = sorted(zip(rows.tolist(), anchor_idx.tolist(), map(tuple, cells.tolist())))
    expected = sorted(
        [(0, a, c) for a in (0, 1) for c in ((1, 2), (0, 2), (1, 3))]
        + [(1, a, c) for a in (1, 2) for c in ((0, 0), (0, 1))]
        # x 3.8: right neighbour would be outside (W − x < 1); y 0.2 < 1: no top neighbour
        + [(2, 1, (3, 0))]
    )
    assert got == expected


def test_loss_gradient_only_at_matched_anchors_and_cells():
    """Box/class logits get gradient exactly where match_targets assigned the target."""
    crit = AnchorLoss(_fake_model())
    gen = torch.Generator().manual_seed(1)
    outputs = [
        torch.randn(1, 21, 4, 4, generator=gen, requires_grad=True),
        torch.randn(1, 21, 2, 2, generator=gen, requires_grad=True),
    ]
    # A 20x25 px box centred at (22, 40): level 0 grid centre (1.375, 2.5), size (1.25, 1.5625).
    targets = torch.tensor([[0, 1, 12.0, 27.5, 32.0, 52.5]])
    loss, parts = crit(outputs, targets)
    loss.backward()
    for level, out in enumerate(outputs):
        s = STRIDES[level]
        tg = torch.tensor([[0, 1, 22 / s, 40 / s, 20 / s, 25 / s]])
        h, w = out.shape[-2:]
        _, anchor_idx, cells = match_targets(tg, torch.tensor(ANCHORS[level]) / s, (w, h))
        expected = {(a, x, y) for a, (x, y) in zip(anchor_idx.tolist(), cells.tolist())}
        box_grad = out.grad.view(3, 7, h, w)[:, :4].abs().sum(1)
        got = {(a, x, y) for a, y, x in (box_grad > 0).nonzero().tolist()}
        assert got == expected
        assert (out.grad.view(3, 7, h, w)[:, 4] != 0).all()  # objectness: every cell
    # level 0: anchors 3x3 and 4x6 px match a 20x25 box? ratios 6.7 and 5 -> no; 2x2 -> no.
    # level 1: 8x8 (3.1) , 14x17, 22x27 match; so only level 1 has positives.
    assert not (outputs[0].grad.view(3, 7, 4, 4)[:, :4] != 0).any()
    assert set(parts) == {"box", "obj", "cls"} and parts["box"] > 0
    assert abs(sum(parts.values()) - float(loss.detach())) < 1e-6


def test_perfect_boxes_give_zero_box_loss():
    """Logits that decode to the target at every assigned (anchor, cell) give CIoU = 1."""
    crit = AnchorLoss(_fake_model())
    maps = [np.zeros((2, 21, 4, 4), np.float32), np.zeros((2, 21, 2, 2), np.float32)]
    boxes = [(0, 0, (12.0, 27.5, 32.0, 52.5)), (1, 1, (30.0, 4.0, 36.0, 12.0))]
    targets = torch.tensor([[b, c, *box] for b, c, box in boxes])
    for level, s in enumerate(STRIDES):
        h, w = maps[level].shape[-2:]
        tg = torch.cat((targets[:, :2], _xyxy_to_grid(targets[:, 2:], s)), 1)
        rows, anchor_idx, cells = match_targets(tg, torch.tensor(ANCHORS[level]) / s, (w, h))
        for r, a, (x, y) in zip(rows.tolist(), anchor_idx.tolist(), cells.tolist()):
            _encode(maps, boxes[r][0], level, a, (x, y), boxes[r][2], nc=2)
    _, parts = crit([torch.from_numpy(m) for m in maps], targets)
    assert parts["box"] < 1e-5
    _, parts_zero = crit([torch.zeros(2, 21, 4, 4), torch.zeros(2, 21, 2, 2)], targets)
    assert parts_zero["box"] > 1e-3


def _xyxy_to_grid(xyxy: torch.Tensor, stride: int) -> torch.Tensor:
    return torch.cat(((xyxy[:, :2] + xyxy[:, 2:]) / 2, xyxy[:, 2:] - xyxy[:, :2]), 1) / stride


def test_empty_targets_and_bad_input():
    crit = AnchorLoss(_fake_model())
    outputs = [torch.randn(2, 21, 4, 4, requires_grad=True), torch.randn(2, 21, 2, 2)]
    loss, parts = crit(outputs, torch.zeros(0, 6))
    assert torch.isfinite(loss) and parts["box"] == 0 and parts["cls"] == 0 and parts["obj"] > 0
    loss.backward()
    assert outputs[0].grad is not None
    with pytest.raises(SpikedetError):
        crit(outputs, torch.zeros(3, 5))
    with pytest.raises(SpikedetError):  # class 2 of nc = 2
        crit(outputs, torch.tensor([[0, 2, 1.0, 1.0, 9.0, 9.0]]))
    with pytest.raises(SpikedetError):
        crit(outputs[:1], torch.zeros(0, 6))


def test_overfit_one_batch_ems_pico():
    torch.manual_seed(0)
    model = build_ems("ems-pico")
    images = torch.rand(2, 3, 64, 64)
    targets = torch.tensor(
        [
            [0, 0, 10, 12, 30, 40],
            [0, 1, 40, 5, 60, 20],
            [1, 1, 5, 5, 50, 55],
            [1, 0, 20, 20, 26, 30],
        ],
        dtype=torch.float32,
    )
    crit = AnchorLoss(model)
    opt = torch.optim.AdamW(model.parameters(), lr=4e-3)
    losses = []
    for _ in range(30):
        loss, _ = crit(model(images), targets)
        assert torch.isfinite(loss)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.7 * losses[0], losses


def test_ground_truth_like_maps_give_those_detections():
    nc = 3
    maps = [
        np.full((2, 3 * 8, 4, 4), -10.0, np.float32),
        np.full((2, 3 * 8, 2, 2), -10.0, np.float32),
    ]
    # (image, level, anchor, cell, class, box px)
    truth = [
        (0, 0, 1, (1, 2), 2, (20.0, 36.0, 24.0, 42.0)),
        (0, 1, 2, (1, 1), 0, (30.0, 28.0, 60.0, 62.0)),
        (1, 0, 0, (3, 0), 1, (50.0, 4.0, 53.0, 7.0)),
    ]
    for b, level, a, cell, cls, box in truth:
        _encode(maps, b, level, a, cell, box, nc)
        maps[level][b, a * 8 + 4, cell[1], cell[0]] = 10.0  # objectness
        maps[level][b, a * 8 + 5 + cls, cell[1], cell[0]] = 10.0
    dets = postprocess_anchor(maps, STRIDES, ANCHORS, conf_thres=0.5, iou_thres=0.6)
    assert [len(d) for d in dets] == [2, 1]
    for b in (0, 1):
        want = sorted((t for t in truth if t[0] == b), key=lambda t: t[4])
        got = dets[b][np.argsort(dets[b][:, 5])]
        np.testing.assert_allclose(got[:, :4], [t[5] for t in want], atol=1e-3)
        np.testing.assert_array_equal(got[:, 5], [t[4] for t in want])
        np.testing.assert_allclose(got[:, 4], (1 / (1 + math.exp(-10))) ** 2, rtol=1e-5)


def test_fit_anchors_finds_size_clusters():
    """Six log-normal size clusters -> one anchor at each cluster's geometric mean, by area."""
    rng = np.random.default_rng(0)
    centres = np.array([[4, 12], [12, 6], [16, 16], [30, 20], [24, 48], [60, 60]], float)
    wh = np.concatenate([c * np.exp(rng.normal(0, 0.08, (200, 2))) for c in centres])
    anchors = fit_anchors(wh)
    assert anchors.shape == (2, 3, 2)
    np.testing.assert_allclose(anchors.reshape(6, 2), centres, rtol=0.03)
    np.testing.assert_array_equal(anchors, fit_anchors(wh))  # no random start
    np.testing.assert_allclose(fit_anchors(rng.permutation(wh)), anchors, rtol=1e-9)
    # the three smallest clusters fit the first level within a factor 2, the largest not at all
    assert matched_share(wh[:600], anchors[0], anchor_t=2.0) == 1.0
    assert matched_share(wh[1000:], anchors[0], anchor_t=2.0) == 0.0
    assert matched_share(wh, anchors) == 1.0
    # the rule is strict, as in match_targets: a ratio of exactly anchor_t does not match
    assert matched_share(np.array([[10.0, 10.0]]), np.array([[40.0, 10.0]])) == 0.0
    assert matched_share(np.array([[10.0, 10.0]]), np.array([[39.0, 10.0]])) == 1.0
    # an integer weight counts a box that many times
    counts = rng.integers(1, 4, len(wh))
    weighted = fit_anchors(wh, weights=counts.astype(float))
    np.testing.assert_allclose(weighted, fit_anchors(np.repeat(wh, counts, axis=0)), rtol=1e-9)
    assert not np.allclose(weighted, anchors, rtol=1e-4)


def test_fit_anchors_rejects_bad_input():
    wh = np.full((10, 2), 5.0)
    for bad in (np.zeros((10, 2)), np.full((10, 3), 5.0), np.full((5, 2), 5.0)):
        with pytest.raises(SpikedetError):
            fit_anchors(bad)
    with pytest.raises(SpikedetError):
        fit_anchors(wh, weights=np.zeros(10))
    with pytest.raises(SpikedetError):
        fit_anchors(wh, weights=np.ones(9))
    with pytest.raises(SpikedetError):
        matched_share(wh, np.array([[0.0, 4.0]]))


def _learn_benchmark():
    """benchmarks/learn.py as a module (its data specs and run settings)."""
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "learn.py"
    spec = importlib.util.spec_from_file_location("spikedet_learn_benchmark", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _synthetic_coco_sizes(spec, imgsz: int) -> np.ndarray:
    """Box sizes of the synthetic COCO train split (as write_synthetic_coco draws them),
    letterboxed to ``imgsz`` (square images: a pure scale)."""
    from spikedet.data.synth_coco import render_image

    sizes = []
    for index in range(spec.n_train):
        _, objects = render_image(np.random.default_rng([spec.seed, 0, index]), spec.imgsz)
        sizes += [obj["bbox"][2:] for obj in objects]
    return np.array(sizes) * (imgsz / spec.imgsz)


def _synthetic_gen1_sizes(spec, imgsz: int) -> np.ndarray:
    """Box sizes of the synthetic Gen1 train split as ``Gen1DetectionSet`` yields them (last
    row per track, clipped to the frame, letterboxed to ``imgsz``), without simulating events:
    write_synthetic_gen1 draws the stem, objects and labels before the events."""
    from spikedet.data.coco import letterbox_geometry
    from spikedet.data.gen1_dataset import clip_boxes, last_per_track
    from spikedet.data.synth_gen1 import _make_objects, _stem, make_labels

    ratio = letterbox_geometry(240, 304, imgsz)[0]
    sizes = []
    for index in range(spec.n_train):
        rng = np.random.default_rng([spec.seed, 0, index])
        _stem(rng, spec.seconds)
        labels = make_labels(rng, _make_objects(rng, spec.seconds), spec.seconds)
        for t in np.unique(labels["t"]):
            xyxy, _ = clip_boxes(last_per_track(labels[labels["t"] == t]), 240, 304)
            sizes.append((xyxy[:, 2:] - xyxy[:, :2]) * ratio)
    return np.concatenate(sizes)


def test_ems_pico_anchors_are_fitted_to_the_benchmark_sets():
    """The ems-pico anchors are fit_anchors of both learn.py train sets at the imgsz of their
    runs, the sets weighted equally (rounded to 0.1 px); every box then has a positive at each
    stride it fits, and the stride-16 level gets most boxes of both sets."""
    learn = _learn_benchmark()
    coco_run, gen1_run = learn.RUNS["ems-coco"], learn.RUNS["ems-gen1"]
    coco = _synthetic_coco_sizes(coco_run.data, coco_run.train["imgsz"])
    gen1 = _synthetic_gen1_sizes(gen1_run.data, gen1_run.train["imgsz"])
    weights = np.concatenate([np.full(len(coco), 1 / len(coco)), np.full(len(gen1), 1 / len(gen1))])
    fitted = fit_anchors(np.concatenate([coco, gen1]), weights=weights)
    anchors = np.array(ems_config("ems-pico")["anchors"])
    np.testing.assert_allclose(anchors, np.round(fitted, 1), atol=1e-6)
    for sizes in (coco, gen1):
        assert matched_share(sizes, anchors) == 1.0
        assert matched_share(sizes, anchors[0]) > 0.8  # stride 16 (was 0.0 on COCO before)
