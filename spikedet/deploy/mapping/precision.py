"""Precision checks of a mapping (docs/semantics.md §3): the integer model must fit the target.

max |weight| fits ``weight_bits`` (signed); the 24-bit state and 12-bit decays fit the profile;
the 8-bit graded input fits the message payload. Graded deployment (§3.4) also needs
ceil(log2(D+1)) payload bits for the largest D of the spiking populations (D = 1 for LIF, the
source's D for max-pool), binary deployment one. A violation raises SpikedetError naming the
layer and the limit; the findings are returned for the report. Partial sums of fan-in splits
(``splits``) are bounded here too: the payload they need and whether a synapse may wrap.
"""

from __future__ import annotations

import math

import numpy as np

from spikedet.deploy.mapping.geometry import SPIKING, HwEdge, levels_of, max_source_value
from spikedet.deploy.profiles import HardwareProfile
from spikedet.errors import SpikedetError
from spikedet.sim.qgraph import DECAY_BITS, STATE_BITS, QuantGraph

WRAP_BOUND = 1 << (STATE_BITS - 1)  # a synapse whose bound reaches this may wrap (§3.2)


def check_precision(qg: QuantGraph, profile: HardwareProfile) -> tuple[dict, dict]:
    where = f"{profile.name} mapping"
    wb = profile.weight_bits
    w_need = 0
    for s in qg.synapses:
        wmax = max(int(s.weight.max()), -int(s.weight.min())) if s.weight.size else 0
        need = wmax.bit_length() + 1
        w_need = max(w_need, need)
        if need > wb:
            raise SpikedetError(
                f"layer {s.dst}: synapse {s.name} has max |weight| {wmax}, which needs {need} "
                f"signed bits; {profile.name} allows {wb}-bit weights",
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
    d_max = max((levels_of(qg, p) for p in qg.populations if p.kind in SPIKING), default=1)
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
        "state_bits": {"needed": STATE_BITS, "available": profile.state_bits},
        "decay_bits": {"needed": DECAY_BITS if decaying else 0, "available": profile.decay_bits},
        "message_bits": {
            "needed_graded": max(spike_bits, qg.input.bits),
            "needed_binary": qg.input.bits,
            "available": profile.message_bits,
        },
    }
    return modes, precision


def _magnitudes(qg: QuantGraph, name: str, cache: dict) -> tuple:
    """Σ over kernel taps of |W_q|, per (output, input) channel, with a leading zero column
    for prefix sums: [Cout, Cin/g + 1]."""
    if name not in cache:
        s = next(x for x in qg.synapses if x.name == name)
        mags = np.abs(s.weight).sum(axis=(2, 3))
        cache[name] = (s, np.concatenate([np.zeros((len(mags), 1), np.int64), mags.cumsum(1)], 1))
    return cache[name]


def _max_weight(qg: QuantGraph, name: str, cache: dict) -> tuple:
    if ("max", name) not in cache:
        s = next(x for x in qg.synapses if x.name == name)
        top = max(int(s.weight.max()), -int(s.weight.min())) if s.weight.size else 0
        cache["max", name] = (s, top)
    return cache["max", name]


def partial_sum_bounds(
    qg: QuantGraph,
    edges: list[HwEdge],
    a: int,
    b: int,
    groups: list[dict],
    cache: dict,
    exact: bool = True,
) -> list[int]:
    """Per group (source -> channels [lo, hi) it sums): max over neurons [a, b) of Σ |W_q| x
    source maximum over the group's source channels (prefix sums over input channels). With
    ``exact`` False, the cheaper upper bound Σ_edges max |W_q| x taps x channels one output
    reads in the group x source maximum."""
    if not exact:
        total_cheap = np.zeros(len(groups), np.int64)
        for e in edges:
            s, top = _max_weight(qg, e.synapse, cache)
            cin_g = s.weight.shape[1]
            width = np.array([np.subtract(*g.get(e.src, (0, 0))[::-1]) for g in groups])
            reads = np.minimum(width, cin_g) * int(np.prod(s.weight.shape[2:]))
            total_cheap += top * reads * max_source_value(qg, e.src)
        return [int(v) for v in total_cheap]
    total = np.zeros((len(groups), b - a), np.int64)
    for e in edges:
        s, cum = _magnitudes(qg, e.synapse, cache)
        ranges = np.array([g.get(e.src, (0, 0)) for g in groups], np.int64).reshape(-1, 2)
        cout, cin_g = s.weight.shape[:2]
        # destination channel o of the class reads conv output j = o - out_offset
        j = np.arange(a, b) - s.out_offset
        ok = (j >= 0) & (j < cout)
        jj = np.clip(j, 0, cout - 1)
        base = (jj // (cout // s.groups)) * cin_g
        i0 = np.clip(ranges[:, :1] - base, 0, cin_g)
        i1 = np.maximum(np.clip(ranges[:, 1:] - base, 0, cin_g), i0)
        total += (cum[jj, i1] - cum[jj, i0]) * ok * max_source_value(qg, e.src)
    return [int(v) for v in total.max(axis=1, initial=0)]


def synapse_bound(qg: QuantGraph, name: str, cache: dict) -> int:
    """max over output channels of Σ |W_q| x source maximum: no conv output exceeds it."""
    s, cum = _magnitudes(qg, name, cache)
    return int(cum[:, -1].max(initial=0)) * max_source_value(qg, s.src)


def may_wrap(qg: QuantGraph, name: str, cache: dict) -> bool:
    """Whether a conv output of synapse ``name`` can reach 2^23 (§3.2's 24-bit wrap). The
    cheap bound max |W_q| x weights per output x source maximum decides most synapses; the
    exact ``synapse_bound`` is computed only when that bound is reached."""
    s = next(x for x in qg.synapses if x.name == name)
    if not s.weight.size:
        return False
    top = max(int(s.weight.max()), -int(s.weight.min()))
    if top * int(np.prod(s.weight.shape[1:])) * max_source_value(qg, s.src) < WRAP_BOUND:
        return False
    return synapse_bound(qg, name, cache) >= WRAP_BOUND
