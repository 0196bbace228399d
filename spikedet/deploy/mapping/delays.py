"""The hardware graph over time: depths, alignment delays, and relays for long delays.

Step 5 of the mapper (geometry -> precision -> edits -> psums -> delays -> tiles -> splits ->
mapper). While the mapper searches groupings it works on the part of the graph one layer's
grouping changes (``local_graph``: the layer re-wired through its partial sums by
``psums.split_layer``, each edge reading the relay stage its delay needs).

Every edge is one hardware step (docs/semantics.md §3.3); a population's hardware depth is
max over its incoming edges of depth(source) + 1, over the graph with its partial sums, and an
edge needs delay = depth(dst) - depth(src) - 1 extra steps. An edge of a synapse with a logical
lag L (a NIR Delay or recurrent edge, §4.4: its destination's step t reads its source's step
t - L) needs delay = depth(dst) - depth(src) - 1 + L, and depth(dst) >= depth(src) + 1 - L is
all it asks of the depths (the least depths >= 1, relaxed around cycles; a fan-in split inside
a cycle whose lag has no step to spare has none and is refused naming an edge of the loop).
So a Delay's steps are synaptic delay like any alignment delay, and beyond the delay bits they
go through relay stages like any long delay. A partial sum is computed in the step
just before its neuron reads it: its depth is pinned to depth(layer) - 1, so the alignment delays
sit on the synapses into the partial sums and the identity synapse to the neuron has none. The
depths, the delays and therefore the relays then depend only on *which* layers are split, not on
how their input channels are grouped (the grouping search relies on this).

Long skip connections (a backbone current read again by the neck) can need more than the
largest synaptic delay L = 2^delay_bits - 1, and so can a long NIR Delay. Such a source S is
then relayed: relay stage k is a population ``S/relay<k>`` of S's shape that receives S's
spikes (identity synapse, delay L) from stage k - 1 and sends them on, so it holds S delayed by k·(L + 1) steps; an edge needing delay d reads stage k = ceil((d - L) /
(L + 1)) with the remaining delay d - k·(L + 1) in 0..L. A relay forwards the exact integer
(graded payload, or the same unit spikes in binary mode), so results do not change; each stage
costs its compartments, one synop and one update per forwarded spike, and its messages. Stages
are shared by every consumer of S and belong to S's layer (to the first consumer's layer for
relays of the graph input).
"""

from __future__ import annotations

import numpy as np

from spikedet.deploy.mapping.geometry import HwEdge, HwGraph, HwPop
from spikedet.deploy.mapping.psums import PsumPlan, split_layer
from spikedet.errors import SpikedetError
from spikedet.sim.qgraph import QuantGraph


def hw_depths(hw: HwGraph, fixed: dict[str, int] | None = None) -> dict[str, int]:
    """Hardware depth of every population: the least depths >= 1 with depth(dst) >= depth(src)
    + 1 - lag for every edge (module docstring); ``fixed`` depths (relays, whose input synapse
    carries a delay) are taken as given; a partial sum is pinned to depth(layer) - 1 (never
    earlier than its inputs allow, since the layer reads it). Without lags one pass in
    topological order; with them (a cycle's backward edge may push an earlier population
    deeper) passes until nothing moves. A fan-in split inside a cycle adds a hardware step to
    the loop: where its lag has none to spare no depths exist, a SpikedetError naming an
    edge of the loop."""
    depth = {"input": 0, **(fixed or {})}
    lagged = any(e.lag for e in hw.edges)
    for _ in range(len(hw.pops) + 2):
        moved = False
        for p in hw.pops:
            if p.name in (fixed or {}):
                continue
            ins = [depth[e.src] + 1 - e.lag for e in hw.incoming(p.name) if e.src in depth]
            best = max([1, *ins]) if lagged else max(ins)
            if best > depth.get(p.name, 0):
                depth[p.name], moved = best, True
        for p in hw.pops:
            if p.kind == "psum" and depth[p.layer] - 1 > depth[p.name]:
                depth[p.name], moved = depth[p.layer] - 1, True
        if not moved or not lagged:
            return depth
    short = [e for e in hw.edges if depth[e.dst] - depth[e.src] - 1 + e.lag < 0]
    split = sorted({p.layer for p in hw.pops if p.kind == "psum"})
    edge = short[0] if short else hw.edges[0]
    raise SpikedetError(
        f"a cycle through split layer(s) {', '.join(split)}: each fan-in split adds a hardware "
        "step to the loop and the graph's lag has none to spare (add a Delay to the cycle)",
        f"synapse {edge.synapse or edge.name}",
    )


