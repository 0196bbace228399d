"""`spikedet import-weights CKPT.pt --out RUN/best.pt`: deploy the authors' published models.

Reads an official SpikeYOLO (ultralytics ``DetectionModel``) or EMS-YOLO (yolov5 ``Model``)
checkpoint without importing their code or running anything from the pickle
(``spikedet.convert.official_ckpt``), maps every tensor onto the matching zoo model and writes
our own ``weights_only`` checkpoint, which ``eval``, ``export`` and ``deploy`` take as usual.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "import-weights",
        help="import an official SpikeYOLO / EMS-YOLO checkpoint (safely) as a spikedet run",
        description=(
            "Read an authors' checkpoint (pickled ultralytics / yolov5 modules) with a restricted "
            "unpickler that rebuilds only tensors and plain containers (nothing in the file "
            "runs), take its EMA weights when present, choose the zoo model from the recorded "
            "config and the tensor shapes, map every tensor (any left over on either side is an "
            "error) and write a weights_only spikedet checkpoint."
        ),
    )
    p.add_argument("ckpt", type=Path, help="the official checkpoint (.pt)")
    p.add_argument("--out", type=Path, required=True, help="checkpoint to write, e.g. RUN/best.pt")
    p.add_argument(
        "--family", choices=("spikeyolo", "ems-yolo"), help="expected family (default: detected)"
    )
    p.add_argument(
        "--model",
        help="zoo model to load into (default: chosen from the checkpoint, e.g. spikeyolo-s, "
        "spikeyolo-l, spikeyolo-s-gen1, ems-res34-cat)",
    )
    p.add_argument(
        "--T",
        type=int,
        help="time steps (default: recorded; Gen1 SpikeYOLO 2, EMS-YOLO 5 as released; the "
        "EMS paper used 4)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from spikedet.convert.official_import import import_official
    from spikedet.errors import SpikedetError
    from spikedet.train.checkpoint import save_checkpoint

    if args.out.resolve() == args.ckpt.resolve():
        raise SpikedetError("--out must differ from the checkpoint read", str(args.out))
    state, _plan, lines = import_official(args.ckpt, args.family, args.model, args.T)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(args.out, state)
    for line in lines:
        print(line)
    print(f"wrote {args.out}")
    return 0
