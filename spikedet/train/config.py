"""Training configuration: one dataclass, validated, read from and written to YAML.

Resolution order (later wins): ``TrainConfig`` defaults <- a YAML file (a mapping of field names)
<- command-line overrides. For ``dataset: gen1`` an imgsz given nowhere defaults to 320
(SpikeYOLO's Gen1 setting, BICLab/SpikeYOLO @ 309ef5e, ``SpikeYOLO_for_Gen1``) instead of 64. The resolved config is
saved as ``RUN/config.yaml`` and stored in every checkpoint (``train_config``), which is what
``--resume`` continues from.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from spikedet.data.events import REPRESENTATIONS
from spikedet.errors import SpikedetError
from spikedet.fileio import write_text

GEN1_IMGSZ = 320
DATASETS = ("coco", "gen1")
DEVICES = ("cpu", "cuda")


@dataclass
class TrainConfig:
    model: str = "spikeyolo-pico"
    data: str = ""  # COCO root (train/, val/, annotations/) or a Gen1-layout root
    dataset: str = "coco"  # "coco" or "gen1"
    imgsz: int = 64
    time_steps: int = 5  # Gen1 only: T bins of the 250 ms window; the model's T follows it
    representation: str = "polarity3"  # Gen1 only: polarity3, counts2 or histogram (events.py)
    bins: int = 10  # Gen1 histogram only: sub-bins per time step (2 * bins input channels)
    epochs: int = 30
    batch: int = 32  # total over all processes (DDP: batch / world_size per process)
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
    iou_thres: float | None = None  # None: the family's NMS IoU (0.7 SpikeYOLO, 0.6 EMS-YOLO)
    T: int | None = None  # COCO: None = the model config's T (Gen1 uses time_steps)
    augment: bool = True
    threads: int = 1  # torch intra-op threads, capped at 2 (1 measured 6-8x faster here: tiny ops)
    device: str = "cpu"  # "cpu" or "cuda" (DDP: cuda:LOCAL_RANK)
    workers: int = 0  # DataLoader worker processes (data are a function of index: no effect)
    amp: bool = True  # mixed precision (autocast float16 + GradScaler); used on CUDA only
    sync_bn: bool = False  # DDP on CUDA: SyncBatchNorm instead of per-process statistics
    skip_bad: bool = False  # leave unreadable images / corrupt recordings out (warned) vs. fail


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


def check_config(cfg: TrainConfig) -> None:
    """Raise SpikedetError for the first field combination the trainer cannot run."""
    problems = [
        (cfg.optimizer in ("adamw", "sgd"), f"optimizer must be adamw or sgd, got {cfg.optimizer!r}"),
        (cfg.dataset in DATASETS, f"dataset must be coco or gen1, got {cfg.dataset!r}"),
        (cfg.device in DEVICES, f"device must be cpu or cuda, got {cfg.device!r}"),
        (cfg.epochs >= 1 and cfg.batch >= 1 and cfg.val_every >= 1, "epochs, batch, val_every >= 1"),
        (cfg.imgsz >= 8 and cfg.time_steps >= 1, "imgsz >= 8 and time_steps >= 1"),
        (cfg.T is None or cfg.T >= 1, "T >= 1"),
        (cfg.representation in REPRESENTATIONS, f"representation must be one of {', '.join(REPRESENTATIONS)}"),
        (cfg.dataset == "gen1" or cfg.representation == "polarity3", "representation applies to gen1 data only"),
        (cfg.bins >= 1, "bins >= 1"),
        (cfg.lr > 0 and 0 < cfg.lrf <= 1 and cfg.warmup_epochs >= 0, "lr > 0, 0 < lrf <= 1"),
        (0 <= cfg.ema_decay < 1 and cfg.ema_tau > 0, "0 <= ema_decay < 1 and ema_tau > 0"),
        (cfg.grad_clip > 0 and cfg.weight_decay >= 0, "grad_clip > 0 and weight_decay >= 0"),
        (cfg.max_train_images is None or cfg.max_train_images >= 1, "max_train_images >= 1"),
        (cfg.seed >= 0 and cfg.workers >= 0 and cfg.threads >= 1, "seed, workers >= 0, threads >= 1"),
        (bool(cfg.data), "no data root given"),
    ]  # fmt: skip
    for ok, msg in problems:
        if not ok:
            raise SpikedetError(msg, "train config")


_FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}


def _coerce(name: str, value: Any, where: str) -> Any:
    """Check a YAML/CLI value against the field's declared type (ints are accepted as floats)."""
    kind = _FIELDS[name].type.replace(" ", "")
    optional = kind.endswith("|None")
    base = kind.removesuffix("|None")
    if value is None:
        if optional:
            return None
        raise SpikedetError(f"field '{name}' must not be null", where)
    ok = {
        "int": isinstance(value, int) and not isinstance(value, bool),
        "float": isinstance(value, int | float) and not isinstance(value, bool),
        "bool": isinstance(value, bool),
        "str": isinstance(value, str),
    }[base]
    if not ok:
        raise SpikedetError(f"field '{name}' must be {base}, got {value!r}", where)
    return float(value) if base == "float" else value


def config_from_mapping(values: dict[str, Any], where: str) -> dict[str, Any]:
    """Validate field names and value types of a partial config; returns the coerced dict."""
    if not isinstance(values, dict):
        raise SpikedetError("a train config must be a mapping of field names", where)
    unknown = sorted(str(k) for k in values if k not in _FIELDS)
    if unknown:
        raise SpikedetError(f"unknown config fields {unknown}; known: {', '.join(_FIELDS)}", where)
    return {k: _coerce(k, v, where) for k, v in values.items()}


def load_yaml_config(path: str | os.PathLike) -> dict[str, Any]:
    """Read a YAML mapping of TrainConfig fields (partial configs allowed)."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise SpikedetError("config file not found", str(path))
    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        first = " ".join(str(err).split())[:200]
        raise SpikedetError(f"malformed YAML: {first}", str(path)) from None
    return config_from_mapping(values or {}, str(path))


def resolve_config(
    yaml_values: dict[str, Any], overrides: dict[str, Any], where: str = "train config"
) -> TrainConfig:
    """Defaults <- YAML values <- overrides (``None`` overrides are ignored); validated."""
    merged = {**yaml_values, **{k: v for k, v in overrides.items() if v is not None}}
    merged = config_from_mapping(merged, where)
    if merged.get("dataset") == "gen1" and "imgsz" not in merged:
        merged["imgsz"] = GEN1_IMGSZ
    cfg = TrainConfig(**merged)
    check_config(cfg)
    return cfg


def config_to_yaml(cfg: TrainConfig) -> str:
    import yaml

    return yaml.safe_dump(asdict(cfg), sort_keys=False)


def save_config(path: str | os.PathLike, cfg: TrainConfig) -> None:
    """Write the resolved config atomically (readable back with ``load_yaml_config``)."""
    write_text(path, config_to_yaml(cfg))
