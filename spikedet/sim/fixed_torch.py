"""Exact integer kernels of the ``fixed`` engine through torch: int8 GEMMs, grouped convs.

A dense conv is one GEMM per sample, W [Cout, Cin*KH*KW] @ columns [Cin*KH*KW, H'*W']
(im2col). When both operands fit int8 and every partial sum fits int32, ``torch._int_mm``
(oneDNN's s8 x s8 -> s32 kernel, VNNI on CPUs that have it) gives the exact integer result
2.5-4x faster than a float32 sgemm on one core, and the int8 columns are a quarter of
float32's memory traffic. The conditions, checked per conv when the weights are prepared
(``int8_conv``):

- weights in [-128, 127] (the graph's 8-bit signed weights; composed or wide-weight convs
  that exceed it keep the float / int64 path of ``fixed_conv``);
- sources in [0, 127] (spikes, D <= 127) are used as they are; a source in [0, 255] (8-bit
  pixels) is used as x - 128 in [-128, 127]: with zero padding written as -128 too, every
  window of the padded map is shifted by the same 128, so conv(W, x) = conv(W, x - 128) +
  128 * sum(W[c]) per output channel, exact;
- max|W| * max|x| * fan-in < 2^31 for the GEMM's sum (and for the corrected output).

A grouped (depthwise) conv runs as torch's float32 ``conv2d`` with ``groups`` when every
partial sum is an integer below 2^24 (exact in float32 in any order): 4-5x the banded GEMMs
of ``fixed_depthwise`` on spikeyolo's 7x7 depthwise layers.

torch is optional: without it (the Lava environment) or with ``SPIKEDET_FIXED_GEMM=numpy``
in the environment, ``available()`` is false and ``fixed_conv`` runs its numpy kernels (the
same integers, slower). On first use a probe compares ``_int_mm`` on extreme operands
(every product at +-128 * 127 and at -128 * -128, long sums) with an int64 matmul, and a
grouped conv whose sums reach 2^24 - 1 with numpy: a kernel that saturates (16-bit pair sums
without VNNI) or rounds (reduced-precision float math) is not used.

This module imports nothing of the engine (``fixed_conv`` imports it).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.lib.stride_tricks import as_strided

INT32_LIMIT = 1 << 31
FLOAT32_EXACT = 1 << 24  # every integer below it is a float32
OFFSET = 128  # an 8-bit unsigned source is used as x - 128

_STATE: dict[str, Any] = {}


def available() -> bool:
    """torch's exact int8 GEMM can be used here (importable, not disabled, probe passed)."""
    if "ok" not in _STATE:
        _STATE["ok"] = _probe()
    return _STATE["ok"]


@contextmanager
def disabled() -> Iterator[None]:
    """torch's kernels off inside the block: convs prepared there (a fresh engine's plans)
    take the numpy path, e.g. to compare both or to time the torch-free engine."""
    before = _STATE.get("ok")
    _STATE["ok"] = False
    try:
        yield
    finally:
        if before is None:
            _STATE.pop("ok")
        else:
            _STATE["ok"] = before


def _probe() -> bool:
    if os.environ.get("SPIKEDET_FIXED_GEMM", "").lower() == "numpy":
        return False
    try:
        import torch
    except ImportError:
        return False
    if not hasattr(torch, "_int_mm"):
        return False
    _STATE["torch"] = torch
    k = 4096
    rng = np.random.default_rng(0)
    cases = [
        (np.full((16, k), 127), np.full((k, 8), 127)),
        (np.full((16, k), -128), np.full((k, 8), -128)),
        (np.full((16, k), 127), np.full((k, 8), -128)),
        (rng.integers(-128, 128, (33, 301)), rng.integers(-128, 128, (301, 17))),
        (rng.integers(0, 5, (7, 1153)), rng.integers(-128, 128, (1153, 3))),
    ]
    try:
        for a, b in cases:
            a8, b8 = torch.from_numpy(a.astype(np.int8)), torch.from_numpy(b.astype(np.int8))
            got = torch._int_mm(a8, b8).numpy().astype(np.int64)
            if not np.array_equal(got, a @ b):
                return False
        return _probe_grouped(torch)
    except Exception:  # any failure of the kernels here: the numpy path, never a crash
        return False


