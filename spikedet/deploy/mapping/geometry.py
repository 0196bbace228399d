"""The hardware view of a QuantGraph: compartment arrays and the edges that feed them.

Mapping and counting work on this view rather than on the QuantGraph itself, because the
hardware has more than the integer model's synapses (docs/semantics.md §3.2):

- a conv synapse (``out_offset`` o, ``upsample`` f) is an edge whose destination channel
  o + j reads source channels of conv output channel j (its group), and whose destination
  row y reads conv output row y // f (nearest upsampling is fan-out wiring, §2.8);
- a max-pool population M (§2.7b) is D compartments per neuron (one threshold compartment
  per spike level) fed by a pool edge from its source: kernel, stride and padding of the pool,
  destination channel c reading source channel c, weight 1 per level and window tap;
- a fan-in split (``splits``) adds partial-sum populations and identity edges, and a
  delay beyond the profile's (``delays``) relay populations and identity edges.

An edge stores, per destination channel o, the interval [ch_lo[o], ch_hi[o]) of source
channels it reads (empty when ch_lo = ch_hi) and ``weights[o]``, the weights stored per kernel
tap for that channel. Every geometric figure of mapping and counting derives from these arrays
and the per-axis conv arithmetic below. The channels a box of destination channels reads are
taken as the interval [min ch_lo, max ch_hi) over its non-empty channels: exact for dense and
grouped convs and pools, an over-estimate only for a grouped conv whose destination channels are
partly re-routed through partial sums.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from spikedet.errors import SpikedetError
from spikedet.sim.qgraph import SPIKING_KINDS, QPopulation, QSynapse, QuantGraph

Interval = tuple[np.ndarray, np.ndarray]  # [lo, hi) per tile along one axis
SPIKING = SPIKING_KINDS


def levels_of(qg: QuantGraph, pop: QPopulation) -> int:
    """Spike levels D of a population: I-LIF its D, LIF and cuba 1, max-pool its source's,
    readouts (readout, li) 0."""
    return {"ilif": int(pop.D), "lif": 1, "cuba": 1, "maxpool": int(pop.D)}.get(pop.kind, 0)


def max_source_value(qg: QuantGraph, src: str) -> int:
    """The largest value a source sends: 2^bits - 1 for the input, D for spiking populations."""
    if src == "input":
        return (1 << qg.input.bits) - 1
    return levels_of(qg, qg.pop(src))


@dataclass
class HwPop:
    """A hardware population: ``compartments`` neurons per logical neuron of ``shape``."""

    name: str
    layer: str  # the QuantGraph population it realizes (itself, or the layer it sums for)
    kind: str  # ilif | lif | maxpool | readout | psum | relay
    shape: tuple[int, int, int]
    compartments: int = 1
    carries: str = ""  # relay: the population (or "input") whose spikes it forwards

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))


@dataclass
class HwEdge:
    """Source spikes (or partial sums) into a hardware population; see the module docstring."""

    name: str
    src: str
    dst: str
    kind: str  # conv | pool | psum | relay
    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    upsample: int
    ch_lo: np.ndarray = field(repr=False)  # [C_dst]
    ch_hi: np.ndarray = field(repr=False)  # [C_dst]
    weights: np.ndarray = field(repr=False)  # [C_dst] stored weights per kernel tap
    synapse: str = ""  # the QSynapse this edge realizes (all or part of)
    copies: int = 1  # stands for this many identical edges from distinct sources (tile search)
    weight_bits: int = 0  # bits of one stored weight as fitted to its integers (0: profile's)
    lag: int = 0  # logical steps the synapse delays its source (NIR recurrence, Delay; §4.4)

    @property
    def taps(self) -> int:
        return self.kernel[0] * self.kernel[1]

    def readers(self, src_channels: int) -> np.ndarray:
        """Per source channel: how many destination channels read it (difference array)."""
        diff = np.zeros(src_channels + 1, np.int64)
        live = self.ch_hi > self.ch_lo
        np.add.at(diff, self.ch_lo[live], 1)
        np.add.at(diff, self.ch_hi[live], -1)
        return np.cumsum(diff)[:src_channels]


class HwGraph:
    """Hardware populations in topological order and their edges, with lookups."""

    def __init__(self, input_shape: tuple, pops: list[HwPop], edges: list[HwEdge]):
        self.input_shape = tuple(int(v) for v in input_shape)
        self.pops = pops
        self.edges = edges
        self._pop = {p.name: p for p in pops}
        self._in: dict[str, list[HwEdge]] = {p.name: [] for p in pops}
        self._out: dict[str, list[HwEdge]] = {p.name: [] for p in pops}
        self._out["input"] = []
        for e in edges:
            self._in[e.dst].append(e)
            self._out[e.src].append(e)

    def pop(self, name: str) -> HwPop:
        return self._pop[name]

    def shape(self, name: str) -> tuple[int, int, int]:
        return self.input_shape if name == "input" else self._pop[name].shape

    def incoming(self, name: str) -> list[HwEdge]:
        return self._in[name]

    def outgoing(self, name: str) -> list[HwEdge]:
        return self._out[name]

    def of_layer(self, layer: str) -> list[HwPop]:
        return [p for p in self.pops if p.layer == layer]


def conv_edge(qg: QuantGraph, s: QSynapse) -> HwEdge:
    """The edge of a conv synapse: groups, ``out_offset`` and ``upsample`` (§3.2)."""
    cout, cin_g = s.weight.shape[:2]
    offset, up = s.out_offset, s.upsample
    c_dst = qg.pop(s.dst).shape[0]
    group = np.arange(cout) // (cout // s.groups)
    lo, hi = np.zeros(c_dst, np.int64), np.zeros(c_dst, np.int64)
    lo[offset : offset + cout] = group * cin_g
    hi[offset : offset + cout] = (group + 1) * cin_g
    return HwEdge(
        s.name, s.src, s.dst, "conv", tuple(s.weight.shape[2:]), tuple(s.stride),
        tuple(s.padding), up, lo, hi, hi - lo, s.name, weight_bits=fitted_weight_bits(s.weight),
        lag=s.lag,
    )  # fmt: skip


def fitted_weight_bits(weight: np.ndarray) -> int:
    """Signed mantissa bits of integer weights after their common power-of-two factor (the
    exponent), as lava-dl netx fits weights to Loihi synapses (``optimize_weight_bits``)."""
    mags = np.abs(np.asarray(weight, np.int64)).ravel()
    mags = mags[mags > 0]
    if not len(mags):
        return 1
    common = int(np.gcd.reduce(mags))
    shift = (common & -common).bit_length() - 1  # trailing zero bits shared by every weight
    return int(mags.max() >> shift).bit_length() + 1


def pool_edge(qg: QuantGraph, pop: QPopulation) -> HwEdge:
    """The sum-pool edge of a max-pool population: channel c reads channel c, D weights per tap."""
    c = pop.shape[0]
    lo = np.arange(c, dtype=np.int64)
    weights = np.full(c, levels_of(qg, pop), np.int64)
    return HwEdge(
        f"{pop.name}.pool", pop.src, pop.name, "pool", tuple(pop.pool_kernel),
        tuple(pop.pool_stride), tuple(pop.pool_padding), 1, lo, lo + 1, weights, "",
    )  # fmt: skip


def hardware_view(qg: QuantGraph) -> HwGraph:
    """The graph as hardware populations and edges, before any fan-in split."""
    pops, edges = [], [conv_edge(qg, s) for s in qg.synapses]
    for p in qg.populations:
        comp = levels_of(qg, p) if p.kind == "maxpool" else 1
        pops.append(HwPop(p.name, p.name, p.kind, tuple(p.shape), comp))
        if p.kind == "maxpool":
            edges.append(pool_edge(qg, p))
    return HwGraph(qg.input.shape, pops, edges)


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


# ---- per-axis arithmetic ---------------------------------------------------------------------
def tiles_along(n: int, t: int) -> Interval:
    starts = np.arange(0, n, t, dtype=np.int64)
    return starts, np.minimum(starts + t, n)


def candidate_sizes(n: int) -> np.ndarray:
    """Candidate tile sizes ceil(n/k), k = 1..n, largest first (the smallest per tile count)."""
    k = np.arange(1, n + 1, dtype=np.int64)
    return np.unique(-(-n // k))[::-1]


def _axis(e: HwEdge, hw: HwGraph, dim: int) -> tuple[int, int, int, int]:
    """(source length, kernel, stride, padding) of spatial dim 0 (rows) or 1 (columns)."""
    return hw.shape(e.src)[1 + dim], e.kernel[dim], e.stride[dim], e.padding[dim]


def rf_axis(e: HwEdge, hw: HwGraph, dim: int, iv: Interval) -> Interval:
    """Source rows/cols [lo, hi) read by destination positions [start, stop), padding clipped.

    Destination position y is conv output position y // f (nearest upsampling)."""
    n_in, k, st, pad = _axis(e, hw, dim)
    first, last = iv[0] // e.upsample, (iv[1] - 1) // e.upsample
    lo = np.clip(first * st - pad, 0, n_in)
    hi = np.clip(last * st - pad + k, 0, n_in)
    return lo, np.maximum(hi, lo)


