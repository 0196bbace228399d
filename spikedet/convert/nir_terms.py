"""Currents as linear expressions of terms, and the composition of their maps (§2.6, §2.7).

A *term* is one synapse's contribution to a membrane current: a source (the graph input, the
spikes of a population, or a max-pooled current, §2.8) followed by a recipe of linear steps and
an optional nearest upsampling applied last:

- ``ConvStep(where)``: the BN-folded conv of module ``where`` (optionally only its input
  channels [lo, hi), and with or without its bias: a map applied to a sum of terms adds its bias
  once, on the first term);
- ``PoolStep(where)``: an ``nn.AvgPool2d``, i.e. a depthwise conv with weight 1/(kh·kw);
- ``EmbedStep(where, offset, total)``: channel concatenation, the term's channels become rows
  [offset, offset + c) of ``total`` (§2.7).

A term's node name, its shape and its recipe metadata (``spikedet.recipe``) are derived here;
its numbers come from ``nir_compose.realize`` (one affine conv per term, float64 folds, rounded
to float32 once). ``ModuleLookup`` reads synapse modules (BN folded) and pools from the model by
module path and refuses what the encoding cannot express, naming the module.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from spikedet.errors import SpikedetError

Shape = tuple[int, int, int]


@dataclass(frozen=True)
class ConvStep:
    """The folded conv of module ``where``; input channels [lo, hi) (hi = 0: all of them)."""

    where: str
    lo: int = 0
    hi: int = 0
    bias: bool = True
    part: int = -1  # >= 0: part k of a conv split over a spike concatenation (node "<where>#k")


@dataclass(frozen=True)
class PoolStep:
    """Average pooling of module ``where`` (``nn.AvgPool2d``), composed like a depthwise conv."""

    where: str


@dataclass(frozen=True)
class EmbedStep:
    """Channel concatenation ``where``: the term's channels land at [offset, offset + c) of total."""

    where: str
    offset: int
    total: int

    def __post_init__(self) -> None:
        if not 0 <= self.offset < self.total:
            raise SpikedetError(f"bad embedding offset {self.offset} of {self.total}", self.where)


Step = ConvStep | PoolStep | EmbedStep


@dataclass(frozen=True)
class Source:
    """What a term reads: ``input`` (node ``input``), ``spikes`` (the population's spike nodes) or
    ``max_pool`` (a max-pooled current, materialised per embedding as a §2.8 node)."""

    kind: str
    name: str
    shape: Shape
    nodes: tuple[str, ...] = ()
    kernel: tuple[int, int] = (1, 1)  # max_pool only
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    inputs: tuple[Term, ...] = ()  # max_pool only: the terms of the pooled current

    def __post_init__(self) -> None:
        if self.kind not in ("input", "spikes", "max_pool"):
            raise SpikedetError(f"unknown term source kind {self.kind!r}", self.name)


@dataclass(frozen=True)
class Term:
    """One summand of a current: ``source`` -> ``steps`` -> nearest upsampling by ``up``."""

    source: Source
    steps: tuple[Step, ...]
    shape: Shape = field(compare=False)
    up: int = 1

    @property
    def identity(self) -> bool:
        """A max-pooled current read as is (only embeddings, no conv): it has no conv node."""
        return self.source.kind == "max_pool" and all(isinstance(s, EmbedStep) for s in self.steps)


@dataclass
class ConvInfo:
    """What ``realize`` needs of a synapse module: folded float64 weight/bias and geometry."""

    weight: np.ndarray  # (Cout, Cin/groups, KH, KW)
    bias: np.ndarray  # (Cout,)
    stride: tuple[int, int]
    padding: tuple[int, int]
    groups: int


