"""Step-by-step simulation of a QuantGraph of ``cuba`` populations in hardware time, with every
population running from the first step, as Lava's netx blocks do (docs/semantics.md §3.6).

The engines follow §3.3: a population is idle before its depth. A netx network built by
lava-dl instead runs every layer from Lava step 1: a layer integrates its bias (and whatever its
predecessors emit while they do the same) before its first real input arrives; netx's periodic
reset then clears it right before the layer's logical step 0. Recordings made on Lava or Loihi
therefore hold these pre-roll values. This module reproduces them, to compare *every* recorded
step, and independently checks the §3.3 alignment: from logical step 0 on it must equal the
``fixed`` engine's layer-by-layer result.

Hardware step h = 1, 2, ... (Lava's ``time_step``): population P computes
a = Σ_e wrap24(conv_e(output of src(e) at step h − 1 − delay_e)) — the graph input emits x_t at
step t (t = 0 .. T−1, nothing after) — then ``cuba_step`` with logical index t = h − depth(P)
(negative during the pre-roll; the reset uses Python's t mod R).
"""

from __future__ import annotations

import numpy as np

from spikedet.errors import SpikedetError
from spikedet.sim.fixed import conv_int, source_peak, wrap24
from spikedet.sim.fixed_cuba import CubaState, cuba_step
from spikedet.sim.interface import check_input
from spikedet.sim.qgraph import STATE_BITS, QuantGraph


def run_free_running(qg: QuantGraph, x_int: np.ndarray, steps: int) -> dict[str, dict]:
    """Lava steps 1..``steps`` of ``qg`` on ``x_int`` ([B, C, H, W] static or [T, B, ...]):
    per population {"s", "u", "v"} int64 [steps, B, C, H, W]; index n holds Lava step n + 1."""
    bad = [p.name for p in qg.populations if p.kind != "cuba"]
    if bad:
        raise SpikedetError("the free-running schedule runs cuba populations only", bad[0])
    x = check_input(qg, x_int)
    batch = x.shape[1]
    states = {p.name: CubaState.zeros((batch, *p.shape)) for p in qg.populations}
    out = {p.name: {k: np.zeros((steps, batch, *p.shape), np.int64) for k in "suv"}
           for p in qg.populations}  # fmt: skip

    def emitted(src: str, h: int) -> np.ndarray | None:
        """What ``src`` sent at hardware step h (None: nothing, zeros)."""
        if src == "input":
            if x.shape[0] == 1:
                return x[0] if h >= 0 else None
            return x[h] if 0 <= h < x.shape[0] else None
        return out[src]["s"][h - 1] if h >= 1 else None  # index n holds step n + 1

    for h in range(1, steps + 1):
        for p in qg.populations:
            a = np.zeros((batch, *p.shape), np.int64)
            for syn in qg.incoming(p.name):
                sent = emitted(syn.src, h - 1 - syn.delay)
                if sent is None:
                    continue
                part = conv_int(sent, syn, peak=source_peak(qg, syn.src))
                if int(np.abs(syn.weight).max(initial=0)) * source_peak(qg, syn.src) * int(
                    syn.weight[0].size
                ) >= 1 << (STATE_BITS - 1):
                    wrap24(part, inplace=True)
                a[:, syn.out_offset : syn.out_offset + part.shape[1]] += part
            record = out[p.name]
            record["s"][h - 1] = cuba_step(states[p.name], a, p, h - p.depth)
            record["u"][h - 1] = states[p.name].u
            record["v"][h - 1] = states[p.name].v
    return out
