"""Per-core figures of tilings: exact worst-tile neurons, memory and fan-in, for one tiling or
for every candidate tiling at once, and the fan-out of source tiles.

A tiling cuts a population into a Cartesian grid of boxes (channel x row x column tiles). Every
figure of a tile is a signed sum of *terms*, each a product of three per-axis quantities:

- memory of edge e: (stored weights of the tile's channels x weight_bits, x taps with weight
  sharing) x (valid row taps, or 1 with sharing) x (valid column taps, or 1);
- fan-in: per source, |∪ boxes| of the edges from that source by inclusion-exclusion over
  subsets (each subset's intersection is a box: a product of per-axis overlap lengths);
  different sources add.

So a figure only depends on each axis through a row of per-axis quantities, and tiles whose
rows coincide (e.g. all interior tiles) are evaluated once: the grid of *distinct* per-axis
rows is tiny even for one neuron per tile. For the tile search the distinct rows of every
candidate size are stacked and all candidate (c, h, w) tilings are evaluated in one einsum.
``best_tile`` picks, among the candidates within every per-core limit, the fewest tiles (ties
prefer splitting channels first, then rows, then columns).
"""

from __future__ import annotations

from itertools import combinations

import numpy as np

from spikedet.deploy.mapping.edits import collapse_psums, psum_signature
from spikedet.deploy.mapping.geometry import (
    HwEdge,
    HwGraph,
    Interval,
    candidate_sizes,
    rf_axis,
    tiles_along,
    valid_taps,
)
from spikedet.deploy.profiles import HardwareProfile
from spikedet.errors import SpikedetError

Term = tuple[int, tuple[int, int, int]]  # (sign, column index on each axis)
CHUNK_ELEMENTS = 1 << 22  # bound on the candidate-evaluation block (int64 elements)


def _range_reduce(ufunc: np.ufunc, values: np.ndarray, iv: Interval, empty: int) -> np.ndarray:
    """ufunc over values[lo:hi] for every (non-empty) interval, in one reduceat call."""
    padded = np.concatenate([values, np.array([empty], values.dtype)])
    return ufunc.reduceat(padded, np.stack([iv[0], iv[1]], 1).ravel())[::2]


def _range_sum(values: np.ndarray, iv: Interval) -> np.ndarray:
    cum = np.concatenate([[0], np.cumsum(values)])
    return cum[iv[1]] - cum[iv[0]]


def edge_interval(e: HwEdge, hw: HwGraph, ax: int, iv: Interval) -> Interval:
    """Source interval read by destination intervals ``iv`` on axis ``ax`` (0 = channels)."""
    if ax:
        return rf_axis(e, hw, ax - 1, iv)
    live = e.ch_hi > e.ch_lo
    big = np.iinfo(np.int64).max
    lo = _range_reduce(np.minimum, np.where(live, e.ch_lo, big), iv, big)
    hi = _range_reduce(np.maximum, np.where(live, e.ch_hi, 0), iv, 0)
    return np.where(hi > 0, lo, 0), hi


