"""Numeric realisation of a term's recipe: ONE affine conv per term (docs/semantics.md §2.6-2.7).

``realize`` folds the steps of a ``nir_terms`` recipe, in float64, starting from the first conv
(or, for a max-pooled source, from the identity):

    conv2 ∘ conv1 (conv2 with padding 0): kernel k1 + s1·(k2 − 1), stride s1·s2, padding p1,
        W[o,i,s1·v+u] = Σ_m Σ W2[o,m,v]·W1[m,i,u],  b = b2 + (Σ_{m,v} W2[o,m,v])·b1[m]
    conv2 ∘ embed: conv2 reads only the rows the term occupies, W2[:, o:o+c] (the embedding
        disappears); a depthwise map (average pooling: weight 1/(kh·kw)) keeps the embedding.

``node_arrays`` stores the result as the ``Conv2d`` node holds it: float32 (one rounding),
groups expanded (§2.1), rows outside an embedding zero (§2.7). ``parameter_coverage`` runs the
same two functions on a node's recorded recipe, so export and check agree bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from spikedet.convert.nir_terms import ConvStep, EmbedStep, ModuleLookup, PoolStep, Step
from spikedet.errors import SpikedetError


@dataclass
class Affine2d:
    """y = conv(x; weight, stride, padding, groups) + bias, its rows placed at
    [offset, offset + Cout) of ``total`` channels. ``weight`` None: the identity (c channels)."""

    weight: np.ndarray | None
    bias: np.ndarray
    stride: tuple[int, int]
    padding: tuple[int, int]
    groups: int
    offset: int
    total: int

    @property
    def channels(self) -> int:
        return int(self.bias.shape[0])


def expand_groups(weight: np.ndarray, groups: int) -> np.ndarray:
    """Grouped weight (Cout, Cin/g, KH, KW) -> the equal full weight (Cout, Cin, KH, KW)."""
    if groups == 1:
        return weight
    cout, cin_g = weight.shape[:2]
    cout_g, kernel = cout // groups, weight.shape[2:]
    full = np.zeros((groups, cout_g, groups, cin_g, *kernel), dtype=weight.dtype)
    diagonal = np.arange(groups)
    full[diagonal, :, diagonal] = weight.reshape(groups, cout_g, cin_g, *kernel)
    return full.reshape(cout, groups * cin_g, *kernel)


def compose(inner: Affine2d, outer_w: np.ndarray, outer_b: np.ndarray, stride2: tuple[int, int],
            depthwise: bool) -> Affine2d:  # fmt: skip
    """outer ∘ inner for an outer map with padding 0 (module docstring). ``depthwise``: the outer
    weight is (C, 1, kh, kw) acting per channel, so the inner embedding is kept."""
    w1 = expand_groups(inner.weight, inner.groups) if not depthwise else inner.weight
    (k1h, k1w), (s1h, s1w) = w1.shape[2:], inner.stride
    k2h, k2w = outer_w.shape[2:]
    size = (k1h + s1h * (k2h - 1), k1w + s1w * (k2w - 1))
    rows = outer_w.shape[0]
    weight = np.zeros((rows, w1.shape[1], *size), dtype=np.float64)
    for vh in range(k2h):
        for vw in range(k2w):
            window = (slice(None), slice(None), slice(s1h * vh, s1h * vh + k1h),
                      slice(s1w * vw, s1w * vw + k1w))  # fmt: skip
            if depthwise:
                weight[window] += outer_w[:, 0, vh, vw][:, None, None, None] * w1
            else:
                weight[window] += np.tensordot(outer_w[:, :, vh, vw], w1, axes=(1, 0))
    if depthwise:
        bias = outer_w.sum(axis=(1, 2, 3)) * inner.bias + outer_b
    else:
        bias = outer_w.sum(axis=(2, 3)) @ inner.bias + outer_b
    return Affine2d(
        weight, bias, (s1h * stride2[0], s1w * stride2[1]), inner.padding,
        inner.groups if depthwise else 1, inner.offset if depthwise else 0,
        inner.total if depthwise else rows,
    )  # fmt: skip


def _conv_step(state: Affine2d | None, step: ConvStep, lookup: ModuleLookup) -> Affine2d:
    info = lookup.conv(step.where)
    weight, groups = info.weight, info.groups
    if step.lo or step.hi:
        if groups != 1:
            raise SpikedetError("a grouped conv cannot be split by input channels", step.where)
        weight = weight[:, step.lo : step.hi]
    bias = info.bias if step.bias else np.zeros_like(info.bias)
    if state is not None:
        # conv2 ∘ embed: conv2 only sees the rows its input term occupies.
        weight = expand_groups(weight, groups)
        groups = 1
        if weight.shape[1] != state.total:
            raise SpikedetError(f"conv reads {weight.shape[1]} channels, gets {state.total}",
                                step.where)  # fmt: skip
        weight = weight[:, state.offset : state.offset + state.channels]
    if state is None or state.weight is None:  # the first conv of the term
        return Affine2d(weight, bias, info.stride, info.padding, groups, 0, weight.shape[0])
    if info.padding != (0, 0):
        raise SpikedetError("only a padding-0 conv composes with the conv before it", step.where)
    return compose(state, weight, bias, info.stride, depthwise=False)


def _pool_step(state: Affine2d, step: PoolStep, lookup: ModuleLookup) -> Affine2d:
    kernel, stride, padding = lookup.avg_pool(step.where)
    channels = state.channels
    avg = np.full((channels, 1, *kernel), 1.0 / (kernel[0] * kernel[1]), dtype=np.float64)
    zeros = np.zeros(channels, dtype=np.float64)
    if state.weight is None:  # average pool of a max-pooled current: a depthwise conv on it
        return Affine2d(avg, zeros, stride, padding, channels, state.offset, state.total)
    return compose(state, avg, zeros, stride, depthwise=True)  # lookup refused padding != 0


def realize(source_channels: int, steps: tuple[Step, ...], lookup: ModuleLookup) -> Affine2d:
    """Fold a term's recipe into one affine conv (float64); a max_pool source starts as the
    identity on its ``source_channels`` (weight None until a conv or pool reads it)."""
    state: Affine2d | None = None
    if not steps or not isinstance(steps[0], ConvStep):
        zeros = np.zeros(source_channels, dtype=np.float64)
        state = Affine2d(None, zeros, (1, 1), (0, 0), 1, 0, source_channels)
    for step in steps:
        if isinstance(step, ConvStep):
            state = _conv_step(state, step, lookup)
        elif state is None:
            raise SpikedetError("a term must start with a conv", step.where)
        elif isinstance(step, PoolStep):
            state = _pool_step(state, step, lookup)
        elif isinstance(step, EmbedStep):
            if state.total + step.offset > step.total:
                raise SpikedetError(f"{state.total} channels at {step.offset} exceed "
                                    f"{step.total}", step.where)  # fmt: skip
            state.offset, state.total = state.offset + step.offset, step.total
        else:
            raise SpikedetError(f"unknown recipe step {step!r}", "recipe")
    assert state is not None
    return state


@dataclass
class NodeArrays:
    """A realised term as stored in its ``Conv2d`` node (§2.1 groups, §2.7 out_offset)."""

    weight: np.ndarray  # float32 (total, Cin, KH, KW)
    bias: np.ndarray  # float32 (total,)
    stride: tuple[int, int]
    padding: tuple[int, int]
    metadata: dict[str, Any]
    structural_zeros: int  # entries that are zero by construction (groups, embedding rows)


def node_arrays(affine: Affine2d) -> NodeArrays:
    """Store ``affine`` as a full (groups = 1) float32 conv, rows outside the embedding zero."""
    if affine.weight is None:
        raise SpikedetError("an identity term has no conv node", "recipe")
    compact = affine.weight.astype(np.float32)  # the one rounding to float32
    metadata: dict[str, Any] = {}
    zeros = 0
    if affine.groups > 1:
        full = expand_groups(compact, affine.groups)
        zeros += full.size - compact.size
        compact = full
        if affine.total == affine.channels:
            metadata = {"spikedet.groups": affine.groups, "spikedet.in_channels": full.shape[1]}
    weight, bias = compact, affine.bias.astype(np.float32)
    if affine.total != affine.channels:
        rows = slice(affine.offset, affine.offset + affine.channels)
        weight = np.zeros((affine.total, *compact.shape[1:]), dtype=np.float32)
        weight[rows] = compact
        bias = np.zeros(affine.total, dtype=np.float32)
        bias[rows] = affine.bias.astype(np.float32)
        zeros += weight.size - compact.size + affine.total - affine.channels
        metadata["spikedet.out_offset"] = affine.offset
        metadata["spikedet.out_channels"] = affine.channels
    return NodeArrays(weight, bias, affine.stride, affine.padding, metadata, zeros)
