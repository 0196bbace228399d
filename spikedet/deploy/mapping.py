"""Partition every population of a QuantGraph into core-sized tiles (the hardware profile's limits).

A tile is a box of a population's (C, H, W) neurons: ``c_t`` output channels x ``h_t`` rows x
``w_t`` columns; a population of shape (C, H, W) uses ceil(C/c_t)·ceil(H/h_t)·ceil(W/w_t) cores,
placed on consecutive core ids in topological order; chips = ceil(cores / cores_per_chip).
Per core, for the worst tile of the grid (all counted exactly, per tile, arithmetically):

- neurons: c_t·h_t·w_t <= neurons_per_core;
- synaptic memory (bits), summed over the incoming synapses e of the population:
  with conv weight sharing, the kernel slice of the tile's output channels,
  Cout_tile·(Cin/groups)·KH·KW·weight_bits; without it, one entry per real connection,
  Σ_{tile neurons} (real fan-in, zero padding excluded)·weight_bits. Neuron state (u, previous
  spike, bias) is not charged to synaptic memory: Loihi keeps compartment state in a separate
  per-core memory, bounded here by neurons_per_core;
- fan-in axons: distinct source neurons whose spikes reach the tile: per incoming synapse the
  box (source channels read) x (receptive rows, clipped) x (receptive columns, clipped); boxes of
  synapses sharing a source are united exactly (inclusion-exclusion), different sources add
  (the graph input counts as a source: its values arrive on input axons too);
- fan-out: distinct destination cores the tile's spikes reach, over all outgoing synapses
  (boxes into the same destination population united exactly).

Tile search: the candidate sizes along an axis of length N are ceil(N/n), n = 1..N (the smallest
tile for each tile count). Among all candidate (c_t, h_t, w_t) the fewest tiles wins; ties prefer
splitting output channels first, then rows, then columns (i.e. larger w_t, then h_t). Upper and
lower bounds for every candidate are computed vectorized; only candidates the bounds cannot
decide are evaluated exactly on their tile grid. Destinations are tiled before their sources
(reverse topological order), so fan-out is exact when a source is tiled; fan-out is checked but
not optimized jointly (a destination's tiling ignores its sources' fan-out).

Precision checks: max |weight| fits ``weight_bits`` (signed), delays fit ``delay_bits``, the
24-bit state and 12-bit decays of docs/semantics.md §3 fit the profile, and the 8-bit graded
input fits the message payload. Graded deployment (§3.4) also needs ceil(log2(D+1)) payload
bits; binary deployment needs one. A layer that cannot fit or a precision violation raises
SpikedetError naming the layer and the limit.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from itertools import combinations

import numpy as np

from spikedet.deploy.profiles import HardwareProfile
from spikedet.errors import SpikedetError
from spikedet.sim.qgraph import DECAY_BITS, STATE_BITS, QSynapse, QuantGraph

Interval = tuple[np.ndarray, np.ndarray]  # [lo, hi) per tile along one axis


@dataclass
class LayerMapping:
    """How one population sits on cores (per-tile figures are the worst tile's)."""

    name: str
    kind: str
    shape: tuple[int, int, int]
    neurons: int
    tiles: int
    tile_shape: tuple[int, int, int]
    splits: tuple[int, int, int]
    neurons_per_tile: int
    syn_mem_bits_per_tile: int
    syn_mem_bits_total: int
    fan_in_axons_per_tile: int
    fan_out_cores: int
    core_ids: tuple[int, int]  # [first, stop)


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

    def layer(self, name: str) -> LayerMapping:
        for lm in self.layers:
            if lm.name == name:
                return lm
        raise KeyError(name)

    def to_dict(self) -> dict:
        return asdict(self)


# ---- geometry --------------------------------------------------------------------------------
def _tiles_along(n: int, t: int) -> Interval:
    starts = np.arange(0, n, t, dtype=np.int64)
    return starts, np.minimum(starts + t, n)


def _sizes(n: int) -> np.ndarray:
    """Candidate tile sizes ceil(n/k), k = 1..n, largest first (the smallest per tile count)."""
    k = np.arange(1, n + 1, dtype=np.int64)
    return np.unique(-(-n // k))[::-1]


def _axis(s: QSynapse, qg: QuantGraph, dim: int) -> tuple[int, int, int, int]:
    """(n_in, k, stride, pad) of spatial dim 0 (rows) or 1 (cols)."""
    return qg.src_shape(s.src)[1 + dim], s.weight.shape[2 + dim], s.stride[dim], s.padding[dim]


def _rf(s: QSynapse, qg: QuantGraph, dim: int, iv: Interval) -> Interval:
    """Source rows/cols [lo, hi) read by output positions [start, stop), zero padding clipped."""
    n_in, k, st, pad = _axis(s, qg, dim)
    lo = np.clip(iv[0] * st - pad, 0, n_in)
    hi = np.clip((iv[1] - 1) * st - pad + k, 0, n_in)
    return lo, np.maximum(hi, lo)


def _rf_channels(s: QSynapse, qg: QuantGraph, iv: Interval) -> Interval:
    """Source channels read by output channels [start, stop) (whole groups)."""
    out_per_group = s.weight.shape[0] // s.groups
    in_per_group = s.weight.shape[1]
    return (iv[0] // out_per_group) * in_per_group, (
        (iv[1] - 1) // out_per_group + 1
    ) * in_per_group


def _conn_sum(s: QSynapse, qg: QuantGraph, dim: int, iv: Interval) -> np.ndarray:
    """Σ over output positions in [start, stop) of the kernel taps that land inside the input."""
    n_in, k, st, pad = _axis(s, qg, dim)
    n_out = qg.pop(s.dst).shape[1 + dim]
    first = np.arange(n_out, dtype=np.int64) * st - pad
    valid = np.clip(np.minimum(first + k, n_in) - np.maximum(first, 0), 0, None)
    cum = np.concatenate([[0], np.cumsum(valid)])
    return cum[iv[1]] - cum[iv[0]]


def check_geometry(qg: QuantGraph) -> None:
    """Every conv's output shape must equal its target population's shape (dilation 1)."""
    for s in qg.synapses:
        cin = qg.src_shape(s.src)[0]
        cout, cin_g, kh, kw = s.weight.shape
        dst = qg.pop(s.dst).shape
        out = tuple(
            (qg.src_shape(s.src)[1 + d] + 2 * s.padding[d] - (kh, kw)[d]) // s.stride[d] + 1
            for d in (0, 1)
        )
        if cin_g * s.groups != cin or (cout, *out) != tuple(dst):
            raise SpikedetError(
                f"conv maps {(cin, *qg.src_shape(s.src)[1:])} to {(cout, *out)} with groups "
                f"{s.groups}, but its source/target shapes are {qg.src_shape(s.src)} -> {dst}",
                f"synapse {s.name}",
            )


# ---- exact per-tile figures ------------------------------------------------------------------
def _box_union(boxes: list[tuple[Interval, Interval, Interval]]) -> np.ndarray:
    """|∪ boxes| on the tile grid by inclusion-exclusion; a box is per-axis [lo, hi) arrays."""
    total = np.zeros((len(boxes[0][0][0]), len(boxes[0][1][0]), len(boxes[0][2][0])), np.int64)
    for r in range(1, len(boxes) + 1):
        for subset in combinations(boxes, r):
            lens = []
            for ax in range(3):
                lo = np.max([b[ax][0] for b in subset], axis=0)
                hi = np.min([b[ax][1] for b in subset], axis=0)
                lens.append(np.clip(hi - lo, 0, None))
            total += (-1) ** (r + 1) * np.einsum("i,j,k->ijk", *lens)
    return total


def _grid_figures(qg, name, tile, weight_bits, sharing):
    """(neurons, syn_mem_bits, fan_in_axons) arrays over the tile grid of population ``name``."""
    shape = qg.pop(name).shape
    ivs = [_tiles_along(n, t) for n, t in zip(shape, tile)]
    lens = [iv[1] - iv[0] for iv in ivs]
    neurons = np.einsum("i,j,k->ijk", *lens)
    mem = np.zeros_like(neurons)
    by_src: dict[str, list] = {}
    for s in qg.incoming(name):
        cin_g, kh, kw = s.weight.shape[1:]
        if sharing:
            mem += (lens[0] * cin_g * kh * kw * weight_bits)[:, None, None]
        else:
            rows, cols = _conn_sum(s, qg, 0, ivs[1]), _conn_sum(s, qg, 1, ivs[2])
            mem += np.einsum("i,j,k->ijk", lens[0] * cin_g * weight_bits, rows, cols)
        box = (_rf_channels(s, qg, ivs[0]), _rf(s, qg, 0, ivs[1]), _rf(s, qg, 1, ivs[2]))
        by_src.setdefault(s.src, []).append(box)
    fan_in = np.zeros_like(neurons)
    for boxes in by_src.values():
        fan_in += _box_union(boxes)
    return neurons, mem, fan_in


def _reach(qg, src_ivs, dst_tiles: dict[str, tuple[int, int, int]], src: str) -> np.ndarray:
    """Distinct destination cores reached from each source box (src_ivs: per-axis intervals)."""
    total = np.zeros(tuple(len(iv[0]) for iv in src_ivs), np.int64)
    by_dst: dict[str, list] = {}
    for s in qg.synapses:
        if s.src != src or s.dst not in dst_tiles:
            continue
        d_ivs = [_tiles_along(n, t) for n, t in zip(qg.pop(s.dst).shape, dst_tiles[s.dst])]
        rfs = (_rf_channels(s, qg, d_ivs[0]), _rf(s, qg, 0, d_ivs[1]), _rf(s, qg, 1, d_ivs[2]))
        # hit[ax][i, j]: source box i overlaps the receptive interval of destination tile j
        hit = [
            (
                np.minimum(src_ivs[ax][1][:, None], rfs[ax][1][None])
                > np.maximum(src_ivs[ax][0][:, None], rfs[ax][0][None])
            )
            for ax in range(3)
        ]
        by_dst.setdefault(s.dst, []).append(hit)
    for hits in by_dst.values():
        for r in range(1, len(hits) + 1):
            for subset in combinations(hits, r):
                counts = [np.logical_and.reduce([h[ax] for h in subset]).sum(1) for ax in range(3)]
                total += (-1) ** (r + 1) * np.einsum("i,j,k->ijk", *counts)
    return total


def _unit_intervals(shape: tuple[int, ...]) -> list[Interval]:
    return [(np.arange(n, dtype=np.int64), np.arange(1, n + 1, dtype=np.int64)) for n in shape]


def destination_cores(
    qg: QuantGraph, mapping: Mapping, src: str, dst: str | None = None
) -> np.ndarray:
    """Per source neuron (C, H, W): how many distinct cores (of ``dst``, or of all) it reaches.

    ``src`` is a population or ``"input"``; one spike is one message per destination core.
    """
    tiles = {lm.name: lm.tile_shape for lm in mapping.layers if dst is None or lm.name == dst}
    return _reach(qg, _unit_intervals(qg.src_shape(src)), tiles, src)


# ---- precision -------------------------------------------------------------------------------
def _check_precision(qg: QuantGraph, profile: HardwareProfile) -> tuple[dict, dict]:
    where = f"{profile.name} mapping"
    wb, db = profile.weight_bits, profile.delay_bits
    w_need, d_need = 0, 0
    for s in qg.synapses:
        wmax = int(np.abs(s.weight).max()) if s.weight.size else 0
        need = wmax.bit_length() + 1
        w_need = max(w_need, need)
        if need > wb:
            raise SpikedetError(
                f"layer {s.dst}: synapse {s.name} has max |weight| {wmax}, which needs {need} "
                f"signed bits; {profile.name} allows {wb}-bit weights",
                where,
            )
        d_need = max(d_need, s.delay)
        if s.delay > (1 << db) - 1:
            raise SpikedetError(
                f"layer {s.dst}: synapse {s.name} needs a delay of {s.delay} steps; "
                f"{profile.name} has {db}-bit delays (max {(1 << db) - 1})",
                where,
            )
    if profile.state_bits < STATE_BITS:
        raise SpikedetError(
            f"the integer model needs {STATE_BITS}-bit neuron state; "
            f"{profile.name} has {profile.state_bits}",
            where,
        )
    decaying = [p.name for p in qg.populations if p.dv]
    if decaying and profile.decay_bits < DECAY_BITS:
        raise SpikedetError(
            f"layer {decaying[0]}: its decay needs {DECAY_BITS}-bit resolution; "
            f"{profile.name} has {profile.decay_bits}-bit decays",
            where,
        )
    if qg.input.bits > profile.message_bits:
        raise SpikedetError(
            f"input: the {qg.input.bits}-bit graded input needs {qg.input.bits}-bit message "
            f"payloads; {profile.name} carries {profile.message_bits}",
            where,
        )
    d_max = max((p.D for p in qg.populations if p.kind == "ilif"), default=1)
    spike_bits = max(1, math.ceil(math.log2(d_max + 1)))
    graded_ok = spike_bits <= profile.message_bits
    modes = {
        "graded": {
            "supported": graded_ok,
            "reason": f"D={d_max} spikes need {spike_bits}-bit payloads, "
            f"{profile.name} carries {profile.message_bits}",
        },
        "binary": {"supported": True, "reason": "unit spikes over T*D virtual steps"},
    }
    precision = {
        "weight_bits": {"needed": w_need, "available": wb},
        "delay_steps": {"needed": d_need, "available": (1 << db) - 1},
        "state_bits": {"needed": STATE_BITS, "available": profile.state_bits},
        "decay_bits": {"needed": DECAY_BITS if decaying else 0, "available": profile.decay_bits},
        "message_bits": {
            "needed_graded": max(spike_bits, qg.input.bits),
            "needed_binary": qg.input.bits,
            "available": profile.message_bits,
        },
    }
    return modes, precision


# ---- tile search -----------------------------------------------------------------------------
def _axis_maxima(qg, name, cand):
    """Per candidate tile size and incoming synapse: worst-tile receptive length / connections."""
    shape = qg.pop(name).shape
    syns = qg.incoming(name)
    rf = [np.zeros((len(c), len(syns)), np.int64) for c in cand]
    conn = [np.zeros((len(c), len(syns)), np.int64) for c in cand[1:]]
    for ax, sizes in enumerate(cand):
        for i, t in enumerate(sizes):
            iv = _tiles_along(shape[ax], int(t))
            for e, s in enumerate(syns):
                lo, hi = _rf_channels(s, qg, iv) if ax == 0 else _rf(s, qg, ax - 1, iv)
                rf[ax][i, e] = (hi - lo).max()
                if ax:
                    conn[ax - 1][i, e] = _conn_sum(s, qg, ax - 1, iv).max()
    return rf, conn


def _fail_one_neuron(qg, name, profile, dst_tiles) -> SpikedetError:
    """The error for a population whose single worst neuron exceeds a per-core limit."""
    neurons, mem, fan_in = _grid_figures(
        qg, name, (1, 1, 1), profile.weight_bits, profile.conv_weight_sharing
    )
    fan_out = _reach(qg, _unit_intervals(qg.pop(name).shape), dst_tiles, name)
    where, p = f"{profile.name} mapping", profile.name
    if fan_in.max() > profile.fan_in_axons:
        what = f"one neuron needs {fan_in.max()} fan-in axons, {p} allows {profile.fan_in_axons}"
    elif mem.max() > profile.synaptic_memory_bits:
        what = (
            f"one neuron needs {mem.max()} bits of synaptic memory, {p} has "
            f"{profile.synaptic_memory_bits}"
        )
    elif fan_out.max() > profile.fan_out_axons:
        what = (
            f"one neuron's spikes reach {fan_out.max()} cores, {p} allows {profile.fan_out_axons}"
        )
    else:  # cannot happen: a single neuron always fits the neuron limit
        what = f"no tile satisfies the limits of {p}"
    return SpikedetError(f"layer {name}: {what} per core", where)


def _tile_population(qg, name, profile, dst_tiles):
    """Fewest tiles satisfying all per-core limits; returns (tile, exact grid figures)."""
    shape = qg.pop(name).shape
    syns = qg.incoming(name)
    wb, sharing = profile.weight_bits, profile.conv_weight_sharing
    cand = [_sizes(n) for n in shape]
    rf, conn = _axis_maxima(qg, name, cand)
    c, h, w = np.meshgrid(*cand, indexing="ij")
    ci, hi, wi = np.meshgrid(*[np.arange(len(x)) for x in cand], indexing="ij")
    tiles = -(-shape[0] // c) * -(-shape[1] // h) * -(-shape[2] // w)
    fan_terms = [rf[0][ci, e] * rf[1][hi, e] * rf[2][wi, e] for e in range(len(syns))]
    if sharing:
        mem_terms = [c * s.weight[0].size * wb for s in syns]
    else:
        mem_terms = [
            c * s.weight.shape[1] * wb * conn[0][hi, e] * conn[1][wi, e] for e, s in enumerate(syns)
        ]
    zero = np.zeros_like(c)
    fan_ub, mem_ub = sum(fan_terms, zero), sum(mem_terms, zero)
    fan_lb = np.max(fan_terms, axis=0) if syns else zero
    mem_lb = np.max(mem_terms, axis=0) if syns else zero
    ok = (
        (c * h * w <= profile.neurons_per_core)
        & (fan_lb <= profile.fan_in_axons)
        & (mem_lb <= profile.synaptic_memory_bits)
    )
    sure = (fan_ub <= profile.fan_in_axons) & (mem_ub <= profile.synaptic_memory_bits)
    idx = np.flatnonzero(ok.ravel())
    order = idx[np.lexsort((-c.ravel()[idx], -h.ravel()[idx], -w.ravel()[idx], tiles.ravel()[idx]))]
    for k in order:
        tile = (int(c.flat[k]), int(h.flat[k]), int(w.flat[k]))
        grid = _grid_figures(qg, name, tile, wb, sharing)
        if not sure.flat[k] and (
            grid[1].max(initial=0) > profile.synaptic_memory_bits
            or grid[2].max(initial=0) > profile.fan_in_axons
        ):
            continue
        src_ivs = [_tiles_along(n, t) for n, t in zip(shape, tile)]
        fan_out = _reach(qg, src_ivs, dst_tiles, name)
        if fan_out.max(initial=0) <= profile.fan_out_axons:
            return tile, (*grid, fan_out)
    raise _fail_one_neuron(qg, name, profile, dst_tiles)


def map_graph(qg: QuantGraph, profile: HardwareProfile) -> Mapping:
    """Tile every population onto cores of ``profile`` (see the module docstring)."""
    if profile.kind != "neuromorphic":
        raise SpikedetError(f"{profile.name} is not a neuromorphic profile", profile.path)
    check_geometry(qg)
    modes, precision = _check_precision(qg, profile)
    chosen: dict[str, tuple[int, int, int]] = {}
    figures: dict[str, tuple] = {}
    for pop in reversed(qg.populations):  # destinations first: fan-out needs their tiles
        chosen[pop.name], figures[pop.name] = _tile_population(qg, pop.name, profile, chosen)
    layers, next_core = [], 0
    for pop in qg.populations:
        tile = chosen[pop.name]
        neurons, mem, fan_in, fan_out = figures[pop.name]
        splits = tuple(-(-n // t) for n, t in zip(pop.shape, tile))
        count = int(np.prod(splits))
        layers.append(
            LayerMapping(
                name=pop.name,
                kind=pop.kind,
                shape=tuple(pop.shape),
                neurons=pop.size,
                tiles=count,
                tile_shape=tile,
                splits=splits,
                neurons_per_tile=int(neurons.max()),
                syn_mem_bits_per_tile=int(mem.max(initial=0)),
                syn_mem_bits_total=int(mem.sum()),
                fan_in_axons_per_tile=int(fan_in.max(initial=0)),
                fan_out_cores=int(fan_out.max(initial=0)),
                core_ids=(next_core, next_core + count),
            )
        )
        next_core += count
    limits = {
        "neurons_per_core": profile.neurons_per_core,
        "synaptic_memory_bits": profile.synaptic_memory_bits,
        "fan_in_axons": profile.fan_in_axons,
        "fan_out_cores": profile.fan_out_axons,
        "cores_per_chip": profile.cores_per_chip,
        "conv_weight_sharing": profile.conv_weight_sharing,
    }
    return Mapping(
        profile=profile.name,
        layers=layers,
        cores=next_core,
        chips=max(1, -(-next_core // profile.cores_per_chip)),
        modes=modes,
        precision=precision,
        limits=limits,
    )
