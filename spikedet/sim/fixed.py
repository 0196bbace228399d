"""The ``fixed`` engine: docs/semantics.md §3.2 bit for bit, vectorized with numpy.

Thanks to the §3.3 alignment (every synapse delivers its source's logical step t to its
destination's logical step t), the hardware pipeline equals a layer-by-layer evaluation in
logical time: each population in topological order gets all T steps of its synaptic input at
once (one batched convolution over T*B samples), then runs its T-step neuron recurrence.

Convolution: im2col (stride tricks) and a float64 GEMM. Every operand is an integer and every
partial sum is bounded by max|W| * max|x| * fan-in; below 2^53 float64 holds them exactly in any
summation order, so the GEMM result is the exact integer. Above the bound an int64 einsum runs.
"""

from __future__ import annotations

import time

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from spikedet.sim.engine import EngineResult, check_input
from spikedet.sim.qgraph import DECAY_BITS, STATE_BITS, QPopulation, QSynapse, QuantGraph

STATE_MAX = (1 << (STATE_BITS - 1)) - 1  # clip24 bound: +-(2^23 - 1)
EXACT_FLOAT32_BOUND = 1 << 24
EXACT_FLOAT_BOUND = 1 << 53  # largest magnitude below which every float64 integer is exact


def wrap24(x: np.ndarray) -> np.ndarray:
    """((x + 2^23) mod 2^24) - 2^23: Lava's Conv output wraps to signed 24 bits."""
    half = 1 << (STATE_BITS - 1)
    return ((x + half) & ((1 << STATE_BITS) - 1)) - half


def clip24(x: np.ndarray) -> np.ndarray:
    return np.clip(x, -STATE_MAX, STATE_MAX)


def decay(x: np.ndarray, dv: int) -> np.ndarray:
    """sign(x) * ((|x| * (4096 - dv)) >> 12): 12-bit decay truncating toward zero.

    Computed as (x*m + (4095 if x < 0 else 0)) >> 12 with m = 4096 - dv >= 1: for y = x*m < 0 the
    arithmetic shift of y + 4095 is ceil(y / 4096), i.e. truncation toward zero, with no
    abs/sign temporaries (the hot loop of the engine).
    """
    m = (1 << DECAY_BITS) - dv
    y = x * m
    y += (x >> 63) & ((1 << DECAY_BITS) - 1)
    y >>= DECAY_BITS
    return y


