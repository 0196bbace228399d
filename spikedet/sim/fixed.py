"""The ``fixed`` engine: docs/semantics.md §3.2 bit for bit, vectorized with numpy.

Thanks to the §3.3 alignment (every synapse delivers its source's logical step t to its
destination's logical step t), the hardware pipeline equals a layer-by-layer evaluation in
logical time: each population in topological order gets all T steps of its synaptic input at
once (one batched convolution over T*B samples), then runs its T-step neuron recurrence
(I-LIF, LIF or readout). A maxpool population is the integer max-pool of its source's spikes
at the same logical step (its one hardware step of latency is in its depth). A synapse's
wrapped output is repeated ``upsample`` x ``upsample`` and added into its channel range.

Convolution: one float32 / float64 BLAS GEMM over im2col columns. Every operand is an integer
and every partial sum is bounded by max|W| * max|x| * fan-in; below 2^24 (float32) or 2^53
(float64) they are held exactly in any summation order, so the GEMM result is the exact
integer. Above the bound an int64 matmul runs. Scratch buffers are reused (``Workspace``).
"""

from __future__ import annotations

import time

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from spikedet.sim.interface import EngineResult, check_input
from spikedet.sim.qgraph import DECAY_BITS, STATE_BITS, QPopulation, QSynapse, QuantGraph

STATE_MAX = (1 << (STATE_BITS - 1)) - 1  # clip24 bound: +-(2^23 - 1)
EXACT_FLOAT32_BOUND = 1 << 24
EXACT_FLOAT_BOUND = 1 << 53  # largest magnitude below which every float64 integer is exact


class Workspace:
    """Scratch arrays reused across layers and runs: one flat buffer per (role, dtype), grown to
    the largest size asked for, handed out as a contiguous view of the requested shape.

    A fresh large numpy array is fresh memory pages, and their page faults cost as much as the
    engine's arithmetic; reusing buffers removes them while holding only the largest layer's
    size per role. The next request of a role overwrites its data, so a role names one use
    that is live at a time.
    """

    def __init__(self) -> None:
        self._buffers: dict[tuple[str, str], np.ndarray] = {}

    def get(self, role: str, shape: tuple, dtype: type) -> np.ndarray:
        dtype = np.dtype(dtype)
        shape = tuple(int(v) for v in shape)
        size = int(np.prod(shape, dtype=np.int64))
        buf = self._buffers.get((role, dtype.str))
        if buf is None or buf.size < size:
            buf = self._buffers[(role, dtype.str)] = np.empty(max(size, 1), dtype=dtype)
        return buf[:size].reshape(shape)


def wrap24(x: np.ndarray, inplace: bool = False) -> np.ndarray:
    """((x + 2^23) mod 2^24) - 2^23: Lava's Conv output wraps to signed 24 bits (int64 ``x``,
    updated in place with ``inplace``)."""
    half = 1 << (STATE_BITS - 1)
    if not inplace:
        return ((x + half) & ((1 << STATE_BITS) - 1)) - half
    x += half
    x &= (1 << STATE_BITS) - 1
    x -= half
    return x


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


