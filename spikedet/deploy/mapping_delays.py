"""The hardware graph over time: partial sums inserted, depths, and relays for long delays.

Fan-in splits (``mapping_split`` plans them) become partial-sum populations inserted just before
their layer: each receives its layer's synapses restricted to its destination channels and
input-channel group, and one identity edge carries its sum to the layer (``split_layer``,
``apply_splits``). While the mapper searches groupings it works on the part of the graph one
layer's grouping changes (``local_graph``, ``replace_layer``; ``collapse_psums`` merges the
identical identity edges of a class for the tile search).

Every edge is one hardware step (docs/semantics.md §3.3); a population's hardware depth is
max over its incoming edges of depth(source) + 1, over the graph with its partial sums, and an
edge needs delay = depth(dst) - depth(src) - 1 extra steps. A partial sum is computed in the step
just before its neuron reads it: its depth is pinned to depth(layer) - 1, so the alignment delays
sit on the synapses into the partial sums and the identity synapse to the neuron has none. The
depths, the delays and therefore the relays then depend only on *which* layers are split, not on
how their input channels are grouped (the grouping search relies on this).

Long skip connections (a backbone current read again by the neck) can need more than the
largest synaptic delay L = 2^delay_bits - 1. Such a source S is then relayed: relay stage k is a population ``S/relay<k>`` of S's shape
that receives S's spikes (identity synapse, delay L) from stage k - 1 and sends them on, so it
holds S delayed by k·(L + 1) steps; an edge needing delay d reads stage k = ceil((d - L) /
(L + 1)) with the remaining delay d - k·(L + 1) in 0..L. A relay forwards the exact integer
(graded payload, or the same unit spikes in binary mode), so results do not change; each stage
costs its compartments, one synop and one update per forwarded spike, and its messages. Stages
are shared by every consumer of S and belong to S's layer (to the first consumer's layer for
relays of the graph input).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from spikedet.deploy.mapping_geometry import HwEdge, HwGraph, HwPop
from spikedet.sim.qgraph import QuantGraph

if TYPE_CHECKING:  # plans are only read here (mapping_split imports this module)
    from spikedet.deploy.mapping_split import PsumPlan


def hw_depths(hw: HwGraph, fixed: dict[str, int] | None = None) -> dict[str, int]:
    """Hardware depth of every population: each edge is one step; ``fixed`` depths (relays,
    whose input synapse carries a delay) are taken as given; partial sums are then pinned to
    depth(layer) - 1 (never earlier than their inputs allow, since the layer reads them)."""
    depth = {"input": 0, **(fixed or {})}
    for p in hw.pops:
        if p.name not in depth:
            depth[p.name] = max(depth[e.src] + 1 for e in hw.incoming(p.name))
    for p in hw.pops:
        if p.kind == "psum":
            depth[p.name] = depth[p.layer] - 1
    return depth


def relay_stage(need: int, limit: int) -> int:
    """Relay stages an edge needing ``need`` extra steps reads from (0: the source itself)."""
    return -(-(need - limit) // (limit + 1)) if need > limit else 0


def relayed_source(e: HwEdge, need: int, limit: int) -> str:
    """The population ``e`` reads after relays: its source, or the stage that holds it late."""
    k = relay_stage(need, limit)
    return f"{e.src}/relay{k}" if k else e.src


def edge_delays(hw: HwGraph, depth: dict[str, int]) -> dict[str, int]:
    """Extra steps per edge (name -> delay) that align its source on its destination."""
    return {e.name: depth[e.dst] - depth[e.src] - 1 for e in hw.edges}


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
        k = relay_stage(depth[e.dst] - depth[e.src] - 1, limit)
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
        src = relayed_source(e, depth[e.dst] - depth[e.src] - 1, limit)
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


# ---- partial sums in the graph --------------------------------------------------------------------
def restrict(
    e: HwEdge, dst: str, a: int, b: int, lo: int, hi: int, name: str | None = None
) -> HwEdge | None:
    """``e`` seen from destination channels [a, b) (re-indexed from 0) and source channels
    [lo, hi) only; None when nothing is left."""
    ch_lo = np.clip(e.ch_lo[a:b], lo, hi)
    ch_hi = np.maximum(np.clip(e.ch_hi[a:b], lo, hi), ch_lo)
    if not (ch_hi > ch_lo).any():
        return None
    return HwEdge(
        name or e.name, e.src, dst, e.kind, e.kernel, e.stride, e.padding, e.upsample,
        ch_lo, ch_hi, ch_hi - ch_lo, e.synapse,
    )  # fmt: skip


def _masked(e: HwEdge, keep: np.ndarray) -> HwEdge | None:
    """``e`` with the destination channels outside ``keep`` (bool per channel) emptied."""
    ch_lo, ch_hi = np.where(keep, e.ch_lo, 0), np.where(keep, e.ch_hi, 0)
    if not (ch_hi > ch_lo).any():
        return None
    return HwEdge(
        e.name, e.src, e.dst, e.kind, e.kernel, e.stride, e.padding, e.upsample,
        ch_lo, ch_hi, np.where(keep, e.weights, 0), e.synapse,
    )  # fmt: skip


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
    edges += [m for m in (_masked(e, keep) for e in incoming) if m is not None]
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
        src = e.src if e.kind == "psum" else relayed_source(e, dst_depth - depth[e.src] - 1, limit)
        moved.append(e if src == e.src else HwEdge(**{**vars(e), "src": src}))
    out = work.outgoing(name)
    own = {p.name for p in pops}
    others = dict.fromkeys([e.src for e in moved] + [e.dst for e in out])
    ends = [work.pop(n) for n in others if n not in own and n != "input"]
    return HwGraph(work.input_shape, ends + pops, moved + out)


def replace_layer(work: HwGraph, name: str, local: HwGraph) -> HwGraph:
    """``work`` with layer ``name``'s partial sums, neurons and their incoming edges taken from
    ``local`` (built by ``local_graph``); the populations stay in topological order."""
    old = {p.name for p in work.pops if p.layer == name and p.kind in ("psum",)} | {name}
    new = [p for p in local.pops if p.layer == name and p.kind in ("psum",)] + [local.pop(name)]
    at = next(i for i, p in enumerate(work.pops) if p.name in old)
    pops = [p for p in work.pops if p.name not in old]
    pops[at:at] = new
    own = {p.name for p in new}
    edges = [e for e in work.edges if e.dst not in old]
    edges += [e for e in local.edges if e.dst in own]
    return HwGraph(work.input_shape, pops, edges)


def collapse_psums(local: HwGraph, name: str) -> HwGraph:
    """``local`` with the identity edges from the partial sums of one class into ``name``
    (identical but for their source) merged into one edge with ``copies``: the same figures for
    the tiles of ``name`` with far fewer terms (one per class instead of one per group)."""
    merged: dict[bytes, HwEdge] = {}
    edges = []
    for e in local.edges:
        if e.dst != name or e.kind != "psum":
            edges.append(e)
            continue
        key = e.ch_lo.tobytes() + e.ch_hi.tobytes()
        if key in merged:
            merged[key].copies += 1
        else:
            merged[key] = HwEdge(**{**vars(e), "copies": 1})
            edges.append(merged[key])
    return HwGraph(local.input_shape, local.pops, edges)


def psum_signature(hw: HwGraph, name: str) -> tuple:
    """Everything the tiling of partial sum ``name`` depends on, with source channels taken
    relative to the first channel read from each source: equal signatures, equal tilings."""
    sources: dict[str, int] = {}
    for e in hw.incoming(name):
        live = e.ch_hi > e.ch_lo
        first = int(e.ch_lo[live].min(initial=1 << 62))
        sources[e.src] = min(sources.get(e.src, first), first)
    parts: list = [hw.shape(name)]
    for e in [*hw.incoming(name), *hw.outgoing(name)]:
        live = e.ch_hi > e.ch_lo
        base = sources.get(e.src, 0) if e.dst == name else 0
        rel = [np.where(live, x - base, 0).tobytes() for x in (e.ch_lo, e.ch_hi)]
        key = list(sources).index(e.src) if e.dst == name else e.dst
        parts.append((key, hw.shape(e.src), hw.shape(e.dst), e.kind, e.kernel, e.stride,
                      e.padding, e.upsample, *rel, e.weights.tobytes()))  # fmt: skip
    return tuple(parts)