class ModuleLookup:
    """Folded synapse modules and pooling geometry of ``model`` by module path (cached)."""

    def __init__(self, model: nn.Module):
        self.modules = dict(model.named_modules())
        self._convs: dict[str, ConvInfo] = {}

    def module(self, where: str) -> nn.Module:
        module = self.modules.get(where)
        if module is None:
            raise SpikedetError("no such module in the model", where)
        return module

    def conv(self, where: str) -> ConvInfo:
        info = self._convs.get(where)
        if info is None:
            module = self.module(where)
            conv = synapse_conv(module, where)
            weight, bias = fold64(module, where)
            info = ConvInfo(weight, bias, _pair(conv.stride), _pair(conv.padding), conv.groups)
            self._convs[where] = info
        return info

    def avg_pool(self, where: str) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int]]:
        """(kernel, stride, padding) of an ``nn.AvgPool2d`` that composes like a conv."""
        pool = self.module(where)
        if not isinstance(pool, nn.AvgPool2d):
            raise SpikedetError(f"expected AvgPool2d, found {type(pool).__name__}", where)
        geometry = _pool_geometry(pool)
        if pool.ceil_mode or pool.divisor_override is not None or geometry[2] != (0, 0):
            raise SpikedetError(
                "only AvgPool2d without padding, ceil_mode or divisor_override exports", where
            )
        return geometry

    def max_pool(self, where: str) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int]]:
        """(kernel, stride, padding) of an ``nn.MaxPool2d`` (padding <= kernel/2, as torch)."""
        pool = self.module(where)
        if not isinstance(pool, nn.MaxPool2d):
            raise SpikedetError(f"expected MaxPool2d, found {type(pool).__name__}", where)
        kernel, stride, padding = _pool_geometry(pool)
        bad = pool.ceil_mode or pool.return_indices or _pair(pool.dilation) != (1, 1)
        if bad or padding[0] * 2 > kernel[0] or padding[1] * 2 > kernel[1]:
            raise SpikedetError(
                "only MaxPool2d without dilation, ceil_mode or indices, padding <= kernel/2",
                where,
            )
        return kernel, stride, padding


def _pool_geometry(pool: nn.Module) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int]]:
    kernel = _pair(pool.kernel_size)
    stride = _pair(pool.stride if pool.stride is not None else pool.kernel_size)
    return kernel, stride, _pair(pool.padding)


def synapse_conv(module: nn.Module, where: str) -> nn.Conv2d:
    """The ``nn.Conv2d`` of a synapse module: a Conv2d itself or a conv(+BN) pair (ConvBN,
    EMSConvBN: attributes ``conv`` and ``bn``). Anything else is refused."""
    conv = module if isinstance(module, nn.Conv2d) else getattr(module, "conv", None)
    if not isinstance(conv, nn.Conv2d) or (conv is not module and not hasattr(module, "bn")):
        raise SpikedetError(
            f"unsupported synapse module {type(module).__name__}: only Conv2d and conv+BN "
            "modules (ConvBN, EMSConvBN) export",
            where,
        )
    problems = []
    if tuple(conv.dilation) != (1, 1):
        problems.append(f"dilation {tuple(conv.dilation)} (only 1)")
    if isinstance(conv.padding, str):
        problems.append(f"string padding {conv.padding!r}")
    if conv.padding_mode != "zeros":
        problems.append(f"padding mode {conv.padding_mode!r} (only zeros)")
    if problems:
        raise SpikedetError("cannot export conv: " + "; ".join(problems), where)
    return conv


def fold64(module: nn.Module, where: str) -> tuple[np.ndarray, np.ndarray]:
    """Eval-mode BN folded into the conv, in float64 (fold.py's formula, §2.1):
    W' = W·s, b' = (b − mean)·s + β with s = γ/√(var + eps); a bare conv keeps W, b (or 0)."""
    conv = synapse_conv(module, where)
    bn = None if module is conv else module.bn
    with torch.no_grad():
        weight = conv.weight.detach().to(torch.float64).cpu()
        cout = weight.shape[0]
        bias = (
            conv.bias.detach().to(torch.float64).cpu()
            if conv.bias is not None
            else torch.zeros(cout, dtype=torch.float64)
        )
        if bn is not None:
            if bn.running_mean is None or bn.running_var is None:
                raise SpikedetError("BatchNorm without running statistics cannot be folded", where)

            def value(t: torch.Tensor | None, default: float) -> torch.Tensor:
                if t is None:
                    return torch.full((cout,), default, dtype=torch.float64)
                return t.detach().to(torch.float64).cpu()

            scale = value(bn.weight, 1.0) / torch.sqrt(value(bn.running_var, 1.0) + float(bn.eps))
            weight = weight * scale.view(-1, 1, 1, 1)
            bias = (bias - value(bn.running_mean, 0.0)) * scale + value(bn.bias, 0.0)
    return weight.numpy().copy(), bias.numpy().copy()


