"""Edits of the hardware graph used while planning splits: an edge restricted to channel ranges,
a layer's populations replaced by a re-planned local graph, identity edges of one split class
merged, and the signature that makes equal partial sums share one tile search.

Step 3 of the mapper (geometry -> precision -> edits -> psums -> delays -> tiles -> splits ->
mapper); imports only ``geometry``.
"""

from __future__ import annotations

import numpy as np

from spikedet.deploy.mapping.geometry import HwEdge, HwGraph


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
        ch_lo, ch_hi, ch_hi - ch_lo, e.synapse, lag=e.lag,
    )  # fmt: skip


def masked(e: HwEdge, keep: np.ndarray) -> HwEdge | None:
    """``e`` with the destination channels outside ``keep`` (bool per channel) emptied."""
    ch_lo, ch_hi = np.where(keep, e.ch_lo, 0), np.where(keep, e.ch_hi, 0)
    if not (ch_hi > ch_lo).any():
        return None
    return HwEdge(
        e.name, e.src, e.dst, e.kind, e.kernel, e.stride, e.padding, e.upsample,
        ch_lo, ch_hi, np.where(keep, e.weights, 0), e.synapse, lag=e.lag,
    )  # fmt: skip


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
