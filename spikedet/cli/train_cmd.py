"""`spikedet train` and `spikedet eval`: training runs (YAML config + overrides, resume, DDP) and
mAP of a checkpoint on a COCO or Gen1 split.

Multi-GPU / multi-node: launch the same command under ``torchrun`` (``torchrun
--nproc_per_node=N -m spikedet.cli.train_cmd train ...``, or ``spikedet train`` as the script);
see ``spikedet.train.ddp``. This module also runs on its own: ``python -m spikedet.cli.train_cmd``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from spikedet.data.events import REPRESENTATIONS

# Options of `train` that map onto TrainConfig fields of the same name.
TRAIN_OVERRIDES = (
    "model", "data", "dataset", "epochs", "imgsz", "batch", "out", "optimizer", "lr", "seed",
    "device", "workers", "time_steps", "representation", "bins", "skip_bad",
)  # fmt: skip
SKIP_BAD_HELP = (
    "leave out unreadable images / broken annotation entries (COCO) and corrupt recordings "
    "(Gen1), with a warning per file and a count at the end, instead of failing"
)


def register(sub: argparse._SubParsersAction) -> None:
    t = sub.add_parser(
        "train",
        help="train a spiking detector (COCO or Gen1), resumable, single process or torchrun DDP",
        description=(
            "Train a detector. Settings: TrainConfig defaults <- --config YAML <- the options "
            "below; the resolved config is written to OUT/config.yaml, checkpoints to "
            "OUT/last.pt (every epoch) and OUT/best.pt (best val mAP@50:95)."
        ),
    )
    t.add_argument("--model", help="model name, e.g. spikeyolo-pico, spikeyolo-s, ems-res10")
    t.add_argument("--data", help="dataset root (COCO layout or Gen1 layout)")
    t.add_argument("--dataset", choices=("coco", "gen1"), help="data format (default coco)")
    t.add_argument("--epochs", type=int)
    t.add_argument("--imgsz", type=int, help="square input size (default 64 coco, 320 gen1)")
    t.add_argument("--batch", type=int, help="total batch size (over all DDP processes)")
    t.add_argument("--out", help="run folder (default runs/train)")
    t.add_argument("--config", type=Path, help="YAML file of TrainConfig fields")
    t.add_argument("--optimizer", choices=("sgd", "adamw"))
    t.add_argument("--lr", type=float, help="peak learning rate")
    t.add_argument("--seed", type=int)
    t.add_argument("--device", choices=("cpu", "cuda"))
    t.add_argument("--workers", type=int, help="DataLoader worker processes")
    t.add_argument("--time-steps", type=int, help="Gen1: T bins per 250 ms window (default 5)")
    t.add_argument(
        "--representation",
        choices=REPRESENTATIONS,
        help="Gen1 input: polarity3 frames (default, the papers'), counts2 per-polarity counts, "
        "or histogram (RVT-style, 2 x --bins channels)",
    )
    t.add_argument("--bins", type=int, help="Gen1 histogram: sub-bins per time step (default 10)")
    t.add_argument("--resume", action="store_true", help="continue OUT/last.pt exactly")
    t.add_argument("--skip-bad", action="store_true", default=None, help=SKIP_BAD_HELP)
    t.add_argument("--quiet", action="store_true", help="no progress bars")
    t.set_defaults(func=run_train)

    e = sub.add_parser(
        "eval",
        help="mAP@50 and mAP@50:95 of a checkpoint on a COCO or Gen1 split",
        description="Evaluate a training checkpoint (its EMA weights) on one split of a dataset.",
    )
    e.add_argument("--weights", type=Path, required=True, help="checkpoint (.pt) from train")
    e.add_argument("--data", type=Path, required=True, help="dataset root")
    e.add_argument("--dataset", choices=("coco", "gen1"), help="default: the checkpoint's")
    e.add_argument("--split", default="val")
    e.add_argument("--batch", type=int, default=32)
    e.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    e.add_argument("--conf", type=float, default=0.001, help="NMS confidence threshold")
    e.add_argument("--iou", type=float, help="NMS IoU (default: the model family's)")
    e.add_argument("--json", action="store_true", help="print one JSON object")
    e.add_argument("--skip-bad", action="store_true", help=SKIP_BAD_HELP)
    e.set_defaults(func=run_eval)


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    return {name: getattr(args, name) for name in TRAIN_OVERRIDES}


def _resume_config(args: argparse.Namespace, yaml_values: dict[str, Any]) -> Any:
    """The config stored in OUT/last.pt; explicit settings must agree (device/workers may not)."""
    from dataclasses import asdict

    from spikedet.errors import SpikedetError
    from spikedet.train.checkpoint import load_checkpoint
    from spikedet.train.config import TrainConfig, config_from_mapping
    from spikedet.train.trainer import RESUME_FREE_FIELDS

    out = args.out or yaml_values.get("out") or TrainConfig().out
    last = Path(out) / "last.pt"
    state = load_checkpoint(last)
    stored = state.get("train_config")
    if not isinstance(stored, dict):
        raise SpikedetError("checkpoint holds no train_config to resume from", str(last))
    stored = config_from_mapping({**asdict(TrainConfig()), **stored}, str(last))
    given = {**yaml_values, **{k: v for k, v in _overrides(args).items() if v is not None}}
    given = config_from_mapping(given, "train options")
    differ = [k for k, v in given.items() if k not in RESUME_FREE_FIELDS and v != stored[k]]
    if differ:
        detail = ", ".join(f"{k}: {stored[k]!r} -> {given[k]!r}" for k in differ[:4])
        raise SpikedetError(
            f"--resume continues the stored config; these differ: {detail}", str(last)
        )
    free = {k: given[k] for k in RESUME_FREE_FIELDS if k in given}
    return TrainConfig(**{**stored, **free, "out": str(out)})


def run_train(args: argparse.Namespace) -> int:
    from spikedet.train.config import load_yaml_config, resolve_config
    from spikedet.train.trainer import train
    from spikedet.train.validation import skipped_summary, skipping_bad_data

    yaml_values = load_yaml_config(args.config) if args.config else {}
    if args.resume:
        cfg = _resume_config(args, yaml_values)
    else:
        cfg = resolve_config(yaml_values, _overrides(args), str(args.config or "train options"))
    # The trainer builds its datasets itself: the policy reaches make_dataset through this block.
    with skipping_bad_data(cfg.skip_bad) as skipped:
        result = train(cfg, progress=not args.quiet, resume=bool(args.resume))
    if skipped and result["rank"] == 0:
        sys.stderr.write(f"spikedet: warning: {skipped_summary(skipped)}\n")
    if result["rank"] == 0:
        print(
            f"{cfg.model} on {cfg.dataset} {cfg.data}: best val mAP@50 {result['best_map50']:.4f}, "
            f"mAP@50:95 {result['best_map']:.4f} in {result['seconds']:.1f} s "
            f"({result['world_size']} process(es)) -> {result['best']}",
            flush=True,
        )
    return 0


def run_eval(args: argparse.Namespace) -> int:
    import torch

    from spikedet.convert.nir_format import input_encoding
    from spikedet.errors import SpikedetError
    from spikedet.train.checkpoint import load_checkpoint, model_from_state
    from spikedet.train.validation import evaluate_model, make_dataset, skipped_summary

    if args.batch < 1:
        raise SpikedetError(f"batch must be >= 1, got {args.batch}", "eval")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SpikedetError("device cuda requested but CUDA is not available", "eval")
    state = load_checkpoint(args.weights)
    model = model_from_state(state, args.weights)
    stored = state.get("train_config") if isinstance(state.get("train_config"), dict) else {}
    kind = args.dataset or str(stored.get("dataset", "coco"))
    cfg = state["config"]
    inputs = input_encoding(stored)  # Gen1: the representation it was trained on
    dataset = make_dataset(
        kind, str(args.data), args.split, int(cfg["imgsz"]), False, 0, int(cfg["T"]),
        skip_bad=bool(args.skip_bad), representation=inputs["representation"],
        bins=inputs["bins"],
    )  # fmt: skip
    if len(dataset) == 0:
        raise SpikedetError(f"split '{args.split}' is empty", str(args.data))
    if len(dataset.names) != int(cfg["nc"]):
        raise SpikedetError(
            f"the model has {cfg['nc']} classes but the data {len(dataset.names)}", str(args.data)
        )
    device = torch.device(args.device)
    metrics, dets = evaluate_model(
        model.to(device), dataset, args.batch, args.conf, args.iou, device, kind
    )
    summary = {
        "weights": str(args.weights),
        "model": str(cfg.get("name")),
        "dataset": kind,
        "split": args.split,
        "images": len(dataset),
        "detections": int(sum(len(d) for d in dets)),
        "skipped": [path for path, _ in dataset.skipped],
        **{k: float(v) for k, v in metrics.items()},
    }
    if args.json:
        print(json.dumps(summary), flush=True)
    else:
        print(
            f"{summary['model']} on {kind} {args.split} ({summary['images']} images): "
            f"mAP@50 {summary['map50']:.4f}, mAP@50:95 {summary['map']:.4f}",
            flush=True,
        )
    if dataset.skipped:
        sys.stderr.write(f"spikedet: warning: {skipped_summary(dataset.skipped)}\n")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Stand-alone entry with the project's error format (used under torchrun)."""
    from spikedet.cli.main import _Parser
    from spikedet.errors import SpikedetError

    parser = _Parser(prog="spikedet")
    register(parser.add_subparsers(dest="command", required=True, parser_class=_Parser))
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        return int(args.func(args) or 0)
    except SpikedetError as err:
        sys.stderr.write(f"spikedet: error: {err.one_line()}\n")
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