def _channel_runs(e: HwEdge, iv: Interval) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per channel tile: (min ch_lo, max ch_hi, Σ weights) over its non-empty channels."""
    live = e.ch_hi > e.ch_lo
    big = np.iinfo(np.int64).max
    lo = np.minimum.reduceat(np.where(live, e.ch_lo, big), iv[0])
    hi = np.maximum.reduceat(np.where(live, e.ch_hi, 0), iv[0])
    weights = np.add.reduceat(e.weights, iv[0])
    empty = hi == 0
    return np.where(empty, 0, lo), hi, weights


def rf_channels(e: HwEdge, iv: Interval) -> Interval:
    """Source channels [lo, hi) read by destination channel tiles [start, stop)."""
    lo, hi, _ = _channel_runs(e, iv)
    return lo, hi


def weight_sum(e: HwEdge, iv: Interval) -> np.ndarray:
    """Σ over the tile's destination channels of the weights stored per kernel tap."""
    return _channel_runs(e, iv)[2]


def valid_taps(e: HwEdge, hw: HwGraph, dim: int) -> np.ndarray:
    """Per destination position: kernel taps inside the source (padding excluded)."""
    n_in, k, st, pad = _axis(e, hw, dim)
    n_out = hw.shape(e.dst)[1 + dim] // e.upsample
    first = np.arange(n_out, dtype=np.int64) * st - pad
    valid = np.clip(np.minimum(first + k, n_in) - np.maximum(first, 0), 0, None)
    return np.repeat(valid, e.upsample)


