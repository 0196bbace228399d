"""Energy per inference on a target profile, from activity counts and a core mapping.

Counting is ``spikedet.deploy.energy_activity`` (re-exported here). Per layer (a population
with its incoming synapses, its partial sums when split), per inference (= totals / B):

E_dyn = synops·E_synop + active·E_active + inactive·E_inactive + messages·E_message, where
messages are routed (spike, destination core) pairs from the mapping (a spike reaching k cores
costs k). A max-pool layer's synops are its sum-pool events and its updates count its D
compartments per neuron. A fan-in split layer (``splits``) adds, per partial-sum
compartment: one update per step (active when it received input), one graded message to its
neuron's core whenever it received input (an exact cancellation to 0 still sends: an upper
bound), and one synop at the neuron per such message; in binary mode per active virtual slot.
The source events are the same synapses' events, landing on the partial sums instead. A delay
relay stage (``delays``, counted in its source's layer) costs one update per step, one
synop per spike it receives and forwards, and its messages to the next stage and consumers.

Static energy = P_static/chip x chips x step time x hardware steps, with graded steps =
hardware depth + T and binary steps = hardware depth + T·Dv, where the hardware depth is the
mapping's (§3.3 over the split graph: one extra step on every path through a split layer).
Inferences per second = 1 / (steps x step time), one inference at a time (no pipelining).
The papers' 45 nm estimate: first-layer MACs x E_MAC + spiking ACs x E_AC with ACs = binary
events of conv synapses (= MACs x fr as the papers define); the equivalent ANN: all dense conv
MACs x E_MAC. Max-pool synapses and partial sums are not part of the papers' model.
"""

from __future__ import annotations

import numpy as np

from spikedet.deploy.energy_activity import (
    Activity,
    PopulationActivity,
    SynapseActivity,
    active_counts,
    count_activity,
)
from spikedet.deploy.mapping.geometry import HwGraph
from spikedet.deploy.mapping.mapper import Mapping, hardware_graph
from spikedet.deploy.mapping.tiles import reach, unit_intervals
from spikedet.deploy.paper_energy import paper_energy
from spikedet.deploy.profiles import HardwareProfile
from spikedet.errors import SpikedetError
from spikedet.sim.qgraph import READOUT_KINDS, QuantGraph

__all__ = [
    "Activity",
    "PopulationActivity",
    "SynapseActivity",
    "count_activity",
    "energy_report",
]

TARGET_KEYS = (
    "energy.synop",
    "energy.neuron_update_active",
    "energy.neuron_update_inactive",
    "energy.message",
    "chip.static_power",
    "timing.step_time",
)
CMOS_KEYS = ("energy.mac", "energy.ac")
MAPPING_SECTIONS = ("core", "connectivity", "partition")


def _layer_type(qg: QuantGraph, name: str) -> str:
    kind = qg.pop(name).kind
    if kind in ("readout", "maxpool"):
        return kind
    if kind in READOUT_KINDS:  # li: a leaky readout
        return "readout"
    return "encoding" if any(s.src == "input" for s in qg.incoming(name)) else "spiking"


def _source_activity(hw: HwGraph, activity: Activity, src: str) -> PopulationActivity:
    """The activity a source sends: the input, a population, or the one a relay forwards."""
    if src != "input" and hw.pop(src).kind == "relay":
        src = hw.pop(src).carries
    return activity.input if src == "input" else activity.populations[src]


def _layer_tiles(mapping: Mapping, layer: str) -> dict[str, tuple[int, int, int]]:
    lm = mapping.layer(layer)
    return {layer: lm.tile_shape, **{x.name: x.tile_shape for x in [*lm.psums, *lm.relays]}}


