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
class exactly min(its input channels, m x g0) groups, cut to equal loads (bisection on a common
fraction of both limits, then halving the heaviest groups if the loads allow fewer).

Choosing m (``choose_grouping``, called by ``mapping`` while it tiles, destinations first): the
fewest groups are rarely the cheapest, because a partial-sum core of a big group holds few
compartments (its fan-in and kernel memory grow with the group) while the neuron's core only
receives one axon per group. Each candidate m = 1, 2, 4, ... (down to one input channel per
group) is tiled exactly: the neurons with their real fan-out to the destinations already tiled,
then each partial sum on the neurons' tile (equal ``psum_signature``, one search). The fewest
cores of the layer (partial sums + neurons) win, ties to the smaller m (fewer messages); the
search stops once ``_lower_bound`` (each partial sum >= ceil(N / neurons_per_core) cores, the
neuron cores >= axons into them / fan_in_axons), which grows with m, reaches the best count, so
it finds the minimum over all candidates. The fan-out of the layer's sources is not part of the
count. A layer that fits unsplit is split as well (``plan_splits``, optional, m = 2, 4, ...
with g0 = 1) when its best grouping needs at most 1 / OPTIONAL_SPLIT_GAIN of its unsplit cores,
both estimated without the neurons' fan-out limit: half the cores for one more step of latency.

Exactness: a partial sum is a sum of exact integers, and when no synapse can wrap (its bound
stays under 2^23, checked in ``precision``) the neuron's sum of partial sums equals its
§3.2 input a_t; the bias stays on the neuron. Payload: a partial sum is bounded by max over
neurons of Σ |W_q| x (largest source value) over the group, which needs bit_length + 1 signed
bits; a grouping whose payload exceeds the profile's graded messages is refused. Latency: the
partial sum adds one hardware step on the paths through P; partial sums are computed in the
step just before their neuron and the §3.3 delays of the other paths re-align them
(``delays``), so depths and relays do not depend on the grouping.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from spikedet.deploy.mapping.connectivity import channel_costs
from spikedet.deploy.mapping.delays import local_graph
from spikedet.deploy.mapping.edits import restrict
from spikedet.deploy.mapping.geometry import HwEdge, HwGraph, HwPop
from spikedet.deploy.mapping.placement import best_tile, layer_tiles
from spikedet.deploy.mapping.precision import may_wrap, partial_sum_bounds
from spikedet.deploy.mapping.psums import PsumPlan
from spikedet.deploy.mapping.tiles import grid_figures, tile_count
from spikedet.deploy.profiles import HardwareProfile
from spikedet.errors import SpikedetError
from spikedet.sim.qgraph import QuantGraph

