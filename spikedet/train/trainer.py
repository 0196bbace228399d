"""Training loop for the spiking detectors: seeded, deterministic on CPU, resumable, atomic outputs.

One epoch: the loader gives a (seed, epoch)-determined order and augmentation (sharded over
ranks under DDP, see ``ddp``); per batch the learning rate follows a linear warm-up then a
cosine from ``lr`` to ``lr*lrf``; gradients are clipped to ``grad_clip`` (L2 norm); a YOLO-style
weight EMA with ramped decay ``ema_decay*(1 - exp(-updates/ema_tau))`` follows the model and is
what is validated and saved as best. On CUDA with ``amp`` the forward runs under
``torch.autocast(float16)``; the loss is computed in float32 and a ``GradScaler`` scales it.

Outputs in ``cfg.out`` (rank 0 only): ``config.yaml`` (resolved config), ``last.pt`` (every
epoch), ``best.pt`` (best val mAP@50:95), ``results.csv`` (epoch, loss parts, lr, map50, map),
TensorBoard events in ``tb/`` when ``tensorboard`` is importable, and under DDP
``ddp_check.json`` (per-rank weight hashes), all files written atomically.

Resume (``resume=True``): ``last.pt`` holds model, EMA, optimizer, GradScaler, epoch, global step,
best metric, history and RNG states; the data of an epoch depend on (seed, epoch) only, so the
continued run ends with the same weights, bit for bit, as an uninterrupted one (on CPU).
"""

from __future__ import annotations

import copy
import math
import os
import signal
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from spikedet.data.events import channels
from spikedet.errors import SpikedetError
from spikedet.fileio import write_json, write_text
from spikedet.train import ddp
from spikedet.train.checkpoint import (
    capture_rng_state,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
)
from spikedet.train.config import (
    DEMO_FAST,
    DEMO_FULL,
    TrainConfig,
    check_config,
    config_from_mapping,
    demo_config,
    save_config,
)
from spikedet.train.family import make_loss
from spikedet.train.models.registry import build_model
from spikedet.train.validation import evaluate_model, make_dataset, model_input

__all__ = ["DEMO_FAST", "DEMO_FULL", "TrainConfig", "demo_config", "evaluate_model", "train"]

CSV_COLUMNS = ("epoch", "box", "cls", "dfl", "lr", "map50", "map")  # SpikeYOLO's loss parts
SGD_MOMENTUM = 0.937
ADAM_BETAS = (0.9, 0.999)
# Fields that may differ between a run and its resumption (they do not change the weights).
RESUME_FREE_FIELDS = ("device", "workers", "out")
# Test hook: SIGKILL this process right after the given global step (simulates a crash).
KILL_AT_STEP_ENV = "SPIKEDET_TEST_KILL_AT_STEP"


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
    """The first ``n`` items of a dataset (keeps ``set_epoch``, ``names`` and ``meta``)."""

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


def _write_results(path: Path, history: list[dict[str, Any]]) -> None:
    """CSV: epoch, the loss parts (box/cls/dfl or box/obj/cls), lr, map50, map."""
    fixed = ("epoch", "lr", "map50", "map")
    parts = [k for k in history[0] if k not in fixed] if history else []
    columns = ["epoch", *parts, "lr", "map50", "map"]

    def cell(v: Any) -> str:
        return "" if v is None else (f"{v:.6g}" if isinstance(v, float) else str(v))

    lines = [",".join(columns)] + [",".join(cell(row.get(c)) for c in columns) for row in history]
    write_text(path, "\n".join(lines) + "\n")


