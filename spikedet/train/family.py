"""One dispatch point for the two detector families: loss and post-processing per head type.

- ``"dfl"``: SpikeYOLO / SpikeYOLOv8 (anchor-free YOLOv8 head, outputs per stride
  ``(box [B, 4·reg_max, H, W], cls [B, nc, H, W])``): ``DetectionLoss`` and
  ``spikedet.detection.postprocess``; validation NMS IoU 0.7 (ultralytics default).
- ``"anchor"``: EMSYOLO (YOLOv5-style anchor head, outputs per stride
  ``[B, na·(nc+5), H, W]``): ``AnchorLoss`` and ``spikedet.anchor_decode.postprocess_anchor``;
  validation NMS IoU 0.6 (YOLOv5 val, as in BICLab/EMS-YOLO @ fbfc2ca, ``val.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from torch import Tensor, nn

from spikedet.anchor_decode import postprocess_anchor
from spikedet.detection import postprocess
from spikedet.errors import SpikedetError
from spikedet.train.anchor_loss import AnchorLoss
from spikedet.train.loss import DetectionLoss
from spikedet.train.models.ems import EMSYOLO
from spikedet.train.models.spikeyolo import SpikeYOLO
from spikedet.train.models.spikeyolo_v8 import SpikeYOLOv8

# (conf_thres, iou_thres) each family's reference validation uses.
NMS_DEFAULTS: dict[str, tuple[float, float]] = {"dfl": (0.001, 0.7), "anchor": (0.001, 0.6)}


def family_of(model: nn.Module) -> str:
    """``"anchor"`` for an EMSYOLO, ``"dfl"`` for a SpikeYOLO / SpikeYOLOv8."""
    if isinstance(model, EMSYOLO):
        return "anchor"
    if isinstance(model, (SpikeYOLO, SpikeYOLOv8)):
        return "dfl"
    raise SpikedetError(
        "not a known detector (SpikeYOLO, SpikeYOLOv8 or EMSYOLO)", type(model).__name__
    )


def make_loss(model: nn.Module) -> Callable[[Any, Tensor], tuple[Tensor, dict[str, float]]]:
    """The family's loss: ``loss(outputs, targets [M, 6] pixels) -> (loss, parts)``; parts are
    {box, cls, dfl} for "dfl" and {box, obj, cls} for "anchor"."""
    if family_of(model) == "anchor":
        return AnchorLoss(model)
    return DetectionLoss(model)


def nms_defaults(model: nn.Module) -> tuple[float, float]:
    """(conf_thres, iou_thres) of the family's reference validation."""
    return NMS_DEFAULTS[family_of(model)]


def _numpy(x: Tensor) -> np.ndarray:
    return x.detach().float().cpu().numpy()


def postprocess_outputs(
    model: nn.Module, outputs: Any, conf_thres: float, iou_thres: float, max_det: int = 300
) -> list[np.ndarray]:
    """The model's raw outputs (torch) -> one [K, 6] (x1, y1, x2, y2, score, cls) array per image
    in input pixels, decoded by the family's head and class-aware multi-label NMS."""
    family = family_of(model)
    pairs = [isinstance(o, (tuple, list)) and len(o) == 2 for o in outputs]
    if not outputs or (family == "anchor" and any(pairs)) or (family == "dfl" and not all(pairs)):
        raise SpikedetError(
            "outputs must be one [B, na*(nc+5), H, W] map per stride"
            if family == "anchor"
            else "outputs must be one (box, cls) pair per stride",
            f"{model.name} outputs",
        )
    if family == "anchor":
        return postprocess_anchor(
            [_numpy(o) for o in outputs],
            model.strides,
            _numpy(model.detect.anchors),
            conf_thres=conf_thres,
            iou_thres=iou_thres,
            max_det=max_det,
        )
    return postprocess(
        [_numpy(box) for box, _ in outputs],
        [_numpy(cls) for _, cls in outputs],
        model.strides,
        model.reg_max,
        conf_thres=conf_thres,
        iou_thres=iou_thres,
        max_det=max_det,
    )
