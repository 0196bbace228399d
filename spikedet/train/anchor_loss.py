"""EMS-YOLO's anchor-based loss (the YOLOv5 method), batched, written from the published math.

Source: BICLab/EMS-YOLO @ fbfc2ca, ``utils/loss.py`` (``ComputeLoss``, YOLOv5's method). Per level l (stride s, anchors A_l in grid
units = pixels / s), targets in grid units (centre g, size g_wh):

- Matching: target t goes to anchor a when max(r, 1/r) < anchor_t on both sides, r = g_wh / A_a.
- Cells: the cell containing g, plus the left (top) neighbour when the fractional part of g_x
  (g_y) is < ½ and g_x > 1, plus the right (bottom) one when it is > ½ and W − g_x > 1: the
  decoded centre 2σ − ½ + cell spans [cell − ½, cell + 1½], so neighbours can reach g.
- box: 1 − CIoU(decoded box, target box), mean over matches.
- obj: BCE(obj logit, IoU target) over every cell and anchor, the IoU target being the detached
  CIoU clamped at 0 (gr = 1) at matched cells and 0 elsewhere, weighted by the level balance.
- cls: BCE(class logits, one-hot) over matches (not computed when nc = 1).

Gains: box 0.05·3/nl, obj 1.0·(imgsz/640)²·3/nl, cls 0.5·nc/80·3/nl. Unlike YOLOv5 the sum is NOT
multiplied by the batch size, as ``spikedet.train.loss.DetectionLoss`` (the trainer's lr does not
assume it). ``sum(parts.values()) == loss``.
Where several matches land on the same (image, anchor, cell) the obj target is their largest
IoU (YOLOv5 keeps the last written one, which depends on ordering); this keeps it deterministic.

Anchors: ``fit_anchors`` clusters a data set's box sizes (at the model's imgsz) into levels x na
anchors under the matching ratio (the role of YOLOv5's autoanchor); ``matched_share`` is the
share of boxes some anchor matches. Anchors that fit no box of a level leave that level's
objectness trained on negatives only.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from spikedet.errors import SpikedetError
from spikedet.train.loss import bbox_ciou

BOX_GAIN, OBJ_GAIN, CLS_GAIN = 0.05, 1.0, 0.5
ANCHOR_T = 4.0
# Objectness balance per level (YOLOv5: 3 levels [4, 1, 0.4], other counts [4, 1, 0.25, ...]).
_BALANCE = {3: [4.0, 1.0, 0.4]}
_DEFAULT_BALANCE = [4.0, 1.0, 0.25, 0.06, 0.02]
# Cell offsets subtracted from g (in cells): own cell, left, top, right, bottom neighbour.
_OFFSETS = torch.tensor([[0.0, 0.0], [0.5, 0.0], [0.0, 0.5], [-0.5, 0.0], [0.0, -0.5]])


def decode_cells(raw: Tensor, cells: Tensor, anchors_grid: Tensor) -> Tensor:
    """Box logits ``[..., 4]`` (tx, ty, tw, th) at integer ``cells`` ``[..., 2]`` (x, y) with
    anchors ``[..., 2]`` (grid units) -> (cx, cy, w, h) in grid units:
    centre = 2σ(t_xy) − ½ + cell, size = (2σ(t_wh))²·anchor."""
    prob = raw.sigmoid()
    centre = 2.0 * prob[..., :2] - 0.5 + cells
    size = (2.0 * prob[..., 2:4]) ** 2 * anchors_grid
    return torch.cat((centre, size), -1)


def xywh_to_xyxy(box: Tensor) -> Tensor:
    """(cx, cy, w, h) -> (x1, y1, x2, y2)."""
    centre, size = box[..., :2], box[..., 2:4]
    return torch.cat((centre - size / 2, centre + size / 2), -1)


def level_view(output: Tensor, na: int) -> Tensor:
    """``[B, na·no, H, W]`` -> ``[B, na, H, W, no]`` (anchor-major channels)."""
    b, c, h, w = output.shape
    return output.view(b, na, c // na, h, w).permute(0, 1, 3, 4, 2)


def decode_outputs(
    outputs: list[Tensor], strides: list[int], anchors: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """Torch twin of ``spikedet.anchor_decode.decode_anchor_maps`` built on ``decode_cells``:
    boxes ``[B, N, 4]`` xyxy pixels, objectness ``[B, N]``, class probabilities ``[B, N, nc]``
    (anchors ``[nl, na, 2]`` pixels; same level/anchor/row/column order)."""
    boxes, objs, probs = [], [], []
    for out, stride, level_anchors in zip(outputs, strides, anchors):
        p = level_view(out, len(level_anchors))
        b, na, h, w, no = p.shape
        ys, xs = torch.meshgrid(
            torch.arange(h, device=p.device), torch.arange(w, device=p.device), indexing="ij"
        )
        cells = torch.stack((xs, ys), -1).to(p.dtype)
        anchors_grid = (level_anchors.to(p) / stride)[None, :, None, None, :]
        box = xywh_to_xyxy(decode_cells(p[..., :4], cells, anchors_grid)) * stride
        boxes.append(box.reshape(b, -1, 4))
        objs.append(p[..., 4].sigmoid().reshape(b, -1))
        probs.append(p[..., 5:].sigmoid().reshape(b, -1, no - 5))
    return torch.cat(boxes, 1), torch.cat(objs, 1), torch.cat(probs, 1)


def match_targets(
    targets_grid: Tensor, anchors_grid: Tensor, grid_wh: tuple[int, int], anchor_t: float = ANCHOR_T
) -> tuple[Tensor, Tensor, Tensor]:
    """Anchor matching and neighbour-cell assignment on one level.

    targets_grid ``[M, 6]`` (batch_idx, cls, cx, cy, w, h) in grid units; anchors ``[na, 2]``
    grid units; grid_wh = (W, H). Returns per positive: target row ``[P]``, anchor index ``[P]``
    and cell (x, y) ``[P, 2]`` (long); order: offset (own cell first), then anchor, then target.
    """
    device = targets_grid.device
    ratio = targets_grid[None, :, 4:6] / anchors_grid[:, None, :]  # [na, M, 2]
    matched = torch.maximum(ratio, 1.0 / ratio).amax(-1) < anchor_t
    anchor_idx, target_idx = matched.nonzero(as_tuple=True)
    centre = targets_grid[target_idx, 2:4]
    inverse = torch.tensor(grid_wh, dtype=centre.dtype, device=device) - centre
    low = (centre % 1.0 < 0.5) & (centre > 1.0)  # left (x) / top (y) neighbour
    high = (inverse % 1.0 < 0.5) & (inverse > 1.0)  # right / bottom neighbour
    use = torch.stack((torch.ones_like(low[:, 0]), low[:, 0], low[:, 1], high[:, 0], high[:, 1]))
    offsets = _OFFSETS.to(device=device, dtype=centre.dtype)
    cells = (centre[None] - offsets[:, None]).floor().long()  # [5, P0, 2]
    limit = torch.tensor([grid_wh[0] - 1, grid_wh[1] - 1], device=device)
    cells = torch.minimum(cells[use].clamp(min=0), limit)
    # [5, P0] masks flatten offset-major, the same order as cells[use] above.
    rows = target_idx.expand(5, -1)[use]
    anchors_out = anchor_idx.expand(5, -1)[use]
    return rows, anchors_out, cells


def matched_share(wh: np.ndarray, anchors: np.ndarray, anchor_t: float = ANCHOR_T) -> float:
    """Share of boxes ``wh [N, 2]`` (pixels) that at least one of ``anchors [..., 2]`` (pixels)
    matches under the ``match_targets`` rule max(r, 1/r) < anchor_t on both sides, r = wh / A."""
    wh = np.asarray(wh, dtype=np.float64).reshape(-1, 2)
    anchors = np.asarray(anchors, dtype=np.float64).reshape(-1, 2)
    if not (np.all(np.isfinite(wh)) and np.all(wh > 0) and np.all(anchors > 0)):
        raise SpikedetError("box and anchor sizes must be finite and positive", "matched_share")
    if len(wh) == 0:
        return 0.0
    ratio = wh[:, None, :] / anchors[None]
    return float((np.maximum(ratio, 1.0 / ratio).max(-1) < anchor_t).any(1).mean())


def fit_anchors(
    wh: np.ndarray,
    n_levels: int = 2,
    na: int = 3,
    weights: np.ndarray | None = None,
    iters: int = 200,
) -> np.ndarray:
    """Anchors for box sizes ``wh [N, 2]`` (pixels at the model's imgsz): k-means, k = levels·na.

    Clustering runs on log sizes with the distance max(|log(w/A_w)|, |log(h/A_h)|), which is
    log max(r, 1/r), the quantity ``match_targets`` compares with anchor_t, so a cluster is a set
    of boxes that fit one anchor best. Each anchor moves to the ``weights``-weighted mean log
    size (geometric mean) of its boxes; the start is the boxes at the k area quantiles, so the
    result is deterministic. Returns ``[n_levels, na, 2]`` sorted by area, the smallest anchors
    at the finest stride (as YOLOv5's autoanchor orders them).
    """
    wh = np.asarray(wh, dtype=np.float64)
    k = int(n_levels) * int(na)
    if wh.ndim != 2 or wh.shape[1] != 2 or not np.all(np.isfinite(wh)) or np.any(wh <= 0):
        raise SpikedetError(
            f"box sizes must be a finite positive [N, 2] array, got {wh.shape}", "fit_anchors"
        )
    if k < 1 or len(wh) < k:
        raise SpikedetError(f"{len(wh)} boxes cannot give {k} anchors", "fit_anchors")
    w = np.ones(len(wh)) if weights is None else np.asarray(weights, dtype=np.float64)
    if w.shape != (len(wh),) or not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
        raise SpikedetError("weights must be N finite values >= 0, not all 0", "fit_anchors")
    log_wh = np.log(wh)
    by_area = np.argsort(log_wh.sum(1), kind="stable")
    centres = log_wh[by_area[((np.arange(k) + 0.5) / k * len(wh)).astype(np.int64)]]
    for _ in range(iters):
        nearest = np.abs(log_wh[:, None] - centres[None]).max(-1).argmin(1)
        moved = centres.copy()
        for j in range(k):
            member_w = np.where(nearest == j, w, 0.0)
            if member_w.sum() > 0:  # an empty cluster keeps its anchor
                moved[j] = member_w @ log_wh / member_w.sum()
        if np.array_equal(moved, centres):
            break
        centres = moved
    anchors = np.exp(centres)
    anchors = anchors[np.argsort(anchors.prod(1), kind="stable")]
    return anchors.reshape(int(n_levels), int(na), 2)


class AnchorLoss:
    """YOLOv5 loss for an ``EMSYOLO`` (reads strides, nc, detect.anchors in pixels and imgsz)."""

    def __init__(self, model, anchor_t: float = ANCHOR_T):
        self.nc: int = int(model.nc)
        self.strides: list[int] = [int(s) for s in model.strides]
        anchors = model.detect.anchors.detach().float().cpu()
        if anchors.dim() != 3 or anchors.shape[0] != len(self.strides) or anchors.shape[2] != 2:
            raise SpikedetError(
                f"anchors {list(anchors.shape)} do not match {len(self.strides)} strides", "loss"
            )
        self.anchors_px = anchors
        self.na = anchors.shape[1]
        self.anchor_t = float(anchor_t)
        nl = len(self.strides)
        self.balance = _BALANCE.get(nl, _DEFAULT_BALANCE)[:nl]
        self.box_gain = BOX_GAIN * 3.0 / nl
        self.obj_gain = OBJ_GAIN * (float(model.imgsz) / 640.0) ** 2 * 3.0 / nl
        self.cls_gain = CLS_GAIN * self.nc / 80.0 * 3.0 / nl

    def _check(self, outputs: list[Tensor], targets: Tensor) -> None:
        if targets.dim() != 2 or targets.shape[1] != 6:
            raise SpikedetError(f"targets must be [M, 6], got {list(targets.shape)}", "loss")
        if len(outputs) != len(self.strides):
            raise SpikedetError(f"{len(outputs)} outputs for {len(self.strides)} strides", "loss")
        for out, stride in zip(outputs, self.strides):
            if out.dim() != 4 or out.shape[1] != self.na * (self.nc + 5):
                raise SpikedetError(
                    f"output {list(out.shape)} is not [B, {self.na * (self.nc + 5)}, H, W]",
                    f"loss, stride {stride}",
                )
        batch = outputs[0].shape[0]
        if len(targets) and (
            int(targets[:, 0].max()) >= batch
            or int(targets[:, 0].min()) < 0
            or int(targets[:, 1].max()) >= self.nc
            or int(targets[:, 1].min()) < 0
        ):
            raise SpikedetError("target batch index or class out of range", "loss")

    def __call__(self, outputs: list[Tensor], targets: Tensor) -> tuple[Tensor, dict[str, float]]:
        """outputs: per stride ``[B, na·(nc+5), H, W]``; targets ``[M, 6]`` (batch_idx, cls,
        x1, y1, x2, y2) in input pixels. Returns (loss, {box, obj, cls})."""
        self._check(outputs, targets)
        targets = targets.to(device=outputs[0].device, dtype=outputs[0].dtype)
        xyxy = targets[:, 2:6]
        centre_wh_px = torch.cat(((xyxy[:, :2] + xyxy[:, 2:]) / 2, xyxy[:, 2:] - xyxy[:, :2]), 1)
        loss_box = loss_obj = loss_cls = outputs[0].new_zeros(())
        for level, (out, stride) in enumerate(zip(outputs, self.strides)):
            p = level_view(out, self.na)  # [B, na, H, W, no]
            b, na, h, w, _ = p.shape
            anchors_grid = self.anchors_px[level].to(out) / stride
            targets_grid = torch.cat((targets[:, :2], centre_wh_px / stride), 1)
            rows, anchor_idx, cells = match_targets(
                targets_grid, anchors_grid, (w, h), self.anchor_t
            )
            obj_target = torch.zeros(b * na * h * w, dtype=out.dtype, device=out.device)
            if len(rows):
                img = targets_grid[rows, 0].long()
                gx, gy = cells[:, 0], cells[:, 1]
                picked = p[img, anchor_idx, gy, gx]  # [P, no]
                pred_box = decode_cells(
                    picked[:, :4], cells.to(out.dtype), anchors_grid[anchor_idx]
                )
                ciou = bbox_ciou(xywh_to_xyxy(pred_box), xywh_to_xyxy(targets_grid[rows, 2:6]))
                loss_box = loss_box + (1.0 - ciou).mean()
                flat = ((img * na + anchor_idx) * h + gy) * w + gx
                obj_target.scatter_reduce_(0, flat, ciou.detach().clamp(min=0), "amax")
                if self.nc > 1:
                    onehot = F.one_hot(targets_grid[rows, 1].long(), self.nc).to(out.dtype)
                    loss_cls = loss_cls + F.binary_cross_entropy_with_logits(picked[:, 5:], onehot)
            obj_bce = F.binary_cross_entropy_with_logits(p[..., 4].reshape(-1), obj_target)
            loss_obj = loss_obj + self.balance[level] * obj_bce
        loss_box, loss_obj, loss_cls = (
            self.box_gain * loss_box,
            self.obj_gain * loss_obj,
            self.cls_gain * loss_cls,
        )
        parts = {
            k: float(v.detach())
            for k, v in (("box", loss_box), ("obj", loss_obj), ("cls", loss_cls))
        }
        return loss_box + loss_obj + loss_cls, parts
