"""The ``cuba`` population of the ``fixed`` engine: Loihi's CUBA LIF bit for bit (docs §3.6).

The arithmetic is that of lava-nc 0.10.0 ``lava/proc/lif/models.py``
(``AbstractPyLifModelFixed.subthr_dynamics`` with ``PyLifModelBitAcc`` / ``PyLifResetModelBitAcc``),
read line by line, including where Lava's int32 arrays wrap (i32 below: the value modulo 2^32
as a signed 32-bit integer; it matters only when u runs far outside 24 bits, see below):

    u_t = wrap_u(i32(decay(u_{t-1}, du + 1) + i32(i32(a_t + u_bias) << 6)))
    v_t = clip24(i32(decay(v_{t-1}, dv) + u_t + (bias << bias_exp)))
    s_t = [v_t > (vth << 6)],  then v_t <- 0 where s_t     (u is not reset)

``u_bias`` is a constant current input (0 unless set: a NIR bias into a current with memory,
§4.5), summed with the synaptic input as Lava's InPort sums a constant source with the synapses;
given as rows (R, n), row t is added at logical step t and the last row after (a bias that
reaches the neuron through a recurrent edge or Delay arrives that late).
With ``reset_mode == "subtract"`` a spike lowers v by the threshold instead, v_t <- v_t -
(vth << 6) (Loihi 2 microcode; Lava's LIF with its ``reset_voltage`` replaced, §4.5). An ``li``
population is this recurrence whose value v_{T-1} is read out (``run_cuba`` returns it).

decay(x, d) = sign(x) * ((|x| * (4096 - d)) >> 12) truncates toward zero (Lava shifts |x| and
restores the sign). wrap_u is Lava's one-shot 24-bit wrap of the current: x - 2^24 above 2^23,
x + 2^24 at or below -2^23 (so 2^23 itself stays, and -2^23 becomes +2^23, as in Lava). It
subtracts 2^24 once only, so a large input with little current decay drives u beyond 24 bits
and up to Lava's int32 limits, where Lava's numpy arithmetic wraps modulo 2^32
(tests/test_cuba_vs_lava.py runs Lava's own classes into that regime).
A periodic reset (``reset_interval`` R > 0) zeroes u and v before every logical step t with
t % R == ``reset_offset`` (Lava's LIFReset zeroes them before the update of its step).

This module has no import of ``spikedet.sim.fixed`` (which imports it).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from spikedet.sim.qgraph import DECAY_BITS, STATE_BITS, QPopulation

STATE_MAX = (1 << (STATE_BITS - 1)) - 1  # v is clipped to +-(2^23 - 1)
HALF = 1 << (STATE_BITS - 1)  # 2^23: u wraps above it (and at or below -2^23)
MSB_SHIFT = 6  # Loihi left-aligns the synaptic input and the threshold by 6 bits


def int32_wrap(x: np.ndarray) -> np.ndarray:
    """x modulo 2^32 as a signed 32-bit value (what Lava's int32 arrays hold), in int64."""
    return ((x + (1 << 31)) & ((1 << 32) - 1)) - (1 << 31)


def lava_decay(x: np.ndarray, d: int) -> np.ndarray:
    """sign(y) * (|y| >> 12) with y = x * (4096 - d): truncation of y / 4096 toward zero."""
    y = x * ((1 << DECAY_BITS) - d)
    y += (y >> 63) & ((1 << DECAY_BITS) - 1)  # arithmetic shift of y + 4095 = ceil for y < 0
    y >>= DECAY_BITS
    return y


def wrap_current(x: np.ndarray) -> np.ndarray:
    """Lava's one-shot wrap of u: x - 2^24 where x > 2^23, x + 2^24 where x <= -2^23."""
    return np.where(x > HALF, x - 2 * HALF, np.where(x <= -HALF, x + 2 * HALF, x))


def _per_neuron(values: np.ndarray, pop: QPopulation) -> np.ndarray:
    """A per-channel (C,) or per-neuron (C*H*W,) array shaped to broadcast over [..., C, H, W]."""
    return values.reshape(-1, 1, 1) if values.size == pop.shape[0] else values.reshape(pop.shape)


def effective_bias(pop: QPopulation) -> np.ndarray:
    """bias << bias_exp, shaped to broadcast over [..., C, H, W] (per channel or per neuron)."""
    return _per_neuron(pop.bias << pop.bias_exp, pop)


@dataclass
class CubaState:
    """u and v of a cuba population [B, C, H, W] (int64), zero at the start."""

    u: np.ndarray
    v: np.ndarray

    @classmethod
    def zeros(cls, shape: tuple[int, ...]) -> CubaState:
        return cls(np.zeros(shape, np.int64), np.zeros(shape, np.int64))


def cuba_step(state: CubaState, a_t: np.ndarray, pop: QPopulation, t: int) -> np.ndarray:
    """Logical step t of ``pop`` with synaptic input ``a_t`` (int64, the state's shape or
    broadcastable): updates ``state`` in place and returns the spikes s_t (int64 0/1)."""
    if pop.reset_interval and t % pop.reset_interval == pop.reset_offset:
        state.u.fill(0)
        state.v.fill(0)
    # Lava: int64 decay cast to int32 (|u| < 2^31 and the factor is <= 1: exact), the input
    # a (int32, the InPort's sum) shifted in int32, their int32 sum, then the one-shot wrap
    a = np.asarray(a_t, dtype=np.int64)
    if pop.u_bias.size:
        u_bias = pop.u_bias if pop.u_bias.ndim == 1 else pop.u_bias[min(t, len(pop.u_bias) - 1)]
        a = a + _per_neuron(u_bias, pop)
    shifted = int32_wrap(int32_wrap(a) << MSB_SHIFT)
    state.u[...] = wrap_current(int32_wrap(lava_decay(state.u, pop.du + 1) + shifted))
    v = lava_decay(state.v, pop.dv)
    v += state.u
    v += effective_bias(pop)
    v = int32_wrap(v)  # int32 sum in Lava; only a u far beyond 24 bits can reach this
    np.clip(v, -STATE_MAX, STATE_MAX, out=v)
    spikes = v > (pop.vth << MSB_SHIFT)
    if pop.reset_mode == "subtract":
        v[spikes] -= pop.vth << MSB_SHIFT
    else:
        v[spikes] = 0
    state.v[...] = v
    return spikes.astype(np.int64)


def run_cuba(
    pop: QPopulation,
    current: np.ndarray,
    steps: int | None = None,
    record: dict[str, np.ndarray] | None = None,
) -> np.ndarray:
    """The ``steps``-step recurrence on a_t = ``current`` [T, B, C, H, W] ([1, ...]: the same
    input at every step): spikes int64 [T, B, C, H, W]; for an ``li`` population its final
    v_{T-1} [B, C, H, W] instead. With ``record`` (a dict) the states after each step are
    stored in it as ``u`` and ``v`` [T, B, C, H, W] (v after the spike reset, as Lava's ``v``
    Var reads)."""
    steps = len(current) if steps is None else steps
    state = CubaState.zeros(current.shape[1:])
    spikes = np.empty((steps, *current.shape[1:]), dtype=np.int64)
    if record is not None:
        record["u"] = np.empty_like(spikes)
        record["v"] = np.empty_like(spikes)
    for t in range(steps):
        spikes[t] = cuba_step(state, current[t if len(current) > 1 else 0], pop, t)
        if record is not None:
            record["u"][t] = state.u
            record["v"][t] = state.v
    return state.v if pop.kind == "li" else spikes