def relay_stage(need: int, limit: int) -> int:
    """Relay stages an edge needing ``need`` extra steps reads from (0: the source itself)."""
    return -(-(need - limit) // (limit + 1)) if need > limit else 0


def relayed_source(e: HwEdge, need: int, limit: int) -> str:
    """The population ``e`` reads after relays: its source, or the stage that holds it late."""
    k = relay_stage(need, limit)
    return f"{e.src}/relay{k}" if k else e.src


def edge_delays(hw: HwGraph, depth: dict[str, int]) -> dict[str, int]:
    """Extra steps per edge (name -> delay) that align its source on its destination."""
    return {e.name: depth[e.dst] - depth[e.src] - 1 + e.lag for e in hw.edges}


def _identity(name: str, src: str, dst: str, channels: int) -> HwEdge:
    ch = np.arange(channels, dtype=np.int64)
    return HwEdge(
        name, src, dst, "relay", (1, 1), (1, 1), (0, 0), 1, ch, ch + 1,
        np.ones(channels, np.int64), "",
    )  # fmt: skip


def apply_relays(hw: HwGraph, limit: int) -> tuple[HwGraph, dict[str, int]]:
    """The graph with relay stages for every edge whose delay exceeds ``limit``, and the
    hardware depths (unchanged for the original populations)."""
    depth = hw_depths(hw)
    stages: dict[str, int] = {}  # source -> relay stages it needs
    owner: dict[str, str] = {}
    for e in hw.edges:
        k = relay_stage(depth[e.dst] - depth[e.src] - 1 + e.lag, limit)
        if k:
            stages[e.src] = max(stages.get(e.src, 0), k)
            owner.setdefault(e.src, hw.pop(e.dst).layer)
    if not stages:
        return hw, depth
    relay_pops: dict[str, list[HwPop]] = {}
    relay_edges: list[HwEdge] = []
    fixed: dict[str, int] = {}
    for src, count in stages.items():
        layer = owner[src] if src == "input" else hw.pop(src).layer
        chain, prev = [], src
        for k in range(1, count + 1):
            name = f"{src}/relay{k}"
            chain.append(HwPop(name, layer, "relay", hw.shape(src), 1, carries=src))
            relay_edges.append(_identity(f"{prev}->{name}", prev, name, hw.shape(src)[0]))
            fixed[name] = depth[src] + k * (limit + 1)
            prev = name
        relay_pops[src] = chain
    edges = []
    for e in hw.edges:
        src = relayed_source(e, depth[e.dst] - depth[e.src] - 1 + e.lag, limit)
        edges.append(e if src == e.src else HwEdge(**{**vars(e), "src": src}))
    pops = []
    for p in hw.pops:  # a chain goes right after its source (its stages' order is topological
        # with respect to every consumer, which is deeper than the stage it reads)
        pops.append(p)
        pops += relay_pops.get(p.name, [])
    pops = relay_pops.get("input", []) + pops
    out = HwGraph(hw.input_shape, pops, edges + relay_edges)
    return out, hw_depths(out, fixed)


def delay_figures(qg: QuantGraph, hw: HwGraph, relayed: HwGraph, depth: dict, limit: int):
    """Delays before relays (the largest one any path needs) and after (all within ``limit``)."""
    before = max(edge_delays(hw, depth).values(), default=0)
    after = max(edge_delays(relayed, depth).values(), default=0)
    logical = max((s.delay for s in qg.synapses), default=0)
    assert after <= limit, "relays leave every delay within the limit"
    return {"needed": before, "logical": logical, "available": limit, "after_relays": after}


def local_graph(
    work: HwGraph, view: HwGraph, name: str, plans: list[PsumPlan], depth: dict | None, limit: int
) -> HwGraph:
    """The part of ``work`` that the grouping of layer ``name`` changes, split by ``plans``: its
    partial sums and neurons with every edge into them (each reading the relay stage of its
    source that its delay needs, partial sums sitting at depth(name) - 1), its outgoing edges,
    and the populations at the other ends (for their shapes). ``view`` is the unsplit view."""
    pops, edges = split_layer(view.pop(name), view.incoming(name), plans)
    moved = [] if depth is not None else edges  # no depths: no relays (estimates on ``view``)
    for e in edges if depth is not None else []:
        dst_depth = depth[name] - (e.dst != name)
        if e.kind == "psum":  # a partial sum into its neuron: no delay
            moved.append(e)
            continue
        src = relayed_source(e, dst_depth - depth[e.src] - 1 + e.lag, limit)
        moved.append(e if src == e.src else HwEdge(**{**vars(e), "src": src}))
    out = work.outgoing(name)
    own = {p.name for p in pops}
    others = dict.fromkeys([e.src for e in moved] + [e.dst for e in out])
    ends = [work.pop(n) for n in others if n not in own and n != "input"]
    return HwGraph(work.input_shape, ends + pops, moved + out)
