"""Training loop for the SpikeYOLO detectors: seeded, deterministic on CPU, atomic outputs.

One epoch: ``make_loader`` gives a (seed, epoch)-determined order and augmentation; per batch
the learning rate follows a linear warm-up then a cosine from ``lr`` to ``lr*lrf``; gradients
are clipped to ``grad_clip`` (L2 norm); a YOLO-style weight EMA with ramped decay
``ema_decay*(1 - exp(-updates/ema_tau))`` follows the model and is what is validated and saved
as best. Outputs in ``cfg.out``: ``last.pt`` (every epoch), ``best.pt`` (best val mAP@50:95) and
``results.csv`` (epoch, box, cls, dfl, lr, map50, map), all written atomically.
"""

from __future__ import annotations

import copy
import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from spikedet.errors import SpikedetError
from spikedet.fileio import write_text
from spikedet.train.checkpoint import save_checkpoint
from spikedet.train.loss import DetectionLoss
from spikedet.train.models.registry import build_model
from spikedet.train.models.spikeyolo import SpikeYOLO

CSV_COLUMNS = ("epoch", "box", "cls", "dfl", "lr", "map50", "map")
SGD_MOMENTUM = 0.937
ADAM_BETAS = (0.9, 0.999)


@dataclass
class TrainConfig:
    model: str = "spikeyolo-pico"
    data: str = ""  # COCO root: train/, val/, annotations/instances_{train,val}.json
    imgsz: int = 64
    epochs: int = 30
    batch: int = 32
    optimizer: str = "adamw"  # "adamw" or "sgd" (momentum 0.937, Nesterov)
    lr: float = 4e-3
    weight_decay: float = 0.05  # decoupled (AdamW); conv weights only, not BN/biases
    warmup_epochs: float = 1.0
    lrf: float = 0.05  # the cosine ends at lr*lrf
    ema_decay: float = 0.995
    ema_tau: float = 100.0  # EMA ramp (in updates); YOLO uses 2000 for ~100k-update runs
    grad_clip: float = 10.0
    seed: int = 0
    out: str = "runs/train"
    max_train_images: int | None = None
    val_every: int = 1
    conf_thres: float = 0.001
    iou_thres: float = 0.7
    T: int | None = None  # None: the model config's T
    augment: bool = True
    threads: int = 1  # torch intra-op threads, capped at 2 (1 measured 6-8x faster here: tiny ops)


def demo_config(fast: bool, data: str, out: str) -> TrainConfig:
    """Training settings of ``spikedet demo`` (FAST or FULL) on synthetic COCO at 64 px."""
    return DEMO_FAST(data, out) if fast else DEMO_FULL(data, out)


# Measured on the shared 2-core CPU, 1 torch thread, synthetic COCO seed 0 (other engineers'
# jobs were running too, so times vary by up to ~2x):
# - FAST, 400 train / 60 val: val mAP@50 0.401, mAP@50:95 0.238-0.246, 26 s of training.
# - FULL, 1500 train / 150 val: val mAP@50 0.820, mAP@50:95 0.585, 154 s of training.
#   (3000 train images x 25 epochs: 0.868 / 0.621 in 210 s; 1500 x 50 epochs: 0.847 / 0.595.)
# Short runs want a short EMA memory (ema_decay 0.99-0.995) and AdamW; SGD (lr 0.1-0.3) was
# 0.08 mAP@50 behind AdamW on the FAST schedule.


def DEMO_FAST(data: str, out: str) -> TrainConfig:
    """~500 AdamW steps on 400 images: shows clear learning in well under a minute."""
    return TrainConfig(
        data=data, out=out, epochs=20, batch=16, lr=6e-3, weight_decay=0.05,
        warmup_epochs=1.0, lrf=0.05, ema_decay=0.99, ema_tau=50.0, max_train_images=400,
        val_every=5,
    )  # fmt: skip


def DEMO_FULL(data: str, out: str) -> TrainConfig:
    """~1900 AdamW steps on 1500 images: val mAP@50 > 0.8 in about 2.5-5 minutes."""
    return TrainConfig(
        data=data, out=out, epochs=40, batch=32, lr=4e-3, weight_decay=0.05,
        warmup_epochs=1.0, lrf=0.05, ema_decay=0.995, ema_tau=100.0, max_train_images=1500,
        val_every=5,
    )  # fmt: skip