def axis_terms(
    hw: HwGraph, edges: list[HwEdge], ivs: list[Interval], weight_bits: int, sharing: bool
) -> tuple[list[np.ndarray], list[Term], list[Term]]:
    """Per axis the columns [n_intervals, K] of per-axis quantities, and the memory and fan-in
    terms. Column 0 holds the interval lengths, column 1 ones; the layout depends only on
    ``edges``, so tables built for different intervals share their terms."""
    cols: list[list[np.ndarray]] = [[iv[1] - iv[0], np.ones(len(iv[0]), np.int64)] for iv in ivs]

    def col(ax: int, values: np.ndarray) -> int:
        cols[ax].append(values)
        return len(cols[ax]) - 1

    mem: list[Term] = []
    for e in edges:  # an edge with copies stands for that many identical edges
        chan = _range_sum(e.weights, ivs[0]) * weight_bits
        if sharing:
            mem.append((e.copies, (col(0, chan * e.taps), 1, 1)))
        else:
            taps = [_range_sum(valid_taps(e, hw, d), ivs[1 + d]) for d in (0, 1)]
            mem.append((e.copies, (col(0, chan), col(1, taps[0]), col(2, taps[1]))))
    boxes: dict[str, list[list[Interval]]] = {}
    copies: dict[str, int] = {}
    for e in edges:
        boxes.setdefault(e.src, []).append([edge_interval(e, hw, ax, ivs[ax]) for ax in range(3)])
        copies[e.src] = copies.get(e.src, 0) + e.copies
    fan: list[Term] = []
    for src, group in boxes.items():
        # copies come from distinct sources: their boxes add (only for a source's sole edge)
        assert len(group) == 1 or copies[src] == len(group), "copies of a lone edge only"
        for r in range(1, len(group) + 1):
            for subset in combinations(group, r):
                idx = []
                for ax in range(3):
                    lo = np.max([b[ax][0] for b in subset], axis=0)
                    hi = np.min([b[ax][1] for b in subset], axis=0)
                    idx.append(col(ax, np.clip(hi - lo, 0, None)))
                sign = (-1) ** (r + 1) * (copies[src] if len(group) == 1 else 1)
                fan.append((sign, (idx[0], idx[1], idx[2])))
    return [np.stack(c, 1) for c in cols], mem, fan


_HASH_WEIGHTS: dict[int, np.ndarray] = {}  # row length -> fixed pseudo-random hash weights


def unique_rows(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The distinct rows of an int64 matrix, sorted by their first column, and their counts.

    Same rows as np.unique(axis=0) (whose sort on a void view is slow): rows are grouped by
    (first column, a wrapping int64 hash of the row) with a lexsort, and every row is then
    compared with its group's first; a hash collision (never seen) falls back to np.unique."""
    if len(rows) < 128:  # small: np.unique is faster than the set-up below
        uniq, counts = np.unique(rows, axis=0, return_counts=True)
        return uniq, counts
    if rows.shape[1] not in _HASH_WEIGHTS:
        _HASH_WEIGHTS[rows.shape[1]] = np.random.default_rng(rows.shape[1]).integers(
            1, 1 << 62, rows.shape[1]
        )
    key = rows @ _HASH_WEIGHTS[rows.shape[1]]  # wraps modulo 2^64: a hash, checked below
    order = np.lexsort((key, rows[:, 0]))
    first, key = rows[order, 0], key[order]
    new = np.ones(len(order), bool)
    new[1:] = (first[1:] != first[:-1]) | (key[1:] != key[:-1])
    reps = order[new]
    if not (rows[order] == rows[reps][np.cumsum(new) - 1]).all():
        uniq, counts = np.unique(rows, axis=0, return_counts=True)
        return uniq, counts
    return rows[reps], np.diff(np.append(np.flatnonzero(new), len(order)))


def _evaluate(tables: list[np.ndarray], terms: list[Term]) -> np.ndarray:
    """Σ_terms sign x product over the grid of table rows: [rows0, rows1, rows2]."""
    if not terms:
        return np.zeros(tuple(len(t) for t in tables), np.int64)
    signs = np.array([s for s, _ in terms], np.int64)
    a = [tables[ax][:, [idx[ax] for _, idx in terms]] for ax in range(3)]
    return np.einsum("it,jt,kt->ijk", a[0] * signs, a[1], a[2])


def grid_figures(
    hw: HwGraph,
    edges: list[HwEdge],
    shape: tuple[int, int, int],
    compartments: int,
    tile: tuple[int, int, int],
    weight_bits: int,
    sharing: bool,
) -> dict[str, int]:
    """Worst-tile neurons (compartments), memory bits and fan-in axons; memory of all tiles."""
    ivs = [tiles_along(n, t) for n, t in zip(shape, tile)]
    cols, mem_terms, fan_terms = axis_terms(hw, edges, ivs, weight_bits, sharing)
    uniq, counts = zip(*(unique_rows(c) for c in cols))
    mem = _evaluate(list(uniq), mem_terms)
    return {
        "neurons": int(np.prod([u[:, 0].max() for u in uniq])) * compartments,
        "mem": int(mem.max(initial=0)),
        "mem_total": int((mem * np.einsum("i,j,k->ijk", *counts)).sum()),
        "fan_in": int(_evaluate(list(uniq), fan_terms).max(initial=0)),
    }


def _candidate_intervals(shape: tuple[int, int, int]):
    """Per axis: candidate sizes, the tiles of every size concatenated, and each tile's size
    index."""
    cand, ivs, ids = [], [], []
    for n in shape:
        sizes = candidate_sizes(n)
        parts = [tiles_along(n, int(t)) for t in sizes]
        cand.append(sizes)
        ivs.append((np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])))
        ids.append(np.repeat(np.arange(len(sizes)), [len(p[0]) for p in parts]))
    return cand, ivs, ids


