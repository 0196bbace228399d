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
    p.add_argument(
        "--batch",
        type=int,
        default=32,
        help="images per batch, fixed engine and float reference (default 32)",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        help="processes sharing the dataset's images on the fixed engine (results identical "
        "to one process; default 1). Under torchrun each rank (machine) runs its shard with "
        "this many processes and rank 0 writes the merged report",
    )
    p.add_argument(
        "--no-progress",
        dest="progress",
        action="store_false",
        help="no progress line (images done, images/s, time left) on stderr",
    )
    p.add_argument(
        "--no-reference",
        dest="reference",
        action="store_false",
        help="skip the float reference (torch) validation",
    )
    g = p.add_argument_group(
        "any NIR network (docs/semantics.md §4)",
        "deploy on an input array instead of a detection dataset; conventions a third-party "
        "file cannot carry are options, and each value assumed is named in one warning line",
    )
    g.add_argument(
        "--input",
        type=Path,
        help="input [T, B, *input_shape] as .npy, .npz (key 'input', optional 'labels') or a "
        "NIR data file (TimeGriddedData of the Input node)",
    )
    g.add_argument(
        "--labels", type=Path, help="class indices [B] (.npy): accuracy of the output layer"
    )
    g.add_argument(
        "--dt", type=float, help="Euler step in seconds (default: graph metadata dt, else 1e-4)"
    )
    g.add_argument(
        "--reset",
        choices=("zero", "subtract"),
        help="LIF/IF reset: to v_reset (zero, default) or v - v_threshold (subtract)",
    )
    g.add_argument(
        "--input-scale",
        type=float,
        help="x_int = x * scale must be 8-bit integers (default: metadata, else 1)",
    )
    p.add_argument("--out", type=Path, default=Path("runs/deploy"), help="report folder")
    p.set_defaults(func=run)


def _silent(line: str) -> None:
    """The log of torchrun ranks other than 0: rank 0 reports for all."""


def run(args: argparse.Namespace) -> int:
    from spikedet.deploy.distributed import close, from_env, world_size
    from spikedet.deploy.pipeline import DeployOptions, run_deploy
    from spikedet.errors import SpikedetError

    if args.input is not None and world_size() > 1:
        raise SpikedetError(
            "--input runs in one process; torchrun shards a detection dataset (--data)", "--input"
        )
    ranks = from_env()  # rank 0 of 1 outside torchrun
    opts = DeployOptions(
        nir_path=args.nir,
        out=args.out,
        target=args.target,
        engine=args.engine,
        data=args.data,
        dataset=args.dataset,
        split=args.split,
        samples=args.samples,
        batch=args.batch,
        workers=args.workers,
        reference=args.reference,
        input=args.input,
        labels=args.labels,
        dt=args.dt,
        reset=args.reset,
        input_scale=args.input_scale,
        ranks=ranks,
        progress=args.progress,
    )
    try:
        run_deploy(opts, log=print if ranks.is_main else _silent)
    finally:
        close(ranks)
    return 0