def _routed(hw: HwGraph, mapping: Mapping, activity: Activity, layer: str) -> tuple[int, int]:
    """(graded, binary) (spike, destination core) messages into ``layer``'s cores (neurons,
    partial sums and relays), all samples; partial sums' own messages are counted by _aux."""
    graded = binary = 0
    for name, tile in _layer_tiles(mapping, layer).items():
        for src in dict.fromkeys(e.src for e in hw.incoming(name)):
            if src != "input" and hw.pop(src).kind == "psum":
                continue
            cores = reach(hw, src, unit_intervals(hw.shape(src)), {name: tile})
            act = _source_activity(hw, activity, src)
            units = act.message_map if act.name == "input" else act.unit_map
            graded += int((act.message_map * cores).sum())
            binary += int((units * cores).sum())
    return graded, binary


def _aux(hw: HwGraph, activity: Activity, sent: dict, layer: str) -> dict[str, int]:
    """Partial-sum and relay compartments of a layer: updates and active ones. Each active step
    (binary: slot) of either is one synop (a partial sum at its neuron, a relay at itself); a
    partial sum's message goes to one core, so its active count is also its routed messages."""
    out = dict.fromkeys(("updates", "active", "binary_updates", "binary_active", "psum"), 0)
    out["psum_binary"] = 0
    T, B, dv = activity.T, activity.B, activity.virtual_steps
    for p in hw.of_layer(layer):
        if p.kind not in ("psum", "relay"):
            continue
        active, b_active = active_counts(hw, p.name, sent, None, dv)
        out["updates"] += p.size * T * B
        out["binary_updates"] += p.size * T * dv * B
        out["active"] += active
        out["binary_active"] += b_active
        if p.kind == "psum":
            out["psum"] += active
            out["psum_binary"] += b_active
    return out


def _dynamic(profile: HardwareProfile, synops, active, updates, messages) -> dict:
    parts = {
        "synops_pj": synops * profile.e_synop_pj,
        "active_updates_pj": active * profile.e_neuron_active_pj,
        "inactive_updates_pj": (updates - active) * profile.e_neuron_inactive_pj,
        "messages_pj": messages * profile.e_message_pj,
    }
    return {"total_pj": sum(parts.values()), **parts}


