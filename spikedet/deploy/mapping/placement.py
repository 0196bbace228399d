"""Placing one population on cores: the tile a population gets (``best_tile``: the fewest tiles
within every per-core limit, or a core model's compiler partition), the cores of a split layer
(``layer_tiles``) and the one-line error for a population no tile can hold.

The figures of a tiling come from ``tiles``; the core model's costs and partition rule from
``connectivity``.
"""

from __future__ import annotations

import numpy as np

from spikedet.deploy.core_model import CoreModel
from spikedet.deploy.mapping.connectivity import initial_parts, partition_tile
from spikedet.deploy.mapping.edits import collapse_psums, psum_signature
from spikedet.deploy.mapping.geometry import HwGraph
from spikedet.deploy.mapping.tiles import (
    candidate_fanout,
    candidate_figures,
    grid_figures,
    reach,
    tile_count,
    tile_fanout,
    unit_intervals,
)
from spikedet.deploy.profiles import HardwareProfile
from spikedet.errors import SpikedetError

FANOUT_TRIES = 8  # preferred tilings whose fan-out is checked one by one before all at once


def best_tile(hw: HwGraph, name: str, profile: HardwareProfile, chosen: dict) -> tuple:
    """Fewest tiles of population ``name`` within every per-core limit of ``profile``, its
    fan-out counted over the destinations already in ``chosen``: (tile, grid figures, fan-out).

    Fan-out rarely binds, so it is checked for the preferred candidates (within the other
    limits, in order) one at a time, and for all candidates at once (``candidate_fanout``)
    only when the first FANOUT_TRIES exceed it: the same choice either way. Raises
    SpikedetError (``one_neuron_error``) when no tile fits. A profile with a core model tiles
    by its compiler's partition rule instead (``partition_best``)."""
    if profile.core_model is not None:
        return partition_best(hw, name, profile, chosen, profile.core_model)
    pop, edges = hw.pop(name), hw.incoming(name)
    wb, sharing = profile.weight_bits, profile.conv_weight_sharing
    cand, mem, fan = candidate_figures(hw, edges, pop.shape, wb, sharing)
    c, h, w = np.meshgrid(*cand, indexing="ij")
    tiles = -(-pop.shape[0] // c) * -(-pop.shape[1] // h) * -(-pop.shape[2] // w)
    ok = (
        (c * h * w * pop.compartments <= profile.neurons_per_core)
        & (fan <= profile.fan_in_axons)
        & (mem <= profile.synaptic_memory_bits)
    )
    idx = np.flatnonzero(ok.ravel())
    order = idx[np.lexsort((-c.ravel()[idx], -h.ravel()[idx], -w.ravel()[idx], tiles.ravel()[idx]))]

    def found(k: int, fan_out: int) -> tuple:
        tile = (int(c.flat[k]), int(h.flat[k]), int(w.flat[k]))
        return (
            tile,
            grid_figures(hw, edges, pop.shape, pop.compartments, tile, wb, sharing),
            fan_out,
        )

    for k in order[:FANOUT_TRIES]:
        tile = (int(c.flat[k]), int(h.flat[k]), int(w.flat[k]))
        fan_out = tile_fanout(hw, name, pop.shape, tile, chosen)
        if fan_out <= profile.fan_out_axons:
            return found(k, fan_out)
    if len(order) > FANOUT_TRIES:
        fan_out_all = candidate_fanout(hw, name, pop.shape, chosen)
        within = order[fan_out_all.ravel()[order] <= profile.fan_out_axons]
        if len(within):
            return found(within[0], int(fan_out_all.flat[within[0]]))
    raise one_neuron_error(hw, name, profile, chosen)


def partition_best(
    hw: HwGraph, name: str, profile: HardwareProfile, chosen: dict, model: CoreModel
) -> tuple:
    """The compiler's tile (``connectivity`` module docstring): r parts from the neuron budget,
    multiplied by ceil(figure / limit) while the tile exceeds a per-core limit."""
    pop, edges = hw.pop(name), hw.incoming(name)
    (c, h, w), comp, budget = pop.shape, pop.compartments, model.budget(pop.kind)
    limits = [profile.neurons_per_core, profile.fan_in_axons, profile.synaptic_memory_bits]
    groups, boost = 1, 1  # channel groups (memory, fan-in); extra spatial parts (the rest)
    while True:
        parts = initial_parts(-(-c // groups) * h * w * comp, budget) * boost
        tile = partition_tile(pop.shape, parts, groups)
        figs = grid_figures(hw, edges, pop.shape, comp, tile, profile.weight_bits, True, model)
        fan_out = tile_fanout(hw, name, pop.shape, tile, chosen)
        used = [figs["neurons"], figs["fan_in"], figs["mem"], fan_out]
        ratios = [-(-u // lim) for u, lim in zip(used, [*limits, profile.fan_out_axons])]
        if max(ratios) <= 1:
            return tile, figs, fan_out
        if tile == (1, 1, 1):
            raise one_neuron_error(hw, name, profile, chosen)
        if max(ratios[1:3]) > 1 and groups < c:
            groups = min(c, groups * max(ratios[1:3]))
        else:
            boost *= max(2, ratios[0], ratios[3], *ratios[1:3])


def layer_tiles(
    local: HwGraph,
    name: str,
    psums: list[str],
    profile: HardwareProfile,
    chosen: dict,
    known: dict | None = None,
) -> tuple[int, dict]:
    """Cores of a split layer ``name`` in its ``local`` graph (``delays.local_graph``):
    its neurons (partial-sum edges merged, ``collapse_psums``) then each of its ``psums`` on the
    neurons' tile, and the tiles (population -> ``best_tile`` result); partial sums with equal
    ``psum_signature`` share one tile search. ``known``: the tiles of an
    estimate made without the neurons' fan-out; they stand when that tile's fan-out fits (it is
    then also the first candidate within every limit)."""
    if known is not None:
        tile, figs, _ = known[name]
        fan_out = tile_fanout(local, name, local.shape(name), tile, chosen)
        if fan_out <= profile.fan_out_axons:
            tiles = {**known, name: (tile, figs, fan_out)}
            return sum(tile_count(local.shape(n), t[0]) for n, t in tiles.items()), tiles
    own = best_tile(collapse_psums(local, name), name, profile, chosen)
    tiles, by_signature = {name: own}, {}
    for psum in psums:
        key = psum_signature(local, psum)
        if key not in by_signature:
            by_signature[key] = best_tile(local, psum, profile, {name: own[0]})
        tiles[psum] = by_signature[key]
    return sum(tile_count(local.shape(n), t[0]) for n, t in tiles.items()), tiles


def one_neuron_error(
    hw: HwGraph, name: str, profile: HardwareProfile, chosen: dict
) -> SpikedetError:
    """The error for a population whose single worst neuron exceeds a per-core limit."""
    pop, p = hw.pop(name), profile.name
    figs = grid_figures(
        hw, hw.incoming(name), pop.shape, pop.compartments, (1, 1, 1),
        profile.weight_bits, profile.conv_weight_sharing, profile.core_model,
    )  # fmt: skip
    fan_out = int(reach(hw, name, unit_intervals(pop.shape), chosen).max(initial=0))
    if figs["neurons"] > profile.neurons_per_core:
        what = (
            f"one neuron needs {figs['neurons']} compartments, {p} has {profile.neurons_per_core}"
        )
    elif figs["fan_in"] > profile.fan_in_axons:
        what = f"one neuron needs {figs['fan_in']} fan-in axons, {p} allows {profile.fan_in_axons}"
    elif figs["mem"] > profile.synaptic_memory_bits:
        what = (
            f"one neuron needs {figs['mem']} bits of synaptic memory, {p} has "
            f"{profile.synaptic_memory_bits}"
        )
    elif fan_out > profile.fan_out_axons:
        what = f"one neuron's spikes reach {fan_out} cores, {p} allows {profile.fan_out_axons}"
    else:  # cannot happen: one neuron within every limit is itself a valid tile
        what = f"no tile satisfies the limits of {p}"
    label = name if pop.kind != "psum" else f"{pop.layer} (partial sums {name})"
    return SpikedetError(f"layer {label}: {what} per core", f"{profile.name} mapping")