class ModelEMA:
    """Exponential moving average of a model's floating-point state (weights and BN statistics).

    v <- d*v + (1-d)*w with d = decay*(1 - exp(-updates/tau)): early updates follow the model
    closely (d ~ 0), later ones average over ~1/(1-decay) steps.
    """

    def __init__(self, model: nn.Module, decay: float, tau: float):
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.decay, self.tau, self.updates = float(decay), float(tau), 0

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        d = self.decay * (1.0 - math.exp(-self.updates / self.tau))
        current = model.state_dict()
        for name, value in self.module.state_dict().items():
            if value.dtype.is_floating_point:
                value.mul_(d).add_(current[name].detach(), alpha=1.0 - d)
            else:
                value.copy_(current[name])


class _FirstImages:
    """The first ``n`` items of a dataset (keeps ``set_epoch`` and the class names)."""

    def __init__(self, dataset: Any, n: int):
        self.dataset, self.n = dataset, min(int(n), len(dataset))
        self.names = dataset.names

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> Any:
        if not 0 <= i < self.n:
            raise IndexError(i)
        return self.dataset[i]

    def set_epoch(self, epoch: int) -> None:
        self.dataset.set_epoch(epoch)


def lr_at(step: int, total_steps: int, warmup_steps: int, lr: float, lrf: float) -> float:
    """Linear warm-up to ``lr`` over ``warmup_steps``, then cosine from lr to lr*lrf."""
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    span = max(total_steps - warmup_steps - 1, 1)
    progress = min((step - warmup_steps) / span, 1.0)
    return lr * (lrf + (1.0 - lrf) * 0.5 * (1.0 + math.cos(math.pi * progress)))


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """Weight decay only on conv weights (ndim > 1); BN scales/shifts and biases are not decayed."""
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim <= 1]
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=SGD_MOMENTUM, nesterov=True)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=ADAM_BETAS)


def _check_config(cfg: TrainConfig) -> None:
    problems = [
        (
            cfg.optimizer in ("adamw", "sgd"),
            f"optimizer must be adamw or sgd, got {cfg.optimizer!r}",
        ),
        (
            cfg.epochs >= 1 and cfg.batch >= 1 and cfg.val_every >= 1,
            "epochs, batch, val_every >= 1",
        ),
        (cfg.lr > 0 and 0 < cfg.lrf <= 1 and cfg.warmup_epochs >= 0, "lr > 0, 0 < lrf <= 1"),
        (0 <= cfg.ema_decay < 1 and cfg.ema_tau > 0, "0 <= ema_decay < 1 and ema_tau > 0"),
        (cfg.grad_clip > 0 and cfg.weight_decay >= 0, "grad_clip > 0 and weight_decay >= 0"),
        (cfg.max_train_images is None or cfg.max_train_images >= 1, "max_train_images >= 1"),
        (bool(cfg.data), "no data root given"),
    ]
    for ok, msg in problems:
        if not ok:
            raise SpikedetError(msg, "train config")


def _rng_state() -> dict[str, Any]:
    """RNG state for resuming: the global torch generator (model init; nothing else in the loop
    draws from global RNGs: the loader order and augmentation are functions of (seed, epoch))."""
    return {"torch": torch.get_rng_state()}


def evaluate_model(
    model: SpikeYOLO,
    dataset: Any,
    batch: int = 32,
    conf_thres: float = 0.001,
    iou_thres: float = 0.7,
) -> tuple[dict[str, float], list[np.ndarray]]:
    """COCO metrics of ``model`` on ``dataset`` and its detections [K, 6] per image (in order)."""
    from spikedet.detection import postprocess
    from spikedet.train.data.loader import make_loader
    from spikedet.train.evaluate import evaluate

    was_training = model.training
    model.eval()
    dets: list[np.ndarray] = []
    try:
        with torch.no_grad():
            for images, _, _ in make_loader(dataset, batch, shuffle=False, seed=0):
                outputs = model(images)
                dets += postprocess(
                    [b.numpy() for b, _ in outputs],
                    [c.numpy() for _, c in outputs],
                    model.strides,
                    model.reg_max,
                    conf_thres=conf_thres,
                    iou_thres=iou_thres,
                )
    finally:
        model.train(was_training)
    return evaluate(dataset, dets), dets


def _write_results(path: Path, history: list[dict[str, Any]]) -> None:
    def cell(v: Any) -> str:
        return "" if v is None else (f"{v:.6g}" if isinstance(v, float) else str(v))

    lines = [",".join(CSV_COLUMNS)] + [
        ",".join(cell(row.get(c)) for c in CSV_COLUMNS) for row in history
    ]
    write_text(path, "\n".join(lines) + "\n")


