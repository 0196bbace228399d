"""`spikedet export`: a trained checkpoint -> NIR graph (the hardware path) and optional ONNX.

Order of work, so that a failure leaves no output file behind: load the checkpoint, fuse the
re-parameterisable chains (exact in eval mode), trace the NIR graph in memory (an unexportable
model stops here with the exporter's error), check that the graph holds every BN-folded
parameter, then write the NIR file and the ONNX file to temporary names beside their targets
and rename both only when everything (including the onnxruntime check) succeeded.
"""

from __future__ import annotations

import argparse
import contextlib
from pathlib import Path
from typing import Any

from spikedet.errors import SpikedetError

ONNX_CHECK_IMAGES = 2  # batch of the onnxruntime check (differs from the traced batch of 1)
DEFAULT_ONNX_TOL = 1e-3


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="export a checkpoint to NIR (and optionally ONNX)",
        description=(
            "Load a training checkpoint, fuse re-parameterisable convs, and write the NIR graph "
            "(docs/semantics.md §2) for deployment; with --onnx also write the float reference "
            "model unrolled over its T steps as ONNX and check it with onnxruntime. Nothing is "
            "written when the model cannot be exported."
        ),
    )
    p.add_argument("--weights", required=True, help="checkpoint file, e.g. RUN/best.pt")
    p.add_argument("--out", required=True, help="NIR file to write, e.g. model.nir")
    p.add_argument("--onnx", default=None, help="also write the float model as ONNX here")
    p.add_argument(
        "--imgsz", type=int, default=None, help="square input size (default: the model's own)"
    )
    p.add_argument(
        "--onnx-tol",
        type=float,
        default=DEFAULT_ONNX_TOL,
        help=f"largest accepted |onnxruntime - torch| (default {DEFAULT_ONNX_TOL:g})",
    )
    p.set_defaults(func=run)


def _size(path: Path) -> str:
    n = path.stat().st_size
    return f"{n / 2**20:.2f} MiB" if n >= 2**20 else f"{n / 2**10:.1f} KiB"


def _check_size(model: Any, imgsz: int | None) -> None:
    """The torch model only runs on sizes that are a multiple of its largest stride; the NIR
    tracer would build (floor-rounded) conv shapes for any size, so refuse here."""
    size = int(model.imgsz if imgsz is None else imgsz)
    step = max(int(s) for s in getattr(model, "strides", [1]))
    if size % step:
        raise SpikedetError(
            f"input size {size} is not a multiple of the model's largest stride {step}", "--imgsz"
        )


def export_checkpoint(
    weights: str | Path,
    out: str | Path,
    onnx_path: str | Path | None = None,
    imgsz: int | None = None,
    onnx_tol: float = DEFAULT_ONNX_TOL,
) -> dict[str, Any]:
    """Export ``weights`` to ``out`` (NIR) and optionally ``onnx_path``; all or nothing.

    Returns ``{"model", "reparameterized", "nodes", "edges", "coverage", "onnx"}`` where
    ``onnx`` is ``export_onnx``'s dict plus ``max_abs_diff`` (or None).
    """
    import torch

    from spikedet.convert.nir_export import export_model, parameter_coverage, write_nir
    from spikedet.convert.onnx_export import check_onnx, export_onnx
    from spikedet.fileio import atomic_path
    from spikedet.train.checkpoint import load_checkpoint, model_from_state
    from spikedet.train.models.yolo_blocks import reparameterize

    out = Path(out)
    if imgsz is not None and imgsz <= 0:
        raise SpikedetError(f"imgsz must be positive, got {imgsz}", "--imgsz")
    if not onnx_tol >= 0:
        raise SpikedetError(f"tolerance must be >= 0, got {onnx_tol}", "--onnx-tol")
    if onnx_path is not None and Path(onnx_path).resolve() == out.resolve():
        raise SpikedetError("the ONNX and NIR outputs are the same file", str(out))
    state = load_checkpoint(weights)
    model = model_from_state(state, weights)
    _check_size(model, imgsz)
    fused = reparameterize(model)  # exact in eval mode; 0 for models without RepSpikeConv
    train_config = state.get("train_config")
    data = train_config if isinstance(train_config, dict) else None
    graph = export_model(model, imgsz, data)  # data: the input encoding deploy must feed
    coverage = parameter_coverage(model, graph)
    if not coverage["covered"]:
        raise SpikedetError(
            f"the graph holds {coverage['graph_params']} parameters but the model has "
            f"{coverage['folded_params']} folded ones (or they differ)",
            str(weights),
        )
    result: dict[str, Any] = {
        "model": str(model.name),
        "reparameterized": fused,
        "nodes": len(graph.nodes),
        "edges": len(graph.edges),
        "coverage": coverage,
        "onnx": None,
    }
    with contextlib.ExitStack() as stack:
        nir_tmp = stack.enter_context(atomic_path(out, suffix=".nir"))
        write_nir(graph, nir_tmp)
        if onnx_path is not None:
            onnx_tmp = stack.enter_context(atomic_path(onnx_path, suffix=".onnx"))
            info = export_onnx(model, onnx_tmp, imgsz=imgsz)
            channels, size = info["inputs"]["images"][1], info["inputs"]["images"][-1]
            gen = torch.Generator().manual_seed(0)
            x = torch.rand(ONNX_CHECK_IMAGES, channels, size, size, generator=gen)
            diff = check_onnx(model, onnx_tmp, x)
            if not diff <= onnx_tol:
                raise SpikedetError(
                    f"onnxruntime differs from torch by {diff:.3g} (> --onnx-tol {onnx_tol:g})",
                    str(onnx_path),
                )
            result["onnx"] = {**info, "path": str(onnx_path), "max_abs_diff": diff}
    # ExitStack renamed the ONNX file, then the NIR file, only after everything succeeded.
    return result


def run(args: argparse.Namespace) -> int:
    result = export_checkpoint(args.weights, args.out, args.onnx, args.imgsz, args.onnx_tol)
    cov = result["coverage"]
    count = result["reparameterized"]
    fused = f", {count} re-parameterised convs fused" if count else ""
    print(
        f"{args.out}: NIR, {result['nodes']} nodes, {result['edges']} edges, "
        f"{_size(Path(args.out))}; {cov['graph_params']} of {cov['folded_params']} folded "
        f"parameters in the graph ({result['model']}{fused})"
    )
    onnx = result["onnx"]
    if onnx is not None:
        print(
            f"{onnx['path']}: ONNX opset {onnx['opset']}, {len(onnx['outputs'])} outputs, "
            f"{_size(Path(onnx['path']))}; max |diff| vs torch {onnx['max_abs_diff']:.3g} "
            f"on {ONNX_CHECK_IMAGES} random images"
        )
    return 0