def _tensorboard(out: Path, purge_step: int | None) -> Any:
    """A SummaryWriter on ``out/tb`` if the tensorboard package is importable, else None."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(log_dir=str(out / "tb"), purge_step=purge_step)


def _to_float(outputs: Any) -> Any:
    """Head outputs (tensors in lists/tuples) in float32: the loss never runs in float16."""
    if isinstance(outputs, torch.Tensor):
        return outputs.float()
    return type(outputs)(_to_float(o) for o in outputs)


def _device(cfg: TrainConfig, ctx: ddp.DistContext) -> torch.device:
    if cfg.device == "cuda":
        if not torch.cuda.is_available():
            raise SpikedetError("device cuda requested but CUDA is not available", "train")
        return torch.device("cuda", ctx.local_rank)
    return torch.device("cpu")


def train(cfg: TrainConfig, progress: bool = True, resume: bool = False) -> dict:
    """Train ``cfg.model`` on ``cfg.data``; returns best metrics, per-epoch history and paths.

    ``resume=True`` continues from ``cfg.out/last.pt`` (its stored config must equal ``cfg``
    apart from device and workers). Under ``torchrun`` every process calls this; see ``ddp``.
    """
    check_config(cfg)
    if cfg.device == "cuda":
        # cuBLAS needs this before its first use to run deterministically.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    prev_deterministic = torch.are_deterministic_algorithms_enabled()
    prev_threads = torch.get_num_threads()
    # CUDA lacks deterministic kernels for some ops (e.g. scatter-add): warn there, never fail.
    torch.use_deterministic_algorithms(True, warn_only=cfg.device == "cuda")
    torch.set_num_threads(max(1, min(int(cfg.threads), 2, prev_threads)))
    ctx = ddp.init_distributed(cfg.device)
    try:
        return _train(cfg, progress, resume, ctx)
    finally:
        ddp.shutdown(ctx)
        torch.use_deterministic_algorithms(prev_deterministic)
        torch.set_num_threads(prev_threads)


def _model_overrides(cfg: TrainConfig) -> dict[str, Any]:
    """Model config fields the data decide: image size, T and input channels (Gen1: the data's
    time steps and the channels of its representation, and SpikeYOLO's Gen1 neuron)."""
    if cfg.dataset != "gen1":
        return {"imgsz": cfg.imgsz, "T": cfg.T}
    in_channels = channels(cfg.representation, cfg.bins)
    out = {"imgsz": cfg.imgsz, "T": cfg.time_steps, "in_channels": in_channels}
    if cfg.model.startswith("spikeyolo"):
        # SpikeYOLO_for_Gen1 uses its own I-LIF (tau = 2 spikingjelly LIF), not the COCO one.
        out["neuron"] = "gen1"
    return out


def _check_resumable(state: dict, cfg: TrainConfig, where: str) -> None:
    stored = state.get("train_config")
    if not isinstance(stored, dict):
        raise SpikedetError("checkpoint holds no train_config to resume from", where)
    stored = config_from_mapping({**asdict(TrainConfig()), **stored}, where)
    current = asdict(cfg)
    differ = [k for k in current if k not in RESUME_FREE_FIELDS and current[k] != stored[k]]
    if differ:
        detail = ", ".join(f"{k}: {stored[k]!r} -> {current[k]!r}" for k in differ[:4])
        raise SpikedetError(f"cannot resume with a different config ({detail})", where)


def _train(cfg: TrainConfig, progress: bool, resume: bool, ctx: ddp.DistContext) -> dict:
    from tqdm import tqdm

    from spikedet.data.loader import make_loader

    t0 = time.perf_counter()
    out = Path(cfg.out)
    device = _device(cfg, ctx)
    torch.manual_seed(cfg.seed)
    args = (cfg.dataset, cfg.data)
    data_opts = dict(skip_bad=cfg.skip_bad, representation=cfg.representation, bins=cfg.bins)
    train_set = make_dataset(
        *args, "train", cfg.imgsz, cfg.augment, cfg.seed, cfg.time_steps, **data_opts
    )
    val_set = make_dataset(*args, "val", cfg.imgsz, False, cfg.seed, cfg.time_steps, **data_opts)
    if cfg.max_train_images is not None:
        train_set = _FirstImages(train_set, cfg.max_train_images)
    if len(train_set) == 0 or len(val_set) == 0:
        raise SpikedetError("empty train or val split", cfg.data)
    if val_set.names != train_set.names:
        raise SpikedetError("train and val categories differ", cfg.data)

    model = build_model(cfg.model, names=list(train_set.names), **_model_overrides(cfg))
    model.to(device).train()
    criterion = make_loss(model)
    optimizer = make_optimizer(model, cfg)
    ema = ModelEMA(model, cfg.ema_decay, cfg.ema_tau)
    use_amp = bool(cfg.amp and device.type == "cuda")
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    per_rank = math.ceil(len(train_set) / ctx.world_size)
    n_batches = math.ceil(per_rank / (cfg.batch // ctx.world_size or 1))
    total_steps = cfg.epochs * n_batches
    warmup_steps = min(round(cfg.warmup_epochs * n_batches), total_steps - 1)

    history: list[dict[str, Any]] = []
    best_fitness, best_metrics = -1.0, {"map50": 0.0, "map": 0.0}
    start_epoch, step = 0, 0
    if resume:
        state = load_checkpoint(out / "last.pt")
        _check_resumable(state, cfg, str(out / "last.pt"))
        model.load_state_dict(state["model"])
        ema.module.load_state_dict(state["ema"])
        ema.updates = int(state["ema_updates"])
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state.get("scaler") or {})
        start_epoch, step = int(state["epoch"]), int(state["step"])
        best_fitness = float(state["best_fitness"])
        best_metrics = dict(state.get("best_metrics") or best_metrics)
        history = [dict(row) for row in state["history"]]
        restore_rng_state(state["rng"])
    net = ddp.wrap_model(model, ctx, device, cfg.sync_bn)
    kill_at = int(os.environ.get(KILL_AT_STEP_ENV, "0") or 0)
    writer = None
    if ctx.is_main:
        save_config(out / "config.yaml", cfg)
        writer = _tensorboard(out, purge_step=step if resume else None)

    show = progress and ctx.is_main
    epochs_bar = tqdm(
        range(start_epoch, cfg.epochs), desc="epochs", file=sys.stderr, disable=not show,
        initial=start_epoch, total=cfg.epochs,
    )  # fmt: skip
    for epoch in epochs_bar:
        sums: dict[str, float] = {}
        lr = cfg.lr
        if ctx.enabled:
            loader = ddp.sharded_loader(train_set, cfg.batch, ctx, cfg.seed, epoch, cfg.workers)
        else:
            loader = make_loader(
                train_set, cfg.batch, shuffle=True, seed=cfg.seed, epoch=epoch,
                num_workers=cfg.workers,
            )  # fmt: skip
        batches = tqdm(
            loader, desc=f"epoch {epoch + 1}/{cfg.epochs}", total=n_batches, file=sys.stderr,
            leave=False, disable=not show,
        )  # fmt: skip
        for images, targets, _ in batches:
            lr = lr_at(step, total_steps, warmup_steps, cfg.lr, cfg.lrf)
            for group in optimizer.param_groups:
                group["lr"] = lr
            x = model_input(images, cfg.dataset, device)
            with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=use_amp):
                outputs = net(x)
            loss, parts = criterion(_to_float(outputs), targets.to(device))
            if not torch.isfinite(loss):
                raise SpikedetError(f"loss became {loss.item()} at epoch {epoch + 1}", "train")
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
            nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            ema.update(model)
            step += 1
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + float(v)
            if writer is not None:
                writer.add_scalar("train/loss", loss.item(), step)
                writer.add_scalar("train/lr", lr, step)
            batches.set_postfix(loss=f"{loss.item():.3f}")
            if step == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
        ddp.broadcast_buffers([model, ema.module], ctx)
        means = ddp.all_reduce_mean({k: v / n_batches for k, v in sums.items()}, ctx, device)
        row: dict[str, Any] = {"epoch": epoch + 1, **means, "lr": lr, "map50": None, "map": None}
        is_best = False
        validate = (epoch + 1) % cfg.val_every == 0 or epoch + 1 == cfg.epochs
        if validate and ctx.is_main:
            metrics, _ = evaluate_model(
                ema.module, val_set, max(1, cfg.batch // ctx.world_size), cfg.conf_thres,
                cfg.iou_thres, device, cfg.dataset,
            )  # fmt: skip
            row["map50"], row["map"] = float(metrics["map50"]), float(metrics["map"])
            if row["map"] > best_fitness:
                best_fitness, best_metrics, is_best = row["map"], dict(row), True
        history.append(row)
        if ctx.is_main:
            state = {
                "config": model.config,
                "model": model.state_dict(),
                "ema": ema.module.state_dict(),
                "ema_updates": ema.updates,
                "optimizer": optimizer.state_dict(),
                "scaler": scaler.state_dict(),
                "epoch": epoch + 1,
                "step": step,
                "best_fitness": best_fitness,
                "best_metrics": best_metrics,
                "metrics": {k: v for k, v in row.items() if v is not None},
                "history": history,
                "train_config": asdict(cfg),
                "rng": capture_rng_state(),
            }
            save_checkpoint(out / "last.pt", state)
            if is_best:
                save_checkpoint(out / "best.pt", state)
            _write_results(out / "results.csv", history)
            if writer is not None:
                for key, value in row.items():
                    if key != "epoch" and value is not None:
                        writer.add_scalar(f"epoch/{key}", value, epoch + 1)
                writer.flush()
        ddp.barrier(ctx)
        epochs_bar.set_postfix(map50=row["map50"], map=row["map"])
    if writer is not None:
        writer.close()
    weights_hash = ddp.state_hash(model) + ddp.state_hash(ema.module)
    hashes = ddp.gather_strings(weights_hash, ctx)
    if ctx.enabled and ctx.is_main:
        write_json(out / "ddp_check.json", {"world_size": ctx.world_size, "hashes": hashes,
                                            "identical": len(set(hashes)) == 1})  # fmt: skip
    if len(set(hashes)) != 1:
        raise SpikedetError("ranks ended with different weights", "ddp")
    return {
        "best_map50": float(best_metrics["map50"]),
        "best_map": float(best_metrics["map"]),
        "history": history,
        "last": str(out / "last.pt"),
        "best": str(out / "best.pt"),
        "seconds": time.perf_counter() - t0,
        "rank": ctx.rank,
        "world_size": ctx.world_size,
    }
