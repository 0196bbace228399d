"""Time the deploy front end without simulating: read_nir, quantize and map_graph.

    .venv/bin/python benchmarks/mapping.py /tmp/spikeyolo-l-640.nir [--target loihi2]
    .venv/bin/python benchmarks/mapping.py --synthetic spikeyolo-l [--imgsz 640] [--no-search]

For a NIR file, prints the seconds of each stage (parse, quantize, map) and the mapping's cores,
chips and fan-in splits. ``--synthetic`` builds the QuantGraph of a SpikeYOLO scale directly
(random 8-bit weights, the fused inference graph of docs/semantics.md §2: membrane shortcuts
as fan-in sums, channel concatenations as ``out_offset`` synapses, nearest upsampling as
``upsample`` synapses, SPPF as an I-LIF and three chained max-pool populations) for profiling
the mapper before an exported file exists; only ``map_graph`` is timed then. Goal: parse +
quantize + map of spikeyolo-l at 640x640 onto loihi2 in under 60 s. ``--no-search`` maps
with ``map_graph(search=False)``: every needed fan-in split with its fewest groups and no
optional splits (the mapper before the grouping search), for before/after comparisons.
``--json PATH`` also writes the figures.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from spikedet.deploy.mapping.mapper import Mapping, map_graph  # noqa: E402
from spikedet.deploy.profiles import resolve_target  # noqa: E402
from spikedet.deploy.quantize import assign_depths  # noqa: E402
from spikedet.fileio import write_json  # noqa: E402
from spikedet.sim.qgraph import QInput, QPopulation, QSynapse, QuantGraph  # noqa: E402

# widths at strides 4/8/16/32, repeats of layers 2/4/6/8, layer-25 ratio (registry._SCALES)
SCALES = {
    "n": ([48, 96, 192, 384], [1, 2, 3, 1], 1),
    "s": ([64, 128, 256, 512], [1, 2, 3, 1], 1),
    "m": ([80, 160, 320, 640], [2, 3, 4, 2], 2),
    "l": ([96, 192, 384, 768], [2, 3, 4, 2], 2),
}


class Term(NamedTuple):
    """One conv of a current: reads population ``src``, writes channels from ``offset``."""

    name: str
    src: str
    shape: tuple[int, int, int, int]
    stride: int
    pad: int
    groups: int
    offset: int = 0
    up: int = 1


class Current(NamedTuple):
    shape: tuple[int, int, int]
    terms: tuple[Term, ...]

    def __add__(self, other: Current) -> Current:  # type: ignore[override]
        return Current(self.shape, self.terms + other.terms)


class Tracer:
    """Builds populations and synapses the way the exporter composes SpikeYOLOv8 (fused)."""

    def __init__(self, imgsz: int, levels: int, seed: int):
        self.rng = np.random.default_rng(seed)
        self.levels = levels
        self.shapes: dict[str, tuple[int, int, int]] = {"input": (3, imgsz, imgsz)}
        self.pops: list[QPopulation] = []
        self.syns: list[QSynapse] = []
        self.seen: dict[tuple, str] = {}  # one population per current
        self.count = 0

    def conv(
        self, src: str, cout: int, k: int, s: int = 1, groups: int = 1, p: int = -1
    ) -> Current:
        c, h, w = self.shapes[src]
        p = k // 2 if p < 0 else p
        ho, wo = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
        self.count += 1
        term = Term(f"conv{self.count}", src, (cout, c // groups, k, k), s, p, groups)
        return Current((cout, ho, wo), (term,))

    def _population(self, cur: Current, kind: str) -> str:
        key = cur.terms
        if key in self.seen:
            return self.seen[key]
        name = f"{kind}{len(self.pops)}"
        c = cur.shape[0]
        d = self.levels if kind == "lif" else 0
        self.pops.append(
            QPopulation(name, "ilif" if d else "readout", cur.shape, theta=2,
                        bias=np.zeros(c), D=d, dv=3072 if d else 0)
        )  # fmt: skip
        for t in cur.terms:
            weight = self.rng.integers(-127, 128, size=t.shape, dtype=np.int8)
            self.syns.append(
                QSynapse(f"{t.name}@{name}", t.src, name, weight, (t.stride,) * 2, (t.pad,) * 2,
                         t.groups, out_offset=t.offset, upsample=t.up)
            )  # fmt: skip
        self.shapes[name], self.seen[key] = cur.shape, name
        return name

    def spikes(self, cur: Current) -> str:
        return self._population(cur, "lif")

    def maxpool(self, src: str, k: int) -> str:
        name = f"pool{len(self.pops)}"
        c, h, w = self.shapes[src]
        self.pops.append(
            QPopulation(name, "maxpool", (c, h, w), theta=0, bias=np.zeros(c), D=self.levels,
                        src=src, pool_kernel=(k, k), pool_padding=(k // 2, k // 2))
        )  # fmt: skip
        self.shapes[name] = (c, h, w)
        return name

    def spike_conv(self, cur: Current, cout: int, k: int, s: int = 1, groups: int = 1) -> Current:
        return self.conv(self.spikes(cur), cout, k, s, groups)

    def block(self, x: Current, ratio: int, k: int = 7) -> Current:
        """MixerBlock: X' = X + SepConv(X); Y = X' + conv2(conv1(X'))."""
        c = x.shape[0]
        pw = self.spike_conv(x, 2 * c, 1)
        dw = self.spike_conv(pw, 2 * c, k, groups=2 * c)
        x = x + self.spike_conv(dw, c, 3)
        return x + self.spike_conv(self.spike_conv(x, ratio * c, 3), c, 3)

    @staticmethod
    def concat(parts: list[Current]) -> Current:
        terms, offset = [], 0
        for part in parts:
            terms += [t._replace(offset=t.offset + offset) for t in part.terms]
            offset += part.shape[0]
        return Current((offset, *parts[0].shape[1:]), tuple(terms))

    @staticmethod
    def upsample(cur: Current) -> Current:
        c, h, w = cur.shape
        return Current((c, 2 * h, 2 * w), tuple(t._replace(up=t.up * 2) for t in cur.terms))

    def sppf(self, x: Current, cout: int, k: int = 5) -> Current:
        """cv1 1x1; cv2's I-LIF split over [S, M1, M2, M3] (§2.7b), cv2 split by input rows."""
        hidden = self.spike_conv(x, x.shape[0] // 2, 1)
        parts = [self.spikes(hidden)]
        for _ in range(3):
            parts.append(self.maxpool(parts[-1], k))
        convs = [self.conv(p, cout, 1) for p in parts]
        return Current(convs[0].shape, tuple(t for cur in convs for t in cur.terms))


def synthetic_spikeyolo(scale: str, imgsz: int = 640, nc: int = 80, seed: int = 0) -> QuantGraph:
    """The QuantGraph of spikeyolo-<scale> (fused, T = 1, D = 4), random weights."""
    (c2, c3, c4, c5), (n2, n4, n6, n8), p5_ratio = SCALES[scale]
    g = Tracer(imgsz, 4, seed)
    x = g.conv("input", c2, 7, 4, p=2)
    for _ in range(n2):
        x = g.block(x, 4)
    x = g.spike_conv(x, c3, 3, 2)
    for _ in range(n4):
        x = g.block(x, 4)
    p3 = x
    x = g.spike_conv(x, c4, 3, 2)
    for _ in range(n6):
        x = g.block(x, 3)
    p4 = x
    x = g.spike_conv(x, c5, 3, 2)
    for _ in range(n8):
        x = g.block(x, 2)
    lat10 = g.spike_conv(g.sppf(x, c5), c4, 1)
    lat14 = g.spike_conv(g.concat([g.block(g.upsample(lat10), 3), p4]), c3, 1)
    out3 = g.block(g.spike_conv(g.concat([g.block(g.upsample(lat14), 4), p3]), c3, 1), 4)
    out4 = g.block(g.concat([g.spike_conv(out3, c3, 3, 2), lat14]), 3)
    out5 = g.block(g.concat([g.spike_conv(out4, c4, 3, 2), lat10]), p5_ratio)
    box_hidden, cls_hidden = max(16, c3 // 4, 64), max(c3, min(nc, 100))
    for feat in (out3, out4, out5):
        for hidden, cout in ((box_hidden, 64), (cls_hidden, nc)):
            h = g.spike_conv(g.spike_conv(feat, hidden, 3), hidden, 3)
            g._population(g.spike_conv(h, cout, 1), "readout")
    assign_depths(g.pops, g.syns, None)  # the mapper relays delays beyond delay_bits
    return QuantGraph(T=1, input=QInput((3, imgsz, imgsz), 255), populations=g.pops,
                      synapses=g.syns, message_bits=3, metadata={"model": f"spikeyolo-{scale}"})  # fmt: skip


def summary(mapping: Mapping) -> dict:
    split = [lm for lm in mapping.layers if lm.psums]
    return {
        "cores": mapping.cores,
        "chips": mapping.chips,
        "populations": len(mapping.layers),
        "split_layers": len(split),
        "optional_splits": sum(1 for lm in split if lm.grouping.get("optional")),
        "psum_cores": sum(lm.cores - lm.tiles - sum(r.tiles for r in lm.relays) for lm in split),
        "max_fan_in_parts": max([lm.fan_in_parts for lm in split], default=1),
        "extra_latency_steps": mapping.hw_depth - mapping.logical_depth,
        "max_delay_needed": mapping.precision["delay_steps"]["needed"],
        "relay_stages": mapping.relay_stages,
        "relay_cores": sum(r.tiles for lm in mapping.layers for r in lm.relays),
    }


def run_nir(path: Path, target: str, search: bool = True) -> dict:
    from spikedet.deploy.nir_read import read_nir
    from spikedet.deploy.quantize import quantize

    profile = resolve_target(target)
    t0, c0 = time.perf_counter(), time.process_time()
    fg = read_nir(path)
    t1 = time.perf_counter()
    # Delays beyond the profile's delay_bits are relayed by the mapper (delays), so the
    # quantizer is not asked to refuse them (spikeyolo-m/l need 64 steps, Loihi 2 has 63).
    qg = quantize(fg, weight_bits=profile.weight_bits, state_bits=profile.state_bits,
                  max_delay=1 << 30)  # fmt: skip
    t2 = time.perf_counter()
    mapping = map_graph(qg, profile, search=search)
    t3, c3 = time.perf_counter(), time.process_time()
    times = {"read_nir_s": t1 - t0, "quantize_s": t2 - t1, "map_s": t3 - t2, "total_s": t3 - t0}
    times["total_cpu_s"] = c3 - c0  # the machine may be shared: CPU seconds of this process
    return {"source": str(path), "target": profile.name, **times, **summary(mapping)}


def run_synthetic(scale: str, imgsz: int, target: str, search: bool = True) -> dict:
    profile = resolve_target(target)
    t0 = time.perf_counter()
    qg = synthetic_spikeyolo(scale, imgsz)
    t1, c1 = time.perf_counter(), time.process_time()
    mapping = map_graph(qg, profile, search=search)
    t2, c2 = time.perf_counter(), time.process_time()
    return {"source": f"synthetic spikeyolo-{scale} {imgsz}px", "target": profile.name,
            "build_s": t1 - t0, "map_s": t2 - t1, "map_cpu_s": c2 - c1,
            **summary(mapping)}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("nir", nargs="*", type=Path, help="NIR files exported by spikedet")
    ap.add_argument("--synthetic", nargs="*", default=[], help="e.g. spikeyolo-n spikeyolo-l")
    ap.add_argument("--imgsz", type=int, default=640)
    ap.add_argument("--target", default="loihi2")
    ap.add_argument("--no-search", action="store_true", help="fewest groups, no optional splits")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()
    search = not args.no_search
    rows = [run_nir(p, args.target, search) for p in args.nir]
    for name in args.synthetic:
        scale = name.removeprefix("spikeyolo-")
        rows.append(run_synthetic(scale, args.imgsz, args.target, search))
    for row in rows:
        print(
            " ".join(f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items())
        )
    if args.json:
        write_json(args.json, rows)


if __name__ == "__main__":
    main()
