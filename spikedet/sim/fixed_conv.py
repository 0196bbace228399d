"""Exact integer convolution for the ``fixed`` engine (docs/semantics.md §3.2).

With torch importable, convs whose operands fit int8 run as exact int8 GEMMs and grouped
ones as torch's float32 grouped conv (``spikedet.sim.fixed_torch``, the conditions there);
the rest, and everything without torch, run with numpy BLAS as below.

Every operand is an integer and every partial sum is bounded by max|W| * max|x| * fan-in;
below 2^24 (float32) or 2^53 (float64) they are held exactly in any summation order, so the
GEMM result is the exact integer. Above the bound an int64 matmul runs. The weight work (the
bound, the cast to the GEMM dtype, the reshape to a matrix) depends only on the synapse and
its source's peak, so ``prepare_conv`` does it once and the engine keeps the result per graph
(``spikedet.sim.fixed_plan``). Scratch buffers are reused (``Workspace``).

This module imports nothing of ``spikedet.sim.fixed`` (which re-exports it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from spikedet.sim.fixed_depthwise import conv_depthwise, depthwise_weight
from spikedet.sim.fixed_torch import Int8Conv, conv_grouped, conv_int8, grouped_weight, int8_conv
from spikedet.sim.qgraph import STATE_BITS, QSynapse

EXACT_FLOAT32_BOUND = 1 << 24
EXACT_FLOAT_BOUND = 1 << 53  # largest magnitude below which every float64 integer is exact
INT32_SAFE = 1 << 30  # conv outputs below this fit int32 with room for wrap24's + 2^23


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
    """((x + 2^23) mod 2^24) - 2^23: Lava's Conv output wraps to signed 24 bits (integer ``x``
    with room for + 2^23, updated in place with ``inplace``)."""
    half = 1 << (STATE_BITS - 1)
    if not inplace:
        return ((x + half) & ((1 << STATE_BITS) - 1)) - half
    x += half
    x &= (1 << STATE_BITS) - 1
    x -= half
    return x


@dataclass(frozen=True)
class PreparedConv:
    """A synapse's conv with its weight work done: ``matrix`` is the weight in the GEMM dtype,
    [g, Cout/g, Cin/g*KH*KW] (depthwise: ``fixed_depthwise.depthwise_weight``), ``bound`` the
    largest |output| for sources up to ``peak``, ``wrap`` whether wrap24 can change it.
    ``int8`` is the conv's exact int8 GEMM form and ``grouped`` a grouped conv's float32
    torch weight (``fixed_torch``) when it has one; ``matrix`` is then None (unused)."""

    matrix: np.ndarray | None
    shape: tuple[int, int, int, int]  # the dilated kernel (Cout, Cin/g, KH, KW)
    stride: tuple[int, int]
    padding: tuple[int, int]
    groups: int
    peak: int
    bound: int
    wrap: bool
    depthwise: bool
    int8: Int8Conv | None = None
    grouped: Any = None

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(np.int8) if self.matrix is None else self.matrix.dtype

    @property
    def out_dtype(self) -> type:
        """int32 when every output (and wrap24's + 2^23 on it) fits, else int64."""
        return np.int32 if self.bound < INT32_SAFE else np.int64

    def out_hw(self, h: int, w: int) -> tuple[int, int]:
        (kh, kw), (sh, sw), (ph, pw) = self.shape[2:], self.stride, self.padding
        return (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1


def prepare_conv(syn: QSynapse, peak: int, signed: bool = False) -> PreparedConv:
    """The weight work of ``conv_int`` for sources with 0 <= x <= ``peak`` (|x| <= ``peak``
    with ``signed``), done once."""
    weight = syn.dilated_weight()  # a dilated kernel as a larger one with zero taps
    cout, cin_g, kh, kw = weight.shape
    peak_w = int(np.abs(weight).max()) if weight.size else 0
    bound = peak_w * int(peak) * cin_g * kh * kw
    dtype = (
        np.float32
        if bound < EXACT_FLOAT32_BOUND
        else np.float64
        if bound < EXACT_FLOAT_BOUND
        else np.int64
    )
    depthwise = cin_g == 1 and syn.groups > 1
    int8 = None if depthwise else int8_conv(weight, syn.groups, int(peak), signed)
    grouped = grouped_weight(weight, syn.groups, bound)
    if int8 is not None or grouped is not None:
        matrix = None
    elif depthwise:
        matrix = depthwise_weight(weight, dtype)
    else:
        matrix = weight.astype(dtype).reshape(syn.groups, cout // syn.groups, cin_g * kh * kw)
    # |sum| <= max|W| * max|s| * fan-in (taps of the undilated kernel): below 2^23 the 24-bit
    # wrap cannot change it
    fan_in = syn.weight[0].size
    wrap = peak_w * int(peak) * fan_in >= 1 << (STATE_BITS - 1)
    return PreparedConv(
        matrix, (cout, cin_g, kh, kw), syn.stride, syn.padding, syn.groups, int(peak), bound,
        wrap, depthwise, int8, grouped,
    )  # fmt: skip


def conv_int(
    x: np.ndarray,
    syn: QSynapse | None,
    max_elements: int = 1 << 24,
    peak: int | None = None,
    out: np.ndarray | None = None,
    workspace: Workspace | None = None,
    prepared: PreparedConv | None = None,
) -> np.ndarray:
    """Exact integer cross-correlation of ``x`` [N, Cin, H, W] with ``syn``: int64 [N, Cout, H', W'].

    Not wrapped. The input is cast, zero-padded and put channels first ([Cin, m, H + 2p,
    W + 2p]) in one copy; a conv is then one GEMM over K-major im2col columns [g,
    Cin_g*KH*KW, m*H'*W'] (one BLAS call: many small ones stall on thread hand-offs when the
    cores are busy), a depthwise conv ``fixed_depthwise.conv_depthwise``. ``max_elements``
    bounds the column buffer (the batch is processed in chunks); ``peak`` is a bound on |x|
    the caller knows (spikes <= D, input < 2^bits), saving a pass over ``x``; ``prepared``
    (from ``prepare_conv`` with such a peak) saves the weight work and replaces ``syn``. The
    result goes to ``out`` when given (any integer dtype holding it); scratch buffers come
    from ``workspace`` (a private one by default).
    """
    if prepared is None:
        signed = peak is None and x.size > 0 and x.min() < 0
        if peak is None:
            peak = int(np.abs(x).max()) if x.size else 0
        prepared = prepare_conv(syn, peak, signed)
    cout, cin_g, kh, kw = prepared.shape
    (ph, pw), dtype = prepared.padding, prepared.dtype
    n, cin, h, w = x.shape
    ho, wo = prepared.out_hw(h, w)
    if out is None:
        out = np.empty((n, cout, ho, wo), dtype=np.int64)
    if n == 0 or ho < 1 or wo < 1:
        return out
    ws = workspace if workspace is not None else Workspace()
    if prepared.int8 is not None:
        return conv_int8(x, prepared.int8, prepared.shape, prepared.stride, (ph, pw), out, ws)
    if prepared.grouped is not None:
        return conv_grouped(x, prepared.grouped, prepared.stride, (ph, pw), prepared.groups, out)
    taps = 1 if prepared.depthwise else kh * kw
    chunk = max(1, max_elements // max(cin * taps * ho * wo, 1))
    for start in range(0, n, chunk):
        part = x[start : start + chunk]
        xs = ws.get("conv.input", (cin, part.shape[0], h + 2 * ph, w + 2 * pw), dtype)
        if ph or pw:
            xs.fill(0)
        xs[:, :, ph : ph + h, pw : pw + w] = part.transpose(1, 0, 2, 3)
        if prepared.depthwise:
            prod = conv_depthwise(xs, prepared.matrix, prepared.shape, prepared.stride, ws)
        else:
            prod = _conv_gemm(xs, prepared, (ho, wo), ws)
        # [Cout, m, H', W'] -> [m, Cout, H', W']; exact integers: the cast is lossless
        out[start : start + part.shape[0]] = prod.transpose(1, 0, 2, 3)
    return out


def _conv_gemm(xs: np.ndarray, conv: PreparedConv, out_hw: tuple, ws: Workspace) -> np.ndarray:
    """W_g [Cout_g, Cin_g*KH*KW] @ columns_g: [Cout, m, H', W'].

    The columns are one strided copy of the sliding windows into a buffer reused across
    layers and runs; a 1x1 stride-1 conv multiplies the padded input itself.
    """
    cout, cin_g, kh, kw = conv.shape
    (sh, sw), (ho, wo), groups = conv.stride, out_hw, conv.groups
    matrix = conv.matrix
    if groups == 1:
        xs, matrix = _active_channels(xs, matrix, kh * kw)
        cin_g = xs.shape[0]
    cin, m = xs.shape[:2]
    k = cin_g * kh * kw
    if k == 0:  # every input channel silent: the output is zero
        return np.zeros((cout, m, ho, wo), dtype=xs.dtype)
    if kh == kw == sh == sw == 1 and xs.shape[2:] == (ho, wo):
        cols = xs.reshape(groups, k, m * ho * wo)  # already the columns
    else:
        cols = ws.get("conv.columns", (groups, k, m * ho * wo), xs.dtype)
        # windows [Cin, m, H', W', KH, KW] (a view) -> columns [g, Cin_g, KH, KW, m, H', W']
        win = sliding_window_view(xs, (kh, kw), axis=(2, 3))[:, :, ::sh, ::sw][:, :, :ho, :wo]
        win = win.reshape(groups, cin_g, m, ho, wo, kh, kw).transpose(0, 1, 5, 6, 2, 3, 4)
        np.copyto(cols.reshape(groups, cin_g, kh, kw, m, ho, wo), win)
    prod = ws.get("conv.product", (groups, cout // groups, m * ho * wo), xs.dtype)
    np.matmul(matrix, cols, out=prod)
    return prod.reshape(cout, m, ho, wo)


def _active_channels(xs: np.ndarray, matrix: np.ndarray, taps: int) -> tuple:
    """Drop the input channels that are zero everywhere (and their weight columns) when at
    least an eighth of them are: silent channels add nothing to any output, so the GEMM over
    the rest is the same exact integer with fewer MACs and a smaller im2col copy."""
    cin = xs.shape[0]
    active = np.flatnonzero(xs.reshape(cin, -1).any(axis=1))
    if cin - len(active) < max(1, cin // 8):
        return xs, matrix
    cout = matrix.shape[1]
    kept = np.take(matrix.reshape(cout, cin, taps), active, axis=1)  # a contiguous copy
    return xs[active], kept.reshape(1, cout, len(active) * taps)
