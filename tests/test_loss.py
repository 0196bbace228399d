"""YOLOv8 detection loss: values, assignment, padding and learning on one batch."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from spikedet.errors import SpikedetError
from spikedet.train.loss import (
    DetectionLoss,
    assign,
    bbox_ciou,
    dfl_decode,
    dist2bbox,
    flatten_outputs,
    make_anchors,
    pad_targets,
)
from spikedet.train.models.registry import build_model

REG_MAX, NC, STRIDES, SIZE = 8, 3, [8, 16], 64
HEAD = SimpleNamespace(reg_max=REG_MAX, nc=NC, strides=STRIDES)
TARGETS = torch.tensor(
    [
        [1, 2, 5.0, 5.0, 50.0, 50.0],
        [0, 1, 10.0, 10.0, 30.0, 40.0],
        [0, 2, 40.0, 5.0, 60.0, 20.0],
        [3, 1, 20.0, 20.0, 30.0, 30.0],
    ]
)


def empty_maps(batch: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [
        (
            torch.zeros(batch, 4 * REG_MAX, SIZE // s, SIZE // s),
            torch.zeros(batch, NC, SIZE // s, SIZE // s),
        )
        for s in STRIDES
    ]


def test_ciou_values():
    a = torch.tensor([0.0, 0.0, 10.0, 10.0])
    assert float(bbox_ciou(a, a)) == pytest.approx(1.0, abs=1e-6)
    b = torch.tensor([5.0, 0.0, 15.0, 10.0])  # IoU 1/3, centres 5 apart, enclosing diag^2 325
    assert float(bbox_ciou(a, b)) == pytest.approx(1 / 3 - 25 / 325, abs=1e-5)
    far = torch.tensor([100.0, 100.0, 110.0, 110.0])
    assert float(bbox_ciou(a, far)) < 0


def test_pad_targets_unsorted():
    labels, boxes, mask = pad_targets(TARGETS, batch_size=4)
    assert labels.shape == (4, 2) and boxes.shape == (4, 2, 4)
    assert mask.tolist() == [[True, True], [True, False], [False, False], [True, False]]
    assert labels[0].tolist() == [1, 2] and labels[1, 0] == 2 and labels[3, 0] == 1
    assert torch.equal(boxes[0, 1], TARGETS[2, 2:])


def test_assigner_topk_inside_and_best_iou():
    b = 4
    anchors, strides = make_anchors(empty_maps(b), STRIDES)
    anchors_px = anchors * strides
    labels, gt, mask = pad_targets(TARGETS, b)
    # Every anchor predicts a 16 px box around itself (overlaps any gt containing it), except
    # one anchor that predicts the first gt of image 0 exactly.
    pred = torch.cat((anchors_px - 8, anchors_px + 8), -1).expand(b, -1, -1).clone()
    exact_anchor = 2 * 8 + 2  # stride 8, cell (2, 2): centre (20, 20), inside (10, 10, 30, 40)
    pred[0, exact_anchor] = gt[0, 0]
    scores = torch.full((b, len(anchors), NC), 0.5)
    tboxes, tscores, fg = assign(scores, pred, anchors_px, labels, gt, mask, topk=10)
    assert not fg[2].any()  # image without targets
    for img, k in [(0, 0), (0, 1), (1, 0), (3, 0)]:
        box = gt[img, k]
        mine = fg[img] & (tboxes[img] == box).all(-1)
        assert 0 < int(mine.sum()) <= 10
        ax, ay = anchors_px[mine].unbind(-1)
        assert ((ax > box[0]) & (ax < box[2]) & (ay > box[1]) & (ay < box[3])).all()
        assert (tscores[img, mine].argmax(-1) == labels[img, k]).all()
    # The best-aligned anchor of a gt gets that gt's best IoU: 1 where the prediction is exact.
    assert fg[0, exact_anchor] and (tboxes[0, exact_anchor] == gt[0, 0]).all()
    assert float(tscores[0, exact_anchor, 1]) == pytest.approx(1.0, abs=1e-4)
    others = fg[0] & (tboxes[0] == gt[0, 0]).all(-1)
    others[exact_anchor] = False
    assert (tscores[0, others].amax(-1) < 1.0).all()
    # topk limits the positives: with topk=2 no gt keeps more than 2 anchors.
    _, _, fg2 = assign(scores, pred, anchors_px, labels, gt, mask, topk=2)
    assert int(fg2[3].sum()) <= 2 and int(fg2.sum()) < int(fg.sum())


def perfect_outputs(targets: torch.Tensor, batch: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Head maps whose every anchor predicts the first gt of its image exactly: DFL logits are
    log of the two-bin weights that the DFL target puts around each distance."""
    outs = empty_maps(batch)
    anchors, strides = make_anchors(outs, STRIDES)
    labels, gt, mask = pad_targets(targets, batch)
    gt_grid = gt[:, 0][:, None, :] / strides  # [B, A, 4] in grid units
    dist = torch.cat((anchors - gt_grid[..., :2], gt_grid[..., 2:] - anchors), -1)
    dist = dist.clamp(0, REG_MAX - 1 - 0.01)
    left = dist.floor()
    w_right = dist - left
    probs = torch.zeros(*dist.shape, REG_MAX)
    probs.scatter_(-1, left.long()[..., None], (1 - w_right)[..., None])
    probs.scatter_add_(-1, left.long()[..., None] + 1, w_right[..., None])
    logits = probs.clamp(min=1e-12).log().flatten(-2)  # [B, A, 4R]
    cls = torch.full((batch, len(anchors), NC), -12.0)
    inside = (
        (anchors[None, :, 0] > gt_grid[..., 0])
        & (anchors[None, :, 0] < gt_grid[..., 2])
        & (anchors[None, :, 1] > gt_grid[..., 1])
        & (anchors[None, :, 1] < gt_grid[..., 3])
    ) & mask[:, :1]
    cls[inside] = (
        torch.nn.functional.one_hot(labels[:, 0], NC).float()[:, None].expand_as(cls)[inside] * 24
        - 12
    )
    maps, start = [], 0
    for (box, c), _ in zip(outs, STRIDES):
        h, w = box.shape[-2:]
        sl = slice(start, start + h * w)
        maps.append(
            (
                logits[:, sl].transpose(1, 2).reshape(box.shape),
                cls[:, sl].transpose(1, 2).reshape(c.shape),
            )
        )
        start += h * w
    return maps


