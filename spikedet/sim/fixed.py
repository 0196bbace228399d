"""The ``fixed`` engine: docs/semantics.md §3.2 bit for bit, vectorized with numpy.

Thanks to the §3.3 alignment (every synapse delivers its source's logical step t to its
destination's logical step t), the hardware pipeline equals a layer-by-layer evaluation in
logical time: each population in topological order gets all T steps of its synaptic input at
once (one batched convolution over T*B samples), then runs its T-step neuron recurrence
(I-LIF, LIF, readout; ``cuba`` in ``spikedet.sim.fixed_cuba``). A maxpool population is the
integer max-pool of its source's spikes at the same logical step (its one hardware step of
latency is in its depth). A synapse's wrapped output is repeated ``upsample`` x ``upsample``
and added into its channel range.

Convolution (``spikedet.sim.fixed_conv``): with torch importable, an exact int8 x int8 ->
int32 GEMM over int8 im2col columns and torch's float32 grouped conv for depthwise ones
(``fixed_torch``, where the operands and sums fit); otherwise one float32 / float64 BLAS GEMM,
exact because every partial sum is an integer below 2^24 (2^53), and depthwise convs as
banded GEMMs (``fixed_depthwise``). Per graph (``fixed_plan``) the engine prepares every
weight once and computes each distinct conv (same source, geometry and integer weights) once
per run, its wrapped output reused by every synapse that has it. Scratch buffers are reused
(``Workspace``). Currents are int32 (each term is a 24-bit value; up to 255 terms).
"""

from __future__ import annotations

import time

import numpy as np

from spikedet.sim import fixed_torch
from spikedet.sim.fixed_conv import Workspace, conv_int, prepare_conv, wrap24
from spikedet.sim.fixed_cuba import run_cuba
from spikedet.sim.fixed_lagged import run_lagged
from spikedet.sim.fixed_plan import (
    GraphPlan,
    PlanCache,
    SharedOutputs,
    compute_stack,
    source_peak,
)
from spikedet.sim.fixed_pool import max_pool_int
from spikedet.sim.interface import EngineResult, check_input
from spikedet.sim.qgraph import (
    CUBA_KINDS,
    DECAY_BITS,
    READOUT_KINDS,
    STATE_BITS,
    QPopulation,
    QuantGraph,
)

__all__ = [
    "FixedEngine",
    "Workspace",
    "conv_int",
    "max_pool_int",
    "run_population",
    "source_peak",
    "state_dtype",
    "wrap24",
]

STATE_MAX = (1 << (STATE_BITS - 1)) - 1  # clip24 bound: +-(2^23 - 1)


def clip24(x: np.ndarray) -> np.ndarray:
    return np.clip(x, -STATE_MAX, STATE_MAX)


def decay(x: np.ndarray, dv: int, out: np.ndarray | None = None) -> np.ndarray:
    """sign(x) * ((|x| * (4096 - dv)) >> 12): 12-bit decay truncating toward zero.

    Computed as (x*m + (4095 if x < 0 else 0)) >> 12 with m = 4096 - dv >= 1: for y = x*m < 0 the
    arithmetic shift of y + 4095 is ceil(y / 4096), i.e. truncation toward zero, with no
    abs/sign temporaries. With ``out`` (a scratch array of x's shape) ``x`` itself is updated
    and returned: the hot loop then allocates nothing (arrays above 128 KiB are fresh mmaps).
    """
    m = (1 << DECAY_BITS) - dv
    if out is None:
        y = x * m
        y += (x >> 63) & ((1 << DECAY_BITS) - 1)
        y >>= DECAY_BITS
        return y
    np.right_shift(x, 63, out=out)  # -1 where x < 0, else 0
    out &= (1 << DECAY_BITS) - 1
    x *= m
    x += out
    x >>= DECAY_BITS
    return x


