"""`spikedet deploy MODEL.nir --target loihi2-sim`: map, simulate, validate, report."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "deploy",
        help="map a NIR model onto a neuromorphic target, simulate it and write an energy report",
        description=(
            "Quantize a NIR model for the target, partition it into cores, run the fixed-point "
            "engine (and Lava) on a dataset, validate against the float reference and write "
            "OUT/report.json, OUT/report.md and plots."
        ),
    )
    p.add_argument("nir", type=Path, help="model exported by spikedet (NIR file)")
    p.add_argument(
        "--target",
        default="loihi2-sim",
        help="loihi2-sim, loihi1-sim, a profile name, or a hardware profile YAML path",
    )
    p.add_argument(
        "--engine",
        default="fixed",
        choices=("fixed", "lava", "both"),
        help="fixed: vectorized integer engine; lava: Lava Loihi2SimCfg fixed_pt on --samples "
        "images (compared spike for spike with fixed); both: same as lava",
    )
    p.add_argument("--data", type=Path, help="dataset root (COCO layout: SPLIT/, annotations/)")
    p.add_argument(
        "--dataset",
        default="coco",
        choices=("coco", "gen1"),
        help="coco: images + instances JSON; gen1: Prophesee .dat + _bbox.npy (T from the model)",
    )
    p.add_argument("--split", default="val", help="dataset split to evaluate (default: val)")
    p.add_argument("--samples", type=int, default=2, help="images run through Lava (default 2)")
    p.add_argument("--batch", type=int, default=32, help="images per fixed-engine batch")
    p.add_argument(
        "--no-reference",
        dest="reference",
        action="store_false",
        help="skip the float reference (torch) validation",
    )
    p.add_argument("--out", type=Path, default=Path("runs/deploy"), help="report folder")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from spikedet.deploy.pipeline import DeployOptions, run_deploy

    run_deploy(
        DeployOptions(
            nir_path=args.nir,
            out=args.out,
            target=args.target,
            engine=args.engine,
            data=args.data,
            dataset=args.dataset,
            split=args.split,
            samples=args.samples,
            batch=args.batch,
            reference=args.reference,
        )
    )
    return 0
