"""SpikeYOLO building blocks on time-first tensors ``[T, B, C, H, W]``.

Blocks pass *membrane-level* tensors (currents, before a neuron) between each other, as in
SpikeYOLO/MS-ResNet: every ``SpikeConv`` starts with its own I-LIF, and residual additions
happen on currents. Each block has ``forward`` (numbers) and ``trace`` (structure for export):
``trace`` mirrors ``forward`` on symbolic values so the NIR exporter needs no tracing of torch
ops. The contract of ``trace`` (docs/semantics.md §2):

- a *current* is a ``Current``: a symbolic linear expression, the sum of its terms. A term is
  owned by the builder (``spikedet.convert.nir_terms.Term``: a source - the input, a
  population's spikes or a max-pooled current - then composed linear maps, a channel embedding
  and an upsampling factor); ``a + b`` concatenates the term lists;
- ``builder.conv(src, synapse)`` returns the current of a (BN-folded) conv reading a population,
  a list of populations (their channel concatenation) or ``builder.input``;
- ``builder.linear(current, module)`` applies a conv or an average pool to a current,
  ``builder.concat(currents, owner)`` concatenates channels, ``builder.upsample(current, module)``
  upsamples (nearest x2): all three only rewrite terms (§2.6-2.8);
- the consumers materialise terms into NIR nodes: ``builder.spikes(current, neuron)`` returns the
  population reading a current (one population for equal currents and parameters: such neurons
  spike identically), ``builder.max_pool(current, pool)`` max-pools a current (§2.8),
  ``builder.pool_spikes(population, pool, neuron, part)`` max-pools spikes (§2.7b), and
  ``builder.readout(current, role)`` ends a current in a non-spiking integrator.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from spikedet.errors import SpikedetError
from spikedet.train.neurons import ILIF


class Current(NamedTuple):
    """Symbolic membrane input: the terms (builder-defined) whose values are summed (fan-in)."""

    terms: tuple[Any, ...]

    def __add__(self, other: Current) -> Current:  # type: ignore[override]
        return Current(self.terms + other.terms)


class Builder(Protocol):
    """What ``trace`` may call (implemented by ``spikedet.convert.nir_builder.NIRBuilder``)."""

    input: Any
    T: int

    def spikes(self, current: Current, neuron: nn.Module, part: int | None = None) -> Any: ...

    def conv(self, src: Any, synapse: nn.Module) -> Current: ...

    def linear(self, current: Current, module: nn.Module) -> Current: ...

    def concat(self, currents: Sequence[Current], owner: nn.Module, label: str = "") -> Current: ...

    def upsample(self, current: Current, module: nn.Module, scale: int = 2) -> Current: ...

    def max_pool(self, current: Current, pool: nn.Module) -> Current: ...

    def pool_spikes(self, src: Any, pool: nn.Module, neuron: nn.Module, part: int) -> Any: ...

    def readout(self, current: Current, role: str) -> str: ...


def seq_apply(module: nn.Module, x: Tensor) -> Tensor:
    """Apply a per-frame module to ``[T, B, ...]`` by folding time into the batch."""
    t, b = x.shape[:2]
    y = module(x.flatten(0, 1))
    return y.view(t, b, *y.shape[1:])


class ConvBN(nn.Module):
    """Conv2d (per time step) followed by BatchNorm2d whose statistics are shared over T.

    BN over the folded ``T*B`` batch equals EMS-YOLO's BatchNorm3d over (B, T, H, W).
    """

    def __init__(
        self,
        cin: int,
        cout: int,
        k: int = 1,
        s: int = 1,
        p: int | None = None,
        groups: int = 1,
        bias: bool = False,
        bn: bool = True,
    ):
        super().__init__()
        p = k // 2 if p is None else p
        self.conv = nn.Conv2d(cin, cout, k, s, p, groups=groups, bias=bias)
        self.bn = nn.BatchNorm2d(cout, eps=1e-3, momentum=0.03) if bn else None

    def forward(self, x: Tensor) -> Tensor:
        y = seq_apply(self.conv, x)
        return seq_apply(self.bn, y) if self.bn is not None else y

    def forward_slots(self, x: Tensor, slots: int, exact: bool = False, levels: int = 1) -> Tensor:
        """Spike-driven form: ``x`` is ``[T*slots, B, ...]`` binary slots of T logical steps.

        y_t = BN(sum_d conv_nobias(x_{t*slots+d}) + bias): the bias and BN are applied once per
        logical step, never per slot (SpikeYOLO issue #73). ``slots == 1`` is ``forward``.
        ``exact``: the slot sum is computed exactly (``exact_slot_conv``, inputs at most
        ``levels``), so it does not depend on how the D slots split the integer.
        """
        if slots == 1 and not exact:
            return self(x)
        conv = self.conv
        args = (conv.weight, conv.stride, conv.padding, conv.groups)
        if exact:
            summed = exact_slot_conv(x, slots, *args, levels=levels)
        else:
            summed = slot_conv(x, slots, *args)
        y = summed if conv.bias is None else summed + conv.bias.view(1, 1, -1, 1, 1)
        return seq_apply(self.bn, y) if self.bn is not None else y


def slot_conv(
    x: Tensor,
    slots: int,
    weight: Tensor,
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] = 0,
    groups: int = 1,
) -> Tensor:
    """Per logical step t, sum_d conv(x_{t*slots+d}) without bias: ``[T*slots, B, ...]`` ->
    ``[T, B, ...]``. Summing before the bias is what keeps binary slots exact (§1.1)."""
    t_slots, b = x.shape[:2]
    if t_slots % slots:
        raise ValueError(f"{t_slots} slots is not a multiple of {slots} per step")
    y = F.conv2d(x.flatten(0, 1), weight, None, stride, padding, 1, groups)
    return y.view(t_slots // slots, slots, b, *y.shape[1:]).sum(1)


def _weight_limbs(weight: Tensor, levels: int, fan_in: int) -> list[Tensor]:
    """Split a float32 weight into float64 limbs whose convolutions are exact.

    Each limb holds multiples of 2^q below 2^(top+1), with q chosen so that any sum of up to
    ``fan_in`` products with inputs in [0, levels] stays below 2^(q+53): every partial sum is
    then representable, so a float64 conv of a limb is exact in any summation order. The limbs
    sum exactly to the weight (each remainder is the low bits of the previous one)."""
    headroom = math.ceil(math.log2(max(levels * fan_in, 1))) + 1
    rest, limbs = weight.detach().to(torch.float64), []
    while True:
        peak = float(rest.abs().max()) if rest.numel() else 0.0
        if peak == 0.0:
            return limbs
        quantum = 2.0 ** (math.floor(math.log2(peak)) + headroom - 52)
        limb = torch.trunc(rest / quantum) * quantum
        limbs.append(limb)
        rest = rest - limb


def exact_slot_conv(
    x: Tensor,
    slots: int,
    weight: Tensor,
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] = 0,
    groups: int = 1,
    levels: int = 1,
) -> Tensor:
    """``slot_conv`` with an exact slot sum: per limb, the float64 convs of the slots and their
    sum are exact (``_weight_limbs``), the limbs are added in a fixed order and rounded once to
    float32. So integer spikes (slots = 1) and their D binary slots give the same float32
    numbers. Inputs must be integers in [0, levels] (I-LIF spikes)."""
    fan_in = weight[0].numel()
    x64 = x.to(torch.float64)
    total = None
    with torch.backends.cudnn.flags(enabled=False):  # no FFT/Winograd: only exact-sum algorithms
        for limb in _weight_limbs(weight, levels, fan_in):
            part = slot_conv(x64, slots, limb, stride, padding, groups)
            total = part if total is None else total + part
    if total is None:  # an all-zero weight
        total = slot_conv(x64, slots, weight.detach().to(torch.float64), stride, padding, groups)
    return total.to(x.dtype)


def spike_conv(lif: ILIF, conv_bn: ConvBN, x: Tensor) -> Tensor:
    """I-LIF then ConvBN, in the neuron's spike mode (integer counts or binary slots)."""
    return conv_bn.forward_slots(lif(x), lif.slots, lif.exact, lif.levels)


class SpikeConv(nn.Module):
    """I-LIF -> Conv -> BN (SpikeYOLO's MS_StandardConv / SpikeConv): current in, current out."""

    def __init__(
        self,
        cin: int,
        cout: int,
        k: int = 1,
        s: int = 1,
        groups: int = 1,
        levels: int = 4,
        bias: bool = False,
        bn: bool = True,
    ):
        super().__init__()
        self.lif = ILIF(levels)
        self.cb = ConvBN(cin, cout, k, s, groups=groups, bias=bias, bn=bn)

    def forward(self, x: Tensor) -> Tensor:
        return spike_conv(self.lif, self.cb, x)

    def trace(self, g: Builder, x: Current) -> Current:
        return g.conv(g.spikes(x, self.lif), self.cb)


class MSDownSampling(nn.Module):
    """[I-LIF ->] Conv(k, s, bias) -> BN. The first layer has no neuron (real-valued input)."""

    def __init__(
        self,
        cin: int,
        cout: int,
        k: int = 3,
        s: int = 2,
        p: int = 1,
        first: bool = False,
        levels: int = 4,
    ):
        super().__init__()
        self.lif = None if first else ILIF(levels)
        self.cb = ConvBN(cin, cout, k, s, p, bias=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.cb(x) if self.lif is None else spike_conv(self.lif, self.cb, x)

    def trace(self, g: Builder, x: Any) -> Current:
        src = g.input if self.lif is None else g.spikes(x, self.lif)
        return g.conv(src, self.cb)


class SepConv(nn.Module):
    """Inverted separable conv (expansion 2): 1x1 up, depthwise k x k, 3x3 down (deploy form)."""

    def __init__(self, c: int, k: int = 7, levels: int = 4):
        super().__init__()
        self.pw = SpikeConv(c, 2 * c, 1, levels=levels)
        self.dw = SpikeConv(2 * c, 2 * c, k, groups=2 * c, levels=levels)
        self.out = SpikeConv(2 * c, c, 3, levels=levels)

    def forward(self, x: Tensor) -> Tensor:
        return self.out(self.dw(self.pw(x)))

    def trace(self, g: Builder, x: Current) -> Current:
        return self.out.trace(g, self.dw.trace(g, self.pw.trace(g, x)))


class MixerBlock(nn.Module):
    """X' = X + SepConv(X);  Y = X' + conv2(conv1(X')) with two spike-consuming convs.

    Subclasses choose the three parts (plain or re-parameterisable convs)."""

    sep: nn.Module
    conv1: nn.Module
    conv2: nn.Module

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.sep(x)
        return x + self.conv2(self.conv1(x))

    def trace(self, g: Builder, x: Current) -> Current:
        x = x + self.sep.trace(g, x)
        return x + self.conv2.trace(g, self.conv1.trace(g, x))


class MSAllConvBlock(MixerBlock):
    """SNN-Block-1: X' = X + SepConv(X);  Y = X' + SpikeConv3(rC->C)(SpikeConv3(C->rC)(X'))."""

    def __init__(self, c: int, ratio: int = 4, k: int = 7, levels: int = 4):
        super().__init__()
        self.sep = SepConv(c, k, levels)
        self.conv1 = SpikeConv(c, ratio * c, 3, levels=levels)
        self.conv2 = SpikeConv(ratio * c, c, 3, levels=levels)


class DetectBranch(nn.Module):
    """Two SpikeConv3x3 then I-LIF -> Conv1x1 with bias (no BN): one head output."""

    def __init__(self, cin: int, chid: int, cout: int, levels: int = 4):
        super().__init__()
        self.c1 = SpikeConv(cin, chid, 3, levels=levels)
        self.c2 = SpikeConv(chid, chid, 3, levels=levels)
        self.pred = SpikeConv(chid, cout, 1, levels=levels, bias=True, bn=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.pred(self.c2(self.c1(x)))

    def trace(self, g: Builder, x: Current, role: str) -> str:
        return g.readout(self.pred.trace(g, self.c2.trace(g, self.c1.trace(g, x))), role)


def time_mean(y: Tensor) -> Tensor:
    """Head outputs are averaged over time steps (both papers)."""
    return y.mean(0)


__all__ = [
    "Builder",
    "ConvBN",
    "Current",
    "DetectBranch",
    "MSAllConvBlock",
    "MixerBlock",
    "MSDownSampling",
    "SepConv",
    "SpikeConv",
    "seq_apply",
    "slot_conv",
    "spike_conv",
    "time_mean",
]


INPUT_LAYOUTS = ("TB", "BT")


def time_first(
    x: Tensor, T: int, in_channels: int, max_stride: int, where: str, layout: str = "TB"
) -> Tensor:
    """MS_GetT: ``[B, C, S, S]`` -> repeated T times; ``[T, B, C, S, S]`` is taken as is, and
    with ``layout="BT"`` a ``[B, T, C, S, S]`` input (the official Gen1 / EMS-YOLO order) is
    transposed to time-first."""
    if layout not in INPUT_LAYOUTS:
        raise SpikedetError(f"input layout must be one of {list(INPUT_LAYOUTS)}", repr(layout))
    if x.dim() == 5 and layout == "BT":
        x = x.transpose(0, 1)
    if x.dim() == 4:
        x = x.unsqueeze(0).expand(T, *x.shape).contiguous()
    if x.dim() != 5 or x.shape[2] != in_channels:
        raise SpikedetError(
            f"input must be [B,{in_channels},S,S] or [T,B,{in_channels},S,S], got {list(x.shape)}",
            where,
        )
    h, w = x.shape[-2:]
    if h % max_stride or w % max_stride:
        raise SpikedetError(
            f"input size {h}x{w} is not a multiple of the max stride {max_stride}", where
        )
    return x