OPTIONAL_SPLIT_GAIN = 2  # a layer that fits unsplit is split only for at least 2x fewer cores


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
    """Cut points of exactly min(``groups``, channels) contiguous groups (None when even the
    fewest greedy groups exceed ``groups`` or one channel exceeds a cap), balanced: the smallest
    common fraction of the caps that still gives at most that many groups (bisection; greedy is
    optimal for contiguous groups, so the fraction is monotone in the group count), then, while
    fewer, the heaviest group of several channels is halved at its most even cut."""
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

    def load(r0: int, r1: np.ndarray | int) -> np.ndarray:
        return np.max([(c[r1] - c[r0]) / cap for c, cap in zip(cum, caps)], axis=0)

    while len(best) - 1 < min(groups, len(cum[0]) - 1):
        wide = [k for k in range(len(best) - 1) if best[k + 1] - best[k] > 1]
        k = max(wide, key=lambda j: (float(load(best[j], best[j + 1])), -j))
        inner = np.arange(best[k] + 1, best[k + 1])
        halves = np.maximum(load(best[k], inner), load(inner, best[k + 1]))
        best.insert(k + 1, int(inner[np.argmin(halves)]))
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
    weight magnitudes of ``precision``, shared between calls). Raises
    SpikedetError for a needed split that is impossible (one input channel exceeds a core, or
    a synapse may wrap so partial sums would not be exact)."""
    pop, edges = hw.pop(name), hw.incoming(name)
    wb, sharing = profile.weight_bits, profile.conv_weight_sharing
    caps = [profile.fan_in_axons, profile.synaptic_memory_bits]

    def figures(edge_list: list[HwEdge], shape: tuple[int, int, int]) -> dict:
        return grid_figures(hw, edge_list, shape, 1, (1, 1, 1), wb, sharing, profile.core_model)

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
            fan, mem = channel_costs(e, hw, wb, profile.core_model)
            w_fan[lo:hi] += fan
            w_mem[lo:hi] += mem
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
    ``exact`` False the plans carry a cheaper upper bound (``precision``; the exact one
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


# ---- choosing the grouping of a split layer ------------------------------------------------------
@dataclass
class _Choice:
    multiplier: int
    plans: list[PsumPlan]
    local: HwGraph  # the layer's part of the hardware graph with these plans
    tiles: dict[str, tuple]  # population -> (tile, grid figures, fan-out)
    cores: int


def _lower_bound(split: LayerSplit, m: int, pop: HwPop, profile: HardwareProfile) -> int:
    """Cores below which no grouping with multiplier m can go: each partial sum needs
    ceil(its neurons / neurons_per_core) cores, and the neuron cores receive one axon per group
    and neuron of every split class (and hold at most neurons_per_core compartments)."""
    npc, plane = profile.neurons_per_core, pop.shape[1] * pop.shape[2]
    groups = [(class_groups(c, m), (c.b - c.a) * plane) for c in split.classes]
    psums = sum(g * -(-n // npc) for g, n in groups)
    axons = sum(g * n for g, n in groups)
    return psums + max(-(-axons // profile.fan_in_axons), -(-pop.size * pop.compartments // npc))


def choose_grouping(
    qg: QuantGraph,
    view: HwGraph,
    work: HwGraph,
    depth: dict | None,
    limit: int,
    split: LayerSplit,
    profile: HardwareProfile,
    chosen: dict,
    fixed: int | None,
    memo: dict,
) -> tuple[_Choice, list]:
    """The candidate multiplier (or the ``fixed`` one) with the fewest cores of layer
    ``split.layer``, and [m, cores or None (no fit)] per candidate tried; ``work`` is the
    hardware graph being tiled (``chosen``: the tiles so far) with its ``depth`` (None: an
    estimate on the unsplit ``view``). Raises the first candidate's error when none fits.
    ``memo`` keeps plans and estimates per (layer, m) between calls."""
    name, pop = split.layer, view.pop(split.layer)
    best, tried, error = None, [], None
    for m in [fixed] if fixed else multipliers(split):
        if best is not None and _lower_bound(split, m, pop, profile) >= best.cores:
            break  # the bound grows with m: no later candidate can do better
        try:
            if (name, m) not in memo:
                memo[name, m] = layer_plans(
                    qg, view, split, m, profile, True, memo["weights"], exact=False
                )
            plans = memo[name, m]
            local = local_graph(work, view, name, plans, depth, limit)
            known = memo.get((name, m, "estimate"))
            cores, tiles = layer_tiles(local, name, [p.name for p in plans], profile, chosen, known)
        except SpikedetError as err:
            error = error or err
            tried.append([m, None])
            continue
        if depth is None:  # an estimate on the unsplit view: no destinations tiled yet
            memo[name, m, "estimate"] = tiles
        tried.append([m, cores])
        if best is None or cores < best.cores:
            best = _Choice(m, plans, local, tiles, cores)
    if best is None:
        raise error  # type: ignore[misc]  # at least one candidate was tried
    return best, tried


def _optional_split(
    qg: QuantGraph, view: HwGraph, split: LayerSplit, profile: HardwareProfile, memo: dict
) -> tuple[_Choice, int] | None:
    """(choice, unsplit cores) when splitting a layer that fits saves OPTIONAL_SPLIT_GAIN x its
    cores (both tiled without the neuron's fan-out limit), else None."""
    name, pop = split.layer, view.pop(split.layer)
    memo[name, "unsplit"] = best_tile(view, name, profile, {})
    unsplit = tile_count(pop.shape, memo[name, "unsplit"][0])
    if OPTIONAL_SPLIT_GAIN * _lower_bound(split, 2, pop, profile) > unsplit:
        return None
    try:
        choice, _ = choose_grouping(qg, view, view, None, 0, split, profile, {}, None, memo)
    except SpikedetError:
        return None
    return (choice, unsplit) if OPTIONAL_SPLIT_GAIN * choice.cores <= unsplit else None


def plan_splits(
    qg: QuantGraph, view: HwGraph, profile: HardwareProfile, search: bool, fixed: dict, memo: dict
) -> tuple[dict, dict, dict]:
    """The layers to split (needed, forced by ``fixed``, or optional and worth it) with
    provisional plans, which fix the split graph's depths and relays (not its grouping), and
    the unsplit cores of the optional ones."""
    splits, plans, unsplit = {}, {}, {}
    for p in qg.populations:
        m = fixed.get(p.name)
        # a core model's compiler splits only where a limit binds: no optional splits
        optional = (search and profile.core_model is None) or (m or 1) > 1
        split = analyse_split(qg, view, p.name, profile, optional, memo["weights"])
        if split is None or (not split.needed and m == 1):
            continue
        if split.needed or m:
            first = m or multipliers(split)[0]
            plans[p.name] = layer_plans(
                qg, view, split, first, profile, False, memo["weights"], exact=False
            )
            splits[p.name] = split
        elif found := _optional_split(qg, view, split, profile, memo):
            splits[p.name], plans[p.name], unsplit[p.name] = split, found[0].plans, found[1]
    return splits, plans, unsplit
