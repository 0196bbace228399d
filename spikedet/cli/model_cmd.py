"""`spikedet model info NAME`: per-layer parameters, output shapes and MACs of a named model.

MACs are per image and per time step (NeuroBench rule: zero-padding taps excluded, bias
excluded); a spiking model does the same conv work at every step, so the pass runs with T = 1
and the table states the model's T (multiply by T for a whole inference; the energy model in
``spikedet.train.instrument`` does).
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from spikedet.errors import SpikedetError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "model",
        help="inspect model architectures",
        description="Inspect the named model architectures (SpikeYOLO and EMS-YOLO families).",
    )
    actions = p.add_subparsers(dest="model_action", metavar="ACTION", parser_class=type(p))
    actions.required = True
    info = actions.add_parser(
        "info",
        help="per-layer table: type, output shape, parameters, MACs",
        description=(
            "Build the named model (untrained) and print one row per layer that runs: name, "
            "type, output shape (C, H, W), parameters and MACs per image per time step at "
            "--imgsz (zero-padding taps excluded), then the totals."
        ),
    )
    info.add_argument("name", help="model name, e.g. spikeyolo-pico or ems-res10")
    info.add_argument(
        "--imgsz", type=int, default=None, help="square input size (default: the model's own)"
    )
    info.add_argument("--json", action="store_true", help="print one JSON object instead")
    info.set_defaults(func=run)


def known_models() -> list[str]:
    """All names the registry builds (SpikeYOLO and EMS-YOLO families)."""
    from spikedet.train.models.registry import MODEL_NAMES

    return list(MODEL_NAMES)


def resolve_model(name: str) -> Any:
    """Build ``name`` through the model registry."""
    from spikedet.train.models.registry import MODEL_NAMES, build_model

    if name not in MODEL_NAMES:
        raise SpikedetError(f"unknown model; known models: {', '.join(MODEL_NAMES)}", name)
    return build_model(name)


def model_info(name: str, imgsz: int | None = None) -> dict[str, Any]:
    """``{model, imgsz, T, params, macs, layers: [{name, type, out_shape, params, macs}]}``."""
    import torch

    from spikedet.train.instrument import profile_model

    torch.manual_seed(0)
    model = resolve_model(name)
    size = int(imgsz if imgsz is not None else getattr(model, "imgsz", 640))
    if size <= 0:
        raise SpikedetError(f"imgsz must be positive, got {size}", "--imgsz")
    # one step: MACs per step do not depend on T, and the pass is T times cheaper
    prof = profile_model(model, size, time_steps=1)
    layers = [
        {
            "name": r.name,
            "type": r.type,
            "out_shape": list(r.out_shape),
            "params": r.params,
            "macs": r.macs,
        }
        for r in prof.rows
    ]
    from spikedet.train.paper_flops import paper_flops

    flops = paper_flops(model, size)  # the papers' count, on the re-parameterised graph
    return {
        "model": name,
        "imgsz": size,
        "T": int(getattr(model, "T", 1)),
        "params": prof.params,
        "macs": prof.macs,
        "macs_real_input": prof.mac_macs,
        "paper_flops": {k: flops[k] for k in ("flops", "mac_flops", "ac_flops")},
        "layers": layers,
    }


def format_table(info: dict[str, Any]) -> str:
    """Fixed-width text table of ``model_info``'s layers and totals."""
    rows = [("layer", "type", "output (C,H,W)", "params", "MACs/step")]
    for layer in info["layers"]:
        shape = "x".join(str(v) for v in layer["out_shape"])
        rows.append(
            (layer["name"], layer["type"], shape, f"{layer['params']:,}", f"{layer['macs']:,}")
        )
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    lines = []
    for k, r in enumerate(rows):
        cells = [r[0].ljust(widths[0]), r[1].ljust(widths[1]), r[2].ljust(widths[2])]
        cells += [r[3].rjust(widths[3]), r[4].rjust(widths[4])]
        lines.append("  ".join(cells).rstrip())
        if k == 0:
            lines.append("-" * len(lines[0]))
    lines.append("")
    lines.append(
        f"{info['model']} at {info['imgsz']}x{info['imgsz']}: params {info['params']:,} "
        f"({info['params'] / 1e6:.3f} M); MACs per time step {info['macs']:,} "
        f"({info['macs'] / 1e9:.3f} G), of which on real-valued inputs "
        f"{info['macs_real_input']:,}; T = {info['T']} (a whole inference does T x the MACs)"
    )
    pf = info.get("paper_flops")
    if pf:
        lines.append(
            f"papers' FLOPs (re-parameterised graph, padding included, per step): "
            f"{pf['flops']:,} ({pf['flops'] / 1e9:.3f} G): {pf['mac_flops']:,} as MAC (real "
            f"input), {pf['ac_flops']:,} as AC (spikes; x firing rate x T in the papers' energy)"
        )
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    info = model_info(args.name, args.imgsz)
    print(json.dumps(info) if args.json else format_table(info))
    return 0