def _probe_grouped(torch: Any) -> bool:
    """A depthwise 7x7 conv with sums up to 2^24 - 1 (127 * 2695 * 49) against numpy."""
    x = np.full((1, 2, 9, 9), 2695, dtype=np.int64)
    x[0, 1] = np.random.default_rng(1).integers(0, 2696, (9, 9))
    w = np.full((4, 1, 7, 7), 127, dtype=np.int64)
    w[2:] = -w[2:]
    y = torch.nn.functional.conv2d(
        torch.from_numpy(x).float(), torch.from_numpy(w).float(), groups=2
    ).numpy()
    xs = np.lib.stride_tricks.sliding_window_view(x[0], (7, 7), axis=(1, 2))
    want = np.einsum("chwij,cdij->cdhw", xs, w.reshape(2, 2, 7, 7)).reshape(1, 4, 3, 3)
    return bool(np.array_equal(y.astype(np.int64), want))


def grouped_weight(weight: np.ndarray, groups: int, bound: int) -> Any | None:
    """A grouped conv's (dilated) weight as a float32 torch tensor, when ``bound`` (the
    largest |partial sum|) keeps torch's float32 conv exact; else None."""
    if groups == 1 or bound >= FLOAT32_EXACT or not available():
        return None
    return _STATE["torch"].from_numpy(weight.astype(np.float32))


def conv_grouped(
    x: np.ndarray, weight: Any, stride: tuple, padding: tuple, groups: int, out: np.ndarray
) -> np.ndarray:
    """out = conv(W, x) for ``x`` [N, Cin, H, W] with torch's float32 grouped conv (exact:
    ``grouped_weight``), cast into ``out`` [N, Cout, H', W'] (any integer dtype)."""
    torch = _STATE["torch"]
    source = torch.from_numpy(np.ascontiguousarray(x)).to(torch.float32)
    y = torch.nn.functional.conv2d(source, weight, stride=stride, padding=padding, groups=groups)
    if out.flags.c_contiguous:
        torch.from_numpy(out).copy_(y)
    else:
        np.copyto(out, y.numpy(), casting="unsafe")
    return out


@dataclass(frozen=True)
class Int8Conv:
    """A conv's int8 weight matrix [Cout, Cin*KH*KW] (a torch tensor) and, for a source used
    as x - 128, the per-channel correction 128 * sum(W[c]) (int32 [Cout, 1]; else None)."""

    matrix: Any
    matrix_np: np.ndarray
    offset: int
    correction: np.ndarray | None


def int8_conv(weight: np.ndarray, groups: int, peak: int, signed: bool = False) -> Int8Conv | None:
    """The int8 form of a conv with the (dilated) ``weight`` [Cout, Cin, KH, KW] for sources
    in [0, ``peak``] ([-peak, peak] with ``signed``: no x - 128 form), or None when it does not
    apply (see the module docstring)."""
    if groups != 1 or weight.size == 0 or peak > (127 if signed else 255) or not available():
        return None
    if weight.min() < -128 or weight.max() > 127:
        return None
    offset = OFFSET if peak > 127 else 0
    fan_in = weight[0].size
    peak_w = int(np.abs(weight).max())
    if peak_w * max(peak, OFFSET if offset else 0) * fan_in >= INT32_LIMIT:
        return None
    cout = weight.shape[0]
    matrix = np.ascontiguousarray(weight.reshape(cout, fan_in).astype(np.int8))
    correction = None
    if offset:
        correction = (offset * weight.reshape(cout, fan_in).sum(axis=1)).astype(np.int32)
        correction = correction.reshape(cout, 1)
    torch = _STATE["torch"]
    return Int8Conv(torch.from_numpy(matrix), matrix, offset, correction)


def stack_int8(convs: list[Int8Conv]) -> Int8Conv:
    """Convs over the same columns (same source, geometry and offset) as one: their weight
    matrices (and corrections) stacked along Cout."""
    matrix = np.ascontiguousarray(np.concatenate([c.matrix_np for c in convs]))
    correction = None
    if convs[0].correction is not None:
        correction = np.concatenate([c.correction for c in convs])
    return Int8Conv(_STATE["torch"].from_numpy(matrix), matrix, convs[0].offset, correction)


