"""Activity counting (docs/semantics.md §3.5) and energy per inference on a target profile.

Counting, from one simulation's integer spikes s ∈ {0..D} ([T, B, C, H, W] per population):

- messages of P = #{s > 0}; units = Σ s; firing rate = units / (N·T·B) (SpikeYOLO's convention,
  which includes D); message rate = messages / (N·T·B).
- real fan-out of a source neuron in conv e = (Cout/groups)·rows(y)·cols(x), where rows(y)
  counts the output rows whose window covers input row y (zero padding excluded; separable, so
  it equals convolving an indicator map with an all-ones kernel).
- synaptic events, graded mode = Σ_{t,b} Σ_{s>0} fan-out; binary mode = Σ_{t,b} Σ s·fan-out
  (s unit spikes); dense = all real connections x T x B (the ANN-equivalent MACs, NeuroBench's
  rule). The input synapse is the encoding layer: graded 8-bit values (zeros send nothing) in
  both modes, counted as MACs by the 45 nm model.
- neuron updates of P = N·T·B; active = the neuron fired or some source neuron in its
  receptive field sent a message at that step. Binary mode runs T·Dv virtual steps (Dv = max D
  of the graph): N·T·Dv·B updates, of which a neuron is active in max(s, m) slots, m = the
  largest source value in its receptive field (a graded input counts as one slot).

Energy by the target's figures (per inference = totals / B):
E_dyn = synops·E_synop + active·E_active + inactive·E_inactive + messages·E_message, where
messages are routed (spike, destination core) pairs from the mapping (a spike reaching k cores
costs k). Static energy = P_static/chip x chips x step time x hardware steps, with
graded steps = max depth + T (qg.hw_steps, §3.3) and binary steps = max depth + T·Dv (each
synapse still adds one step of latency; the T logical steps become T·Dv virtual ones).
Inferences per second = 1 / (steps x step time), one inference at a time (no pipelining).
The papers' 45 nm estimate: first-layer MACs x E_MAC + spiking ACs x E_AC with ACs = binary
events (= MACs x fr as the papers define); the equivalent ANN: all dense MACs x E_MAC.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from spikedet.deploy.mapping import Mapping, check_geometry, destination_cores
from spikedet.deploy.profiles import HardwareProfile
from spikedet.errors import SpikedetError
from spikedet.sim.qgraph import QSynapse, QuantGraph

CHUNK = 4  # samples processed at once when building [T, chunk, C, H, W] indicator maps


@dataclass
class PopulationActivity:
    """Counts for one population (or the input), summed over T steps and B samples."""

    name: str
    kind: str
    neurons: int
    messages: int
    units: int
    updates: int
    active: int
    binary_updates: int
    binary_active: int
    message_map: np.ndarray = field(repr=False)  # (C, H, W): #(t, b) with a message
    unit_map: np.ndarray = field(repr=False)  # (C, H, W): Σ_(t, b) values

    @property
    def firing_rate(self) -> float:
        return self.units / self.updates if self.updates else 0.0

    @property
    def message_rate(self) -> float:
        return self.messages / self.updates if self.updates else 0.0


@dataclass
class SynapseActivity:
    """Synaptic events of one conv, summed over T and B; ``dense`` counts every real connection."""

    name: str
    src: str
    dst: str
    encoding: bool
    events_graded: int
    events_binary: int
    dense: int
    flops_padded: int  # Cout·(Cin/g)·KH·KW·Hout·Wout: the papers' per-step FLOPs, padding included


@dataclass
class Activity:
    T: int
    B: int
    virtual_steps: int  # Dv: binary slots per logical step
    input: PopulationActivity
    populations: dict[str, PopulationActivity]
    synapses: dict[str, SynapseActivity]

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


# ---- geometry helpers ------------------------------------------------------------------------
def _cover_counts(n_in: int, n_out: int, k: int, stride: int, pad: int) -> np.ndarray:
    """rows(y): how many output positions' windows cover input position y (padding excluded)."""
    first = np.arange(n_out, dtype=np.int64) * stride - pad
    diff = np.zeros(n_in + 1, np.int64)
    np.add.at(diff, np.clip(first, 0, n_in), 1)
    np.add.at(diff, np.clip(first + k, 0, n_in), -1)
    return np.cumsum(diff)[:n_in]


def _window_max(x: np.ndarray, axis: int, k: int, stride: int, pad: int, n_out: int) -> np.ndarray:
    """Max over each conv window along ``axis`` (values >= 0, so zero padding never wins)."""
    right = max(0, (n_out - 1) * stride + k - pad - x.shape[axis])
    widths = [(0, 0)] * x.ndim
    widths[axis] = (pad, right)
    win = sliding_window_view(np.pad(x, widths), k, axis=axis)
    index = [slice(None)] * win.ndim
    index[axis] = slice(0, (n_out - 1) * stride + 1, stride)
    return win[tuple(index)].max(axis=-1)


