"""``spikedet data``: data set tools. ``synth-coco`` writes the synthetic shapes set in COCO format;
``synth-gen1`` writes synthetic event recordings in the Prophesee Gen1 layout."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "data", help="data set tools (synthetic COCO shapes, synthetic Gen1 events)"
    )
    data_sub = parser.add_subparsers(dest="data_command", metavar="SUBCOMMAND")
    data_sub.required = True
    synth = data_sub.add_parser(
        "synth-coco",
        help="write a synthetic shapes detection set in COCO format",
        description=(
            "Write DIR/{train,val}/NNNNNN.png and DIR/annotations/instances_{train,val}.json: "
            "1-3 shapes (circle, square, triangle; category ids 1, 3, 7) per image on a "
            "cluttered background. Deterministic for a given seed."
        ),
    )
    synth.add_argument("--out", type=Path, required=True, metavar="DIR", help="output folder")
    synth.add_argument("--train", type=int, default=200, metavar="N", help="train images (200)")
    synth.add_argument("--val", type=int, default=50, metavar="M", help="val images (50)")
    synth.add_argument("--imgsz", type=int, default=64, metavar="S", help="image side (64)")
    synth.add_argument("--seed", type=int, default=0, metavar="K", help="random seed (0)")
    synth.set_defaults(func=run)
    gen1 = data_sub.add_parser(
        "synth-gen1",
        help="write synthetic event recordings in the Prophesee Gen1 layout",
        description=(
            "Write DIR/{train,val}/<stem>_td.dat + <stem>_bbox.npy at 304x240: moving car-like "
            "(class 0) and pedestrian-like (class 1) shapes seen by a simulated event camera "
            "(log-intensity change model at 1 kHz), boxes every 50-250 ms after 0.5 s. "
            "Deterministic for a given seed."
        ),
    )
    gen1.add_argument("--out", type=Path, required=True, metavar="DIR", help="output folder")
    gen1.add_argument("--train", type=int, default=4, metavar="N", help="train recordings (4)")
    gen1.add_argument("--val", type=int, default=2, metavar="M", help="val recordings (2)")
    gen1.add_argument("--seconds", type=float, default=5.0, metavar="S", help="length (5.0)")
    gen1.add_argument("--seed", type=int, default=0, metavar="K", help="random seed (0)")
    gen1.set_defaults(func=run_gen1)


def run(args: argparse.Namespace) -> int:
    from spikedet.data.synth_coco import write_synthetic_coco

    summary = write_synthetic_coco(
        args.out, n_train=args.train, n_val=args.val, imgsz=args.imgsz, seed=args.seed
    )
    splits = summary["splits"]
    classes = ", ".join(f"{c['name']}={c['id']}" for c in summary["categories"])
    print(
        f"synth-coco: {splits['train']['images']} train / {splits['val']['images']} val images, "
        f"{splits['train']['boxes']} / {splits['val']['boxes']} boxes, classes {classes}, "
        f"{summary['imgsz']} px, seed {summary['seed']} -> {summary['root']}"
    )
    return 0


def run_gen1(args: argparse.Namespace) -> int:
    from spikedet.data.synth_gen1 import write_synthetic_gen1

    summary = write_synthetic_gen1(
        args.out, n_train=args.train, n_val=args.val, seconds=args.seconds, seed=args.seed
    )
    train, val = summary["splits"]["train"], summary["splits"]["val"]
    print(
        f"synth-gen1: {train['recordings']} train / {val['recordings']} val recordings of "
        f"{summary['seconds']:g} s, {train['events']} / {val['events']} events, "
        f"{train['boxes']} / {val['boxes']} boxes at {train['labels']} / {val['labels']} label "
        f"times, 304x240, seed {summary['seed']} -> {summary['root']}"
    )
    return 0
