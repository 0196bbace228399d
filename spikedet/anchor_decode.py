"""Decoding the anchor-based (EMS-YOLO / YOLOv5-style) detection head, in numpy only.

Used by training (validation) and by the deploy side, which has no torch; works with numpy 1.26
and 2.x. Head format (BICLab/EMS-YOLO @ fbfc2ca, ``models/yolo.py`` ``Detect``): per level l with stride s_l and na anchors
(w, h in input pixels) a map [B, na·(nc+5), H, W]; channel ``a·(nc+5) + k`` holds, for anchor a,
k = 0..3 the box logits (tx, ty, tw, th), k = 4 the objectness logit, k = 5.. the class logits.
With σ the logistic function and (x, y) the integer cell index:

    centre = (2σ(tx) − ½ + x, 2σ(ty) − ½ + y) · s_l          (a cell reaches ½ cell beyond itself)
    size   = ((2σ(tw))², (2σ(th))²) · anchor_a               (0 .. 4× the anchor)
    obj    = σ(to),  p_c = σ(t_c),  score_c = obj · p_c

Boxes are flattened level by level, then anchor, row (y), column (x): the order of
``map.reshape(B, na, nc+5, H, W).transpose(0, 1, 3, 4, 2)`` concatenated over levels.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from spikedet.detection import nms
from spikedet.errors import SpikedetError


def _sigmoid(x: np.ndarray) -> np.ndarray:
    """1 / (1 + e^−x) without overflow: exp(−log(1 + e^−x))."""
    return np.exp(-np.logaddexp(0.0, -x))


def _checked_anchors(maps: Sequence[np.ndarray], strides: Sequence[int], anchors) -> np.ndarray:
    anchors = np.asarray(anchors, dtype=np.float64)
    if anchors.ndim != 3 or anchors.shape[2] != 2 or anchors.shape[1] < 1:
        raise SpikedetError(f"anchors must be [levels, na, 2] pixels, got {anchors.shape}", "head")
    if not (len(maps) == len(strides) == len(anchors)) or not strides:
        raise SpikedetError(
            f"need one map, stride and anchor set per level, got {len(maps)}, {len(strides)}, "
            f"{len(anchors)}",
            "head",
        )
    if not np.all(anchors > 0):
        raise SpikedetError("anchor sizes must be positive", "head")
    return anchors


def decode_anchor_maps(
    maps: Sequence[np.ndarray], strides: Sequence[int], anchors: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Head maps -> boxes [B, N, 4] (x1, y1, x2, y2 pixels), objectness [B, N] and class
    probabilities [B, N, nc] (N = Σ_l na·H_l·W_l); computed in float64, returned as float32.

    ``anchors`` is [levels, na, 2] (w, h) in input pixels (the model's ``detect.anchors``).
    """
    anchors = _checked_anchors(maps, strides, anchors)
    na = anchors.shape[1]
    boxes, objs, probs = [], [], []
    nc = batch = None
    for level, (head_map, stride) in enumerate(zip(maps, strides)):
        head_map = np.asarray(head_map, dtype=np.float64)
        where = f"head level {level} (stride {stride})"
        if head_map.ndim != 4 or head_map.shape[1] % na or head_map.shape[1] // na < 6:
            raise SpikedetError(
                f"map must be [B, na*(nc+5), H, W] with na={na}, nc>=1, got {head_map.shape}",
                where,
            )
        b, channels, h, w = head_map.shape
        no = channels // na
        if (nc is not None and no - 5 != nc) or (batch is not None and b != batch):
            raise SpikedetError("class count or batch size differs between levels", where)
        nc, batch = no - 5, b
        prob = _sigmoid(head_map.reshape(b, na, no, h, w).transpose(0, 1, 3, 4, 2))
        ys, xs = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
        cell = np.stack([xs, ys], axis=-1).astype(np.float64)  # [H, W, 2] (x, y)
        centre = (2.0 * prob[..., 0:2] - 0.5 + cell) * float(stride)
        size = (2.0 * prob[..., 2:4]) ** 2 * anchors[level][None, :, None, None, :]
        xyxy = np.concatenate([centre - size / 2, centre + size / 2], axis=-1)
        boxes.append(xyxy.reshape(b, -1, 4))
        objs.append(prob[..., 4].reshape(b, -1))
        probs.append(prob[..., 5:].reshape(b, -1, nc))
    return (
        np.concatenate(boxes, axis=1).astype(np.float32),
        np.concatenate(objs, axis=1).astype(np.float32),
        np.concatenate(probs, axis=1).astype(np.float32),
    )


def postprocess_anchor(
    maps: Sequence[np.ndarray],
    strides: Sequence[int],
    anchors: np.ndarray,
    conf_thres: float = 0.001,
    iou_thres: float = 0.6,
    max_det: int = 300,
) -> list[np.ndarray]:
    """Decode and run multi-label class-aware NMS per image -> one [K, 6] array per image
    (x1, y1, x2, y2, score, cls), score = obj · p_c (obj alone when nc = 1: a one-class model
    trains no class logit, as YOLOv5)."""
    boxes, obj, cls_prob = decode_anchor_maps(maps, strides, anchors)
    scores = obj[..., None] if cls_prob.shape[-1] == 1 else obj[..., None] * cls_prob
    return [
        nms(boxes[b], scores[b], conf_thres=conf_thres, iou_thres=iou_thres, max_det=max_det)
        for b in range(len(boxes))
    ]