def _received_max(values: np.ndarray, s: QSynapse, out_hw: tuple[int, int]) -> np.ndarray:
    """[N, Cout, Ho, Wo]: the largest source value in each target neuron's receptive field."""
    n, cin, _, _ = values.shape
    g = s.groups
    per_group = values.reshape(n, g, cin // g, *values.shape[2:]).max(axis=2)
    for dim in (0, 1):
        k, st, pad = s.weight.shape[2 + dim], s.stride[dim], s.padding[dim]
        per_group = _window_max(per_group, 2 + dim, k, st, pad, out_hw[dim])
    return np.repeat(per_group, s.weight.shape[0] // g, axis=1)


def _as_steps(x: np.ndarray, T: int, what: str, shape: tuple) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim == 4:  # a static input, presented at every logical step
        x = np.broadcast_to(x[None], (T, *x.shape))
    if x.ndim != 5 or x.shape[0] != T or tuple(x.shape[2:]) != tuple(shape):
        raise SpikedetError(f"expected [T={T}, B, *{tuple(shape)}], got {x.shape}", what)
    return x


# ---- counting --------------------------------------------------------------------------------
def _population(name, kind, vals: np.ndarray | None, shape, T, B, v_steps, active, b_active):
    n = int(np.prod(shape))
    if vals is None:  # a readout: integrates, never sends
        msg_map = unit_map = np.zeros(shape, np.int64)
    else:
        msg_map = (vals > 0).sum(axis=(0, 1)).astype(np.int64)
        unit_map = vals.sum(axis=(0, 1)).astype(np.int64)
    return PopulationActivity(
        name=name,
        kind=kind,
        neurons=n,
        messages=int(msg_map.sum()),
        units=int(unit_map.sum()),
        updates=n * T * B,
        active=int(active),
        binary_updates=n * T * v_steps * B,
        binary_active=int(b_active),
        message_map=msg_map,
        unit_map=unit_map,
    )


def _active_counts(qg, pop, sent, own_vals, B, v_steps) -> tuple[int, int]:
    """(graded active updates, binary active slots) of ``pop``, chunked over the batch."""
    active = b_active = 0
    for b0 in range(0, B, CHUNK):
        b1 = min(B, b0 + CHUNK)
        recv = np.zeros((qg.T, b1 - b0, *pop.shape), np.int64)
        for s in qg.incoming(pop.name):
            src = sent[s.src][:, b0:b1]
            got = _received_max(src.reshape(-1, *src.shape[2:]), s, pop.shape[1:])
            np.maximum(recv, got.reshape(recv.shape), out=recv)
        own = own_vals[:, b0:b1] if own_vals is not None else np.zeros_like(recv)
        active += int(((recv > 0) | (own > 0)).sum())
        b_active += int(np.minimum(np.maximum(recv, own), v_steps).sum())
    return active, b_active


def count_activity(qg: QuantGraph, spikes: dict, x_int: np.ndarray | None) -> Activity:
    """Count messages, units, synaptic events and neuron updates (module docstring).

    ``spikes``: ilif population -> int [T, B, C, H, W]; ``x_int``: [B, C, H, W] (static input
    presented every step) or [T, B, C, H, W]; None means unknown: every input value is taken as
    nonzero (the dense upper bound an 8-bit image almost reaches).
    """
    check_geometry(qg)
    T = qg.T
    ilif = [p for p in qg.populations if p.kind == "ilif"]
    for p in ilif:
        if p.name not in spikes:
            raise SpikedetError("no spikes recorded for this population", f"population {p.name}")
    maps = {p.name: _as_steps(spikes[p.name], T, f"spikes of {p.name}", p.shape) for p in ilif}
    if maps:
        B = next(iter(maps.values())).shape[1]
    else:
        B = 1 if x_int is None else int(np.asarray(x_int).shape[-4])
    if x_int is None:
        x_sent = np.ones((T, B, *qg.input.shape), np.int64)
    else:
        x_sent = (_as_steps(x_int, T, "input x_int", qg.input.shape) != 0).astype(np.int64)
    if any(m.shape[1] != B for m in maps.values()) or x_sent.shape[1] != B:
        raise SpikedetError("populations and input disagree on the batch size", "activity")
    v_steps = max((p.D for p in ilif), default=1)
    # What each source sends per step: spike values; the graded input counts as one message.
    sent = {"input": x_sent, **maps}
    input_act = _population("input", "input", x_sent, qg.input.shape, T, B, 0, 0, 0)
    pops: dict[str, PopulationActivity] = {}
    for p in qg.populations:
        own = maps.get(p.name)
        active, b_active = _active_counts(qg, p, sent, own, B, v_steps)
        pops[p.name] = _population(p.name, p.kind, own, p.shape, T, B, v_steps, active, b_active)
    syns = {}
    for s in qg.synapses:
        src_shape, out = qg.src_shape(s.src), qg.pop(s.dst).shape
        cout, cin_g, kh, kw = s.weight.shape
        rows = _cover_counts(src_shape[1], out[1], kh, s.stride[0], s.padding[0])
        cols = _cover_counts(src_shape[2], out[2], kw, s.stride[1], s.padding[1])
        per_src = cout // s.groups  # output channels that read each source channel
        src_act = input_act if s.src == "input" else pops[s.src]
        graded = per_src * int(np.einsum("chw,h,w->", src_act.message_map, rows, cols))
        binary = per_src * int(np.einsum("chw,h,w->", src_act.unit_map, rows, cols))
        if s.src == "input":
            binary = graded  # the encoding layer stays graded in binary mode
        dense = per_src * src_shape[0] * int(rows.sum()) * int(cols.sum()) * T * B
        flops = cout * cin_g * kh * kw * out[1] * out[2]
        syns[s.name] = SynapseActivity(
            s.name, s.src, s.dst, s.src == "input", graded, binary, dense, flops
        )
    return Activity(T, B, v_steps, input_act, pops, syns)


# ---- energy ----------------------------------------------------------------------------------
TARGET_KEYS = (
    "energy.synop",
    "energy.neuron_update_active",
    "energy.neuron_update_inactive",
    "energy.message",
    "chip.static_power",
    "timing.step_time",
)
CMOS_KEYS = ("energy.mac", "energy.ac")


def _layer_type(qg: QuantGraph, name: str) -> str:
    if qg.pop(name).kind == "readout":
        return "readout"
    return "encoding" if any(s.src == "input" for s in qg.incoming(name)) else "spiking"


def _routed(qg, mapping, activity, dst) -> tuple[float, float]:
    """(graded, binary) (spike, destination core) messages into ``dst``'s cores, all samples."""
    graded = binary = 0
    for src in dict.fromkeys(s.src for s in qg.incoming(dst)):
        reach = destination_cores(qg, mapping, src, dst)
        act = activity.input if src == "input" else activity.populations[src]
        graded += int((act.message_map * reach).sum())
        binary += int(((act.message_map if src == "input" else act.unit_map) * reach).sum())
    return graded, binary


def _dynamic(profile: HardwareProfile, synops, active, updates, messages) -> dict:
    parts = {
        "synops_pj": synops * profile.e_synop_pj,
        "active_updates_pj": active * profile.e_neuron_active_pj,
        "inactive_updates_pj": (updates - active) * profile.e_neuron_inactive_pj,
        "messages_pj": messages * profile.e_message_pj,
    }
    return {"total_pj": sum(parts.values()), **parts}


def energy_report(
    qg: QuantGraph,
    mapping: Mapping,
    activity: Activity,
    profile: HardwareProfile,
    cmos: HardwareProfile,
) -> dict:
    """Per-layer and total resources, activity and energy per inference (layout: report.py)."""
    if profile.kind != "neuromorphic" or cmos.kind != "cmos":
        raise SpikedetError("need a neuromorphic target and a cmos profile", "energy report")
    B = activity.B
    layers, sums = [], {"graded": np.zeros(4), "binary": np.zeros(4)}
    for p in qg.populations:
        lm, act = mapping.layer(p.name), activity.populations[p.name]
        syns = [activity.synapses[s.name] for s in qg.incoming(p.name)]
        srcs = [
            activity.input if src == "input" else activity.populations[src]
            for src in dict.fromkeys(s.src for s in syns)  # a source feeding twice counts once
        ]
        routed_g, routed_b = _routed(qg, mapping, activity, p.name)
        syn_g = sum(s.events_graded for s in syns)
        syn_b = sum(s.events_binary for s in syns)
        graded = _dynamic(profile, syn_g / B, act.active / B, act.updates / B, routed_g / B)
        binary = _dynamic(
            profile, syn_b / B, act.binary_active / B, act.binary_updates / B, routed_b / B
        )
        sums["graded"] += (syn_g / B, routed_g / B, act.updates / B, graded["total_pj"])
        sums["binary"] += (syn_b / B, routed_b / B, act.binary_updates / B, binary["total_pj"])
        layers.append(
            {
                "name": p.name,
                "type": _layer_type(qg, p.name),
                "shape": list(p.shape),
                "neurons": p.size,
                "D": p.D,
                "depth": p.depth,
                "cores": lm.tiles,
                "tile_shape": list(lm.tile_shape),
                "syn_mem_bits_per_core": lm.syn_mem_bits_per_tile,
                "syn_mem_bits_total": lm.syn_mem_bits_total,
                "fan_in_axons": lm.fan_in_axons_per_tile,
                "fan_out_cores": lm.fan_out_cores,
                "spikes_in_messages": sum(a.messages for a in srcs) / B,
                "spikes_in_units": sum(a.units for a in srcs) / B,
                "spikes_out_messages": act.messages / B,
                "spikes_out_units": act.units / B,
                "firing_rate": act.firing_rate,
                "message_rate": act.message_rate,
                "synops_graded": syn_g / B,
                "synops_binary": syn_b / B,
                "dense_macs": sum(s.dense for s in syns) / B,
                "neuron_updates": act.updates / B,
                "active_updates": act.active / B,
                "binary_updates": act.binary_updates / B,
                "binary_active_updates": act.binary_active / B,
                "routed_messages_graded": routed_g / B,
                "routed_messages_binary": routed_b / B,
                "energy_graded": graded,
                "energy_binary": binary,
            }
        )
    max_depth = max(p.depth for p in qg.populations)
    steps = {"graded": qg.hw_steps, "binary": max_depth + qg.T * activity.virtual_steps}
    modes = {}
    for mode in ("graded", "binary"):
        synops, messages, updates, dyn = (float(v) for v in sums[mode])
        static = profile.static_power_mw * mapping.chips * profile.step_time_us * steps[mode] * 1e3
        latency_us = steps[mode] * profile.step_time_us
        total = dyn + static
        modes[mode] = {
            **mapping.modes.get(mode, {"supported": True, "reason": ""}),
            "hw_steps": steps[mode],
            "synops": synops,
            "routed_messages": messages,
            "neuron_updates": updates,
            "energy_dynamic_pj": dyn,
            "energy_static_pj": static,
            "energy_total_pj": total,
            "latency_us": latency_us,
            "inferences_per_s": 1e6 / latency_us,
            "power_mw": total * 1e-9 * (1e6 / latency_us),
        }
    default = "graded" if modes["graded"]["supported"] else "binary"
    cmos_part = _cmos45(qg, activity, cmos, modes[default]["energy_total_pj"])
    provenance = profile.provenance(list(TARGET_KEYS)) + cmos.provenance(list(CMOS_KEYS))
    return {
        "model": qg.metadata.get("spikedet.model", qg.metadata.get("model", "unknown")),
        "target": profile.name,
        "profile": {
            "name": profile.name,
            "description": profile.description,
            "kind": profile.kind,
            "path": profile.path,
            "notices": profile.notices + cmos.notices,
        },
        "mapping": mapping.to_dict(),
        "layers": layers,
        "totals": {
            "mode": default,
            "T": qg.T,
            "samples": B,
            "neurons": sum(p.size for p in qg.populations),
            "cores": mapping.cores,
            "chips": mapping.chips,
            "synaptic_memory_bits": sum(lm.syn_mem_bits_total for lm in mapping.layers),
            **{k: v for k, v in modes[default].items() if k not in ("supported", "reason")},
        },
        "cmos45nm": cmos_part,
        "modes": modes,
        "provenance": provenance,
    }


def _cmos45(qg: QuantGraph, activity: Activity, cmos: HardwareProfile, target_pj: float) -> dict:
    """The papers' 45 nm estimate and the equivalent ANN, per inference."""
    B, T = activity.B, qg.T
    syns = activity.synapses.values()
    macs = sum(s.dense for s in syns if s.encoding) / B
    acs = sum(s.events_binary for s in syns if not s.encoding) / B
    ann_macs = sum(s.dense for s in syns) / B
    # The papers' literal form: FLOPs (padding included) x fr (includes D) x T.
    fr = {k: v.firing_rate for k, v in activity.populations.items()}
    flop_macs = sum(s.flops_padded * T for s in syns if s.encoding)
    flop_acs = sum(s.flops_padded * fr[s.src] * T for s in syns if not s.encoding)
    snn_pj = macs * cmos.e_mac_pj + acs * cmos.e_ac_pj
    ann_pj = ann_macs * cmos.e_mac_pj
    return {
        "first_layer_macs": macs,
        "acs": acs,
        "energy_pj": snn_pj,
        "flops_formula": {
            "first_layer_macs": flop_macs,
            "acs": flop_acs,
            "energy_pj": flop_macs * cmos.e_mac_pj + flop_acs * cmos.e_ac_pj,
        },
        "ann": {"macs": ann_macs, "energy_pj": ann_pj},
        "ann_over_snn45": ann_pj / snn_pj if snn_pj else None,
        "ann45_over_target": ann_pj / target_pj if target_pj else None,
        "e_mac_pj": cmos.e_mac_pj,
        "e_ac_pj": cmos.e_ac_pj,
    }
