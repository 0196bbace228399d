"""Datasets and validation for training and ``spikedet eval``: COCO and Gen1, any detector family.

COCO: ``CocoDetectionSet`` batches ``[B, 3, S, S]`` (the model repeats them T times); mAP through
``evaluate.evaluate``. Gen1: ``Gen1DetectionSet`` samples ``[T, C, S, S]`` batch to
``[B, T, C, S, S]`` and are fed to the model time-first as ``[T, B, C, S, S]``; detections are
mapped back to sensor pixels per label timestamp (``collect_detections``) and scored with the
Gen1 protocol (``evaluate_gen1``). Decoding and NMS follow the model's family
(``family.postprocess_outputs``).

Bad files (``skip_bad``): ``make_dataset`` forwards it to the dataset, which leaves broken images
/ recordings out with a warning each. Callers that cannot pass it (the trainer builds its own
sets) run inside ``skipping_bad_data(skip)``, which sets the default and collects what was
skipped, for the final "skipped N bad files" line.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from spikedet.errors import SpikedetError
from spikedet.train.family import nms_defaults, postprocess_outputs


def model_input(images: Tensor, dataset_kind: str, device: torch.device) -> Tensor:
    """Loader images -> model input: Gen1 ``[B, T, C, S, S]`` becomes ``[T, B, C, S, S]``."""
    images = images.to(device, non_blocking=True)
    if dataset_kind == "gen1":
        if images.dim() != 5:
            raise SpikedetError(f"Gen1 batch must be [B,T,C,S,S], got {list(images.shape)}", "data")
        images = images.transpose(0, 1).contiguous()
    return images


# (skip_bad default, list collecting the skipped (file, reason)) of the current skipping_bad_data.
_BAD_DATA: contextvars.ContextVar[tuple[bool, list[tuple[str, str]]] | None] = (
    contextvars.ContextVar("spikedet_bad_data", default=None)
)


@contextlib.contextmanager
def skipping_bad_data(skip: bool) -> Iterator[list[tuple[str, str]]]:
    """Within the block ``make_dataset`` calls without ``skip_bad`` use ``skip``; yields the list
    that collects every (file, reason) the datasets built meanwhile left out."""
    skipped: list[tuple[str, str]] = []
    token = _BAD_DATA.set((bool(skip), skipped))
    try:
        yield skipped
    finally:
        _BAD_DATA.reset(token)


def skipped_summary(skipped: list[tuple[str, str]]) -> str:
    """``"skipped 2 bad files: a, b"`` (each file once, in the order met)."""
    files = list(dict.fromkeys(path for path, _ in skipped))
    noun = "file" if len(files) == 1 else "files"
    return f"skipped {len(files)} bad {noun}: {', '.join(files)}"


def make_dataset(
    kind: str,
    root: str,
    split: str,
    imgsz: int,
    augment: bool,
    seed: int,
    time_steps: int = 5,
    skip_bad: bool | None = None,
    representation: str = "polarity3",
    bins: int = 10,
) -> Any:
    """``CocoDetectionSet.from_root`` or ``Gen1DetectionSet`` (T = ``time_steps`` bins of the
    given ``representation``) of one split.

    ``skip_bad=None`` takes the enclosing ``skipping_bad_data`` setting (False outside one).
    """
    policy = _BAD_DATA.get()
    if skip_bad is None:
        skip_bad = policy[0] if policy else False
    if kind == "coco":
        from spikedet.data.coco import CocoDetectionSet

        dataset = CocoDetectionSet.from_root(root, split, imgsz, augment, seed, skip_bad)
    elif kind == "gen1":
        from spikedet.data.gen1_dataset import Gen1DetectionSet
        from spikedet.data.gen1_labels import CLASS_NAMES

        dataset = Gen1DetectionSet(
            root, split, T=time_steps, representation=representation, imgsz=imgsz,
            augment=augment, seed=seed, bins=bins, skip_bad=skip_bad,
        )  # fmt: skip
        dataset.names = list(CLASS_NAMES)
    else:
        raise SpikedetError(f"dataset must be coco or gen1, got {kind!r}", root)
    if policy:
        policy[1].extend(dataset.skipped)
    return dataset


def predict(
    model: nn.Module,
    dataset: Any,
    dataset_kind: str,
    batch: int,
    conf_thres: float,
    iou_thres: float,
    device: torch.device | str = "cpu",
) -> list[np.ndarray]:
    """Detections [K, 6] (letterboxed pixels) for every item of ``dataset``, in order."""
    from spikedet.data.loader import make_loader

    device = torch.device(device)
    was_training = model.training
    model.eval()
    dets: list[np.ndarray] = []
    try:
        with torch.no_grad():
            for images, _, _ in make_loader(dataset, batch, shuffle=False, seed=0):
                outputs = model(model_input(images, dataset_kind, device))
                dets += postprocess_outputs(model, outputs, conf_thres, iou_thres)
    finally:
        model.train(was_training)
    return dets


def evaluate_detections(dataset: Any, dataset_kind: str, dets: list[np.ndarray]) -> dict:
    """mAP (``map``, ``map50``, ...) of per-item detections on a COCO or Gen1 dataset."""
    if dataset_kind == "gen1":
        from spikedet.metrics.gen1_protocol import collect_detections, evaluate_gen1

        metas = [dataset.meta(i) for i in range(len(dataset))]
        return evaluate_gen1(dataset.labels, collect_detections(metas, dets))
    from spikedet.metrics.coco_map import evaluate

    return evaluate(dataset, dets)


def evaluate_model(
    model: nn.Module,
    dataset: Any,
    batch: int = 32,
    conf_thres: float = 0.001,
    iou_thres: float | None = None,
    device: torch.device | str = "cpu",
    dataset_kind: str = "coco",
) -> tuple[dict[str, float], list[np.ndarray]]:
    """Metrics of ``model`` on ``dataset`` and its detections [K, 6] per item (in order).

    ``iou_thres=None`` takes the family's reference NMS IoU (0.7 SpikeYOLO, 0.6 EMS-YOLO).
    """
    if iou_thres is None:
        iou_thres = nms_defaults(model)[1]
    dets = predict(model, dataset, dataset_kind, batch, conf_thres, iou_thres, device)
    return evaluate_detections(dataset, dataset_kind, dets), dets