def conn_sum(e: HwEdge, hw: HwGraph, dim: int, iv: Interval) -> np.ndarray:
    """Σ over destination positions in [start, stop) of their valid kernel taps."""
    cum = np.concatenate([[0], np.cumsum(valid_taps(e, hw, dim))])
    return cum[iv[1]] - cum[iv[0]]


def cover_counts(e: HwEdge, hw: HwGraph, dim: int) -> np.ndarray:
    """Per source position: destination positions whose window covers it (x f copies)."""
    n_in, k, st, pad = _axis(e, hw, dim)
    n_out = hw.shape(e.dst)[1 + dim] // e.upsample
    first = np.arange(n_out, dtype=np.int64) * st - pad
    diff = np.zeros(n_in + 1, np.int64)
    np.add.at(diff, np.clip(first, 0, n_in), 1)
    np.add.at(diff, np.clip(first + k, 0, n_in), -1)
    return np.cumsum(diff)[:n_in] * e.upsample


def window_max(e: HwEdge, hw: HwGraph) -> int:
    """The largest number of source positions one destination neuron reads per channel."""
    rows = rf_axis(e, hw, 0, tiles_along(hw.shape(e.dst)[1], 1))
    cols = rf_axis(e, hw, 1, tiles_along(hw.shape(e.dst)[2], 1))
    return int((rows[1] - rows[0]).max(initial=0) * (cols[1] - cols[0]).max(initial=0))


# ---- shape checks ----------------------------------------------------------------------------
def _pooled(n: int, k: int, s: int, p: int) -> int:
    return (n + 2 * p - k) // s + 1


def check_geometry(qg: QuantGraph) -> None:
    """Every conv's (offset, upsampled) output and every pool's output fits its target."""
    for s in qg.synapses:
        src, dst = qg.src_shape(s.src), qg.pop(s.dst).shape
        cout, cin_g, kh, kw = s.weight.shape
        offset, up = s.out_offset, s.upsample
        out = [_pooled(src[1 + d], (kh, kw)[d], s.stride[d], s.padding[d]) for d in (0, 1)]
        ok = cin_g * s.groups == src[0] and up >= 1 and 0 <= offset
        if not ok or offset + cout > dst[0] or [up * o for o in out] != list(dst[1:]):
            raise SpikedetError(
                f"conv maps {src} with groups {s.groups} to {(cout, *out)} (upsampled x{up}, "
                f"channels from {offset}), but its target has shape {dst}",
                f"synapse {s.name}",
            )
    for p in qg.populations:
        if p.kind != "maxpool":
            continue
        where = f"population {p.name}"
        if p.src not in {q.name for q in qg.populations} or qg.pop(p.src).kind not in SPIKING:
            raise SpikedetError(f"max-pool source {p.src!r} is not a spiking population", where)
        if qg.incoming(p.name):
            raise SpikedetError("a max-pool population has no incoming synapses", where)
        src = qg.pop(p.src).shape
        out = [
            _pooled(src[1 + d], p.pool_kernel[d], p.pool_stride[d], p.pool_padding[d])
            for d in (0, 1)
        ]
        if (src[0], *out) != tuple(p.shape):
            raise SpikedetError(f"pooling {src} gives {(src[0], *out)}, not {p.shape}", where)