def train(cfg: TrainConfig, progress: bool = True) -> dict:
    """Train ``cfg.model`` on ``cfg.data``; returns best metrics, per-epoch history and paths."""
    _check_config(cfg)
    prev_deterministic = torch.are_deterministic_algorithms_enabled()
    prev_threads = torch.get_num_threads()
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(max(1, min(int(cfg.threads), 2, prev_threads)))
    try:
        return _train(cfg, progress)
    finally:
        torch.use_deterministic_algorithms(prev_deterministic)
        torch.set_num_threads(prev_threads)


def _train(cfg: TrainConfig, progress: bool) -> dict:
    from tqdm import tqdm

    from spikedet.train.data.coco import CocoDetectionSet
    from spikedet.train.data.loader import make_loader

    t0 = time.perf_counter()
    out = Path(cfg.out)
    torch.manual_seed(cfg.seed)
    train_set: Any = CocoDetectionSet.from_root(cfg.data, "train", cfg.imgsz, cfg.augment, cfg.seed)
    val_set = CocoDetectionSet.from_root(cfg.data, "val", cfg.imgsz, augment=False, seed=cfg.seed)
    if cfg.max_train_images is not None:
        train_set = _FirstImages(train_set, cfg.max_train_images)
    if len(train_set) == 0 or len(val_set) == 0:
        raise SpikedetError("empty train or val split", cfg.data)
    if val_set.names != train_set.names:
        raise SpikedetError("train and val categories differ", cfg.data)

    model = build_model(cfg.model, names=list(train_set.names), imgsz=cfg.imgsz, T=cfg.T)
    model.train()
    criterion = DetectionLoss(model)
    optimizer = make_optimizer(model, cfg)
    ema = ModelEMA(model, cfg.ema_decay, cfg.ema_tau)
    n_batches = math.ceil(len(train_set) / cfg.batch)
    total_steps = cfg.epochs * n_batches
    warmup_steps = min(round(cfg.warmup_epochs * n_batches), total_steps - 1)

    history: list[dict[str, Any]] = []
    best_fitness, best_metrics = -1.0, {"map50": 0.0, "map": 0.0}
    step = 0
    epochs_bar = tqdm(range(cfg.epochs), desc="epochs", file=sys.stderr, disable=not progress)
    for epoch in epochs_bar:
        sums = {"box": 0.0, "cls": 0.0, "dfl": 0.0}
        lr = cfg.lr
        loader = make_loader(train_set, cfg.batch, shuffle=True, seed=cfg.seed, epoch=epoch)
        batches = tqdm(
            loader,
            desc=f"epoch {epoch + 1}/{cfg.epochs}",
            total=n_batches,
            file=sys.stderr,
            leave=False,
            disable=not progress,
        )
        for images, targets, _ in batches:
            lr = lr_at(step, total_steps, warmup_steps, cfg.lr, cfg.lrf)
            for group in optimizer.param_groups:
                group["lr"] = lr
            loss, parts = criterion(model(images), targets)
            if not torch.isfinite(loss):
                raise SpikedetError(f"loss became {loss.item()} at epoch {epoch + 1}", "train")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
            ema.update(model)
            step += 1
            for k in sums:
                sums[k] += parts[k]
            batches.set_postfix(loss=f"{loss.item():.3f}")
        row: dict[str, Any] = {"epoch": epoch + 1, "lr": lr, "map50": None, "map": None}
        row.update({k: v / n_batches for k, v in sums.items()})
        is_best = False
        if (epoch + 1) % cfg.val_every == 0 or epoch + 1 == cfg.epochs:
            metrics, _ = evaluate_model(
                ema.module, val_set, cfg.batch, cfg.conf_thres, cfg.iou_thres
            )
            row["map50"], row["map"] = float(metrics["map50"]), float(metrics["map"])
            if row["map"] > best_fitness:
                best_fitness, best_metrics, is_best = row["map"], dict(row), True
        history.append(row)
        state = {
            "config": model.config,
            "model": model.state_dict(),
            "ema": ema.module.state_dict(),
            "ema_updates": ema.updates,
            "optimizer": optimizer.state_dict(),
            "epoch": epoch + 1,
            "step": step,
            "best_fitness": best_fitness,
            "metrics": {k: v for k, v in row.items() if v is not None},
            "history": history,
            "train_config": asdict(cfg),
            "rng": _rng_state(),
        }
        save_checkpoint(out / "last.pt", state)
        if is_best:
            save_checkpoint(out / "best.pt", state)
        _write_results(out / "results.csv", history)
        epochs_bar.set_postfix(map50=row["map50"], map=row["map"])
    return {
        "best_map50": float(best_metrics["map50"]),
        "best_map": float(best_metrics["map"]),
        "history": history,
        "last": str(out / "last.pt"),
        "best": str(out / "best.pt"),
        "seconds": time.perf_counter() - t0,
    }