def conv_int(
    x: np.ndarray,
    syn: QSynapse,
    max_elements: int = 1 << 24,
    peak: int | None = None,
    out: np.ndarray | None = None,
    workspace: Workspace | None = None,
) -> np.ndarray:
    """Exact integer cross-correlation of ``x`` [N, Cin, H, W] with ``syn``: int64 [N, Cout, H', W'].

    Not wrapped. Every partial sum is an integer of magnitude <= max|W| * max|x| * fan-in;
    below 2^24 (2^53) float32 (float64) holds all of them exactly, so BLAS in any summation
    order gives the exact integer (above: int64 matmul). The input is cast, zero-padded and
    put channels first ([Cin, m, H + 2p, W + 2p]) in one copy; a conv is then one GEMM over
    K-major im2col columns [g, Cin_g*KH*KW, m*H'*W'] (one BLAS call: many small ones stall on
    thread hand-offs when the cores are busy), a depthwise conv a multiply-add per tap without
    BLAS. ``max_elements`` bounds the column buffer (the batch is processed in chunks);
    ``peak`` is a bound on |x| the caller knows (spikes <= D, input < 2^bits), saving a pass
    over ``x``. The result goes to ``out`` when given; scratch buffers come from
    ``workspace`` (a private one by default).
    """
    weight = syn.weight
    cout, cin_g, kh, kw = weight.shape
    (sh, sw), (ph, pw) = syn.stride, syn.padding
    n, cin, h, w = x.shape
    ho, wo = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
    if out is None:
        out = np.empty((n, cout, ho, wo), dtype=np.int64)
    if n == 0 or ho < 1 or wo < 1:
        return out
    ws = workspace if workspace is not None else Workspace()
    peak_w = int(np.abs(weight).max()) if weight.size else 0
    peak_x = peak if peak is not None else int(np.abs(x).max()) if x.size else 0
    bound = peak_w * peak_x * cin_g * kh * kw
    dtype = (
        np.float32
        if bound < EXACT_FLOAT32_BOUND
        else np.float64
        if bound < EXACT_FLOAT_BOUND
        else np.int64
    )
    depthwise = cin_g == 1 and syn.groups > 1
    chunk = max(1, max_elements // max(cin * (1 if depthwise else kh * kw) * ho * wo, 1))
    for start in range(0, n, chunk):
        part = x[start : start + chunk]
        xs = ws.get("conv.input", (cin, part.shape[0], h + 2 * ph, w + 2 * pw), dtype)
        if ph or pw:
            xs.fill(0)
        xs[:, :, ph : ph + h, pw : pw + w] = part.transpose(1, 0, 2, 3)
        conv = _conv_depthwise if depthwise else _conv_gemm
        prod = conv(xs, weight.astype(dtype), syn.groups, (sh, sw), (ho, wo), ws)
        # [Cout, m, H', W'] -> [m, Cout, H', W']; exact integers: the cast is lossless
        out[start : start + part.shape[0]] = prod.transpose(1, 0, 2, 3)
    return out


def _tap(xs: np.ndarray, i: int, j: int, stride: tuple, out_hw: tuple) -> np.ndarray:
    """The input seen by kernel tap (i, j): a strided view [Cin, m, H', W'] of ``xs``."""
    (sh, sw), (ho, wo) = stride, out_hw
    return xs[:, :, i : i + sh * (ho - 1) + 1 : sh, j : j + sw * (wo - 1) + 1 : sw]


def _conv_gemm(
    xs: np.ndarray, weight: np.ndarray, groups: int, stride: tuple, out_hw: tuple, ws: Workspace
) -> np.ndarray:
    """W_g [Cout_g, Cin_g*KH*KW] @ columns_g: [Cout, m, H', W'].

    The columns are one strided copy of the sliding windows into a buffer reused across
    layers and runs.
    """
    cin, m = xs.shape[:2]
    cout, cin_g, kh, kw = weight.shape
    (sh, sw), (ho, wo), k = stride, out_hw, cin_g * kh * kw
    cols = ws.get("conv.columns", (groups, k, m * ho * wo), xs.dtype)
    # windows [Cin, m, H', W', KH, KW] (a view) -> columns [g, Cin_g, KH, KW, m, H', W']
    win = sliding_window_view(xs, (kh, kw), axis=(2, 3))[:, :, ::sh, ::sw][:, :, :ho, :wo]
    win = win.reshape(groups, cin_g, m, ho, wo, kh, kw).transpose(0, 1, 5, 6, 2, 3, 4)
    np.copyto(cols.reshape(groups, cin_g, kh, kw, m, ho, wo), win)
    prod = ws.get("conv.product", (groups, cout // groups, m * ho * wo), xs.dtype)
    np.matmul(weight.reshape(groups, cout // groups, k), cols, out=prod)
    return prod.reshape(cout, m, ho, wo)


def _conv_depthwise(
    xs: np.ndarray, weight: np.ndarray, groups: int, stride: tuple, out_hw: tuple, ws: Workspace
) -> np.ndarray:
    """One input channel per group: sum over taps of W[:, 0, i, j] * tap, elementwise."""
    cin, m = xs.shape[:2]
    cout, _, kh, kw = weight.shape
    ho, wo = out_hw
    per = cout // groups  # outputs per input channel
    acc = ws.get("conv.product", (groups, per, m, ho, wo), xs.dtype)
    term = ws.get("conv.term", acc.shape, xs.dtype)
    for i in range(kh):
        for j in range(kw):
            scale = weight[:, 0, i, j].reshape(groups, per, 1, 1, 1)
            view = _tap(xs, i, j, stride, out_hw)[:, None]  # [g, 1, m, H', W']
            np.multiply(scale, view, out=acc if i == j == 0 else term)
            if i or j:
                acc += term
    return acc.reshape(cout, m, ho, wo)


def max_pool_int(spikes: np.ndarray, pop: QPopulation) -> np.ndarray:
    """Integer max-pool of ``spikes`` [..., C, H, W] over ``pop``'s window with zero padding
    (neutral: spikes are >= 0). The window max is separable: first along W, then along H, each
    as a running ``np.maximum`` over the kernel's strided shifts."""
    (kh, kw), (sh, sw), (ph, pw) = pop.pool_kernel, pop.pool_stride, pop.pool_padding
    h, w = spikes.shape[-2:]
    ho, wo = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
    pad = [(0, 0)] * (spikes.ndim - 2) + [(ph, ph), (pw, pw)]
    padded = np.pad(spikes, pad) if ph or pw else spikes
    rows = padded[..., 0 : sw * (wo - 1) + 1 : sw].copy()
    for j in range(1, kw):
        np.maximum(rows, padded[..., j : j + sw * (wo - 1) + 1 : sw], out=rows)
    out = rows[..., 0 : sh * (ho - 1) + 1 : sh, :].copy()
    for i in range(1, kh):
        np.maximum(out, rows[..., i : i + sh * (ho - 1) + 1 : sh, :], out=out)
    return out


def source_peak(qg: QuantGraph, src: str) -> int:
    """The largest value a source sends: 2^bits - 1 for the input, D for spikes."""
    return (1 << qg.input.bits) - 1 if src == "input" else qg.pop(src).D


def population_input(
    qg: QuantGraph,
    pop: QPopulation,
    outputs: dict[str, np.ndarray],
    batch: int,
    workspace: Workspace | None = None,
) -> np.ndarray:
    """a_t = sum_e place(up(wrap24(conv(W_e, s_src(e),t)))): int64 [T', B, C, H, W] where
    up repeats the map f x f (``upsample``) and place adds it into channels ``out_offset`` ..
    ``out_offset + Cout - 1``. T' = 1 when every source is a static input (the same current at
    every step), else T. With a ``workspace`` the result is its buffer, valid until the next
    call."""
    ws = workspace if workspace is not None else Workspace()
    incoming = qg.incoming(pop.name)
    steps = max(outputs[syn.src].shape[0] for syn in incoming)
    total = ws.get("current", (steps, batch, *pop.shape), np.int64)
    empty = True  # nothing written to ``total`` yet
    for syn in incoming:
        src = outputs[syn.src]  # [T', B, C, H, W], T' = 1 for a static input
        src_steps, peak = src.shape[0], source_peak(qg, syn.src)
        flat = src.reshape(src_steps * batch, *src.shape[2:])
        shape = (src_steps * batch, *syn.output_shape(src.shape[2:]))
        shape = (*shape[:2], shape[2] // syn.upsample, shape[3] // syn.upsample)
        whole = syn.upsample == 1 and shape[1] == pop.shape[0] and src_steps == steps
        # the first full-size term is written straight into the sum (no zeros, no add)
        part = total.reshape(shape) if empty and whole else ws.get("term", shape, np.int64)
        conv_int(flat, syn, peak=peak, out=part, workspace=ws)
        # |sum| <= max|W| * max|s| * fan-in; below 2^23 the 24-bit wrap cannot change it.
        fan_in = syn.weight[0].size
        bound = int(np.abs(syn.weight).max(initial=0)) * peak * fan_in
        if bound >= 1 << (STATE_BITS - 1):
            wrap24(part, inplace=True)
        if empty and whole:
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
    spikes = np.empty((steps, *current.shape[1:]), dtype=np.int64)
    dtype = state_dtype(pop, current_bound)
    state = ws.get("state", current.shape[1:], dtype)
    state.fill(0)
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
                np.multiply(spikes[t - 1], pop.theta, out=scratch)
                state -= scratch
            if shift >= 0:
                _shift_decay(state, shift, scratch)
            else:
                decay(state, pop.dv, out=scratch)
        state += current[t if len(current) > 1 else 0]
        state += bias
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

    def __init__(self) -> None:
        self.workspace = Workspace()

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
            if pop.kind == "maxpool":
                spikes[pop.name] = outputs[pop.name] = max_pool_int(outputs[pop.src], pop)
                continue
            current = population_input(qg, pop, outputs, batch, self.workspace)
            # every incoming term is a wrapped (or provably unwrapped) 24-bit value
            bound = len(qg.incoming(pop.name)) << (STATE_BITS - 1)
            result = run_population(pop, current, qg.T, self.workspace, current_bound=bound)
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