def test_perfect_prediction_has_no_box_loss():
    targets = torch.tensor([[0, 1, 12.3, 9.1, 41.7, 37.9], [1, 0, 20.0, 24.0, 52.0, 44.0]])
    loss_fn = DetectionLoss(HEAD)
    outs = perfect_outputs(targets, 2)
    # The maps decode to exactly the gt boxes.
    box0 = outs[0][0][0, :, 2, 2]
    decoded = dist2bbox(dfl_decode(box0, REG_MAX), torch.tensor([2.5, 2.5])) * 8
    assert torch.allclose(decoded, targets[0, 2:], atol=1e-3)
    loss, parts = loss_fn(outs, targets)
    assert parts["box"] < 1e-4
    assert sum(parts.values()) == pytest.approx(float(loss), rel=1e-5)
    # Moving every box by half a cell, or swapping the classes, costs more.
    shifted = perfect_outputs(targets + torch.tensor([0, 0, 4.0, 4.0, 4.0, 4.0]), 2)
    _, parts_shift = loss_fn(shifted, targets)
    assert parts_shift["box"] > 0.1 and parts_shift["dfl"] > parts["dfl"] + 0.1
    swapped = [(b, c.roll(1, dims=1)) for b, c in outs]
    _, parts_swap = loss_fn(swapped, targets)
    assert parts_swap["cls"] > 5 * parts["cls"]


def test_loss_finite_positive_and_empty_images():
    torch.manual_seed(0)
    model = build_model("spikeyolo-pico")
    loss_fn = DetectionLoss(model)
    outs = model(torch.rand(4, 3, SIZE, SIZE))
    loss, parts = loss_fn(outs, TARGETS)  # image 2 has no targets
    assert torch.isfinite(loss) and float(loss.detach()) > 0
    assert all(math.isfinite(v) and v > 0 for v in parts.values())
    loss.backward()
    # A batch without any target: only the class term remains, and backward still works.
    model.zero_grad()
    outs = model(torch.rand(2, 3, SIZE, SIZE))
    loss, parts = loss_fn(outs, torch.zeros(0, 6))
    assert parts["box"] == 0.0 and parts["dfl"] == 0.0 and parts["cls"] > 0
    loss.backward()
    assert model.head[0].cls.pred.cb.conv.bias.grad.abs().sum() > 0
    with pytest.raises(SpikedetError):
        loss_fn(outs, torch.tensor([[5, 0, 1.0, 1.0, 9.0, 9.0]]))  # batch index out of range
    with pytest.raises(SpikedetError):
        loss_fn(outs, torch.zeros(3, 5))


def test_overfits_one_batch():
    torch.manual_seed(0)
    model = build_model("spikeyolo-pico")
    loss_fn = DetectionLoss(model)
    images = torch.rand(4, 3, SIZE, SIZE)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(30):
        loss, _ = loss_fn(model(images), TARGETS)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.6 * losses[0], losses


def test_decoding_matches_numpy_postprocess():
    """The loss decodes boxes exactly as spikedet.detection does at inference (semantics §2.4)."""
    from spikedet.detection import decode_dfl

    torch.manual_seed(2)
    outs = [
        (3 * torch.randn(2, 4 * REG_MAX, 64 // s, 64 // s), torch.randn(2, NC, 64 // s, 64 // s))
        for s in STRIDES
    ]
    box_logits, cls_logits = flatten_outputs(outs)
    anchors, strides = make_anchors(outs, STRIDES)
    ours = dist2bbox(dfl_decode(box_logits, REG_MAX), anchors) * strides
    boxes, probs = decode_dfl(
        [b.numpy() for b, _ in outs], [c.numpy() for _, c in outs], STRIDES, REG_MAX
    )
    assert torch.allclose(ours, torch.from_numpy(boxes), atol=1e-4)
    assert torch.allclose(cls_logits.sigmoid(), torch.from_numpy(probs), atol=1e-6)
