"""Populations of the ``fixed`` engine with lagged synapses (NIR recurrent edges, Delay; §4.4).

A synapse with ``lag`` L delivers its source's logical step t - L to step t (zero before). A
forward lagged synapse is the ordinary layer-at-once input with its source shifted by L steps.
A self-synapse (the only backward synapse a QuantGraph allows) needs the population's own
spikes of step t - L, so such a population is run step by step: at step t its input is the
forward current plus the wrapped conv of its spikes s_{t-L}, then one ``fixed_cuba.cuba_step``
(the NIR neurons deploy as ``cuba``, §4.5; other kinds with lagged synapses are refused).

The conv and input functions are those of ``spikedet.sim.fixed``, looked up through the engine
object that calls (that module imports this one, so importing it here would make a cycle).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import numpy as np

from spikedet.errors import SpikedetError
from spikedet.sim.fixed_cuba import CubaState, cuba_step
from spikedet.sim.qgraph import QPopulation, QuantGraph


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


def forward_current(
    qg: QuantGraph, pop: QPopulation, outputs: dict, batch: int, ws: Any, population_input: Callable
) -> np.ndarray:
    """Σ over the synapses from other populations / the input, each source shifted by its lag."""
    total = np.zeros((qg.T, batch, *pop.shape), dtype=np.int64)
    for syn in qg.incoming(pop.name):
        if syn.src == pop.name:
            continue
        src = shifted(outputs[syn.src], syn.lag, qg.T) if syn.lag else outputs[syn.src]
        part = population_input(_Only(qg, syn), pop, {syn.src: src}, batch, ws)
        total += part  # broadcasts a static [1, ...] term over T
    return total


def run_lagged(
    qg: QuantGraph, pop: QPopulation, outputs: dict, batch: int, engine: Any
) -> np.ndarray:
    """Spikes int64 [T, B, C, H, W] of ``pop`` (module docstring) for a ``FixedEngine``."""
    fixed = sys.modules[type(engine).__module__]
    population_input, conv_int, wrap24 = fixed.population_input, fixed.conv_int, fixed.wrap24
    ws = engine.workspace
    if pop.kind != "cuba":
        raise SpikedetError(
            f"lagged or recurrent synapses into a {pop.kind} population are not supported",
            f"population {pop.name}",
        )
    current = forward_current(qg, pop, outputs, batch, ws, population_input)
    recurrent = [s for s in qg.incoming(pop.name) if s.src == pop.name]
    spikes = np.zeros((qg.T, batch, *pop.shape), dtype=np.int64)
    cuba = CubaState.zeros((batch, *pop.shape))
    for t in range(qg.T):
        a_t = current[t].copy()
        for syn in recurrent:
            if t >= syn.lag:
                term = conv_int(spikes[t - syn.lag], syn, peak=1)
                a_t[:, syn.out_offset : syn.out_offset + term.shape[1]] += wrap24(term)
        spikes[t] = cuba_step(cuba, a_t, pop, t)
    return spikes
