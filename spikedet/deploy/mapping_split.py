"""Fan-in splitting: a layer's synapses divided by input channel over partial-sum compartments.

When one neuron of a layer P needs more fan-in axons (or synaptic memory) than a core has, its
input synapses are divided by input channel: the destination channels of P are cut into
classes that receive the same edges (``out_offset`` concatenations write different classes),
and the input channels of every class that does not fit are cut, contiguously over the
concatenation of its sources' channels, into groups. Group k of a class becomes a partial-sum
population ``P/psum<k>`` (one compartment per neuron of the class, placed on its own cores)
that receives the synapses restricted to that group and sends its sum, every step it receives
input, as one graded message to the core of its neuron; P's neuron then has one identity
synapse per group. Classes that fit keep their synapses direct.

How many groups (``analyse_split``, ``multipliers``, ``layer_plans``): the *fewest* groups g0
of a class is the greedy packing of per-channel upper bounds (window x edges reading the
channel, summed over edges from the same source) into the fan-in and memory limits, so it can
exceed ceil(F / limit) where windows of two edges overlap. A candidate multiplier m gives every
class min(its input channels, m x g0) groups, cut to equal loads (bisection on a common fraction
of both limits). The mapper (``mapping``) evaluates m = 1, 2, 4, ... and keeps the one with the
fewest cores: fewer channels per group let a partial-sum core hold many more compartments (its
fan-in and kernel memory shrink with the group), while the neuron's core receives m x g0 axons
per neuron. A layer that fits unsplit can be split the same way (``optional``, m >= 2 with
g0 = 1) when that saves enough cores.

Exactness: a partial sum is a sum of exact integers, and when no synapse can wrap (its bound
stays under 2^23, checked in ``mapping_precision``) the neuron's sum of partial sums equals its
§3.2 input a_t; the bias stays on the neuron. Payload: a partial sum is bounded by max over
neurons of Σ |W_q| x (largest source value) over the group, which needs bit_length + 1 signed
bits; a grouping whose payload exceeds the profile's graded messages is refused. Latency: the
partial sum adds one hardware step on the paths through P; partial sums are computed in the
step just before their neuron and the §3.3 delays of the other paths re-align them
(``mapping_delays``), so depths and relays do not depend on the grouping.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from spikedet.deploy.mapping_delays import relayed_source
from spikedet.deploy.mapping_figures import grid_figures
from spikedet.deploy.mapping_geometry import HwEdge, HwGraph, HwPop, window_max
from spikedet.deploy.mapping_precision import may_wrap, partial_sum_bounds
from spikedet.deploy.profiles import HardwareProfile
from spikedet.errors import SpikedetError
from spikedet.sim.qgraph import QuantGraph


@dataclass
class PsumPlan:
    """One partial-sum population of a split layer."""

    name: str
    layer: str
    dst_channels: tuple[int, int]  # the neuron channels [a, b) it sums for
    sources: dict[str, tuple[int, int]]  # per source population, the channels [lo, hi) it reads
    bound: int  # max |partial sum|
    payload_bits: int  # signed bits of the graded message carrying it


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


def _classes(edges: list[HwEdge], channels: int) -> list[tuple[int, int, list[HwEdge]]]:
    """Maximal destination channel ranges [a, b) read through the same set of edges."""
    live = np.stack([e.ch_hi > e.ch_lo for e in edges], 1)
    cuts = [0, *(np.flatnonzero(np.any(live[1:] != live[:-1], axis=1)) + 1), channels]
    return [
        (int(a), int(b), [e for j, e in enumerate(edges) if live[a, j]])
        for a, b in zip(cuts[:-1], cuts[1:])
    ]


def _greedy(cum: list[np.ndarray], caps: list[float]) -> list[int] | None:
    """Cut points of the fewest contiguous groups whose sums stay within ``caps`` (None when one
    channel exceeds a cap)."""
    n = len(cum[0]) - 1
    # the furthest cut a group starting at each channel can reach within every cap
    reach = np.minimum.reduce(
        [np.searchsorted(c, c[:-1] + cap, "right") - 1 for c, cap in zip(cum, caps)]
    ).tolist()
    cuts, r = [0], 0
    while r < n:
        r1 = reach[r]
        if r1 <= r:
            return None
        cuts.append(r1)
        r = r1
    return cuts


def _balanced(loads: list[np.ndarray], caps: list[int], groups: int) -> list[int] | None:
    """Cut points of at most ``groups`` contiguous groups (None when even the fewest greedy
    groups exceed ``groups`` or one channel exceeds a cap), balanced: the smallest common
    fraction of the caps that still gives that many groups (bisection; greedy is optimal for
    contiguous groups, so the fraction is monotone in the group count)."""
    cum = [np.concatenate([[0], np.cumsum(w)]) for w in loads]
    best = _greedy(cum, caps)
    if best is None or len(best) - 1 > groups:
        return None
    lo, hi = 0.0, 1.0
    for _ in range(30):
        mid = (lo + hi) / 2
        cuts = _greedy(cum, [cap * mid for cap in caps])
        if cuts is not None and len(cuts) - 1 <= groups:
            hi, best = mid, cuts
        else:
            lo = mid
    return best


@dataclass
class SplitClass:
    """Destination channels [a, b) of a layer, read through the same edges, to split by input
    channel: the input channels are its sources' channels concatenated (first-use order)."""

    a: int
    b: int
    edges: list[HwEdge]  # the class's edges seen from [a, b) (destination re-indexed from 0)
    bases: dict[str, int]  # source -> offset of its channels in the concatenation
    loads: list[np.ndarray]  # per input channel: upper bounds of fan-in axons and memory bits
    fewest: int  # groups of the fewest-groups packing (1: the class fits one core unsplit)
    need: str  # what one neuron needs against the limits (the start of every refusal)

    @property
    def channels(self) -> int:
        return len(self.loads[0])