def conv_int8(
    x: np.ndarray,
    conv: Int8Conv,
    shape: tuple,
    stride: tuple,
    padding: tuple,
    out: np.ndarray,
    ws: Any,
) -> np.ndarray:
    """out[n] = conv(W, x[n]) for ``x`` [N, Cin, H, W] (integers in the conv's range), one
    int8 GEMM per sample straight into ``out`` [N, Cout, H', W'] when it is int32 (else via
    a buffer). ``shape`` is the dilated kernel (Cout, Cin, KH, KW)."""
    torch = _STATE["torch"]
    cout, cin, kh, kw = shape
    (sh, sw), (ph, pw) = stride, padding
    n, _, h, w = x.shape
    ho, wo = out.shape[2:]
    direct = out.dtype == np.int32 and out.flags.c_contiguous
    plain = kh == kw == sh == sw == 1 and not (ph or pw)  # 1x1: the input is the columns
    for i in range(n):
        xs = _int8_input(x[i], conv.offset, (ph, pw), ws)
        active = None if conv.offset else _active(xs, cin, ho * wo)
        if active is not None:
            xs = xs[active]
        k = xs.shape[0] * kh * kw
        target = out[i] if direct else ws.get("int8.out", (cout, ho, wo), np.int32)
        if k == 0:
            target.fill(0)
        else:
            if plain:
                cols = xs.reshape(k, ho * wo)
            else:
                cols = ws.get("int8.columns", (k, ho * wo), np.int8)
                s_c, s_h, s_w = xs.strides
                win = as_strided(
                    xs, (xs.shape[0], kh, kw, ho, wo), (s_c, s_h, s_w, sh * s_h, sw * s_w),
                    writeable=False,
                )  # fmt: skip
                np.copyto(cols.reshape(xs.shape[0], kh, kw, ho, wo), win)
            matrix = conv.matrix
            if active is not None:  # np.take: a contiguous copy ([:, active] is not)
                kept = np.take(conv.matrix_np.reshape(cout, cin, kh * kw), active, axis=1)
                matrix = torch.from_numpy(kept.reshape(cout, k))
            result = torch.from_numpy(target.reshape(cout, ho * wo))
            torch._int_mm(matrix, torch.from_numpy(cols), out=result)
            if conv.correction is not None:
                target.reshape(cout, ho * wo)[...] += conv.correction
        if not direct:
            out[i] = target
    return out


def _int8_input(x: np.ndarray, offset: int, pad: tuple, ws: Any) -> np.ndarray:
    """x [Cin, H, W] as int8 (minus ``offset``), zero-padded (the padding is 0 - offset):
    the source itself when it is already int8 and needs neither."""
    ph, pw = pad
    if x.dtype == np.int8 and not offset and not (ph or pw) and x.flags.c_contiguous:
        return x
    cin, h, w = x.shape
    xs = ws.get("int8.input", (cin, h + 2 * ph, w + 2 * pw), np.int8)
    if ph or pw:
        xs.fill(-offset)
    inner = xs[:, ph : ph + h, pw : pw + w]
    if offset:
        np.subtract(x, offset, out=inner, casting="unsafe")
    else:
        np.copyto(inner, x, casting="unsafe")
    return xs


def _active(xs: np.ndarray, cin: int, positions: int) -> np.ndarray | None:
    """The input channels not zero everywhere, when enough are silent (their weight columns
    add nothing: a smaller GEMM and im2col copy, the same integers). Dropping them costs a
    copy of the kept weights (Cout x K bytes) per run, which the saved MACs (dropped / Cin of
    Cout x K x positions at ~200 GMAC/s) repay when dropped / Cin x positions >= 64 (the
    break-even is ~20 at ~10 GB/s copies) and at least an eighth of the channels are silent."""
    active = np.flatnonzero(xs.reshape(cin, -1).any(axis=1))
    dropped = cin - len(active)
    if dropped < max(1, cin // 8) or dropped * positions < 64 * cin:
        return None
    return active
