"""The NIR primitives of one population or readout (docs/semantics.md §2.2, §2.4, §2.5, §2.7b).

Each function returns the nodes and internal edges of one unit; the builder adds them and wires
the synapses (conv nodes into ``P.li`` / ``P.lif`` / the readout, consumers from
``Population.spike_nodes``). Per-neuron parameter arrays hold one value each and are stored as
read-only broadcast views (full shape for NIR, O(1) memory until a writer materialises them).
"""

from __future__ import annotations

from dataclasses import dataclass

import nir
import numpy as np

Nodes = dict[str, nir.NIRNode]
Edges = list[tuple[str, str]]


@dataclass(frozen=True)
class Population:
    """An exported population; ``spike_nodes`` are what its consumers read (fan-in summed)."""

    name: str
    shape: tuple[int, int, int]
    levels: int
    kind: str = "ilif"  # "ilif" | "lif" | "maxpool"

    @property
    def spike_nodes(self) -> tuple[str, ...]:
        if self.kind == "lif":
            return (f"{self.name}.lif",)
        return tuple(f"{self.name}.q{k}" for k in range(1, self.levels + 1))


def uniform(shape: tuple[int, ...], value: float) -> np.ndarray:
    """A float32 array of ``shape`` holding ``value`` everywhere (read-only broadcast view)."""
    return np.broadcast_to(np.float32(value), tuple(int(v) for v in shape))


def ilif(name: str, shape: tuple, levels: int, beta: float, alpha: float, dt: float):
    """I-LIF ``P`` (§2.2): ``P.li`` LI(τ = dt/(1−β), r = α/(1−β)), so forward Euler gives
    v_t = β·v_{t-1} + α·I_t; ``P.q1..qD`` Threshold(k − ½) whose sum is s; ``P.reset``
    Scale(−β/α) on the previous step's s closes the soft reset: v_t = β·(v_{t-1} − s_{t-1}) + α·x_t.
    Returns (population, nodes, edges)."""
    pop = Population(name, shape, levels, "ilif")
    li, reset = f"{name}.li", f"{name}.reset"
    meta = {"spikedet.neuron": "ilif", "D": levels, "beta": beta, "alpha": alpha}
    nodes: Nodes = {
        li: nir.LI(
            tau=uniform(shape, dt / (1.0 - beta)),
            r=uniform(shape, alpha / (1.0 - beta)),
            v_leak=uniform(shape, 0.0),
            metadata=meta,
        )
    }
    edges: Edges = []
    for k, q in enumerate(pop.spike_nodes, start=1):
        nodes[q] = nir.Threshold(uniform(shape, k - 0.5), metadata={"spikedet.bit": k})
        edges += [(li, q), (q, reset)]
    nodes[reset] = nir.Scale(uniform(shape, -beta / alpha))
    edges.append((reset, li))  # the recurrent (one-step delayed) soft reset
    return pop, nodes, edges


def lif(name: str, shape: tuple, beta: float, threshold: float, dt: float):
    """EMS LIF ``P`` (§2.5): ``P.lif`` LIF(τ = dt/(1−β), r = 1/(1−β), v_th, v_reset = 0), i.e.
    v_t = β·v_{t-1} + I_t, z = [v_t > v_th], then v_t ← 0 where z. No reset cycle."""
    meta = {"spikedet.neuron": "lif", "beta": beta, "threshold": threshold}
    node = nir.LIF(
        tau=uniform(shape, dt / (1.0 - beta)),
        r=uniform(shape, 1.0 / (1.0 - beta)),
        v_leak=uniform(shape, 0.0),
        v_threshold=uniform(shape, threshold),
        v_reset=uniform(shape, 0.0),
        metadata=meta,
    )
    return Population(name, shape, 1, "lif"), {f"{name}.lif": node}, []


def max_pooled(name: str, src: Population, kernel: tuple, stride: tuple, padding: tuple):
    """Max-pooled spikes ``M`` of ``src`` (§2.7b): per level k, ``M.pool{k}`` SumPool2d over
    src's bit-k node, then ``M.q{k}`` Threshold(½). Exact: a thermometer code is monotone, so
    max over a window of levels = Σ_k [Σ_window bit_k ≥ 1]; zero padding is neutral (s ≥ 0)."""
    c, h, w = src.shape
    shape = (c, (h + 2 * padding[0] - kernel[0]) // stride[0] + 1,
             (w + 2 * padding[1] - kernel[1]) // stride[1] + 1)  # fmt: skip
    pop = Population(name, shape, src.levels, "maxpool")
    nodes: Nodes = {}
    edges: Edges = []
    for k, (bit, q) in enumerate(zip(src.spike_nodes, pop.spike_nodes), start=1):
        pool = f"{name}.pool{k}"
        nodes[pool] = nir.SumPool2d(np.array(kernel), np.array(stride), np.array(padding))
        nodes[q] = nir.Threshold(
            uniform(shape, 0.5), metadata={"spikedet.neuron": "maxpool", "spikedet.bit": k}
        )
        edges += [(bit, pool), (pool, q)]
    return pop, nodes, edges


def readout(role: str, shape: tuple, dt: float) -> tuple[Nodes, Edges]:
    """Readout (§2.4): ``role`` I(r = 1/dt), so v_t = v_{t-1} + I_t (the host divides the final
    value by T: ``spikedet.readout = mean``), then ``role.output``."""
    nodes: Nodes = {
        role: nir.I(r=uniform(shape, 1.0 / dt), metadata={"spikedet.readout": "mean"}),
        f"{role}.output": nir.Output(output_type=np.array(shape)),
    }
    return nodes, [(role, f"{role}.output")]
