"""`spikedet import netx FILE.net --out FILE.nir`: a lava-dl netx network as a NIR graph.

The NIR graph carries Lava's exact integers in node metadata ("loihi") and is also the float
counterpart of the network (dt = 1); ``spikedet deploy FILE.nir --input X.npy`` then maps and
simulates it. Semantics: docs/semantics.md §3.6 and §5.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "import",
        help="convert another tool's network file to NIR (lava-dl netx .net)",
        description=(
            "Read a network written by another tool and write it as NIR. 'netx': lava-dl's "
            "HDF5 format (input, conv, flatten, dense layers with Loihi CUBA LIF neurons); the "
            "input layer's sample (Lava's bias mantissa) becomes the graph input."
        ),
    )
    p.add_argument("format", choices=("netx",), help="format of FILE")
    p.add_argument("file", type=Path, help="the network file (.net)")
    p.add_argument("--out", type=Path, required=True, help="NIR file to write")
    p.add_argument(
        "--reset-interval",
        type=int,
        default=0,
        metavar="N",
        help="reset u and v of every layer every N steps, aligned to each layer's first "
        "input, as netx's Network(reset_interval=N) (default 0: never)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from spikedet.convert.netx import read_netx
    from spikedet.convert.netx_nir import to_nir
    from spikedet.errors import SpikedetError
    from spikedet.nirio import write_nir

    if args.reset_interval < 0:
        raise SpikedetError(f"must be >= 0, got {args.reset_interval}", "--reset-interval")
    net = read_netx(args.file)
    graph = to_nir(net, reset_interval=args.reset_interval)
    write_nir(graph, args.out)
    layers = ", ".join(f"{layer.index}:{layer.kind}{list(layer.shape)}" for layer in net.layers)
    print(f"wrote {args.out}: {len(net.layers)} populations ({layers})")
    return 0
