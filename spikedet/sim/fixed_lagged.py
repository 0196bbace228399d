"""Populations of the ``fixed`` engine with lagged synapses (NIR recurrent edges, Delay; §4.4).

A synapse with ``lag`` L delivers its source's logical step t - L to step t (zero before). A
forward lagged synapse is the ordinary layer-at-once input with its source shifted by L steps.
A backward synapse (lag >= 1, the only kind a QuantGraph allows to point back) closes a cycle:
the populations of that cycle — the strongly connected component of the synapse graph that
holds the population, one population for a recurrent self-synapse — are run together, step by
step. At step t each member, in the graph's (topological) order, gets

    a_t = forward current from outside the cycle (each source shifted by its lag)
        + Σ over synapses e from inside the cycle: place(wrap24(conv_e(s_src(e), t - lag(e))))

and one ``fixed_cuba.cuba_step`` (the NIR neurons deploy as ``cuba``, §4.5; other kinds in a
cycle or with lagged synapses are refused). A synapse inside the cycle with lag 0 points
forward in that order, so its source's step t is known when its destination needs it.

``run_lagged`` returns the spikes of the population it is called for and writes those of the
other members of its cycle into ``outputs`` (the engine then takes them from there). The
external input uses ``spikedet.sim.fixed.population_input``, looked up through the engine
object that calls (that module imports this one, so importing it here would make a cycle).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import numpy as np

from spikedet.errors import SpikedetError
from spikedet.sim.fixed_conv import conv_int, prepare_conv, wrap24
from spikedet.sim.fixed_cuba import CubaState, cuba_step
from spikedet.sim.qgraph import QPopulation, QSynapse, QuantGraph


class _Only:
    """A QuantGraph whose ``incoming`` is one chosen synapse (for population_input)."""

    def __init__(self, qg: QuantGraph, syn: Any):
        self._qg, self._syn = qg, syn

    def incoming(self, name: str) -> list:
        return [self._syn]

    def __getattr__(self, key: str) -> Any:
        return getattr(self._qg, key)


def shifted(src: np.ndarray, lag: int, steps: int) -> np.ndarray:
    """[T', B, ...] (T' = 1: static) -> [steps, B, ...] with step t holding t - lag (0 before)."""
    full = np.broadcast_to(src, (steps, *src.shape[1:])) if src.shape[0] == 1 else src
    out = np.zeros((steps, *src.shape[1:]), dtype=src.dtype)
    if lag < steps:
        out[lag:] = full[: steps - lag]
    return out


def cycle_of(qg: QuantGraph, name: str) -> list[str]:
    """The populations on a cycle of synapses with ``name`` (its strongly connected component,
    maxpool sources counted as edges), in the graph's order; [name] when it is on none."""

    def reach(start: str, step: Callable[[str], list[str]]) -> set[str]:
        seen, todo = {start}, [start]
        while todo:
            for nxt in step(todo.pop()):
                if nxt != "input" and nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        return seen

    def succ(n: str) -> list[str]:
        out = [s.dst for s in qg.synapses if s.src == n]
        return out + [p.name for p in qg.populations if p.kind == "maxpool" and p.src == n]

    def pred(n: str) -> list[str]:
        pop = qg.pop(n)
        return [s.src for s in qg.incoming(n)] + ([pop.src] if pop.kind == "maxpool" else [])

    group = reach(name, succ) & reach(name, pred)
    return [p.name for p in qg.populations if p.name in group]


def forward_current(
    qg: QuantGraph,
    pop: QPopulation,
    outputs: dict,
    batch: int,
    ws: Any,
    population_input: Callable,
    inside: frozenset[str] = frozenset(),
) -> np.ndarray:
    """Σ over the synapses from sources outside ``inside`` (and other than ``pop``), each source
    shifted by its lag: int64 [T, B, C, H, W]."""
    total = np.zeros((qg.T, batch, *pop.shape), dtype=np.int64)
    for syn in qg.incoming(pop.name):
        if syn.src == pop.name or syn.src in inside:
            continue
        src = shifted(outputs[syn.src], syn.lag, qg.T) if syn.lag else outputs[syn.src]
        part = population_input(_Only(qg, syn), pop, {syn.src: src}, batch, ws)
        total += part  # broadcasts a static [1, ...] term over T
    return total


def _add_term(a_t: np.ndarray, syn: QSynapse, spikes: np.ndarray, ws: Any, conv: Any) -> None:
    """a_t += place(up(wrap24(conv(spikes)))): channels out_offset.., nearest upsampling."""
    part = conv_int(spikes, None, workspace=ws, prepared=conv)
    if conv.wrap:  # else |sum| < 2^23: the 24-bit wrap cannot change it
        part = wrap24(part)
    target = a_t[:, syn.out_offset : syn.out_offset + part.shape[1]]
    f = syn.upsample
    for i in range(f):
        for j in range(f):
            target[..., i::f, j::f] += part


def run_lagged(
    qg: QuantGraph, pop: QPopulation, outputs: dict, batch: int, engine: Any
) -> np.ndarray:
    """Spikes int64 [T, B, C, H, W] of ``pop`` (module docstring) for a ``FixedEngine``; the
    other populations of its cycle are written into ``outputs``."""
    population_input = sys.modules[type(engine).__module__].population_input
    ws = engine.workspace
    group = [qg.pop(n) for n in cycle_of(qg, pop.name)]
    for p in group:
        if p.kind != "cuba":
            what = "in a cycle" if len(group) > 1 else "with lagged or recurrent synapses"
            raise SpikedetError(
                f"a {p.kind} population {what} is not supported (cuba only)",
                f"population {p.name}",
            )
    inside = frozenset(p.name for p in group)
    current = {
        p.name: forward_current(qg, p, outputs, batch, ws, population_input, inside) for p in group
    }
    internal = {
        p.name: [
            (s, prepare_conv(s, qg.pop(s.src).D)) for s in qg.incoming(p.name) if s.src in inside
        ]
        for p in group
    }
    spikes = {p.name: np.zeros((qg.T, batch, *p.shape), dtype=np.int64) for p in group}
    states = {p.name: CubaState.zeros((batch, *p.shape)) for p in group}
    for t in range(qg.T):
        for p in group:
            a_t = current[p.name][t]
            for syn, conv in internal[p.name]:
                if t >= syn.lag:
                    _add_term(a_t, syn, spikes[syn.src][t - syn.lag], ws, conv)
            spikes[p.name][t] = cuba_step(states[p.name], a_t, p, t)
    for p in group:
        if p.name != pop.name:
            outputs[p.name] = spikes[p.name]
    return spikes[pop.name]