def _stack_unique(cols: np.ndarray, ids: np.ndarray, n: int) -> np.ndarray:
    """[n, width, K]: the distinct rows of each candidate, padded by repeating its last row
    (duplicates change no maximum)."""
    rows = unique_rows(np.column_stack([ids, cols]))[0]
    starts = np.searchsorted(rows[:, 0], np.arange(n))
    counts = np.diff(np.append(starts, len(rows)))
    take = starts[:, None] + np.minimum(np.arange(counts.max())[None], counts[:, None] - 1)
    return rows[take, 1:]


def _candidate_max(stacked: list[np.ndarray], terms: list[Term]) -> np.ndarray:
    """Worst tile of Σ_terms sign x product, for every candidate (c, h, w): [n_c, n_h, n_w].

    Evaluated as one float64 matrix product per block of channel candidates: every operand and
    partial sum is an integer far below 2^53 (bits x weights x taps x rows x columns), so the
    float result is exact."""
    n = [len(s) for s in stacked]
    if not terms:
        return np.zeros(n, np.int64)
    signs = np.array([s for s, _ in terms], np.float64)
    a = [stacked[ax][:, :, [idx[ax] for _, idx in terms]].astype(np.float64) for ax in range(3)]
    u = [x.shape[1] for x in a]
    right = a[2].reshape(-1, len(terms)).T  # [T, n_w·U2]
    per_c = max(1, CHUNK_ELEMENTS // max(1, u[0] * n[1] * u[1] * max(n[2] * u[2], len(terms))))
    out = []
    for c0 in range(0, n[0], per_c):
        left = (a[0][c0 : c0 + per_c, :, None, None, :] * signs) * a[1][None, None]
        grid = (left.reshape(-1, len(terms)) @ right).reshape(-1, u[0], n[1], u[1], n[2], u[2])
        # max over the row axes: contiguous after a transpose (much faster than axis=(1, 3, 5))
        out.append(grid.transpose(0, 2, 4, 1, 3, 5).reshape(*grid.shape[::2], -1).max(-1))
    return np.rint(np.concatenate(out)).astype(np.int64)


def candidate_figures(
    hw: HwGraph,
    edges: list[HwEdge],
    shape: tuple[int, int, int],
    weight_bits: int,
    sharing: bool,
) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """Candidate sizes per axis (ceil(n/k), largest first) and, for every candidate tiling
    (c, h, w), the exact worst-tile memory and fan-in: arrays [n_c, n_h, n_w]."""
    cand, ivs, ids = _candidate_intervals(shape)
    cols, mem_terms, fan_terms = axis_terms(hw, edges, ivs, weight_bits, sharing)
    stacked = [_stack_unique(cols[ax], ids[ax], len(cand[ax])) for ax in range(3)]
    return cand, _candidate_max(stacked, mem_terms), _candidate_max(stacked, fan_terms)


def fanout_terms(
    hw: HwGraph, src: str, ivs: list[Interval], dst_tiles: dict[str, tuple[int, int, int]]
) -> tuple[list[np.ndarray], list[Term]]:
    """Per axis, columns counting the destination tiles along that axis whose receptive interval
    overlaps each source interval (for every subset of the edges into one destination: all of
    them), and the inclusion-exclusion terms: reach = Σ sign x product."""
    cols: list[list[np.ndarray]] = [[np.ones(len(iv[0]), np.int64)] for iv in ivs]
    by_dst: dict[str, list[HwEdge]] = {}
    for e in hw.outgoing(src):
        if e.dst in dst_tiles:
            by_dst.setdefault(e.dst, []).append(e)
    terms: list[Term] = []
    for dst, edges in by_dst.items():
        d_ivs = [tiles_along(n, t) for n, t in zip(hw.shape(dst), dst_tiles[dst])]
        hits = []
        for e in edges:
            rfs = [edge_interval(e, hw, ax, d_ivs[ax]) for ax in range(3)]
            # hit[ax][i, j]: source interval i overlaps the receptive interval of tile j
            hits.append([
                np.minimum(ivs[ax][1][:, None], rfs[ax][1][None])
                > np.maximum(ivs[ax][0][:, None], rfs[ax][0][None])
                for ax in range(3)
            ])  # fmt: skip
        for r in range(1, len(hits) + 1):
            for subset in combinations(hits, r):
                idx = []
                for ax in range(3):
                    both = np.logical_and.reduce([h[ax] for h in subset])
                    cols[ax].append(both.sum(1))
                    idx.append(len(cols[ax]) - 1)
                terms.append(((-1) ** (r + 1), (idx[0], idx[1], idx[2])))
    return [np.stack(c, 1) for c in cols], terms


def candidate_fanout(
    hw: HwGraph, src: str, shape: tuple[int, int, int], dst_tiles: dict
) -> np.ndarray:
    """For every candidate tiling of ``src``: its worst tile's destination cores [n_c, n_h, n_w]."""
    cand, ivs, ids = _candidate_intervals(shape)
    cols, terms = fanout_terms(hw, src, ivs, dst_tiles)
    stacked = [_stack_unique(cols[ax], ids[ax], len(cand[ax])) for ax in range(3)]
    return _candidate_max(stacked, terms)


def reach(
    hw: HwGraph, src: str, src_ivs: list[Interval], dst_tiles: dict[str, tuple[int, int, int]]
) -> np.ndarray:
    """Per source box of the grid ``src_ivs``: distinct destination tiles it reaches."""
    cols, terms = fanout_terms(hw, src, src_ivs, dst_tiles)
    return _evaluate(cols, terms)


def unit_intervals(shape: tuple[int, ...]) -> list[Interval]:
    return [(np.arange(n, dtype=np.int64), np.arange(1, n + 1, dtype=np.int64)) for n in shape]


def tile_count(shape: tuple[int, ...], tile: tuple[int, ...]) -> int:
    """Cores of a grid of ``tile`` boxes over ``shape``: Π ceil(n / t)."""
    return int(np.prod([-(-n // t) for n, t in zip(shape, tile)]))


def tile_fanout(
    hw: HwGraph, src: str, shape: tuple[int, int, int], tile: tuple[int, int, int], dst_tiles: dict
) -> int:
    """The worst tile's destination cores for one tiling of ``src`` (distinct per-axis rows
    only, like ``grid_figures``)."""
    if not any(e.dst in dst_tiles for e in hw.outgoing(src)):
        return 0
    ivs = [tiles_along(n, t) for n, t in zip(shape, tile)]
    cols, terms = fanout_terms(hw, src, ivs, dst_tiles)
    return int(_evaluate([unique_rows(c)[0] for c in cols], terms).max(initial=0))


FANOUT_TRIES = 8  # preferred tilings whose fan-out is checked one by one before all at once


def best_tile(hw: HwGraph, name: str, profile: HardwareProfile, chosen: dict) -> tuple:
    """Fewest tiles of population ``name`` within every per-core limit of ``profile``, its
    fan-out counted over the destinations already in ``chosen``: (tile, grid figures, fan-out).

    Fan-out rarely binds, so it is checked for the preferred candidates (within the other
    limits, in order) one at a time, and for all candidates at once (``candidate_fanout``)
    only when the first FANOUT_TRIES exceed it: the same choice either way. Raises
    SpikedetError (``one_neuron_error``) when no tile fits."""
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
        profile.weight_bits, profile.conv_weight_sharing,
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
