"""Partition every population of a QuantGraph into core-sized tiles (the hardware profile's limits).

The graph is first seen as hardware populations and edges (``geometry``): conv synapses
with their ``out_offset`` and ``upsample`` wiring, max-pool populations as D threshold
compartments per neuron on a sum-pool edge of weight 1 (docs/semantics.md §2.7b, §3.2), LIF
populations as D = 1 neurons, and the extra populations below.

Fan-in splitting (``splits``). When one neuron of a layer needs more fan-in axons F (or
more synaptic memory) than a core has, its input synapses are divided by input channel into
groups, each a partial-sum population ``P/psum<k>`` (one compartment per neuron, on its own
cores) that sends its exact integer sum as one graded message to the neuron's core (one axon
per group). Destination channel ranges fed by different synapses (concatenations) are split
separately, and ranges that fit stay direct. The integer results do not change; the split adds
one hardware step, and §3.3 delays re-align the other paths. A layer is refused, naming it and
the limit, only when even one input channel cannot fit a core, or when no grouping's partial
sums fit the graded payload.

Choice of the grouping (``splits.choose_grouping``, deterministic). The fewest groups
g0 (about ceil(F / limit)) is rarely the cheapest: a partial-sum core of a big group holds few
compartments. When the tiling pass (destinations first) reaches a split layer, it evaluates the
group multipliers m = 1, 2, 4, ... (min(input channels, m x g0) groups per class, down to one
input channel per group), each tiled exactly as below, and keeps the m with the fewest cores of
that layer (partial sums + neurons; ties: the smaller m), stopping early once a lower bound
that grows with m reaches the best count. A layer that fits unsplit is split as well when that
needs at most half its cores (OPTIONAL_SPLIT_GAIN), for one more step of latency.
``map_graph(search=False)`` maps every needed split with its fewest groups and splits nothing
else; ``group_multipliers`` fixes m per layer (for comparisons). Each split layer's
``grouping`` records what the search tried: [m, cores] pairs, the chosen m and groups, and for
an optional split its unsplit cores.

A tile is a box of a population's (C, H, W) neurons: ``c_t`` channels x ``h_t`` rows x ``w_t``
columns; a population uses ceil(C/c_t)·ceil(H/h_t)·ceil(W/w_t) cores, placed on consecutive core
ids in topological order (a layer's partial sums, its neurons, then relays of its spikes); chips =
ceil(cores / cores_per_chip). Per core, for the worst tile of the grid (exact, see
``tiles``):

- neurons: compartments (c_t·h_t·w_t, x D for max-pool) <= neurons_per_core;
- synaptic memory (bits), summed over incoming edges: with conv weight sharing, the kernel slice
  of the tile's channels (weights x KH·KW x weight_bits, once per core that needs it, also for
  upsampled synapses); without it, one entry per real connection (zero padding excluded; an
  upsampled synapse connects each of the f² copies). Neuron state is not charged to synaptic
  memory: Loihi keeps compartment state in a separate per-core memory;
- fan-in axons: distinct source neurons whose spikes reach the tile: per edge the box (source
  channels read) x (receptive rows, clipped) x (receptive columns, clipped); boxes of edges
  sharing a source are united exactly (inclusion-exclusion), different sources add (the input
  counts as a source; a partial sum is one axon);
- fan-out: distinct destination cores the tile's spikes reach, over all outgoing edges.

A profile with a core model (Loihi 2, ``connectivity``) charges conv edges population axons
and one packed kernel per core, dense edges one axon and 16-bit synapses per source neuron, and
tiles by its compiler's partition rule (``placement.partition_best``) instead of the search
below. Tile search (``placement.best_tile``): the candidate sizes along an axis of length N are
ceil(N/n), n = 1..N. Memory and fan-in of every candidate (c_t, h_t, w_t) are computed exactly
in one vectorized pass; among the candidates within every limit the fewest tiles wins; ties
prefer splitting channels first, then rows, then columns. Fan-out is exact because destinations
are tiled before their sources (reverse topological order); it is checked on the preferred
candidates first and for all of them at once only when those exceed it (same choice).

Time: every edge is one hardware step; hardware depths are recomputed over the split graph (a
split layer is one step deeper than its logical depth, and so is everything after it). A delay
longer than ``delay_bits`` allows is realized by relay stages of its source (``delays``;
exact, counted as cores and activity of the source's layer), NIR Delay lags included, so
delays refuse a graph only where a split layer lengthens a cycle that has no lag to spare.
Depths and relays depend on which layers are split, not on their grouping.
Precision (``precision``): max |weight| fits ``weight_bits``, the 24-bit state and
12-bit decays of §3 fit the profile, the 8-bit graded input fits the payload; graded deployment
(§3.4) also needs ceil(log2(D+1)) payload bits (D = 1 for LIF), binary deployment one.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from spikedet.deploy.mapping.delays import apply_relays, delay_figures
from spikedet.deploy.mapping.edits import replace_layer
from spikedet.deploy.mapping.geometry import HwGraph, check_geometry, hardware_view
from spikedet.deploy.mapping.placement import best_tile
from spikedet.deploy.mapping.precision import check_precision
from spikedet.deploy.mapping.psums import PsumPlan, apply_splits
from spikedet.deploy.mapping.splits import (
    OPTIONAL_SPLIT_GAIN,
    choose_grouping,
    layer_plans,
    plan_splits,
)
from spikedet.deploy.mapping.tiles import reach, tile_fanout, unit_intervals
from spikedet.deploy.profiles import HardwareProfile
from spikedet.errors import SpikedetError
from spikedet.sim.qgraph import QuantGraph

__all__ = [
    "OPTIONAL_SPLIT_GAIN",
    "LayerMapping",
    "Mapping",
    "PsumMapping",
    "RelayMapping",
    "check_geometry",
    "destination_cores",
    "hardware_graph",
    "map_graph",
]


@dataclass
class Tiling:
    """One hardware population on cores (per-tile figures are the worst tile's)."""

    tiles: int
    tile_shape: tuple[int, int, int]
    splits: tuple[int, int, int]
    neurons_per_tile: int  # compartments
    syn_mem_bits_per_tile: int
    syn_mem_bits_total: int
    fan_in_axons_per_tile: int
    fan_out_cores: int
    core_ids: tuple[int, int]  # [first, stop)


@dataclass
class PsumMapping(Tiling):
    """A partial-sum population of a split layer (``splits``)."""

    name: str = ""
    dst_channels: tuple[int, int] = (0, 0)
    sources: dict = field(default_factory=dict)  # source -> [lo, hi) channels summed
    bound: int = 0
    payload_bits: int = 0


@dataclass
class RelayMapping(Tiling):
    """A delay relay stage (``delays``): ``source``'s spikes, ``stage`` x (L + 1) steps
    later."""

    name: str = ""
    source: str = ""
    stage: int = 0


@dataclass
class LayerMapping(Tiling):
    """How one population sits on cores; ``tiles`` are its neuron cores, ``cores`` all of them
    (partial sums and relays of its spikes included), ``neurons`` logical neurons,
    ``compartments`` hardware ones (x D for max-pool; partial sums and relays not included)."""

    name: str = ""
    kind: str = ""
    shape: tuple[int, int, int] = (0, 0, 0)
    neurons: int = 0
    compartments: int = 0
    cores: int = 0
    depth: int = 0  # hardware depth (§3.3 over the split graph)
    fan_in_parts: int = 1  # most partial sums one neuron receives (1: not split)
    grouping: dict = field(default_factory=dict)  # split layers: the grouping search (module doc)
    extra_steps: int = 0  # hardware steps the split adds before this layer's neurons
    psums: list[PsumMapping] = field(default_factory=list)
    relays: list[RelayMapping] = field(default_factory=list)


@dataclass
class Mapping:
    """The whole graph on a target: per-layer mappings, cores, chips and precision findings."""

    profile: str
    layers: list[LayerMapping]
    cores: int
    chips: int
    modes: dict[str, dict] = field(default_factory=dict)
    precision: dict = field(default_factory=dict)
    limits: dict = field(default_factory=dict)
    hw_depth: int = 0  # max hardware depth: a run lasts hw_depth + T (graded) steps
    logical_depth: int = 0  # max depth of the QuantGraph (§3.3)
    split_layers: list[str] = field(default_factory=list)
    relay_stages: int = 0

    def layer(self, name: str) -> LayerMapping:
        for lm in self.layers:
            if lm.name == name:
                return lm
        raise KeyError(name)

    def to_dict(self) -> dict:
        return asdict(self)


# ---- the whole graph -------------------------------------------------------------------------
def hardware_graph(qg: QuantGraph, mapping: Mapping) -> HwGraph:
    """The hardware view ``mapping`` was made on (its fan-in splits applied)."""
    cached = getattr(mapping, "_hw", None)
    if cached is not None and cached[0] is qg:
        return cached[1]
    plans = {
        lm.name: [
            PsumPlan(
                ps.name,
                lm.name,
                tuple(ps.dst_channels),
                {k: tuple(v) for k, v in ps.sources.items()},
                ps.bound,
                ps.payload_bits,
            )  # fmt: skip
            for ps in lm.psums
        ]
        for lm in mapping.layers
        if lm.psums
    }
    limit = int(mapping.limits["delay_steps"])
    hw = apply_relays(apply_splits(hardware_view(qg), plans), limit)[0]
    mapping._hw = (qg, hw)  # type: ignore[attr-defined]  # not a field: never serialized
    return hw


def destination_cores(
    qg: QuantGraph, mapping: Mapping, src: str, dst: str | None = None
) -> np.ndarray:
    """Per source neuron (C, H, W): how many distinct cores (of layer ``dst``, or of all) it
    reaches; ``src`` is a population or ``"input"``. One spike is one message per core."""
    hw = hardware_graph(qg, mapping)
    tiles = {}
    for lm in mapping.layers:
        if dst is None or lm.name == dst:
            tiles[lm.name] = lm.tile_shape
            tiles.update({x.name: x.tile_shape for x in [*lm.psums, *lm.relays]})
    return reach(hw, src, unit_intervals(hw.shape(src)), tiles)


def map_graph(
    qg: QuantGraph,
    profile: HardwareProfile,
    *,
    search: bool = True,
    group_multipliers: dict[str, int] | None = None,
) -> Mapping:
    """Tile every population onto cores of ``profile`` (see the module docstring).

    ``search``: choose each split layer's grouping, and split layers that fit when that saves
    enough cores; False: the fewest groups for needed splits only. ``group_multipliers``: fix
    the multiplier m of named layers (1: fewest groups, or no split for a layer that fits)."""
    if profile.kind != "neuromorphic":
        raise SpikedetError(f"{profile.name} is not a neuromorphic profile", profile.path)
    check_geometry(qg)
    modes, precision = check_precision(qg, profile)
    view = hardware_view(qg)
    fixed = dict(group_multipliers or {})
    # plans and fan-out-free estimates per (layer, multiplier); weight magnitudes per synapse
    memo: dict = {"weights": {}}
    splits, plans, unsplit = plan_splits(qg, view, profile, search, fixed, memo)
    if not search:
        fixed = {name: fixed.get(name, 1) for name in splits}
    limit = (1 << profile.delay_bits) - 1
    work, depth = apply_relays(apply_splits(view, plans), limit)
    chosen: dict[str, tuple[int, int, int]] = {}
    placed: dict[str, tuple] = {}
    groupings: dict[str, dict] = {}
    i = len(work.pops) - 1
    while i >= 0:  # destinations first: fan-out needs their tiles
        name = work.pops[i].name
        if name in splits and name not in chosen:  # choose the grouping, then go on before it
            split = splits[name]
            choice, tried = choose_grouping(
                qg, view, work, depth, limit, split, profile, chosen, fixed.get(name), memo
            )
            work = replace_layer(work, name, choice.local)
            # the same groups with their exact payload bounds (candidates carry upper bounds)
            plans[name] = layer_plans(
                qg, view, split, choice.multiplier, profile, True, memo["weights"]
            )
            assert [p.sources for p in plans[name]] == [p.sources for p in choice.plans]
            for n, (tile, figs, fan_out) in choice.tiles.items():
                chosen[n], placed[n] = tile, (figs, fan_out)
            groupings[name] = {
                "optional": not split.needed, "multiplier": choice.multiplier,
                "fewest_groups": sum(c.fewest for c in split.classes), "groups": len(plans[name]),
                "cores": choice.cores, "tried": tried, "unsplit_cores": unsplit.get(name),
            }  # fmt: skip
            i = next(k for k, p in enumerate(work.pops) if p.name == name)
        elif name not in chosen:
            tile, figs, fan_out = memo.get((name, "unsplit"), (None, None, 0))
            if tile is not None:  # the estimate stands when its fan-out fits (see _evaluate)
                fan_out = tile_fanout(work, name, work.shape(name), tile, chosen)
            if tile is None or fan_out > profile.fan_out_axons:
                tile, figs, fan_out = best_tile(work, name, profile, chosen)
            chosen[name], placed[name] = tile, (figs, fan_out)
        i -= 1
    split_view = apply_splits(view, plans)
    hw, depth = apply_relays(split_view, limit)
    assert {p.name for p in hw.pops} == {p.name for p in work.pops}, "grouping-free relays"
    precision["delay_steps"] = delay_figures(qg, split_view, hw, depth, limit)
    next_core = 0

    def tiling(name: str) -> dict:
        nonlocal next_core
        shape, tile = hw.pop(name).shape, chosen[name]
        figs, fan_out = placed[name]
        splits = tuple(-(-n // t) for n, t in zip(shape, tile))
        count = int(np.prod(splits))
        next_core += count
        return dict(
            tiles=count, tile_shape=tile, splits=splits, neurons_per_tile=figs["neurons"],
            syn_mem_bits_per_tile=figs["mem"], syn_mem_bits_total=figs["mem_total"],
            fan_in_axons_per_tile=figs["fan_in"], fan_out_cores=fan_out,
            core_ids=(next_core - count, next_core),
        )  # fmt: skip

    layers = []
    for pop in qg.populations:
        first = next_core
        psums = [
            PsumMapping(**tiling(pl.name), name=pl.name, dst_channels=pl.dst_channels,
                        sources=dict(pl.sources), bound=pl.bound, payload_bits=pl.payload_bits)
            for pl in plans.get(pop.name, [])
        ]  # fmt: skip
        own = tiling(pop.name)
        relays = [
            RelayMapping(**tiling(r.name), name=r.name, source=r.carries,
                         stage=int(r.name.rsplit("relay", 1)[1]))
            for r in hw.of_layer(pop.name)
            if r.kind == "relay"
        ]  # fmt: skip
        own["core_ids"] = (first, next_core)
        parts = np.zeros(pop.shape[0], np.int64)
        for pl in plans.get(pop.name, []):
            parts[pl.dst_channels[0] : pl.dst_channels[1]] += 1
        hwp = hw.pop(pop.name)
        layers.append(
            LayerMapping(
                **own,
                name=pop.name,
                kind=pop.kind,
                shape=tuple(pop.shape),
                neurons=pop.size,
                compartments=hwp.size * hwp.compartments,
                cores=next_core - first,
                depth=depth[pop.name],
                fan_in_parts=max(1, int(parts.max())),
                extra_steps=1 if psums else 0,
                grouping=groupings.get(pop.name, {}),
                psums=psums,
                relays=relays,
            )  # fmt: skip
        )
    limits = {
        "neurons_per_core": profile.neurons_per_core,
        "synaptic_memory_bits": profile.synaptic_memory_bits,
        "fan_in_axons": profile.fan_in_axons,
        "fan_out_cores": profile.fan_out_axons,
        "cores_per_chip": profile.cores_per_chip,
        "conv_weight_sharing": profile.conv_weight_sharing,
        "graded_payload_bits": profile.message_bits,
        "delay_steps": limit,
    }
    mapping = Mapping(
        profile=profile.name, layers=layers, cores=next_core,
        chips=max(1, -(-next_core // profile.cores_per_chip)), modes=modes,
        precision=precision, limits=limits, hw_depth=max(depth[p.name] for p in qg.populations),
        logical_depth=max(p.depth for p in qg.populations),
        split_layers=[lm.name for lm in layers if lm.psums],
        relay_stages=sum(len(lm.relays) for lm in layers),
    )  # fmt: skip
    mapping._hw = (qg, hw)  # type: ignore[attr-defined]
    return mapping
