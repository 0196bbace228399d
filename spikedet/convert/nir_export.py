"""Export a traced spiking detector to a NIR graph (docs/semantics.md §2, nir 1.0.8).

The model describes itself: ``model.trace(builder)`` walks its blocks and calls the three
``blocks.Builder`` methods below, which emit NIR primitives:

- ``conv``    -> one ``Conv2d`` node per ConvBN (BN folded, ``input_shape`` always set);
- ``spikes``  -> an I-LIF population ``P``: ``P.li`` (LI), ``P.q1..qD`` (Threshold k − ½) and
  ``P.reset`` (Scale −β/α) closing the soft-reset cycle (§2.2);
- ``readout`` -> an ``I`` integrator with r = 1/dt and an ``Output`` node (§2.4).

Grouped convolutions (depthwise): nir 1.0.8 derives a Conv2d's input type from
``weight.shape[1]`` (= Cin/groups), and ``nir.read`` rebuilds every node through that
constructor, so no grouped Conv2d fed by C > Cin/groups channels survives
``nir.read(type_check=True)`` (patching ``input_type`` only lasts until the file is read; an
absent ``input_shape`` makes the reader fail). Grouped convs are therefore written as the exact
equivalent full conv (groups = 1, zero weights between groups) with
``metadata = {"spikedet.groups": g, "spikedet.in_channels": Cin}`` so a reader can recover the
sparse structure; the zeros are structural, not learned.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

import nir
import numpy as np
from torch import nn

from spikedet.convert.fold import fold_conv_bn
from spikedet.errors import SpikedetError
from spikedet.fileio import atomic_path
from spikedet.train.models.blocks import ConvBN, Current
from spikedet.train.neurons import ILIF

FORMAT_VERSION = 1
DEFAULT_DT = 1e-4
INPUT_NODE = "input"
# Model attributes the exporter reads (besides ``trace``).
MODEL_ATTRIBUTES = ("name", "nc", "names", "reg_max", "strides", "T", "levels", "imgsz")


@dataclass(frozen=True)
class Population:
    """An exported I-LIF population: nodes ``<name>.li``, ``<name>.q1..qD``, ``<name>.reset``."""

    name: str
    shape: tuple[int, int, int]
    levels: int

    @property
    def spike_nodes(self) -> tuple[str, ...]:
        """The Threshold nodes whose fan-in sum is the integer spike s (what consumers read)."""
        return tuple(f"{self.name}.q{k}" for k in range(1, self.levels + 1))


class _GraphInput:
    """Sentinel for ``builder.input`` (the real-valued image entering the first conv)."""

    def __repr__(self) -> str:
        return "<graph input>"


class NIRBuilder:
    """Implements ``blocks.Builder``: collects NIR nodes and edges while a model traces itself.

    ``population_of`` maps every traced ILIF module name to the population that represents it
    (I-LIFs reading an equal current with equal parameters share one population).
    """

    def __init__(
        self,
        model: nn.Module,
        input_shape: tuple[int, int, int],
        T: int,
        dt: float = DEFAULT_DT,
    ):
        if len(input_shape) != 3 or min(input_shape) < 1:
            raise SpikedetError(f"input shape must be (C, H, W), got {input_shape}", "export")
        self.input: object = _GraphInput()
        self.input_shape = tuple(int(v) for v in input_shape)
        self.T = int(T)
        self.dt = float(dt)
        self._module_names = {id(m): name for name, m in model.named_modules()}
        self.nodes: dict[str, nir.NIRNode] = {
            INPUT_NODE: nir.Input(input_type=np.array(self.input_shape))
        }
        self.edges: list[tuple[str, str]] = []
        self._edge_set: set[tuple[str, str]] = set()
        self.conv_shapes: dict[str, tuple[int, int, int]] = {}  # conv node -> output (C, H, W)
        self.populations: dict[str, Population] = {}
        self.population_of: dict[str, str] = {}
        self.readouts: dict[str, tuple[int, int, int]] = {}
        self._population_by_key: dict[tuple, Population] = {}

    # -- blocks.Builder ---------------------------------------------------------------------

    def conv(self, src: Any, conv_bn: ConvBN) -> Current:
        """Add the BN-folded Conv2d node of ``conv_bn`` fed by ``src`` (population or input)."""
        name = self._module_name(conv_bn)
        if not isinstance(conv_bn, ConvBN):
            raise SpikedetError(
                f"unsupported synapse module {type(conv_bn).__name__}: only ConvBN convs export",
                name,
            )
        conv = conv_bn.conv
        if src is self.input:
            in_shape, sources = self.input_shape, (INPUT_NODE,)
        elif isinstance(src, Population):
            in_shape, sources = src.shape, src.spike_nodes
        else:
            raise SpikedetError(f"conv input must be a population or the input, got {src!r}", name)
        _check_conv(conv, in_shape, name)
        weight, bias = fold_conv_bn(conv_bn, name)
        metadata: dict[str, Any] = {}
        if conv.groups > 1:
            weight = _expand_groups(weight, conv.groups, conv.in_channels)
            metadata = {"spikedet.groups": int(conv.groups), "spikedet.in_channels": in_shape[0]}
        node = nir.Conv2d(
            input_shape=(in_shape[1], in_shape[2]),
            weight=weight,
            stride=tuple(int(v) for v in conv.stride),
            padding=tuple(int(v) for v in conv.padding),
            dilation=(1, 1),
            groups=1,
            bias=bias,
            metadata=metadata,
        )
        self._add_node(name, node)
        for source in sources:
            self._add_edge(source, name)
        self.conv_shapes[name] = tuple(int(v) for v in node.output_type["output"])
        return Current((name,))

    def spikes(self, current: Current, neuron: ILIF) -> Population:
        """The I-LIF population reading ``current``; reused for an equal current and parameters.

        LI: τ = dt/(1−β), r = α/(1−β), so forward Euler gives v_t = β·v_{t-1} + α·I_t, and with
        the reset Scale −β/α on the previous spike: v_t = β·(v_{t-1} − s_{t-1}) + α·x_t (§1.1).
        """
        name = self._module_name(neuron)
        if not isinstance(neuron, ILIF):
            raise SpikedetError(
                f"unsupported neuron {type(neuron).__name__}: only I-LIF (ILIF) exports", name
            )
        levels, beta, alpha = int(neuron.levels), float(neuron.beta), float(neuron.alpha)
        if levels < 1 or not 0.0 <= beta < 1.0 or not np.isfinite(alpha) or alpha == 0.0:
            raise SpikedetError(
                f"I-LIF parameters D={levels}, beta={beta}, alpha={alpha} have no LI form "
                "(need D >= 1, 0 <= beta < 1, alpha != 0)",
                name,
            )
        shape = self._current_shape(current, name)
        key = (frozenset(current.terms), levels, beta, alpha)
        pop = self._population_by_key.get(key)
        if pop is None:
            pop = Population(name, shape, levels)
            li, reset = f"{name}.li", f"{name}.reset"
            self._add_node(
                li,
                nir.LI(
                    tau=np.full(shape, self.dt / (1.0 - beta), np.float32),
                    r=np.full(shape, alpha / (1.0 - beta), np.float32),
                    v_leak=np.zeros(shape, np.float32),
                    metadata={"spikedet.neuron": "ilif", "D": levels, "beta": beta, "alpha": alpha},
                ),
            )
            for term in current.terms:
                self._add_edge(term, li)
            for k, q in enumerate(pop.spike_nodes, start=1):
                threshold = np.full(shape, k - 0.5, np.float32)
                self._add_node(q, nir.Threshold(threshold, metadata={"spikedet.bit": k}))
                self._add_edge(li, q)
            self._add_node(reset, nir.Scale(np.full(shape, -beta / alpha, np.float32)))
            for q in pop.spike_nodes:
                self._add_edge(q, reset)
            self._add_edge(reset, li)  # the recurrent (one-step delayed) soft reset
            self._population_by_key[key] = pop
            self.populations[name] = pop
        self.population_of[name] = pop.name
        return pop

    def readout(self, current: Current, role: str) -> str:
        """End ``current`` in integrator ``role`` (r = 1/dt: v_t = v_{t-1} + I_t) and an Output."""
        if not isinstance(role, str) or not role or "/" in role:
            raise SpikedetError(f"bad readout role {role!r}", "export")
        shape = self._current_shape(current, role)
        self._add_node(
            role,
            nir.I(
                r=np.full(shape, 1.0 / self.dt, np.float32), metadata={"spikedet.readout": "mean"}
            ),
        )
        for term in current.terms:
            self._add_edge(term, role)
        self._add_node(f"{role}.output", nir.Output(output_type=np.array(shape)))
        self._add_edge(role, f"{role}.output")
        self.readouts[role] = shape
        return role

    # -- graph ------------------------------------------------------------------------------

    def graph(self, metadata: dict[str, Any]) -> nir.NIRGraph:
        """The type-checked ``NIRGraph`` of everything traced so far."""
        used = {src for src, _ in self.edges}
        for name in self.conv_shapes:
            if name not in used:
                raise SpikedetError("conv output is never read by a neuron or readout", name)
        if not self.readouts:
            raise SpikedetError("the trace produced no readout", "export")
        try:
            return nir.NIRGraph(
                nodes=dict(self.nodes), edges=list(self.edges), metadata=metadata, type_check=True
            )
        except (ValueError, AssertionError) as err:
            raise SpikedetError(
                f"exported graph fails the NIR type check: {err}", "export"
            ) from err

    # -- helpers ----------------------------------------------------------------------------

    def _module_name(self, module: Any) -> str:
        name = self._module_names.get(id(module))
        if name is None:
            raise SpikedetError("module is not part of the exported model", type(module).__name__)
        return name

    def _add_node(self, name: str, node: nir.NIRNode) -> None:
        if name in self.nodes:
            raise SpikedetError("node traced twice (each module may appear once)", name)
        self.nodes[name] = node

    def _add_edge(self, src: str, dst: str) -> None:
        if (src, dst) in self._edge_set:
            raise SpikedetError(f"edge from {src} added twice", dst)
        self._edge_set.add((src, dst))
        self.edges.append((src, dst))

    def _current_shape(self, current: Current, where: str) -> tuple[int, int, int]:
        terms = getattr(current, "terms", None)
        if not terms or any(t not in self.conv_shapes for t in terms):
            raise SpikedetError(f"current must be a sum of traced convs, got {current!r}", where)
        if len(set(terms)) != len(terms):
            # Identity edges cannot carry a weight of 2 (e.g. a current X + X).
            raise SpikedetError(f"current {list(terms)} sums a conv more than once", where)
        shapes = {self.conv_shapes[t] for t in terms}
        if len(shapes) != 1:
            raise SpikedetError(f"summed convs {list(terms)} differ in shape {shapes}", where)
        return shapes.pop()


def _check_conv(conv: nn.Module, in_shape: tuple[int, int, int], name: str) -> None:
    """Reject what the NIR Conv2d encoding of §2.1 cannot express."""
    if not isinstance(conv, nn.Conv2d):
        raise SpikedetError(f"unsupported conv {type(conv).__name__}", name)
    problems = []
    if tuple(conv.dilation) != (1, 1):
        problems.append(f"dilation {tuple(conv.dilation)} (only 1)")
    if isinstance(conv.padding, str):
        problems.append(f"string padding {conv.padding!r}")
    if conv.padding_mode != "zeros":
        problems.append(f"padding mode {conv.padding_mode!r} (only zeros)")
    if conv.in_channels != in_shape[0]:
        problems.append(f"{conv.in_channels} input channels but its source has {in_shape[0]}")
    if problems:
        raise SpikedetError("cannot export conv: " + "; ".join(problems), name)


def _expand_groups(weight: np.ndarray, groups: int, in_channels: int) -> np.ndarray:
    """Grouped weight (Cout, Cin/g, KH, KW) -> the equal full weight (Cout, Cin, KH, KW)."""
    cout, cin_g = weight.shape[:2]
    cout_g = cout // groups
    full = np.zeros((cout, in_channels, *weight.shape[2:]), dtype=weight.dtype)
    for g in range(groups):
        rows = slice(g * cout_g, (g + 1) * cout_g)
        full[rows, g * cin_g : (g + 1) * cin_g] = weight[rows]
    return full


def trace_model(model: nn.Module, imgsz: int | None = None) -> tuple[nir.NIRGraph, NIRBuilder]:
    """Export ``model`` (put in eval mode) at ``imgsz``; also return the builder (mappings)."""
    missing = [a for a in (*MODEL_ATTRIBUTES, "trace") if not hasattr(model, a)]
    if missing:
        raise SpikedetError(
            f"{type(model).__name__} models have no NIR export yet: the model lacks export "
            f"attributes {missing}",
            str(getattr(model, "name", type(model).__name__)),
        )
    model_name = str(model.name)
    size = model.imgsz if imgsz is None else imgsz
    height, width = (int(size), int(size)) if np.isscalar(size) else (int(v) for v in size)
    stride = max(int(v) for v in model.strides)
    if height % stride or width % stride:
        raise SpikedetError(
            f"input size {height}x{width} is not a multiple of the largest stride {stride}",
            model_name,
        )
    in_channels = getattr(model, "in_channels", None)
    if in_channels is None:  # the first conv reads the image; the builder re-checks this
        in_channels = next(m.in_channels for m in model.modules() if isinstance(m, nn.Conv2d))
    was_training = model.training
    model.eval()
    try:
        builder = NIRBuilder(model, (int(in_channels), height, width), T=int(model.T))
        try:
            outputs = model.trace(builder)
        except AttributeError as err:
            if "trace" not in str(err):
                raise
            raise SpikedetError(
                f"a module on the trace path cannot export: {err}", model_name
            ) from err
        pairs = _head_outputs(outputs, builder, model_name)
        _check_everything_traced(model, builder)
        head = {
            "type": "dfl",
            "nc": int(model.nc),
            "reg_max": int(model.reg_max),
            "strides": [int(s) for s in model.strides],
            "outputs": pairs,
            "names": [str(n) for n in model.names],
            "imgsz": height if height == width else [height, width],
        }
        metadata = {
            "spikedet.format": FORMAT_VERSION,
            "spikedet.model": model_name,
            "spikedet.T": int(model.T),
            "dt": builder.dt,
            "spikedet.input_scale": int(getattr(model, "input_scale", 255)),
            "spikedet.head": json.dumps(head),
        }
        return builder.graph(metadata), builder
    finally:
        model.train(was_training)


def export_model(model: nn.Module, imgsz: int | None = None) -> nir.NIRGraph:
    """The NIR graph of ``model`` at input size ``imgsz`` (default ``model.imgsz``), §2."""
    return trace_model(model, imgsz)[0]


def _head_outputs(outputs: Any, builder: NIRBuilder, where: str) -> list[list[str]]:
    try:
        pairs = [[str(box), str(cls)] for box, cls in outputs]
    except (TypeError, ValueError) as err:
        raise SpikedetError(f"trace must return (box, cls) role pairs: {err}", where) from err
    unknown = [r for pair in pairs for r in pair if r not in builder.readouts]
    if not pairs or unknown:
        raise SpikedetError(f"trace returned no pairs or unknown readouts {unknown}", where)
    return pairs


def _check_everything_traced(model: nn.Module, builder: NIRBuilder) -> None:
    """Never drop a layer silently: every module holding parameters must be in a conv node."""
    traced = tuple(f"{name}." for name in builder.conv_shapes)
    for name, module in model.named_modules():
        if name in builder.conv_shapes or name.startswith(traced):
            continue
        if any(True for _ in module.parameters(recurse=False)):
            raise SpikedetError(
                f"{type(module).__name__} has parameters but is not on the traced path "
                "(the export would drop it)",
                name,
            )


def write_nir(graph: nir.NIRGraph, path: str | os.PathLike) -> None:
    """Write ``graph`` atomically and check that ``nir.read(type_check=True)`` accepts it."""
    with atomic_path(path, suffix=".nir") as tmp:
        try:
            nir.write(tmp, graph)
            nir.read(tmp, type_check=True)
        except (ValueError, TypeError, KeyError, AssertionError, OSError) as err:
            raise SpikedetError(f"cannot write a readable NIR file: {err}", str(path)) from err


def parameter_coverage(model: nn.Module, graph: nir.NIRGraph) -> dict[str, Any]:
    """Check that the graph holds every BN-folded model parameter exactly once.

    ``folded_params`` = Σ over ConvBN modules of |W'| + |b'| (plus any parameter outside a
    ConvBN, which the graph cannot hold); ``graph_params`` = Σ over Conv2d nodes of |W| + |b|,
    where a grouped conv stored expanded counts only its in-group weights (the other
    ``structural_zeros`` entries must be exactly 0). ``covered`` needs each ConvBN's node to equal
    its fold exactly, no extra conv nodes, and equal counts.
    """
    folded = graph_params = zeros = 0
    covered = True
    conv_nodes = {k: n for k, n in graph.nodes.items() if isinstance(n, nir.Conv2d)}
    inside_convbn: set[int] = set()
    for name, module in model.named_modules():
        if not isinstance(module, ConvBN):
            continue
        inside_convbn.update(id(p) for p in module.parameters())
        weight, bias = fold_conv_bn(module, name)
        folded += weight.size + bias.size
        node = conv_nodes.pop(name, None)
        if node is None:
            covered = False
            continue
        node_weight = np.asarray(node.weight)
        groups = int(node.metadata.get("spikedet.groups", 1)) if int(node.groups) == 1 else 1
        if groups > 1 and node_weight.shape[1] == weight.shape[1] * groups:
            mask = _expand_groups(np.ones_like(weight), groups, node_weight.shape[1]) != 0
            zeros += int((~mask).sum())
            covered &= bool(np.all(node_weight[~mask] == 0))
            in_group = node_weight[mask].reshape(weight.shape)
        else:
            in_group = node_weight
        graph_params += in_group.size + np.asarray(node.bias).size
        covered &= np.array_equal(in_group, weight) and np.array_equal(node.bias, bias)
    outside = sum(p.numel() for p in model.parameters() if id(p) not in inside_convbn)
    folded += outside
    for node in conv_nodes.values():  # conv nodes without a ConvBN in this model
        graph_params += np.asarray(node.weight).size + np.asarray(node.bias).size
    covered &= outside == 0 and not conv_nodes and folded == graph_params
    return {
        "folded_params": int(folded),
        "graph_params": int(graph_params),
        "covered": bool(covered),
        "structural_zeros": int(zeros),
    }