def _layer(qg, hw, mapping, activity, sent, profile, name) -> dict:
    """One layer's resources, activity and dynamic energy per inference."""
    B, p = activity.B, qg.pop(name)
    lm, act = mapping.layer(name), activity.populations[name]
    names = [s.name for s in qg.incoming(name)] + ([f"{name}.pool"] if p.kind == "maxpool" else [])
    syns = [activity.synapses[n] for n in names]
    srcs = [
        activity.input if src == "input" else activity.populations[src]
        for src in dict.fromkeys(s.src for s in syns)  # a source feeding twice counts once
    ]
    routed_g, routed_b = _routed(hw, mapping, activity, name)
    ps = _aux(hw, activity, sent, name)
    tilings = [lm, *lm.psums, *lm.relays]
    syn_g = sum(s.events_graded for s in syns) + ps["active"]
    syn_b = sum(s.events_binary for s in syns) + ps["binary_active"]
    upd_g, act_g = act.updates + ps["updates"], act.active + ps["active"]
    upd_b, act_b = (
        act.binary_updates + ps["binary_updates"],
        act.binary_active + ps["binary_active"],
    )
    routed_g, routed_b = routed_g + ps["psum"], routed_b + ps["psum_binary"]
    graded = _dynamic(profile, syn_g / B, act_g / B, upd_g / B, routed_g / B)
    binary = _dynamic(profile, syn_b / B, act_b / B, upd_b / B, routed_b / B)
    return {
        "name": name, "type": _layer_type(qg, name), "shape": list(p.shape), "neurons": p.size,
        "compartments": lm.compartments, "D": p.D, "depth": p.depth, "hw_depth": lm.depth,
        "cores": lm.cores, "tile_shape": list(lm.tile_shape),
        "syn_mem_bits_per_core": max(x.syn_mem_bits_per_tile for x in tilings),
        "syn_mem_bits_total": sum(x.syn_mem_bits_total for x in tilings),
        "fan_in_axons": max(x.fan_in_axons_per_tile for x in tilings),
        "fan_out_cores": lm.fan_out_cores,
        "fan_in_parts": lm.fan_in_parts, "psum_cores": sum(x.tiles for x in lm.psums),
        "extra_steps": lm.extra_steps,
        "psum_payload_bits": max([x.payload_bits for x in lm.psums], default=0),
        "psum_messages_graded": ps["psum"] / B, "psum_messages_binary": ps["psum_binary"] / B,
        "relay_cores": sum(x.tiles for x in lm.relays),
        "aux_updates": ps["updates"] / B,
        "spikes_in_messages": sum(a.messages for a in srcs) / B,
        "spikes_in_units": sum(a.units for a in srcs) / B,
        "spikes_out_messages": act.messages / B, "spikes_out_units": act.units / B,
        "firing_rate": act.firing_rate, "message_rate": act.message_rate,
        "synops_graded": syn_g / B, "synops_binary": syn_b / B,
        "dense_macs": sum(s.dense for s in syns if s.kind == "conv") / B,
        "neuron_updates": upd_g / B, "active_updates": act_g / B,
        "binary_updates": upd_b / B, "binary_active_updates": act_b / B,
        "routed_messages_graded": routed_g / B, "routed_messages_binary": routed_b / B,
        "energy_graded": graded, "energy_binary": binary,
    }  # fmt: skip


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
    hw = hardware_graph(qg, mapping)
    sent = dict(activity.sent)  # relays send what they carry
    sent.update({p.name: sent[p.carries] for p in hw.pops if p.kind == "relay"})
    layers = [_layer(qg, hw, mapping, activity, sent, profile, p.name) for p in qg.populations]
    sums = {
        mode: np.sum(
            [
                [ly[f"synops_{mode}"], ly[f"routed_messages_{mode}"], ly[upd], ly[f"energy_{mode}"]["total_pj"]]
                for ly in layers
            ],
            axis=0,
        )
        for mode, upd in (("graded", "neuron_updates"), ("binary", "binary_updates"))
    }  # fmt: skip
    steps = {
        "graded": mapping.hw_depth + qg.T,
        "binary": mapping.hw_depth + qg.T * activity.virtual_steps,
    }
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
    # every figure used: energy, and the core limits and core model the mapping obeyed
    used = [*TARGET_KEYS, *(k for k in profile.figures if k.split(".")[0] in MAPPING_SECTIONS)]
    provenance = profile.provenance(used) + cmos.provenance(list(CMOS_KEYS))
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
            "samples": activity.B,
            "neurons": sum(p.size for p in qg.populations),
            "compartments": sum(ly["compartments"] for ly in layers),
            "cores": mapping.cores,
            "chips": mapping.chips,
            "synaptic_memory_bits": sum(ly["syn_mem_bits_total"] for ly in layers),
            "split_layers": len(mapping.split_layers),
            "psum_cores": sum(ly["psum_cores"] for ly in layers),
            "relay_cores": sum(ly["relay_cores"] for ly in layers),
            "extra_latency_steps": mapping.hw_depth - mapping.logical_depth,
            **{k: v for k, v in modes[default].items() if k not in ("supported", "reason")},
        },
        "cmos45nm": cmos_part,
        "modes": modes,
        "provenance": provenance,
    }


def _cmos45(qg: QuantGraph, activity: Activity, cmos: HardwareProfile, target_pj: float) -> dict:
    """The papers' 45 nm estimate and the equivalent ANN, per inference (conv synapses only)."""
    B, T = activity.B, qg.T
    syns = [s for s in activity.synapses.values() if s.kind == "conv"]
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
        "papers": paper_energy(activity, T, cmos.e_mac_pj, cmos.e_ac_pj),
    }
