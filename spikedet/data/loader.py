"""Batching ``Sample``s for torch: a collate function and a loader whose order is seeded.

The sample order of one loader depends only on (seed, epoch): its ``torch.Generator`` is seeded
with ``seed·1000 + epoch``. Build one loader per epoch (iterating the same loader twice advances
its generator); the dataset's augmentation is tied to the same epoch via ``set_epoch``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader

from spikedet.data.coco import Sample


def collate(samples: list[Sample]) -> tuple[Tensor, Tensor, list[dict]]:
    """-> images [B, 3, S, S] float32, targets [M, 6] (batch_idx, cls, x1, y1, x2, y2), metas."""
    images = torch.from_numpy(np.stack([s.image for s in samples]).astype(np.float32, copy=False))
    rows = [
        np.concatenate(
            [
                np.full((len(s.classes), 1), b, dtype=np.float32),
                s.classes.astype(np.float32).reshape(-1, 1),
                s.boxes.astype(np.float32).reshape(-1, 4),
            ],
            axis=1,
        )
        for b, s in enumerate(samples)
    ]
    targets = np.concatenate(rows, axis=0) if rows else np.zeros((0, 6), dtype=np.float32)
    return images, torch.from_numpy(targets), [s.meta for s in samples]


def make_loader(
    dataset: Any,
    batch_size: int,
    shuffle: bool,
    seed: int,
    epoch: int = 0,
    num_workers: int = 0,
) -> DataLoader:
    """A DataLoader over ``dataset`` for one epoch; calls ``dataset.set_epoch(epoch)`` first."""
    if hasattr(dataset, "set_epoch"):
        dataset.set_epoch(epoch)
    generator = torch.Generator()
    generator.manual_seed(seed * 1000 + epoch)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        generator=generator,
        collate_fn=collate,
        num_workers=num_workers,
        drop_last=False,
    )
