"""Linear NIR primitives as convolutions on (C, H, W) maps, and their composition (no torch).

A neuron reads a current: the fan-in sum of terms, each the output of a source (the Input or a
neuron) passed through a chain of linear primitives. On hardware a term is one synapse, so every
chain is composed into ONE cross-correlation (docs/semantics.md §4.2):

- shapes: a vector (N,) is the map (N, 1, 1); a sequence (C, L) is (C, 1, L);
- ``Conv2d`` as it is (groups expanded to the equivalent full weight, dilation to a zero-filled
  kernel); ``Conv1d`` is a (1, K) Conv2d; ``SumPool2d`` a per-channel conv of ones,
  ``AvgPool2d`` of 1/(kh·kw) (zero padding counted, as NIR's and torch's default);
- ``Flatten`` (all dims) changes nothing in (C, H, W) storage; an ``Affine`` / ``Linear``
  reading the flattened (C, H, W) map is the conv whose kernel is the whole map, weight
  W.reshape(out, C, H, W) (NIR flattens C-major, like torch);
- ``Scale`` with one factor per channel is a diagonal 1x1 conv;
- conv2 ∘ conv1: kernel k1 + (k2 − 1)·s1, stride s1·s2, padding p1 + p2·s1,
  W[o, i] = Σ_m W2[o, m] ⋆ W1[m, i] (W1 dilated by s1), bias b2 + Σ W2·b1. This equals the
  chain except where conv2's zero padding would cover real rows of conv1's input, or a
  non-zero b1 meets conv2's padding; every composition is therefore checked against the chain
  on a random map (float64) and refused naming the node if they differ.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from spikedet.errors import SpikedetError

CHECK_RTOL = 1e-9  # composed vs chained output on a random map (float64 rounding only)


def as_map(shape: tuple[int, ...], where: str) -> tuple[int, int, int]:
    """A NIR shape (no batch, no time) as (C, H, W): (N,) -> (N, 1, 1), (C, L) -> (C, 1, L)."""
    shape = tuple(int(v) for v in shape)
    if len(shape) == 1:
        shape = (shape[0], 1, 1)
    elif len(shape) == 2:
        shape = (shape[0], 1, shape[1])
    if len(shape) != 3 or min(shape) < 1:
        raise SpikedetError(f"shape {shape} is not (N,), (C, L) or (C, H, W)", where)
    return shape  # type: ignore[return-value]


def out_hw(hw, kernel, stride, padding) -> tuple[int, int]:
    return tuple(  # type: ignore[return-value]
        (int(n) + 2 * int(p) - int(k)) // int(s) + 1
        for n, k, s, p in zip(hw, kernel, stride, padding)
    )


@dataclass
class LinConv:
    """y = conv(x, weight, stride, padding) + bias, on a (C, H, W) map ``in_shape``."""

    weight: np.ndarray  # float64 (Cout, Cin, KH, KW)
    bias: np.ndarray  # float64 (Cout,)
    stride: tuple[int, int]
    padding: tuple[int, int]
    in_shape: tuple[int, int, int]
    flat: bool = False  # the output is a Flatten of the map (an Affine may read it)

    def __post_init__(self) -> None:
        self.weight = np.asarray(self.weight, dtype=np.float64)
        self.bias = np.broadcast_to(np.asarray(self.bias, np.float64), self.weight.shape[:1]).copy()

    @property
    def out_shape(self) -> tuple[int, int, int]:
        h, w = out_hw(self.in_shape[1:], self.weight.shape[2:], self.stride, self.padding)
        return (int(self.weight.shape[0]), h, w)


def conv_np(x: np.ndarray, conv: LinConv) -> np.ndarray:
    """The cross-correlation of one (C, H, W) float map (for the composition check)."""
    (ph, pw), (sh, sw) = conv.padding, conv.stride
    xp = np.pad(x, ((0, 0), (ph, ph), (pw, pw)))
    kh, kw = conv.weight.shape[2:]
    win = sliding_window_view(xp, (kh, kw), axis=(1, 2))[:, ::sh, ::sw]
    return np.einsum("chwij,ocij->ohw", win, conv.weight) + conv.bias[:, None, None]


def identity(shape: tuple[int, int, int]) -> LinConv:
    c = shape[0]
    return LinConv(np.eye(c).reshape(c, c, 1, 1), np.zeros(c), (1, 1), (0, 0), shape)


def compose(first: LinConv, second: LinConv, where: str) -> LinConv:
    """second ∘ first as one conv (module docstring), checked on a random map."""
    (s1h, s1w), (k2h, k2w) = first.stride, second.weight.shape[2:]
    k1h, k1w = first.weight.shape[2:]
    kh, kw = k1h + (k2h - 1) * s1h, k1w + (k2w - 1) * s1w
    w1, w2 = first.weight, second.weight
    weight = np.zeros((w2.shape[0], w1.shape[1], kh, kw))
    for u in range(k2h):
        for v in range(k2w):
            block = np.einsum("om,mikl->oikl", w2[:, :, u, v], w1)
            weight[:, :, u * s1h : u * s1h + k1h, v * s1w : v * s1w + k1w] += block
    bias = second.bias + np.einsum("omuv,m->o", w2, first.bias)
    stride = (s1h * second.stride[0], s1w * second.stride[1])
    padding = (
        first.padding[0] + second.padding[0] * s1h,
        first.padding[1] + second.padding[1] * s1w,
    )
    out = LinConv(weight, bias, stride, padding, first.in_shape, second.flat)
    if out.out_shape != second.out_shape:
        raise SpikedetError(
            f"composing it with the map before it gives {out.out_shape}, not "
            f"{second.out_shape}: no single synapse computes this chain",
            where,
        )
    x = np.random.default_rng(0).uniform(0.5, 1.5, first.in_shape)
    want, got = conv_np(conv_np(x, first), second), conv_np(x, out)
    if not np.allclose(got, want, rtol=CHECK_RTOL, atol=CHECK_RTOL * np.abs(want).max()):
        raise SpikedetError(
            "padding (or a bias) after a pooling/conv cannot be folded into one synapse: the "
            "composed conv differs from the chain at the borders",
            where,
        )
    return out


def _pair(value, n: str, what: str) -> tuple[int, int]:
    arr = np.asarray(value).reshape(-1)
    ok = arr.size in (1, 2) and np.all(arr == np.round(arr)) and np.all(arr >= 0)
    if not ok:
        raise SpikedetError(f"{what} {value!r} is not an int or a pair of ints", n)
    arr = np.broadcast_to(arr, (2,))
    return int(arr[0]), int(arr[1])


def _padding(value, kernel: tuple[int, int], stride, n: str) -> tuple[int, int]:
    if isinstance(value, str):
        if value == "valid":
            return (0, 0)
        odd = kernel[0] % 2 and kernel[1] % 2
        if value != "same" or stride != (1, 1) or not odd:
            raise SpikedetError(f"padding {value!r} needs stride 1 and odd kernels", n)
        return (kernel[0] // 2, kernel[1] // 2)
    return _pair(value, n, "padding")


def _dilate(weight: np.ndarray, dilation: tuple[int, int]) -> np.ndarray:
    if dilation == (1, 1):
        return weight
    o, i, kh, kw = weight.shape
    out = np.zeros((o, i, (kh - 1) * dilation[0] + 1, (kw - 1) * dilation[1] + 1))
    out[:, :, :: dilation[0], :: dilation[1]] = weight
    return out


def _ungroup(weight: np.ndarray, groups: int, n: str) -> np.ndarray:
    if groups == 1:
        return weight
    cout, cin_g = weight.shape[:2]
    if cout % groups:
        raise SpikedetError(f"groups={groups} does not divide {cout} output channels", n)
    full = np.zeros((cout, cin_g * groups, *weight.shape[2:]))
    rows = cout // groups
    for g in range(groups):
        full[g * rows : (g + 1) * rows, g * cin_g : (g + 1) * cin_g] = weight[
            g * rows : (g + 1) * rows
        ]
    return full


def primitive(kind: str, node, shape: tuple[int, int, int], flat: bool, n: str) -> LinConv:
    """The conv of one linear NIR node reading a map of ``shape`` (``flat``: after a Flatten)."""
    where = f"node {n}"
    c, h, w = shape
    if kind in ("Affine", "Linear"):
        weight = np.asarray(node.weight, dtype=np.float64)
        size = c * h * w
        if weight.ndim != 2 or weight.shape[1] != size:
            raise SpikedetError(f"weight {weight.shape} does not take the {size} inputs", where)
        if h * w > 1 and not flat:
            raise SpikedetError(f"{kind} reads a {shape} map; it needs a vector (Flatten)", where)
        bias = np.asarray(node.bias, dtype=np.float64) if kind == "Affine" else np.zeros(1)
        if bias.size not in (1, weight.shape[0]):
            raise SpikedetError(f"bias {bias.shape} vs weight {weight.shape}", where)
        kernel = weight.reshape(weight.shape[0], c, h, w)
        return LinConv(kernel, bias.reshape(-1), (1, 1), (0, 0), shape)
    if kind in ("Conv1d", "Conv2d"):
        weight = np.asarray(node.weight, dtype=np.float64)
        dims = 3 if kind == "Conv1d" else 4
        if weight.ndim != dims:
            raise SpikedetError(f"{kind} weight must be {dims}-D, got {weight.shape}", where)
        if kind == "Conv1d":
            if h != 1:
                raise SpikedetError(f"Conv1d reads a (C, L) sequence, got {shape}", where)
            weight = weight[:, :, None, :]
            stride = (1, _pair(node.stride, where, "stride")[1])
            dilation = (1, _pair(node.dilation, where, "dilation")[1])
        else:
            stride = _pair(node.stride, where, "stride")
            dilation = _pair(node.dilation, where, "dilation")
        if min(stride) < 1 or min(dilation) < 1:
            raise SpikedetError(f"stride {stride} / dilation {dilation} must be >= 1", where)
        groups = int(np.asarray(node.groups).reshape(-1)[0])
        if groups < 1 or c % groups or weight.shape[1] * groups != c:
            raise SpikedetError(
                f"weight {weight.shape} with groups={groups} does not take {c} channels", where
            )
        weight = _dilate(_ungroup(weight, groups, where), dilation)
        padding = _padding(node.padding, weight.shape[2:], stride, where)
        if kind == "Conv1d":
            padding = (0, padding[1])
        bias = np.asarray(0.0 if node.bias is None else node.bias, dtype=np.float64).reshape(-1)
        if bias.size not in (1, weight.shape[0]):
            raise SpikedetError(f"bias {bias.shape} vs {weight.shape[0]} out channels", where)
        return LinConv(weight, bias, stride, padding, shape)
    if kind in ("SumPool2d", "AvgPool2d"):
        kernel = _pair(node.kernel_size, where, "kernel_size")
        stride = _pair(node.stride, where, "stride")
        padding = _pair(node.padding, where, "padding")
        if min(kernel) < 1 or min(stride) < 1:
            raise SpikedetError(f"pool kernel {kernel} / stride {stride} must be >= 1", where)
        value = 1.0 if kind == "SumPool2d" else 1.0 / (kernel[0] * kernel[1])
        weight = np.zeros((c, c, *kernel))
        weight[np.arange(c), np.arange(c)] = value
        return LinConv(weight, np.zeros(c), stride, padding, shape)
    if kind == "Scale":
        scale = np.asarray(node.scale, dtype=np.float64)
        per = np.broadcast_to(scale.reshape(scale.shape or (1,)), (scale.size,))
        if scale.size == c * h * w and h * w > 1:
            per_map = scale.reshape(c, h * w)
            if not np.all(per_map == per_map[:, :1]):
                raise SpikedetError("Scale varies inside a channel (no synapse form)", where)
            per = per_map[:, 0]
        elif scale.size not in (1, c):
            raise SpikedetError(f"scale {scale.shape} does not fit the {shape} map", where)
        weight = np.zeros((c, c, 1, 1))
        weight[np.arange(c), np.arange(c), 0, 0] = np.broadcast_to(per, (c,))
        return LinConv(weight, np.zeros(c), (1, 1), (0, 0), shape)
    raise SpikedetError(f"{kind} is not a linear primitive", where)
