"""Activity counting (docs/semantics.md §3.5) from one simulation's integer spikes.

Spikes s ∈ {0..D} are [T, B, C, H, W] per spiking population (I-LIF, LIF with D = 1, max-pool;
a max-pool population missing from ``spikes`` is computed from its source, s_M = maxpool(s)).

- messages of P = #{s > 0}; units = Σ s; firing rate = units / (N·T·B) over logical neurons
  (SpikeYOLO's convention, which includes D); message rate = messages / (N·T·B).
- real fan-out of a source neuron in conv e = (destination channels reading its channel) x
  rows(y) x cols(x), where rows(y) counts the destination rows whose window covers input row y
  (zero padding excluded) and includes the f copies of an upsampled synapse (§3.2).
- synaptic events of a conv, graded mode = Σ_{t,b} Σ_{s>0} fan-out; binary mode = Σ s·fan-out;
  dense = all real connections x T x B (the ANN-equivalent MACs, NeuroBench's rule). The input
  synapse is the encoding layer: graded 8-bit values (zeros send nothing) in both modes.
- a max-pool population M reads its source through a sum-pool ``pool`` synapse (§3.2): events =
  Σ s x (window targets inside the map) in both modes (each of the s levels reaches its
  threshold compartment), dense = D x real connections x T x B; it is not a MAC layer of the
  papers' 45 nm model (a max in the ANN is a comparison).
- neuron updates of P = compartments·T·B (compartments = N, or D·N for max-pool); active = the
  neuron fired or some source neuron in its receptive field sent a message at that step.
  Binary mode runs T·Dv virtual steps (Dv = max D of the graph): compartments·T·Dv·B updates,
  of which a neuron is active in max(s, m) slots, m = the largest source value in its receptive
  field (a graded input counts as one slot). A max-pool level compartment k is active exactly
  when the window max reaches k, in one slot: active = binary active = Σ s_M.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from spikedet.deploy.mapping.geometry import (
    HwEdge,
    HwGraph,
    check_geometry,
    conv_edge,
    cover_counts,
    hardware_view,
    levels_of,
    pool_edge,
)
from spikedet.errors import SpikedetError
from spikedet.sim.qgraph import READOUT_KINDS, QuantGraph

CHUNK = 4  # samples processed at once when building [T, chunk, C, H, W] indicator maps


@dataclass
class PopulationActivity:
    """Counts for one population (or the input), summed over T steps and B samples."""

    name: str
    kind: str
    neurons: int  # logical neurons
    messages: int
    units: int
    updates: int  # compartment updates
    active: int
    binary_updates: int
    binary_active: int
    message_map: np.ndarray = field(repr=False)  # (C, H, W): #(t, b) with a message
    unit_map: np.ndarray = field(repr=False)  # (C, H, W): Σ_(t, b) values
    steps: int = 0  # T·B: logical neuron-steps per neuron

    @property
    def firing_rate(self) -> float:
        return self.units / (self.neurons * self.steps) if self.steps else 0.0

    @property
    def message_rate(self) -> float:
        return self.messages / (self.neurons * self.steps) if self.steps else 0.0


@dataclass
class SynapseActivity:
    """Synaptic events of one synapse, summed over T and B; ``dense`` counts every real
    connection; ``kind`` is conv or pool (a max-pool's sum-pool synapse)."""

    name: str
    src: str
    dst: str
    encoding: bool
    events_graded: int
    events_binary: int
    dense: int
    flops_padded: int  # Cout·(Cin/g)·KH·KW·Hout·Wout: the papers' per-step FLOPs, padding included
    kind: str = "conv"


@dataclass
class Activity:
    T: int
    B: int
    virtual_steps: int  # Dv: binary slots per logical step
    input: PopulationActivity
    populations: dict[str, PopulationActivity]
    synapses: dict[str, SynapseActivity]
    sent: dict[str, np.ndarray] = field(default_factory=dict, repr=False)  # per step values

    def to_dict(self) -> dict:
        """Counts without the per-neuron maps, plus firing rates."""

        def pop(a: PopulationActivity) -> dict:
            keys = ("kind", "neurons", "messages", "units", "updates", "active", "binary_updates")
            return {**{k: getattr(a, k) for k in keys + ("binary_active",)}, "fr": a.firing_rate}

        syns = {k: {**vars(v)} for k, v in self.synapses.items()}
        return {
            "T": self.T, "B": self.B, "virtual_steps": self.virtual_steps,
            "input": pop(self.input), "populations": {k: pop(v) for k, v in self.populations.items()},
            "synapses": syns,
        }  # fmt: skip


# ---- receptive-field maxima ------------------------------------------------------------------
def window_max(x: np.ndarray, axis: int, k: int, stride: int, pad: int, n_out: int) -> np.ndarray:
    """Max over each window along ``axis`` (values >= 0, so zero padding never wins)."""
    right = max(0, (n_out - 1) * stride + k - pad - x.shape[axis])
    widths = [(0, 0)] * x.ndim
    widths[axis] = (pad, right)
    win = sliding_window_view(np.pad(x, widths), k, axis=axis)
    index = [slice(None)] * win.ndim
    index[axis] = slice(0, (n_out - 1) * stride + 1, stride)
    return win[tuple(index)].max(axis=-1)


def received_max(values: np.ndarray, e: HwEdge, dst_shape: tuple[int, int, int]) -> np.ndarray:
    """[N, C_dst, H, W]: the largest source value in each destination neuron's receptive field
    through edge ``e`` (channels it reads, conv windows, f x f upsampled copies)."""
    n, cin = values.shape[:2]
    live = e.ch_hi > e.ch_lo
    pairs, inverse = np.unique(np.stack([e.ch_lo, e.ch_hi], 1)[live], axis=0, return_inverse=True)
    padded = np.concatenate([values, np.zeros((n, 1, *values.shape[2:]), values.dtype)], 1)
    per_range = np.maximum.reduceat(padded, pairs.ravel(), axis=1)[:, ::2]
    for dim in (0, 1):
        n_out = dst_shape[1 + dim] // e.upsample
        args = (e.kernel[dim], e.stride[dim], e.padding[dim], n_out)
        per_range = window_max(per_range, 2 + dim, *args)
    out = np.zeros((n, dst_shape[0], *per_range.shape[2:]), values.dtype)
    out[:, live] = per_range[:, inverse.ravel()]
    if e.upsample > 1:
        out = out.repeat(e.upsample, axis=2).repeat(e.upsample, axis=3)
    return out


def _as_steps(x: np.ndarray, T: int, what: str, shape: tuple) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim == 4:  # a static input, presented at every logical step
        x = np.broadcast_to(x[None], (T, *x.shape))
    if x.ndim != 5 or x.shape[0] != T or tuple(x.shape[2:]) != tuple(shape):
        raise SpikedetError(f"expected [T={T}, B, *{tuple(shape)}], got {x.shape}", what)
    return x


def active_counts(
    hw: HwGraph, name: str, sent: dict, own: np.ndarray | None, v_steps: int
) -> tuple[int, int]:
    """(graded active updates, binary active slots) of hardware population ``name``."""
    shape = hw.shape(name)
    T, B = next(iter(sent.values())).shape[:2]
    active = b_active = 0
    for b0 in range(0, B, CHUNK):
        b1 = min(B, b0 + CHUNK)
        recv = np.zeros((T, b1 - b0, *shape), np.int64)
        for e in hw.incoming(name):
            src = sent[e.src][:, b0:b1]
            got = received_max(src.reshape(-1, *src.shape[2:]), e, shape)
            np.maximum(recv, got.reshape(recv.shape), out=recv)
        mine = own[:, b0:b1] if own is not None else np.zeros_like(recv)
        active += int(((recv > 0) | (mine > 0)).sum())
        b_active += int(np.minimum(np.maximum(recv, mine), v_steps).sum())
    return active, b_active


# ---- counting --------------------------------------------------------------------------------
def _population(name, kind, vals, shape, comp, T, B, v_steps, active, b_active):
    n = int(np.prod(shape))
    if vals is None:  # a readout: integrates, never sends
        msg_map = unit_map = np.zeros(shape, np.int64)
    else:
        msg_map = (vals > 0).sum(axis=(0, 1)).astype(np.int64)
        unit_map = vals.sum(axis=(0, 1), dtype=np.int64)
    return PopulationActivity(
        name, kind, n, int(msg_map.sum()), int(unit_map.sum()), n * comp * T * B, int(active),
        n * comp * T * v_steps * B, int(b_active), msg_map, unit_map, T * B,
    )  # fmt: skip


def _pool_spikes(qg: QuantGraph, name: str, vals: dict) -> np.ndarray:
    """s_M = maxpool(s_src) with zero padding (§2.7b), from the source's [T, B, C, H, W]."""
    p = qg.pop(name)
    x = vals[p.src]
    for dim in (0, 1):
        args = (p.pool_kernel[dim], p.pool_stride[dim], p.pool_padding[dim], p.shape[1 + dim])
        x = window_max(x, 3 + dim, *args)
    return x


def _synapse(e: HwEdge, hw: HwGraph, src: PopulationActivity, T: int, B: int, D: int):
    rows, cols = cover_counts(e, hw, 0), cover_counts(e, hw, 1)
    readers = e.readers(hw.shape(e.src)[0])
    if e.kind == "pool":  # s level events per window target, D level connections each
        events = int(np.einsum("chw,h,w->", src.unit_map, rows, cols))
        dense = D * hw.shape(e.src)[0] * int(rows.sum()) * int(cols.sum()) * T * B
        return SynapseActivity(e.name, e.src, e.dst, False, events, events, dense, 0, "pool")
    graded = int(np.einsum("c,chw,h,w->", readers, src.message_map, rows, cols))
    binary = int(np.einsum("c,chw,h,w->", readers, src.unit_map, rows, cols))
    if e.src == "input":
        binary = graded  # the encoding layer stays graded in binary mode
    dense = int(readers.sum()) * int(rows.sum()) * int(cols.sum()) * T * B
    dst = hw.shape(e.dst)
    flops = int(e.weights.sum()) * e.taps * dst[1] * dst[2]
    return SynapseActivity(e.name, e.src, e.dst, e.src == "input", graded, binary, dense, flops)


def count_activity(qg: QuantGraph, spikes: dict, x_int: np.ndarray | None) -> Activity:
    """Count messages, units, synaptic events and neuron updates (module docstring).

    ``spikes``: spiking population -> int [T, B, C, H, W] (max-pool ones optional); ``x_int``:
    [B, C, H, W] (static input presented every step) or [T, B, C, H, W]; None means unknown:
    every input value is taken as nonzero (the dense upper bound an 8-bit image almost reaches).
    """
    check_geometry(qg)
    T = qg.T
    maps: dict[str, np.ndarray] = {}
    for p in qg.populations:
        if p.kind in READOUT_KINDS:  # integrate (I) or leak (li), never send
            continue
        if p.name not in spikes and p.kind != "maxpool":
            raise SpikedetError("no spikes recorded for this population", f"population {p.name}")
        if p.name in spikes:
            maps[p.name] = _as_steps(spikes[p.name], T, f"spikes of {p.name}", p.shape)
        else:
            maps[p.name] = _pool_spikes(qg, p.name, maps)
    if maps:
        B = next(iter(maps.values())).shape[1]
    else:
        B = 1 if x_int is None else int(np.asarray(x_int).shape[-4])
    if x_int is None:
        x_sent = np.ones((T, B, *qg.input.shape), np.uint8)
    else:
        x_sent = (_as_steps(x_int, T, "input x_int", qg.input.shape) != 0).astype(np.uint8)
    if any(m.shape[1] != B for m in maps.values()) or x_sent.shape[1] != B:
        raise SpikedetError("populations and input disagree on the batch size", "activity")
    spiking = [p for p in qg.populations if p.kind not in READOUT_KINDS]
    v_steps = max((levels_of(qg, p) for p in spiking), default=1)
    hw = hardware_view(qg)
    # What each source sends per step: spike values; the graded input counts as one message.
    sent = {"input": x_sent, **maps}
    input_act = _population("input", "input", x_sent, qg.input.shape, 1, T, B, 0, 0, 0)
    pops: dict[str, PopulationActivity] = {}
    for p in qg.populations:
        own = maps.get(p.name)
        comp = hw.pop(p.name).compartments
        if p.kind == "maxpool":
            active = b_active = int(own.sum())
        else:
            active, b_active = active_counts(hw, p.name, sent, own, v_steps)
        pops[p.name] = _population(
            p.name, p.kind, own, p.shape, comp, T, B, v_steps, active, b_active
        )
    syns = {}
    edges = [conv_edge(qg, s) for s in qg.synapses]
    edges += [pool_edge(qg, p) for p in qg.populations if p.kind == "maxpool"]
    for e in edges:
        src = input_act if e.src == "input" else pops[e.src]
        D = levels_of(qg, qg.pop(e.dst))
        syns[e.name] = _synapse(e, hw, src, T, B, D)
    return Activity(T, B, v_steps, input_act, pops, syns, sent)