def spike_levels(u: np.ndarray, theta: int, levels: int) -> np.ndarray:
    """s = clip(floor((u + theta/2 - 1) / theta), 0, D) = #{k : u > (k - 1/2) * theta}."""
    return np.clip((u + (theta // 2 - 1)) // theta, 0, levels)


def conv_int(x: np.ndarray, syn: QSynapse, max_elements: int = 1 << 24) -> np.ndarray:
    """Exact integer cross-correlation of ``x`` [N, Cin, H, W] with ``syn``: int64 [N, Cout, H', W'].

    Not wrapped. The columns are laid out K-major ([g, Cin_g*KH*KW, N*H'*W']) so the GEMM is
    W_g [Cout_g, K] @ cols_g, wide rather than tall-skinny; ``max_elements`` bounds the column
    buffer (the batch is processed in chunks).
    """
    weight = syn.weight
    cout, cin_g, kh, kw = weight.shape
    groups, cout_g, k = syn.groups, cout // syn.groups, cin_g * kh * kw
    (sh, sw), (ph, pw) = syn.stride, syn.padding
    n, _, h, w = x.shape
    ho, wo = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
    out = np.empty((n, cout, ho, wo), dtype=np.int64)
    if n == 0 or ho < 1 or wo < 1:
        return out
    peak_w = int(np.abs(weight).max()) if weight.size else 0
    peak_x = int(np.abs(x).max()) if x.size else 0
    # Every partial sum is an integer of magnitude <= peak_w * peak_x * k; below 2^24 (2^53)
    # float32 (float64) represents all of them exactly, so BLAS gives the exact integer result.
    bound = peak_w * peak_x * k
    exact = bound < EXACT_FLOAT_BOUND
    dtype = np.float32 if bound < EXACT_FLOAT32_BOUND else np.float64 if exact else np.int64
    wmat = weight.reshape(groups, cout_g, k).astype(dtype)
    chunk = max(1, max_elements // max(groups * k * ho * wo, 1))
    for start in range(0, n, chunk):
        xs = x[start : start + chunk].astype(dtype)
        if ph or pw:
            xs = np.pad(xs, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
        m = xs.shape[0]
        # windows [m, Cin, H', W', KH, KW] (a view) -> cols [g, Cin_g*KH*KW, m*H'*W'] (a copy)
        win = sliding_window_view(xs, (kh, kw), axis=(2, 3))[:, :, ::sh, ::sw][:, :, :ho, :wo]
        cols = win.reshape(m, groups, cin_g, ho, wo, kh, kw).transpose(1, 2, 5, 6, 0, 3, 4)
        cols = cols.reshape(groups, k, m * ho * wo)
        if groups == 1 and exact:
            prod = (wmat[0] @ cols[0])[None]  # one BLAS GEMM
        elif exact:
            prod = np.matmul(wmat, cols)
        else:
            prod = np.einsum("gok,gkm->gom", wmat, cols)
        # [g, Cout_g, m*H'*W'] -> [Cout, m, H', W'] -> [m, Cout, H', W']; exact integers, so
        # the float -> int64 cast is lossless
        out[start : start + m] = prod.reshape(cout, m, ho, wo).transpose(1, 0, 2, 3)
    return out


def population_input(
    qg: QuantGraph, pop: QPopulation, outputs: dict[str, np.ndarray], batch: int
) -> np.ndarray:
    """a_t = sum_e wrap24(conv(W_e, s_src(e),t)) for all t: int64 [T, B, C, H, W]."""
    total = np.zeros((qg.T, batch, *pop.shape), dtype=np.int64)
    for syn in qg.incoming(pop.name):
        src = outputs[syn.src]  # [T', B, C, H, W], T' = 1 for a static input
        steps = src.shape[0]
        flat = src.reshape(steps * batch, *src.shape[2:])
        part = conv_int(flat, syn)
        # |sum| <= max|W| * max|s| * fan-in; below 2^23 the 24-bit wrap cannot change it.
        fan_in = syn.weight[0].size
        bound = int(np.abs(syn.weight).max(initial=0)) * int(np.abs(flat).max(initial=0)) * fan_in
        if bound >= 1 << (STATE_BITS - 1):
            part = wrap24(part)
        total += part.reshape(steps, batch, *pop.shape)  # a static input broadcasts over T
    return total


def run_population(pop: QPopulation, current: np.ndarray) -> np.ndarray:
    """The T-step recurrence of §3.2 on a_t = ``current`` [T, B, C, H, W].

    I-LIF: u_t = clip24(decay(u_{t-1} - theta*s_{t-1}) + a_t + b), s_t = levels(u_t); returns
    the spikes [T, ...]. Readout: v_t = clip24(v_{t-1} + a_t + b); returns v_{T-1} [...].
    """
    bias = pop.bias.reshape(-1, 1, 1)
    state = np.zeros(current.shape[1:], dtype=np.int64)
    if pop.kind == "readout":
        for a in current:
            state = clip24(state + a + bias)
        return state
    spikes = np.empty(current.shape, dtype=np.int64)
    for t, a in enumerate(current):
        if t:  # u_0 = a_0 + b: the state and the previous spike are still zero
            state -= pop.theta * spikes[t - 1]
            state = decay(state, pop.dv)
        state += a
        state += bias
        np.clip(state, -STATE_MAX, STATE_MAX, out=state)
        spikes[t] = spike_levels(state, pop.theta, pop.D)
    return spikes


class FixedEngine:
    """Bit-exact numpy execution of a QuantGraph (the golden model the Lava engine must match)."""

    name = "fixed"

    def available(self) -> tuple[bool, str]:
        return True, f"numpy {np.__version__}"

    def run(self, qg: QuantGraph, x_int: np.ndarray) -> EngineResult:
        start = time.perf_counter()
        x = check_input(qg, x_int)
        batch = x.shape[1]
        outputs: dict[str, np.ndarray] = {"input": x}
        spikes: dict[str, np.ndarray] = {}
        readouts: dict[str, np.ndarray] = {}
        for pop in qg.populations:
            result = run_population(pop, population_input(qg, pop, outputs, batch))
            if pop.kind == "readout":
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
            },
        )