# -- shapes and names ---------------------------------------------------------------------


def window_out(n: int, k: int, s: int, p: int) -> int:
    """Output length of a conv/pool window: floor((n + 2p − k)/s) + 1."""
    return (n + 2 * p - k) // s + 1


def term_shape(source: Shape, steps: tuple[Step, ...], up: int, lookup: ModuleLookup) -> Shape:
    """(C, H, W) of a term: each conv/pool window floor((n + 2p − k)/s) + 1, an embedding
    widens C to its total, upsampling multiplies H and W. ValueError on a channel mismatch."""
    c, h, w = source
    for step in steps:
        if isinstance(step, ConvStep):
            info = lookup.conv(step.where)
            cin = info.weight.shape[1] * info.groups
            if c != (step.hi or cin) - step.lo:
                raise ValueError(f"{c} channels feed a conv reading {(step.hi or cin) - step.lo}")
            (kh, kw), stride, padding = info.weight.shape[2:], info.stride, info.padding
            c = int(info.weight.shape[0])
        elif isinstance(step, PoolStep):
            (kh, kw), stride, padding = lookup.avg_pool(step.where)
        else:
            c = step.total
            continue
        h, w = window_out(h, kh, stride[0], padding[0]), window_out(w, kw, stride[1], padding[1])
    return c, h * up, w * up


def node_name(source: Source, steps: tuple[Step, ...]) -> str:
    """A term's conv node: ``<conv>`` / ``<conv>#k`` (its first conv, part k of a split) or, for
    a max-pooled source, that pool's node; then ``@<map>`` for every later step (§2.6)."""
    if source.kind == "max_pool":
        base, chain = source.name, steps
    else:
        first = steps[0]
        assert isinstance(first, ConvStep)
        base = first.where + (f"#{first.part}" if first.part >= 0 else "")
        chain = steps[1:]
    return base + "".join(f"@{s.where}" for s in chain)


# -- recipes as node metadata ----------------------------------------------------------------


def recipe_json(source: Source, steps: tuple[Step, ...]) -> str:
    """The recipe of a node (metadata ``spikedet.recipe``): what it reads and its steps."""
    out: list[list[Any]] = []
    for s in steps:
        if isinstance(s, ConvStep):
            out.append(["conv", s.where, s.lo, s.hi, int(s.bias)])
        elif isinstance(s, PoolStep):
            out.append(["avg_pool", s.where])
        else:
            out.append(["embed", s.where, s.offset, s.total])
    return json.dumps({"source": source.kind, "channels": source.shape[0], "steps": out})


def parse_recipe(text: Any) -> tuple[int, tuple[Step, ...]]:
    """Inverse of ``recipe_json`` -> (source channels, steps); ValueError when malformed."""
    if isinstance(text, np.ndarray):
        text = text.item()
    if isinstance(text, bytes):
        text = text.decode("utf8")
    data = json.loads(str(text))
    steps: list[Step] = []
    for item in data["steps"]:
        kind = item[0]
        if kind == "conv":
            steps.append(ConvStep(str(item[1]), int(item[2]), int(item[3]), bool(item[4])))
        elif kind == "avg_pool":
            steps.append(PoolStep(str(item[1])))
        elif kind == "embed":
            steps.append(EmbedStep(str(item[1]), int(item[2]), int(item[3])))
        else:
            raise ValueError(f"unknown recipe step {kind!r}")
    if not steps:
        raise ValueError("empty recipe")
    return int(data["channels"]), tuple(steps)


def _pair(value: Any) -> tuple[int, int]:
    if isinstance(value, int | np.integer):
        return int(value), int(value)
    a, b = value
    return int(a), int(b)
