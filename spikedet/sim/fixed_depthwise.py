"""Depthwise convolution (one input channel per group) for the ``fixed`` engine, exact.

A multiply-add per kernel tap is 2·KH·KW passes over the output with no BLAS (about
0.4 GMAC/s on one core here). Instead each output row block is a small GEMM: for stride 1
and a block of B output columns, out[c, h, b·B + j] = Σ_{i, l} x[c, h + i, b·B + l] ·
T_c[(i, l), j] with the banded (Toeplitz) matrix T_c[(i, l), j] = W_c[i, l − j] (zero
outside the band), l < B + KW − 1. One batched matmul over the channels then runs at BLAS
speed; it does (B + KW − 1) / KW times the necessary MACs on zero taps, far less than the
time it saves. The operands are integers in a dtype that holds every partial sum exactly
(``fixed_conv.prepare_conv``), so any summation order gives the exact integer. Strides other
than 1 keep the per-tap loop.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.lib.stride_tricks import as_strided


class DepthwiseWeight:
    """A depthwise kernel [Cout, 1, KH, KW] in the GEMM dtype, with its banded matrices per
    block width (built on first use, kept: the weight work is done once per graph)."""

    def __init__(self, kernel: np.ndarray) -> None:
        self.kernel = kernel
        self._banded: dict[int, np.ndarray] = {}

    @property
    def dtype(self) -> np.dtype:
        return self.kernel.dtype

    def banded(self, groups: int, block: int) -> np.ndarray:
        """T [g, KH·(B + KW − 1), per·B], per = Cout / g outputs per input channel."""
        if block not in self._banded:
            cout, _, kh, kw = self.kernel.shape
            per, span = cout // groups, block + kw - 1
            k = self.kernel.reshape(groups, per, kh, kw)
            t = np.zeros((groups, kh, span, per, block), dtype=self.kernel.dtype)
            for j in range(block):  # output column j reads input columns j .. j + KW - 1
                t[:, :, j : j + kw, :, j] = k.transpose(0, 2, 3, 1)
            self._banded[block] = t.reshape(groups, kh * span, per * block)
        return self._banded[block]


def depthwise_weight(weight: np.ndarray, dtype: Any) -> DepthwiseWeight:
    return DepthwiseWeight(weight.astype(dtype))


def block_width(wo: int) -> int:
    """Output columns per GEMM block: a divisor of W' near 16 (fewer zero taps per useful MAC
    as B shrinks, fewer and larger GEMMs as it grows), else the whole row."""
    for b in (16, 20, 12, 24, 14, 18, 10, 8, 28, 32):
        if wo % b == 0:
            return b
    return wo


def conv_depthwise(
    xs: np.ndarray, weight: DepthwiseWeight, shape: tuple, stride: tuple, ws: Any
) -> np.ndarray:
    """Depthwise conv of the padded channels-first input ``xs`` [Cin, m, Hp, Wp]:
    [Cout, m, H', W'] in ``xs``'s dtype (a ``ws`` buffer)."""
    cin, m, hp, wp = xs.shape
    cout, _, kh, kw = shape
    ho, wo = (hp - kh) // stride[0] + 1, (wp - kw) // stride[1] + 1
    if tuple(stride) != (1, 1):
        return _per_tap(xs, weight.kernel, cin, stride, (ho, wo), ws)
    block = block_width(wo)
    nb, span, per = wo // block, block + kw - 1, cout // cin
    s_c, s_m, s_h, s_w = xs.strides
    # rows [Cin, m, H', nb, KH, B + KW - 1]: a view, then one copy into a reused buffer
    win = as_strided(
        xs, (cin, m, ho, nb, kh, span), (s_c, s_m, s_h, block * s_w, s_h, s_w), writeable=False
    )
    rows = ws.get("conv.columns", (cin, m * ho * nb, kh * span), xs.dtype)
    np.copyto(rows.reshape(cin, m, ho, nb, kh, span), win)
    prod = ws.get("conv.product", (cin, m * ho * nb, per * block), xs.dtype)
    np.matmul(rows, weight.banded(cin, block), out=prod)
    if per == 1:
        return prod.reshape(cout, m, ho, wo)
    # [Cin, m, H', nb, per, B] -> [Cin, per, m, H', nb, B]
    out = ws.get("conv.term", (cin, per, m, ho, nb, block), xs.dtype)
    np.copyto(out, prod.reshape(cin, m, ho, nb, per, block).transpose(0, 4, 1, 2, 3, 5))
    return out.reshape(cout, m, ho, wo)


def _per_tap(
    xs: np.ndarray, kernel: np.ndarray, groups: int, stride: tuple, out_hw: tuple, ws: Any
) -> np.ndarray:
    """Sum over taps of W[:, 0, i, j] * tap, elementwise (strided depthwise convs)."""
    m = xs.shape[1]
    cout, _, kh, kw = kernel.shape
    (sh, sw), (ho, wo) = stride, out_hw
    per = cout // groups  # outputs per input channel
    acc = ws.get("conv.product", (groups, per, m, ho, wo), xs.dtype)
    term = ws.get("conv.term", acc.shape, xs.dtype)
    for i in range(kh):
        for j in range(kw):
            scale = kernel[:, 0, i, j].reshape(groups, per, 1, 1, 1)
            view = xs[:, None, :, i : i + sh * (ho - 1) + 1 : sh, j : j + sw * (wo - 1) + 1 : sw]
            np.multiply(scale, view, out=acc if i == j == 0 else term)
            if i or j:
                acc += term
    return acc.reshape(cout, m, ho, wo)