@dataclass
class LayerSplit:
    """What can be split in one layer: the classes, and whether a split is needed at all."""

    layer: str
    classes: list[SplitClass]
    needed: bool  # False: one neuron fits a core; a split would only save cores


def analyse_split(
    qg: QuantGraph,
    hw: HwGraph,
    name: str,
    profile: HardwareProfile,
    optional: bool = False,
    cache: dict | None = None,
) -> LayerSplit | None:
    """The splittable classes of layer ``name``: those that do not fit one core (fewest groups
    by greedy packing), or, with ``optional`` and a layer that fits, all of its classes
    (fewest = 1). None when nothing is to split: a max-pool or input-less layer, a layer that
    fits (unless ``optional``), or an optional split whose synapses might wrap (``cache``: the
    weight magnitudes of ``mapping_precision``, shared between calls). Raises
    SpikedetError for a needed split that is impossible (one input channel exceeds a core, or
    a synapse may wrap so partial sums would not be exact)."""
    pop, edges = hw.pop(name), hw.incoming(name)
    wb, sharing = profile.weight_bits, profile.conv_weight_sharing
    caps = [profile.fan_in_axons, profile.synaptic_memory_bits]

    def figures(edge_list: list[HwEdge], shape: tuple[int, int, int]) -> dict:
        return grid_figures(hw, edge_list, shape, 1, (1, 1, 1), wb, sharing)

    def fits(figs: dict) -> bool:
        return figs["fan_in"] <= caps[0] and figs["mem"] <= caps[1]

    if pop.kind in ("maxpool", "psum", "relay") or not edges:
        return None
    needed = not fits(figures(edges, pop.shape))
    if not needed and not optional:
        return None
    where, p = f"{profile.name} mapping", profile.name
    classes: list[SplitClass] = []
    cache = {} if cache is None else cache
    for a, b, class_edges in _classes(edges, pop.shape[0]):
        view = [restrict(e, name, a, b, 0, 1 << 62) for e in class_edges]
        figs = figures(view, (b - a, *pop.shape[1:]))
        if needed and fits(figs):
            continue
        need = (
            f"layer {name}: one neuron needs {figs['fan_in']} fan-in axons and "
            f"{figs['mem']} bits of synaptic memory; {p} allows {caps[0]} and {caps[1]} per core"
        )
        bases, total = {}, 0
        for e in view:
            if e.src not in bases:
                bases[e.src], total = total, total + hw.shape(e.src)[0]
        if not needed and total < 2:
            continue  # one group would only forward the sum
        w_fan, w_mem = np.zeros(total, np.int64), np.zeros(total, np.int64)
        for e in view:
            live = e.ch_hi > e.ch_lo
            lo, hi = bases[e.src] + e.ch_lo[live].min(), bases[e.src] + e.ch_hi[live].max()
            w_fan[lo:hi] += window_max(e, hw)
            w_mem[lo:hi] += e.taps * wb
        cuts = _greedy([np.concatenate([[0], np.cumsum(w)]) for w in (w_fan, w_mem)], caps)
        if cuts is None:
            if not needed:
                return None
            raise SpikedetError(
                f"{need}; even one input channel needs {int(w_fan.max())} axons and "
                f"{int(w_mem.max())} bits, so no fan-in split fits",
                where,
            )
        for e in view:
            if may_wrap(qg, e.synapse, cache):
                if not needed:
                    return None
                raise SpikedetError(
                    f"{need}; synapse {e.synapse} may wrap to 24 bits, so its partial sums "
                    "would not add up to the same integers (no exact fan-in split)",
                    where,
                )
        fewest = len(cuts) - 1 if needed else 1
        classes.append(SplitClass(a, b, view, bases, [w_fan, w_mem], fewest, need))
    return LayerSplit(name, classes, needed) if classes else None


