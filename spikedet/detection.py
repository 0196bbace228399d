"""Decoding the DFL detection head and non-maximum suppression, in numpy only.

Used by training (validation) and by the deploy side, which has no torch; works with numpy 1.26
and 2.x. Head format (docs/semantics.md §2.4, YOLOv8-style): per stride s a box map
[B, 4·R, H, W] whose channel ``side·R + bin`` holds the logit of distance ``bin`` (in cells) for
side ∈ (left, top, right, bottom), and a class map [B, nc, H, W] of logits.

    d_side = s · Σ_k k · softmax_k(logits_side)          (expected distance, pixels)
    box    = (cx − d_l, cy − d_t, cx + d_r, cy + d_b)     with (cx, cy) = ((x + ½)·s, (y + ½)·s)
    p_c    = sigmoid(class logit c)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from spikedet.errors import SpikedetError

MAX_NMS_CANDIDATES = 3000  # highest-scoring candidates kept before NMS (as in YOLOv8 val)


def make_anchors(
    shapes: Sequence[tuple[int, int]], strides: Sequence[int]
) -> tuple[np.ndarray, np.ndarray]:
    """Cell centres [A, 2] (x, y) in pixels and the stride of each anchor [A].

    Order: stride by stride, row-major within a map (y outer, x inner), i.e. the order of
    ``map.reshape(..., H·W)`` concatenated over strides.
    """
    if len(shapes) != len(strides):
        raise SpikedetError(f"{len(shapes)} map shapes but {len(strides)} strides", "anchors")
    centres, per_anchor = [], []
    for (h, w), s in zip(shapes, strides):
        ys, xs = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
        xy = np.stack([xs.ravel(), ys.ravel()], axis=1).astype(np.float32)
        centres.append((xy + 0.5) * np.float32(s))
        per_anchor.append(np.full(h * w, s, dtype=np.float32))
    if not centres:
        return np.zeros((0, 2), np.float32), np.zeros(0, np.float32)
    return np.concatenate(centres), np.concatenate(per_anchor)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    """1 / (1 + e^−x) without overflow: exp(−log(1 + e^−x))."""
    return np.exp(-np.logaddexp(0.0, -x))


def decode_dfl(
    box_maps: Sequence[np.ndarray],
    cls_maps: Sequence[np.ndarray],
    strides: Sequence[int],
    reg_max: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Head maps -> boxes [B, A, 4] (x1, y1, x2, y2 pixels) and class probabilities [B, A, nc].

    Softmax over the R bins is shifted by the max bin (stable); computed in float64, returned as
    float32.
    """
    if not (len(box_maps) == len(cls_maps) == len(strides)) or not strides:
        raise SpikedetError(
            f"need one box map, class map and stride per level, got {len(box_maps)}, "
            f"{len(cls_maps)}, {len(strides)}",
            "head",
        )
    boxes, probs, shapes = [], [], []
    nc = None
    batch = None
    for level, (box_map, cls_map) in enumerate(zip(box_maps, cls_maps)):
        box_map = np.asarray(box_map, dtype=np.float64)
        cls_map = np.asarray(cls_map, dtype=np.float64)
        where = f"head level {level} (stride {strides[level]})"
        if box_map.ndim != 4 or box_map.shape[1] != 4 * reg_max:
            raise SpikedetError(
                f"box map must be [B, 4*reg_max={4 * reg_max}, H, W], got {box_map.shape}", where
            )
        b, _, h, w = box_map.shape
        if cls_map.ndim != 4 or cls_map.shape[0] != b or cls_map.shape[2:] != (h, w):
            raise SpikedetError(
                f"class map {cls_map.shape} does not match box map {box_map.shape}", where
            )
        if (nc is not None and cls_map.shape[1] != nc) or (batch is not None and b != batch):
            raise SpikedetError("class count or batch size differs between levels", where)
        nc, batch = cls_map.shape[1], b
        logits = box_map.reshape(b, 4, reg_max, h * w)
        logits = logits - logits.max(axis=2, keepdims=True)
        weights = np.exp(logits)
        weights /= weights.sum(axis=2, keepdims=True)
        dist = np.einsum("bsrn,r->bns", weights, np.arange(reg_max, dtype=np.float64))
        boxes.append(dist * float(strides[level]))  # [B, HW, 4] l, t, r, b in pixels
        probs.append(_sigmoid(cls_map.reshape(b, cls_map.shape[1], h * w)).transpose(0, 2, 1))
        shapes.append((h, w))
    centres, _ = make_anchors(shapes, strides)
    centres = centres.astype(np.float64)
    dist = np.concatenate(boxes, axis=1)
    xyxy = np.concatenate([centres - dist[..., :2], centres + dist[..., 2:]], axis=-1)
    return xyxy.astype(np.float32), np.concatenate(probs, axis=1).astype(np.float32)


