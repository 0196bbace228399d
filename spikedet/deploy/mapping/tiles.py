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

from spikedet.deploy.core_model import CoreModel
from spikedet.deploy.mapping.connectivity import edge_weight_bits, is_conv, memory_words
from spikedet.deploy.mapping.geometry import (
    HwEdge,
    HwGraph,
    Interval,
    candidate_sizes,
    rf_axis,
    tiles_along,
    unique_rows,
    valid_taps,
)

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
    hw: HwGraph,
    edges: list[HwEdge],
    ivs: list[Interval],
    weight_bits: int,
    sharing: bool,
    model: CoreModel | None = None,
) -> tuple[list[np.ndarray], list[Term], list[Term]]:
    """Per axis the columns [n_intervals, K] of per-axis quantities, and the memory and fan-in
    terms. Column 0 holds the interval lengths, column 1 ones; the layout depends only on
    ``edges``, so tables built for different intervals share their terms. With a core
    ``model`` (``connectivity``) memory is packed words, and conv edges cost a constant number
    of (population) axons."""
    cols: list[list[np.ndarray]] = [[iv[1] - iv[0], np.ones(len(iv[0]), np.int64)] for iv in ivs]

    def col(ax: int, values: np.ndarray) -> int:
        cols[ax].append(values)
        return len(cols[ax]) - 1

    mem: list[Term] = []
    for e in edges:  # an edge with copies stands for that many identical edges
        if model is not None:
            lo, hi = edge_interval(e, hw, 0, ivs[0])
            wb = edge_weight_bits(e, weight_bits)
            words = memory_words(e, hw, hi - lo, _range_sum(e.weights, ivs[0]), wb, model)
            mem.append((e.copies, (col(0, words * model.word_bits), 1, 1)))
            continue
        chan = _range_sum(e.weights, ivs[0]) * weight_bits
        if sharing:
            mem.append((e.copies, (col(0, chan * e.taps), 1, 1)))
        else:
            taps = [_range_sum(valid_taps(e, hw, d), ivs[1 + d]) for d in (0, 1)]
            mem.append((e.copies, (col(0, chan), col(1, taps[0]), col(2, taps[1]))))
    boxes: dict[str, list[list[Interval]]] = {}
    copies: dict[str, int] = {}
    fan: list[Term] = []
    for e in edges:
        if model is not None and is_conv(e, hw):
            fan.append((e.copies * model.conv_axons, (1, 1, 1)))  # population axons
            continue
        boxes.setdefault(e.src, []).append([edge_interval(e, hw, ax, ivs[ax]) for ax in range(3)])
        copies[e.src] = copies.get(e.src, 0) + e.copies
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
    model: CoreModel | None = None,
) -> dict[str, int]:
    """Worst-tile neurons (compartments), memory bits and fan-in axons; memory of all tiles."""
    ivs = [tiles_along(n, t) for n, t in zip(shape, tile)]
    cols, mem_terms, fan_terms = axis_terms(hw, edges, ivs, weight_bits, sharing, model)
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
    model: CoreModel | None = None,
) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """Candidate sizes per axis (ceil(n/k), largest first) and, for every candidate tiling
    (c, h, w), the exact worst-tile memory and fan-in: arrays [n_c, n_h, n_w]."""
    cand, ivs, ids = _candidate_intervals(shape)
    cols, mem_terms, fan_terms = axis_terms(hw, edges, ivs, weight_bits, sharing, model)
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