def multipliers(split: LayerSplit) -> list[int]:
    """The candidate group multipliers m = 1, 2, 4, ... (2, 4, ... for an optional split): a
    class gets min(its input channels, m x its fewest groups) groups; the last candidate gives
    every class one input channel per group."""
    m, out = (1 if split.needed else 2), []
    while True:
        out.append(m)
        if all(m * c.fewest >= c.channels for c in split.classes):
            return out
        m *= 2


def class_groups(c: SplitClass, multiplier: int) -> int:
    return min(c.channels, multiplier * c.fewest)


def layer_plans(
    qg: QuantGraph,
    hw: HwGraph,
    split: LayerSplit,
    multiplier: int,
    profile: HardwareProfile,
    check_payload: bool = True,
    cache: dict | None = None,
    exact: bool = True,
) -> list[PsumPlan]:
    """The partial sums of ``split`` with ``multiplier`` (see ``multipliers``): per class, the
    input channels cut into that many contiguous groups balanced to equal loads. Raises
    SpikedetError when a partial sum's payload exceeds the profile's graded messages (unless
    ``check_payload`` is False: provisional plans only fix the graph's structure). With
    ``exact`` False the plans carry a cheaper upper bound (``mapping_precision``; the exact one
    where that does not fit the payload): for comparing candidates, not for the mapping."""
    name, plans, cache = split.layer, [], {} if cache is None else cache
    caps = [profile.fan_in_axons, profile.synaptic_memory_bits]
    for c in split.classes:
        cuts = _balanced(c.loads, caps, class_groups(c, multiplier))
        assert cuts is not None, "analyse_split checked that one channel per group fits"
        groups = [
            {
                src: (max(r0 - base, 0), min(r1 - base, hw.shape(src)[0]))
                for src, base in c.bases.items()
                if r0 < base + hw.shape(src)[0] and base < r1
            }
            for r0, r1 in zip(cuts[:-1], cuts[1:])
        ]
        bounds = partial_sum_bounds(qg, c.edges, c.a, c.b, groups, cache, exact)
        bits = max(v.bit_length() + 1 for v in bounds)
        if not exact and check_payload and bits > profile.message_bits:  # the exact bound may fit
            bounds = partial_sum_bounds(qg, c.edges, c.a, c.b, groups, cache)
        for ranges, bound in zip(groups, bounds):
            plan = PsumPlan(
                f"{name}/psum{len(plans)}", name, (c.a, c.b), ranges, bound, bound.bit_length() + 1
            )
            if check_payload and plan.payload_bits > profile.message_bits:
                raise SpikedetError(
                    f"{c.need}; a fan-in split into {len(cuts) - 1} partial sums sends "
                    f"{plan.payload_bits}-bit graded payloads (|partial sum| <= {bound}), "
                    f"{profile.name} carries {profile.message_bits}",
                    f"{profile.name} mapping",
                )
            plans.append(plan)
    return plans


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
                f"{plan.name}->{pop.name}", plan.name, pop.name, "psum", (1, 1), (1, 1), (0, 0),
                1, lo, hi, hi - lo, "",
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
