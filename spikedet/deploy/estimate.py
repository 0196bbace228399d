"""Resources, energy and latency of a mapped graph without a dataset or a simulation.

``resize`` re-derives every population's shape from a new input size (a fully convolutional
graph: conv, pool, upsampled and channel-offset synapses keep their weights). ``estimate``
prices a mapping at stated firing rates with the target's energy model (``energy``'s
formulas, docs/semantics.md §3.3 for the steps): per layer,

- synops = rate of each source x its connections (kernel taps inside the source, times the
  destination channels reading it) x T; the graph input is graded and every value counts
  (the dense upper bound an 8-bit image almost reaches);
- neuron updates = compartments x T, all charged as active (an upper bound: a neuron with a
  large fan-in receives input almost every step);
- messages = rate x T x (distinct destination cores of each neuron, from the mapping).

Static energy = P_static/chip x chips x step time x (hardware depth + T); latency = (hardware
depth + T) x step time. The rates are measured ones (a deploy report's per-layer firing
rates) or one assumed rate, and the result says which.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from spikedet.deploy.mapping.geometry import conv_edge, cover_counts, hardware_view, pool_edge
from spikedet.deploy.mapping.mapper import Mapping, destination_cores
from spikedet.deploy.profiles import HardwareProfile
from spikedet.errors import SpikedetError
from spikedet.sim.qgraph import READOUT_KINDS, QInput, QuantGraph


def resize(qg: QuantGraph, size: int) -> QuantGraph:
    """``qg`` for a ``size`` x ``size`` input: shapes follow the conv arithmetic in order."""
    if size < 1:
        raise SpikedetError(f"--imgsz must be positive, got {size}", "--imgsz")
    shapes = {"input": (qg.input.shape[0], size, size)}
    pops = []
    for p in qg.populations:
        if p.kind == "maxpool":
            src = shapes[p.src]
            hw = [
                (src[1 + d] + 2 * p.pool_padding[d] - p.pool_kernel[d]) // p.pool_stride[d] + 1
                for d in (0, 1)
            ]
            shape = (src[0], *hw)
        else:
            outs = {s.output_shape(shapes[s.src])[1:] for s in qg.incoming(p.name)}
            if len(outs) != 1:
                raise SpikedetError(
                    f"its inputs disagree on the map size at {size} px ({sorted(outs)})",
                    f"population {p.name}",
                )
            shape = (p.shape[0], *outs.pop())
        if min(shape) < 1:
            raise SpikedetError(f"{size} px is too small: the map vanishes", f"population {p.name}")
        if p.bias.size not in (p.shape[0],):
            raise SpikedetError("a per-neuron bias cannot be resized", f"population {p.name}")
        shapes[p.name] = shape
        pops.append(replace(p, shape=shape))
    if any(s.weight.shape[2:] == qg.src_shape(s.src)[1:] and s.weight.shape[2] > 1
           for s in qg.synapses):  # fmt: skip
        raise SpikedetError("a dense layer's kernel covers a fixed map: not resizable", "--imgsz")
    new_input = QInput(shapes["input"], qg.input.scale, qg.input.bits)
    return QuantGraph(
        T=qg.T, input=new_input, populations=pops, synapses=list(qg.synapses),
        message_bits=qg.message_bits, metadata=dict(qg.metadata),
    )  # fmt: skip


def _connections(qg: QuantGraph) -> dict[str, dict[str, int]]:
    """Per destination population, per source: connections (synapse-tap pairs) per step."""
    hw = hardware_view(qg)
    edges = [conv_edge(qg, s) for s in qg.synapses]
    edges += [pool_edge(qg, p) for p in qg.populations if p.kind == "maxpool"]
    out: dict[str, dict[str, int]] = {}
    for e in edges:
        rows, cols = cover_counts(e, hw, 0), cover_counts(e, hw, 1)
        readers = e.readers(hw.shape(e.src)[0])
        n = int(readers.sum()) * int(rows.sum()) * int(cols.sum())
        out.setdefault(e.dst, {})
        out[e.dst][e.src] = out[e.dst].get(e.src, 0) + n
    return out


def estimate(
    qg: QuantGraph, mapping: Mapping, profile: HardwareProfile, rates: dict[str, float],
    default_rate: float, measured: bool,
) -> dict:  # fmt: skip
    """Per-layer and total figures at the given firing rates (module docstring)."""
    if not 0 <= default_rate <= 1:
        raise SpikedetError(f"a firing rate is in 0..1, got {default_rate}", "--rate")
    T = qg.T
    conns = _connections(qg)

    def rate(name: str) -> float:
        return 1.0 if name == "input" else float(rates.get(name, default_rate))

    layers, totals = [], dict.fromkeys(("synops", "updates", "messages", "dynamic_pj"), 0.0)
    for p in qg.populations:
        lm = mapping.layer(p.name)
        synops = sum(rate(src) * n * T for src, n in conns.get(p.name, {}).items())
        updates = float(lm.compartments * T)
        messages = 0.0
        if p.kind not in READOUT_KINDS:
            messages = rate(p.name) * T * float(destination_cores(qg, mapping, p.name).sum())
        dyn = (
            synops * profile.e_synop_pj
            + updates * profile.e_neuron_active_pj
            + messages * profile.e_message_pj
        )
        layers.append({
            "name": p.name, "rate": rate(p.name), "rate_measured": p.name in rates,
            "synops": synops, "neuron_updates": updates, "messages": messages,
            "energy_dynamic_pj": dyn,
        })  # fmt: skip
        for k, v in zip(totals, (synops, updates, messages, dyn)):
            totals[k] += v
    steps = mapping.hw_depth + T
    static = profile.static_power_mw * mapping.chips * profile.step_time_us * steps * 1e3
    latency_us = steps * profile.step_time_us
    return {
        "T": T,
        "rate": default_rate,
        "rates_measured": measured,
        "layers": layers,
        "hw_steps": steps,
        **totals,
        "energy_static_pj": static,
        "energy_total_pj": totals["dynamic_pj"] + static,
        "latency_us": latency_us,
        "inferences_per_s": 1e6 / latency_us,
        "neurons": int(np.sum([p.size for p in qg.populations])),
    }
