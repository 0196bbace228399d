"""Partial sums in the hardware graph: the plan of one partial-sum population, and a layer's
synapses re-wired through its planned partial sums (docs/semantics.md §3.3 (a)).

Each partial sum of layer P receives P's synapses restricted to its destination channels and
input-channel group, and one identity edge carries its sum to P (``split_layer``); ``apply_splits``
inserts every plan just before its layer, so the populations stay in topological order. *Which*
plans a layer gets is decided later, by ``splits``.

Step 4 of the mapper (geometry -> precision -> edits -> psums -> delays -> tiles -> splits ->
mapper).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from spikedet.deploy.mapping.edits import masked, restrict
from spikedet.deploy.mapping.geometry import HwEdge, HwGraph, HwPop


@dataclass
class PsumPlan:
    """One partial-sum population of a split layer."""

    name: str
    layer: str
    dst_channels: tuple[int, int]  # the neuron channels [a, b) it sums for
    sources: dict[str, tuple[int, int]]  # per source population, the channels [lo, hi) it reads
    bound: int  # max |partial sum|
    payload_bits: int  # signed bits of the graded message carrying it


def split_layer(
    pop: HwPop, incoming: list[HwEdge], plans: list[PsumPlan]
) -> tuple[list[HwPop], list[HwEdge]]:
    """The partial-sum populations of ``pop`` then ``pop`` itself, and every edge into them: the
    restricted synapses into each partial sum, one identity edge per partial sum into its
    neuron channels, and the synapses of the classes that stay direct."""
    if not plans:
        return [pop], list(incoming)
    pops, edges = [], []
    keep = np.ones(pop.shape[0], bool)
    channel = np.arange(pop.shape[0])
    for plan in plans:
        a, b = plan.dst_channels
        keep[a:b] = False
        pops.append(HwPop(plan.name, pop.name, "psum", (b - a, *pop.shape[1:])))
        for e in incoming:
            if e.src in plan.sources:
                part = restrict(e, plan.name, a, b, *plan.sources[e.src])
                edges += [part] if part is not None else []
        live = (channel >= a) & (channel < b)
        lo, hi = np.where(live, channel - a, 0), np.where(live, channel - a + 1, 0)
        edges.append(
            HwEdge(
                f"{plan.name}->{pop.name}",
                plan.name,
                pop.name,
                "psum",
                (1, 1),
                (1, 1),
                (0, 0),
                1,
                lo,
                hi,
                hi - lo,
                "",
            )  # fmt: skip
        )
    edges += [m for m in (masked(e, keep) for e in incoming) if m is not None]
    return [*pops, pop], edges


def apply_splits(hw: HwGraph, plans: dict[str, list[PsumPlan]]) -> HwGraph:
    """The hardware view with every planned partial-sum population and its edges inserted
    just before its layer (so the populations stay in topological order)."""
    pops, edges = [], []
    for pop in hw.pops:
        layer_pops, layer_edges = split_layer(pop, hw.incoming(pop.name), plans.get(pop.name, []))
        pops += layer_pops
        edges += layer_edges
    return HwGraph(hw.input_shape, pops, edges)