def box_iou_one_to_many(box: np.ndarray, others: np.ndarray) -> np.ndarray:
    """IoU of one xyxy box with each row of ``others`` [N, 4]; 0 where the union is empty."""
    iw = np.minimum(box[2], others[:, 2]) - np.maximum(box[0], others[:, 0])
    ih = np.minimum(box[3], others[:, 3]) - np.maximum(box[1], others[:, 1])
    inter = np.clip(iw, 0, None) * np.clip(ih, 0, None)
    area = max(box[2] - box[0], 0.0) * max(box[3] - box[1], 0.0)
    areas = np.clip(others[:, 2] - others[:, 0], 0, None) * np.clip(
        others[:, 3] - others[:, 1], 0, None
    )
    union = area + areas - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def nms(
    boxes: np.ndarray,
    scores: np.ndarray,
    conf_thres: float = 0.001,
    iou_thres: float = 0.7,
    max_det: int = 300,
    multi_label: bool = True,
    max_candidates: int = MAX_NMS_CANDIDATES,
) -> np.ndarray:
    """Class-aware greedy NMS -> [K, 6] (x1, y1, x2, y2, score, cls) sorted by score, descending.

    Candidates: every (anchor, class) with score > conf_thres (``multi_label``), else each
    anchor's best class. The ``max_candidates`` best are kept (ties: lower anchor, then class
    first). Greedy: take the best remaining, drop same-class boxes with IoU > iou_thres, repeat;
    classes are separated by offsetting each class's boxes beyond the others' extent.
    """
    boxes = np.asarray(boxes, dtype=np.float64)
    scores = np.asarray(scores, dtype=np.float64)
    if boxes.ndim != 2 or boxes.shape[1] != 4 or scores.ndim != 2 or len(scores) != len(boxes):
        raise SpikedetError(
            f"boxes {boxes.shape} / scores {scores.shape} must be [A,4] / [A,nc]", "nms"
        )
    if multi_label:
        anchor, cls = np.nonzero(scores > conf_thres)  # row-major: anchor, then class
        score = scores[anchor, cls]
    else:
        cls = scores.argmax(axis=1) if scores.shape[1] else np.zeros(0, np.int64)
        anchor = np.arange(len(boxes))
        score = scores[anchor, cls] if scores.shape[1] else np.zeros(0)
        keep = score > conf_thres
        anchor, cls, score = anchor[keep], cls[keep], score[keep]
    order = np.argsort(-score, kind="stable")[:max_candidates]
    anchor, cls, score = anchor[order], cls[order], score[order]
    cand = boxes[anchor]
    # Boxes of class c move by c·offset on both axes, so boxes of different classes never overlap.
    offset = 2.0 * float(np.abs(cand).max()) + 1.0 if len(cand) else 0.0
    shifted = cand + (cls * offset)[:, None]

    kept: list[int] = []
    remaining = np.arange(len(cand))
    while len(remaining) and len(kept) < max_det:
        best, rest = remaining[0], remaining[1:]
        kept.append(int(best))
        remaining = rest[box_iou_one_to_many(shifted[best], shifted[rest]) <= iou_thres]
    idx = np.asarray(kept, dtype=np.int64)
    out = np.concatenate([cand[idx], score[idx, None], cls[idx, None].astype(np.float64)], axis=1)
    return out.astype(np.float32).reshape(-1, 6)


def postprocess(
    box_maps: Sequence[np.ndarray],
    cls_maps: Sequence[np.ndarray],
    strides: Sequence[int],
    reg_max: int,
    conf_thres: float = 0.001,
    iou_thres: float = 0.7,
    max_det: int = 300,
) -> list[np.ndarray]:
    """Decode the head maps and run multi-label NMS per image -> one [K, 6] array per image."""
    boxes, probs = decode_dfl(box_maps, cls_maps, strides, reg_max)
    return [
        nms(boxes[b], probs[b], conf_thres=conf_thres, iou_thres=iou_thres, max_det=max_det)
        for b in range(len(boxes))
    ]