def spike_levels(u: np.ndarray, theta: int, levels: int) -> np.ndarray:
    """s = clip(floor((u + theta/2 - 1) / theta), 0, D) = #{k : u > (k - 1/2) * theta}."""
    return np.clip((u + (theta // 2 - 1)) // theta, 0, levels)


def population_input(
    qg: QuantGraph,
    pop: QPopulation,
    outputs: dict[str, np.ndarray],
    batch: int,
    workspace: Workspace | None = None,
    plan: GraphPlan | None = None,
    shared: SharedOutputs | None = None,
) -> np.ndarray:
    """a_t = sum_e place(up(wrap24(conv(W_e, s_src(e),t)))): [T', B, C, H, W] where up repeats
    the map f x f (``upsample``) and place adds it into channels ``out_offset`` ..
    ``out_offset + Cout - 1``. T' = 1 when every source is a static input (the same current at
    every step), else T. int32 (every term is a 24-bit value) below 256 terms, else int64.
    With a ``workspace`` the result is its buffer, valid until the next call. With a ``plan``
    (``fixed_plan``) the prepared weights are used, and with ``shared`` a conv that several
    synapses have is computed once per run (a stacked one with the rest of its stack)."""
    ws = workspace if workspace is not None else Workspace()
    incoming = qg.incoming(pop.name)
    steps = max(outputs[syn.src].shape[0] for syn in incoming)
    dtype = np.int32 if len(incoming) < 256 else np.int64
    total = ws.get("current", (steps, batch, *pop.shape), dtype)
    empty = True  # nothing written to ``total`` yet
    for syn in incoming:
        src = outputs[syn.src]  # [T', B, C, H, W], T' = 1 for a static input
        src_steps = src.shape[0]
        found = plan.conv(syn) if plan is not None else None
        index, conv = found if found else (-1, prepare_conv(syn, source_peak(qg, syn.src)))
        shape = (src_steps * batch, *syn.output_shape(src.shape[2:]))
        shape = (*shape[:2], shape[2] // syn.upsample, shape[3] // syn.upsample)
        whole = syn.upsample == 1 and shape[1] == pop.shape[0] and src_steps == steps
        reuse = shared is not None and plan.held(index)
        part = shared.get(index) if reuse else None
        # the first full-size term of an unshared conv is written straight into the sum
        direct = (
            empty and whole and not reuse and np.dtype(conv.out_dtype).itemsize <= total.itemsize
        )
        if part is None and reuse and index in plan.stack_of:  # with its stack's others
            flat = src.reshape(src_steps * batch, *src.shape[2:])
            part = compute_stack(plan, index, flat, ws, shared)
        if part is None:
            if direct:
                part = total.reshape(shape)
            elif reuse:  # kept until its last synapse has used it
                part = np.empty(shape, conv.out_dtype)
            else:
                part = ws.get("term", shape, conv.out_dtype)
            flat = src.reshape(src_steps * batch, *src.shape[2:])
            conv_int(flat, None, out=part, workspace=ws, prepared=conv)
            if conv.wrap:  # else |sum| < 2^23: the 24-bit wrap cannot change it
                wrap24(part, inplace=True)
            if reuse:
                shared.put(index, part)
        if reuse:
            shared.used(index)
        if empty and whole:
            if not direct:
                np.copyto(total.reshape(shape), part)
            empty = False
            continue
        if empty:
            total.fill(0)
            empty = False
        part = part.reshape(src_steps, batch, *part.shape[1:])  # static: broadcasts over T
        # a view of the channel range: the in-place adds below write into ``total``
        target = total[:, :, syn.out_offset : syn.out_offset + part.shape[2]]
        f = syn.upsample
        for i in range(f):  # nearest upsampling: every f x f phase of the target gets the map
            for j in range(f):
                target[..., i::f, j::f] += part
    return total


def _shift_decay(x: np.ndarray, shift: int, scratch: np.ndarray) -> None:
    """decay() in place when 4096 - dv = 2^(12 - shift): truncation toward zero of x / 2^shift,
    (x + (2^shift - 1 if x < 0 else 0)) >> shift, with no product (so int32 cannot overflow)."""
    if shift == 0:
        return
    np.right_shift(x, x.dtype.itemsize * 8 - 1, out=scratch)  # -1 where x < 0, else 0
    scratch &= (1 << shift) - 1
    x += scratch
    x >>= shift


def state_dtype(pop: QPopulation, current_bound: int | None) -> type:
    """int32 for the recurrence when it is exact there, else int64.

    int32 needs the decay to be a shift (4096 - dv a power of two: β = 0.25, 0.5, 0.75 ...; no
    product) and every intermediate below 2^31: |u - θ·s| <= 2^23 + θ·D before the decay, plus
    the current (``current_bound``) and the bias before the clip. Half the memory traffic of
    int64 makes the neuron loop about twice as fast (benchmarks/engines.py)."""
    m = (1 << DECAY_BITS) - pop.dv
    if current_bound is None or m & (m - 1) or pop.kind not in ("ilif", "lif"):
        return np.int64
    bias = int(np.abs(pop.bias).max(initial=0))
    worst = STATE_MAX + 1 + pop.theta * max(pop.D, 1) + current_bound + bias
    return np.int32 if worst < 1 << 31 else np.int64


def run_population(
    pop: QPopulation,
    current: np.ndarray,
    steps: int | None = None,
    workspace: Workspace | None = None,
    current_bound: int | None = None,
) -> np.ndarray:
    """The ``steps``-step recurrence of §3.2 on a_t = ``current`` [T, B, C, H, W] ([1, ...]: the
    same current at every step; ``steps`` defaults to len(current)).

    I-LIF: u_t = clip24(decay(u_{t-1} - theta*s_{t-1}) + a_t + b), s_t = levels(u_t); LIF:
    u_t = clip24(decay(u_{t-1}*(1 - s_{t-1})) + a_t + b), s_t = [u_t > vth]; both return the
    spikes [T, ...]. Readout: v_t = clip24(v_{t-1} + a_t + b); returns v_{T-1} [...].
    ``current_bound`` (a bound on |a_t|) lets the recurrence run in int32 (``state_dtype``).
    """
    steps = len(current) if steps is None else steps
    ws = workspace if workspace is not None else Workspace()
    bias = pop.bias.reshape(-1, 1, 1)
    if pop.kind == "readout":
        state = np.zeros(current.shape[1:], dtype=np.int64)  # returned: not a workspace buffer
        for t in range(steps):
            state += current[t if len(current) > 1 else 0]
            state += bias
            np.clip(state, -STATE_MAX, STATE_MAX, out=state)
        return state
    # spikes are 0..D (D <= 255): int8 / int16 hold them, 1/8 or 1/4 of int64's memory
    spikes = np.empty((steps, *current.shape[1:]), dtype=np.int8 if pop.D < 128 else np.int16)
    dtype = state_dtype(pop, current_bound)
    bias = bias.astype(dtype)  # int32 += int64 would run the add in int64 (~8x slower)
    state = ws.get("state", current.shape[1:], dtype)
    scratch = ws.get("scratch", state.shape, dtype)  # the loop allocates nothing
    lif, half = pop.kind == "lif", pop.theta // 2 - 1
    m = (1 << DECAY_BITS) - pop.dv
    shift = DECAY_BITS - (m.bit_length() - 1) if m & (m - 1) == 0 else -1
    for t in range(steps):
        if t:  # u_0 = a_0 + b: the state and the previous spike are still zero
            if lif:  # hard reset: a neuron that fired restarts from 0 (decay(0) = 0)
                np.equal(spikes[t - 1], 0, out=scratch)
                state *= scratch
            else:
                np.multiply(spikes[t - 1], pop.theta, out=scratch, dtype=scratch.dtype)
                state -= scratch
            if shift >= 0:
                _shift_decay(state, shift, scratch)
            else:
                decay(state, pop.dv, out=scratch)
            state += current[t if len(current) > 1 else 0]
            state += bias
        else:
            np.add(current[0], bias, out=state)
        if not lif and t == steps - 1:
            # the last state is not kept: levels(v) is 0 below -half and D above
            # D*theta - half, so clip24 and the levels' clip are one clip to the intersection
            lo, hi = max(-STATE_MAX, -half), min(STATE_MAX, pop.D * pop.theta - half)
            np.clip(state, lo, hi, out=scratch)
            scratch += half
            np.floor_divide(scratch, pop.theta, out=spikes[t], casting="unsafe")
            break
        np.clip(state, -STATE_MAX, STATE_MAX, out=state)
        if lif:
            np.greater(state, pop.vth, out=spikes[t], casting="unsafe")
        else:  # spike_levels without temporaries
            np.add(state, half, out=scratch)
            np.floor_divide(scratch, pop.theta, out=scratch)
            np.clip(scratch, 0, pop.D, out=spikes[t])
    return spikes


class FixedEngine:
    """Bit-exact numpy execution of a QuantGraph (the golden model the Lava engine must match).

    Its scratch buffers (a ``Workspace``) live as long as the engine, so repeated runs reuse
    them.
    """

    name = "fixed"

    def __init__(self, record_states: bool = False) -> None:
        self.workspace = Workspace()
        self.plans = PlanCache()  # per graph: prepared weights, distinct convs (fixed_plan)
        self.record_states = record_states  # cuba u, v per step in info["states"] (§3.6)

    def available(self) -> tuple[bool, str]:
        kernels = "torch int8 kernels" if fixed_torch.available() else "numpy kernels"
        return True, f"numpy {np.__version__}, {kernels}"

    def run(self, qg: QuantGraph, x_int: np.ndarray) -> EngineResult:
        start = time.perf_counter()
        x = check_input(qg, x_int)
        batch = x.shape[1]
        outputs: dict[str, np.ndarray] = {"input": x}
        spikes: dict[str, np.ndarray] = {}
        readouts: dict[str, np.ndarray] = {}
        states: dict[str, dict[str, np.ndarray]] = {}
        plan = self.plans.get(qg)
        shared = SharedOutputs(plan)
        for pop in qg.populations:
            if pop.name in outputs:  # run with the first population of its cycle (§4.4)
                spikes[pop.name] = outputs[pop.name]
                continue
            if pop.kind == "maxpool":
                spikes[pop.name] = outputs[pop.name] = max_pool_int(outputs[pop.src], pop)
                continue
            lagged = any(s.lag for s in qg.incoming(pop.name))  # NIR recurrence, Delay (§4.4)
            current = (
                None
                if lagged
                else population_input(qg, pop, outputs, batch, self.workspace, plan, shared)
            )
            bound = len(qg.incoming(pop.name)) << (STATE_BITS - 1)  # each term: a 24-bit value
            if lagged:
                result = run_lagged(qg, pop, outputs, batch, self)
            elif pop.kind in CUBA_KINDS:  # cuba spikes, li its final v (fixed_cuba)
                record = states.setdefault(pop.name, {}) if self.record_states else None
                result = run_cuba(pop, current, qg.T, record)
            else:
                result = run_population(pop, current, qg.T, self.workspace, current_bound=bound)
            if pop.kind in READOUT_KINDS:
                readouts[pop.name] = result
            else:
                spikes[pop.name] = outputs[pop.name] = result
        wall = time.perf_counter() - start
        neurons = sum(p.size for p in qg.populations)
        return EngineResult(
            spikes=spikes,
            readouts=readouts,
            wall_s=wall,
            engine=self.name,
            info={
                "T": qg.T,
                "batch": batch,
                "hw_steps": qg.hw_steps,
                "neurons": neurons,
                "s_per_step_per_sample": wall / (qg.T * batch),
                **({"states": states} if self.record_states else {}),
            },
        )
