"""YOLOv8 detection loss (task-aligned assignment, CIoU + DFL boxes, BCE classes), batched.

Written from the published method (TOOD's task-aligned assigner, GFL's distribution focal loss,
CIoU). Every image's targets are padded to the largest count in the batch, so the assigner works
on ``[B, M, A]`` tensors (M targets, A anchors) with no Python loop over boxes.

Scale: the returned loss is ``7.5*box + 0.5*cls + 1.5*dfl``, each term normalised by the sum of
the target scores of the whole batch (as YOLOv8), but NOT multiplied by the batch size (YOLOv8
does that to compensate for its nominal batch-size scaling of the learning rate). The parts dict
holds the gained terms, so ``sum(parts.values()) == loss``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from spikedet.errors import SpikedetError

BOX_GAIN, CLS_GAIN, DFL_GAIN = 7.5, 0.5, 1.5
EPS = 1e-9


def make_anchors(outputs: list[tuple[Tensor, Tensor]], strides: list[int]) -> tuple[Tensor, Tensor]:
    """Cell-centre anchors in grid units ``[A, 2]`` (x+0.5, y+0.5) and their strides ``[A, 1]``.

    Order: stride by stride, row-major within a map (the order of ``flatten_outputs``).
    """
    points, stride_col = [], []
    for (box, _), stride in zip(outputs, strides):
        h, w = box.shape[-2:]
        ys = torch.arange(h, dtype=box.dtype, device=box.device) + 0.5
        xs = torch.arange(w, dtype=box.dtype, device=box.device) + 0.5
        gy, gx = torch.meshgrid(ys, xs, indexing="ij")
        points.append(torch.stack((gx, gy), -1).view(-1, 2))
        stride_col.append(torch.full((h * w, 1), float(stride), dtype=box.dtype, device=box.device))
    return torch.cat(points), torch.cat(stride_col)


def flatten_outputs(outputs: list[tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor]:
    """Per-stride maps -> box logits ``[B, A, 4*reg_max]`` and class logits ``[B, A, nc]``."""
    box = torch.cat([b.flatten(2) for b, _ in outputs], 2).transpose(1, 2)
    cls = torch.cat([c.flatten(2) for _, c in outputs], 2).transpose(1, 2)
    return box, cls


def dfl_decode(box_logits: Tensor, reg_max: int) -> Tensor:
    """Distances ``[..., 4]`` (l, t, r, b) = sum_k k * softmax(logits[side*reg_max + k])."""
    prob = box_logits.unflatten(-1, (4, reg_max)).softmax(-1)
    bins = torch.arange(reg_max, dtype=prob.dtype, device=prob.device)
    return prob @ bins


def dist2bbox(dist: Tensor, anchors: Tensor) -> Tensor:
    """(l, t, r, b) around an anchor (cx, cy) -> (cx - l, cy - t, cx + r, cy + b)."""
    lt, rb = dist.split(2, -1)
    return torch.cat((anchors - lt, anchors + rb), -1)


def bbox_ciou(a: Tensor, b: Tensor, eps: float = 1e-7) -> Tensor:
    """Complete IoU of broadcast xyxy boxes: IoU - rho^2/c^2 - alpha*v.

    rho: centre distance; c: diagonal of the enclosing box; v = 4/pi^2 (atan(wb/hb) -
    atan(wa/ha))^2 the aspect-ratio term; alpha = v / (1 - IoU + v), treated as a constant.
    """
    ax1, ay1, ax2, ay2 = a.unbind(-1)
    bx1, by1, bx2, by2 = b.unbind(-1)
    wa, ha = ax2 - ax1, ay2 - ay1 + eps
    wb, hb = bx2 - bx1, by2 - by1 + eps
    inter = (torch.minimum(ax2, bx2) - torch.maximum(ax1, bx1)).clamp(min=0) * (
        torch.minimum(ay2, by2) - torch.maximum(ay1, by1)
    ).clamp(min=0)
    union = wa * ha + wb * hb - inter + eps
    iou = inter / union
    cw = torch.maximum(ax2, bx2) - torch.minimum(ax1, bx1)
    ch = torch.maximum(ay2, by2) - torch.minimum(ay1, by1)
    c2 = cw**2 + ch**2 + eps
    rho2 = ((bx1 + bx2 - ax1 - ax2) ** 2 + (by1 + by2 - ay1 - ay2) ** 2) / 4
    v = (4 / math.pi**2) * (torch.atan(wb / hb) - torch.atan(wa / ha)) ** 2
    with torch.no_grad():
        alpha = v / (v - iou + (1 + eps))
    return iou - (rho2 / c2 + v * alpha)


def pad_targets(targets: Tensor, batch_size: int) -> tuple[Tensor, Tensor, Tensor]:
    """``[M, 6]`` (batch_idx, cls, x1, y1, x2, y2) -> labels ``[B, Mmax]``, boxes ``[B, Mmax, 4]``
    and a validity mask ``[B, Mmax]`` (rows of an image are packed first, padding after)."""
    img = targets[:, 0].long()
    counts = torch.bincount(img, minlength=batch_size)
    m_max = int(counts.max()) if len(img) else 0
    order = torch.argsort(img, stable=True)
    img_sorted = img[order]
    first = torch.cumsum(counts, 0) - counts  # index of each image's first row after sorting
    slot = torch.arange(len(img), device=targets.device) - first[img_sorted]
    labels = torch.zeros(batch_size, m_max, dtype=torch.long, device=targets.device)
    boxes = torch.zeros(batch_size, m_max, 4, dtype=targets.dtype, device=targets.device)
    mask = torch.zeros(batch_size, m_max, dtype=torch.bool, device=targets.device)
    labels[img_sorted, slot] = targets[order, 1].long()
    boxes[img_sorted, slot] = targets[order, 2:6]
    mask[img_sorted, slot] = True
    return labels, boxes, mask


@torch.no_grad()
def assign(
    scores: Tensor,
    pred_boxes: Tensor,
    anchors: Tensor,
    gt_labels: Tensor,
    gt_boxes: Tensor,
    gt_mask: Tensor,
    topk: int = 10,
    alpha: float = 0.5,
    beta: float = 6.0,
) -> tuple[Tensor, Tensor, Tensor]:
    """Task-aligned assignment (TOOD). Inputs in pixels: scores ``[B,A,C]`` (probabilities),
    pred_boxes ``[B,A,4]``, anchors ``[A,2]``, gt ``[B,M]``/``[B,M,4]``/``[B,M]``.

    metric t = s^alpha * CIoU^beta (s: predicted score of the gt class) for anchors whose centre
    lies inside the gt box; each gt keeps its ``topk`` anchors by t; an anchor claimed by several
    gts goes to the one it overlaps most. Target score of a positive anchor = its class one-hot
    times t / max_t(gt) * max_IoU(gt), so the best-aligned anchor of a gt gets that gt's best IoU.
    Returns target boxes ``[B,A,4]`` (pixels), target scores ``[B,A,C]``, foreground ``[B,A]``.
    """
    b, a, c = scores.shape
    m = gt_boxes.shape[1]
    if m == 0:
        return (
            pred_boxes.new_zeros(b, a, 4),
            scores.new_zeros(b, a, c),
            scores.new_zeros(b, a, dtype=torch.bool),
        )
    # Anchor centre strictly inside the gt box: [B, M, A].
    lt = anchors[None, None] - gt_boxes[:, :, None, :2]
    rb = gt_boxes[:, :, None, 2:] - anchors[None, None]
    candidates = (torch.cat((lt, rb), -1).amin(-1) > EPS) & gt_mask[:, :, None]

    overlaps = bbox_ciou(gt_boxes[:, :, None, :], pred_boxes[:, None, :, :]).clamp(min=0)
    overlaps = overlaps * candidates
    cls_scores = scores.transpose(1, 2).gather(1, gt_labels[:, :, None].expand(b, m, a))
    metric = cls_scores.pow(alpha) * overlaps.pow(beta) * candidates

    top_idx = metric.topk(min(topk, a), dim=-1).indices
    in_topk = torch.zeros_like(candidates).scatter_(-1, top_idx, True)
    positive = in_topk & candidates  # candidates already carries gt_mask

    # Anchors claimed by several gts keep only the gt they overlap most.
    multi = positive.sum(1, keepdim=True) > 1
    best_gt = F.one_hot(overlaps.argmax(1), m).transpose(1, 2).bool()
    positive = torch.where(multi, best_gt, positive)
    fg = positive.any(1)
    gt_idx = positive.float().argmax(1)  # [B, A]

    target_labels = gt_labels.gather(1, gt_idx)
    target_boxes = gt_boxes.gather(1, gt_idx[..., None].expand(b, a, 4))
    target_scores = F.one_hot(target_labels, c).to(scores.dtype) * fg[..., None]

    metric = metric * positive
    best_metric = metric.amax(-1, keepdim=True)
    best_overlap = (overlaps * positive).amax(-1, keepdim=True)
    norm = (metric * best_overlap / (best_metric + EPS)).amax(1)  # [B, A]
    return target_boxes, target_scores * norm[..., None], fg


class DetectionLoss:
    """YOLOv8 loss for a ``SpikeYOLO`` (reads reg_max, nc and strides from the model)."""

    def __init__(self, model, topk: int = 10, alpha: float = 0.5, beta: float = 6.0):
        self.reg_max: int = model.reg_max
        self.nc: int = model.nc
        self.strides: list[int] = list(model.strides)
        self.topk, self.alpha, self.beta = topk, alpha, beta

    def __call__(
        self, outputs: list[tuple[Tensor, Tensor]], targets: Tensor
    ) -> tuple[Tensor, dict[str, float]]:
        """outputs: the model's per-stride (box, cls) logits; targets ``[M, 6]`` in pixels."""
        if targets.dim() != 2 or targets.shape[1] != 6:
            raise SpikedetError(f"targets must be [M, 6], got {list(targets.shape)}", "loss")
        box_logits, cls_logits = flatten_outputs(outputs)
        batch = box_logits.shape[0]
        if len(targets) and (
            int(targets[:, 0].max()) >= batch or int(targets[:, 1].max()) >= self.nc
        ):
            raise SpikedetError("target batch index or class out of range", "loss")
        anchors, stride_col = make_anchors(outputs, self.strides)
        pred_boxes = dist2bbox(dfl_decode(box_logits, self.reg_max), anchors)  # grid units

        labels, gt_boxes, gt_mask = pad_targets(targets.to(box_logits.dtype), batch)
        target_boxes, target_scores, fg = assign(
            cls_logits.detach().sigmoid(),
            pred_boxes.detach() * stride_col,
            anchors * stride_col,
            labels,
            gt_boxes,
            gt_mask,
            self.topk,
            self.alpha,
            self.beta,
        )
        score_sum = target_scores.sum().clamp(min=1.0)
        loss_cls = (
            F.binary_cross_entropy_with_logits(cls_logits, target_scores, reduction="sum")
            / score_sum
        )

        if fg.any():
            weight = target_scores.sum(-1)[fg]
            target_grid = (target_boxes / stride_col)[fg]
            ciou = bbox_ciou(pred_boxes[fg], target_grid)
            loss_box = ((1.0 - ciou) * weight).sum() / score_sum
            anchor_fg = anchors.expand(batch, -1, -1)[fg]
            dist = torch.cat((anchor_fg - target_grid[:, :2], target_grid[:, 2:] - anchor_fg), -1)
            loss_dfl = (
                distribution_focal_loss(box_logits[fg], dist, self.reg_max) * weight
            ).sum() / score_sum
        else:  # keep the graph connected so backward() works on target-free batches
            loss_box = loss_dfl = box_logits.sum() * 0.0

        loss_box, loss_cls, loss_dfl = BOX_GAIN * loss_box, CLS_GAIN * loss_cls, DFL_GAIN * loss_dfl
        total = loss_box + loss_cls + loss_dfl
        parts = {
            k: float(v.detach())
            for k, v in (("box", loss_box), ("cls", loss_cls), ("dfl", loss_dfl))
        }
        return total, parts


def distribution_focal_loss(box_logits: Tensor, dist: Tensor, reg_max: int) -> Tensor:
    """DFL per anchor ``[P]``: for each side, cross-entropy towards the two bins around the target
    distance y (weights (y_r - y) and (y - y_l)), averaged over the four sides."""
    target = dist.clamp(0, reg_max - 1 - 0.01)
    left = target.floor().long()
    w_left = left + 1 - target
    log_p = box_logits.view(-1, 4, reg_max).log_softmax(-1)
    lp_left = log_p.gather(-1, left[..., None]).squeeze(-1)
    lp_right = log_p.gather(-1, (left + 1)[..., None]).squeeze(-1)
    return -(lp_left * w_left + lp_right * (1 - w_left)).mean(-1)
