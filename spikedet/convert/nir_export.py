"""Export a traced spiking detector to a NIR graph (docs/semantics.md §2, nir 1.0.8).

The model describes itself: ``model.trace(builder)`` walks its blocks and calls the
``blocks.Builder`` methods, which ``nir_builder.NIRBuilder`` turns into NIR primitives: conv
nodes (BN folded, maps on currents composed in, §2.1, §2.6-2.7), I-LIF populations (LI +
Threshold + Scale reset cycle, §2.2), EMS LIF populations (§2.5), max-pooled spike populations
(§2.7b), the extension ops (§2.8) and readouts (``I`` + ``Output``, §2.4).

Grouped convolutions (depthwise): nir 1.0.8 derives a Conv2d's input type from
``weight.shape[1]`` (= Cin/groups), and ``nir.read`` rebuilds every node through that
constructor, so no grouped Conv2d fed by C > Cin/groups channels survives
``nir.read(type_check=True)``. Grouped convs are therefore written as the exact equivalent full
conv (groups = 1, zero weights between groups) with
``metadata = {"spikedet.groups": g, "spikedet.in_channels": Cin}``; the zeros are structural.

Every conv node also carries ``metadata["spikedet.recipe"]`` (JSON): what it reads and the
steps (folded convs, input-channel slices, pools, embeddings) it was composed from, which
``parameter_coverage`` uses to account for every model parameter.
"""

from __future__ import annotations

import json
from typing import Any

import nir
import numpy as np
from torch import nn

from spikedet.convert import nir_compose as nc
from spikedet.convert import nir_terms as nt
from spikedet.convert.nir_builder import (  # noqa: F401 - re-exported API
    DEFAULT_DT,
    NIRBuilder,
    Population,
)
from spikedet.convert.nir_format import FORMAT_VERSION, input_encoding
from spikedet.convert.nir_nodes import INPUT_NODE, extensions_json  # noqa: F401
from spikedet.errors import SpikedetError
from spikedet.nirio import write_nir  # noqa: F401  (re-exported: the writer callers use)

# Model attributes the exporter reads (besides ``trace``), per head type (§2.4).
MODEL_ATTRIBUTES = {
    "dfl": ("name", "nc", "names", "reg_max", "strides", "T", "levels", "imgsz"),
    "anchor": ("name", "nc", "names", "strides", "T", "imgsz", "detect"),
}


def trace_model(
    model: nn.Module, imgsz: int | None = None, data: dict[str, Any] | None = None
) -> tuple[nir.NIRGraph, NIRBuilder]:
    """Export ``model`` (put in eval mode) at ``imgsz``; also return the builder (mappings).
    ``data``: the run's ``train_config`` (its dataset and Gen1 representation go into the
    metadata, ``input_encoding``); None: images."""
    head_type = str(getattr(model, "head_type", "dfl"))
    needed = MODEL_ATTRIBUTES.get(head_type)
    missing = [a for a in (*(needed or ()), "trace") if not hasattr(model, a)]
    if needed is None or missing:
        raise SpikedetError(
            f"{type(model).__name__} models have no NIR export: head type {head_type!r}, the "
            f"model lacks export attributes {missing}",
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
    encoding = input_encoding(data)
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
        head: dict[str, Any] = {"type": head_type, "nc": int(model.nc)}
        if head_type == "dfl":
            head["reg_max"] = int(model.reg_max)
        head["strides"] = [int(s) for s in model.strides]
        if head_type == "anchor":
            head["anchors"] = [[[float(v) for v in wh] for wh in level]
                               for level in model.detect.anchors.tolist()]  # fmt: skip
        head["outputs"] = _head_outputs(outputs, builder, head_type, model_name)
        head["names"] = [str(n) for n in model.names]
        head["imgsz"] = height if height == width else [height, width]
        _check_everything_traced(model, builder)
        metadata = {
            "spikedet.format": FORMAT_VERSION,
            "spikedet.extensions": extensions_json(builder),
            "spikedet.model": model_name,
            "spikedet.T": int(model.T),
            "dt": builder.dt,
            "spikedet.input_scale": int(encoding["input_scale"]),
            "spikedet.input": json.dumps({k: v for k, v in encoding.items() if k != "input_scale"}),
            "spikedet.head": json.dumps(head),
        }
        return builder.graph(metadata), builder
    finally:
        model.train(was_training)


def export_model(
    model: nn.Module, imgsz: int | None = None, data: dict[str, Any] | None = None
) -> nir.NIRGraph:
    """The NIR graph of ``model`` at input size ``imgsz`` (default ``model.imgsz``), §2;
    ``data`` as in ``trace_model``."""
    return trace_model(model, imgsz, data)[0]


def _head_outputs(outputs: Any, builder: NIRBuilder, head_type: str, where: str) -> list:
    """dfl: one [box, cls] pair of readouts per stride; anchor: one readout per stride."""
    try:
        if head_type == "dfl":
            roles: list = [[str(box), str(cls)] for box, cls in outputs]
            flat = [r for pair in roles for r in pair]
        else:
            roles = flat = [str(r) for r in outputs]
    except (TypeError, ValueError) as err:
        raise SpikedetError(f"trace must return the head's readout roles: {err}", where) from err
    unknown = [r for r in flat if r not in builder.readouts]
    if not roles or unknown:
        raise SpikedetError(f"trace returned no readouts or unknown ones {unknown}", where)
    return roles


def _host_prefixes(model: nn.Module) -> tuple[str, ...]:
    """Module paths the host applies after the readouts (e.g. SpikeYOLO's DFL decoder)."""
    return tuple(f"{p}." for p in getattr(model, "host_modules", ()))


def _check_everything_traced(model: nn.Module, builder: NIRBuilder) -> None:
    """Never drop a layer silently: every module holding parameters must be a factor of some
    conv node (or a host-side decoder the model declares in ``host_modules``)."""
    traced = tuple(f"{name}." for name in builder.factors)
    host = _host_prefixes(model)
    for name, module in model.named_modules():
        if name in builder.factors or f"{name}.".startswith(traced + host):
            continue
        if any(True for _ in module.parameters(recurse=False)):
            raise SpikedetError(
                f"{type(module).__name__} has parameters but is not on the traced path "
                "(the export would drop it)",
                name,
            )


def parameter_coverage(model: nn.Module, graph: nir.NIRGraph) -> dict[str, Any]:
    """Check that the graph holds every BN-folded parameter of ``model``, and nothing else.

    Synapse modules are ``Conv2d``s and conv+BN pairs (ConvBN, EMSConvBN); their folded
    parameters are W' and b' (§2.1). Every ``Conv2d`` node must carry a recipe
    (``spikedet.recipe``) naming the synapse modules it was made of (directly, as an
    input-channel slice ``#k``, embedded at an ``out_offset``, or as a factor of a composition;
    a node without one, as in format 1 files, must be named after the module it holds),
    and recomputing the node from the recipe with the model's CURRENT parameters must give its
    stored weight, bias, stride and padding bit for bit (so any changed parameter, or a node
    from nowhere, is caught). A module's weight is accounted for by the union of the input
    channel slices its recipes use, its bias by a recipe that carries it.

    Returns ``folded_params`` (Σ |W'| + |b'| over synapse modules, plus any parameter outside
    them, which no graph can hold), ``graph_params`` (the accounted part of those), ``covered``
    (every node verified, every parameter accounted, nothing outside), ``structural_zeros``
    (stored entries that are zero by construction: group expansion, embedding rows),
    ``stored_params`` (Σ sizes of all conv node arrays), ``host_params`` (decoders the model
    applies on the host, e.g. DFL, not part of the graph), ``nodes`` (conv nodes per kind:
    direct, slice, embedded, composed; ``copies``: nodes sharing a module with another node)
    and ``problems`` (the first reasons for ``covered`` = False).
    """
    lookup = nt.ModuleLookup(model)
    synapses, host_params, outside = _synapse_modules(model)
    problems: list[str] = []
    recipes: dict[str, tuple] = {}
    stored = zeros = 0
    for node_name, node in graph.nodes.items():
        if not isinstance(node, nir.Conv2d):
            continue
        stored += np.asarray(node.weight).size + np.asarray(node.bias).size
        metadata = node.metadata if isinstance(node.metadata, dict) else {}
        try:
            if "spikedet.recipe" in metadata:
                channels, steps = nt.parse_recipe(metadata["spikedet.recipe"])
            else:  # format 1 files: a node named after its synapse module holds its fold
                channels, steps = 0, (nt.ConvStep(node_name),)
            arrays = nc.node_arrays(nc.realize(channels, steps, lookup))
        except (KeyError, ValueError, TypeError, IndexError, SpikedetError) as err:
            problems.append(f"{node_name}: no valid recipe ({type(err).__name__}: {err})")
            continue
        same = (
            np.array_equal(node.weight, arrays.weight)
            and np.array_equal(node.bias, arrays.bias)
            and _pair_of(node.stride) == arrays.stride
            and _pair_of(node.padding) == arrays.padding
        )
        if not same:
            problems.append(f"{node_name}: differs from its recipe on the current parameters")
            continue
        zeros += arrays.structural_zeros
        recipes[node_name] = steps
    slices: dict[str, list[tuple[int, int]]] = {n: [] for n in synapses}
    with_bias: set[str] = set()
    uses: dict[str, int] = {}
    for node_name, steps in recipes.items():
        for step in steps:
            if not isinstance(step, nt.ConvStep):
                continue
            if step.where not in slices:
                problems.append(f"{node_name}: {step.where} is not a synapse module")
                continue
            slices[step.where].append((step.lo, step.hi))
            with_bias.update([step.where] if step.bias else [])
            uses[step.where] = uses.get(step.where, 0) + 1
    folded = graph_params = 0
    for name in synapses:
        info = lookup.conv(name)
        cin = info.weight.shape[1] * info.groups
        folded += info.weight.size + info.bias.size
        seen = np.zeros(cin, dtype=bool)
        for lo, hi in slices[name]:
            seen[lo : hi or cin] = True
        graph_params += int(seen.sum()) * (info.weight.size // cin)
        graph_params += info.bias.size if name in with_bias else 0
        if not seen.all() or name not in with_bias:
            problems.append(f"{name}: {int((~seen).sum())} of {cin} input channels, or the bias, "
                            "are in no node")  # fmt: skip
    if outside:
        problems.append(f"{outside} parameters outside conv/BN modules (no graph holds them)")
    return {
        "folded_params": int(folded + outside),
        "graph_params": int(graph_params),
        "covered": not problems and graph_params == folded + outside,
        "structural_zeros": int(zeros),
        "stored_params": int(stored),
        "host_params": int(host_params),
        "nodes": _node_kinds(recipes, uses),
        "problems": problems[:10],
    }


def _synapse_modules(model: nn.Module) -> tuple[dict[str, nn.Module], int, int]:
    """(synapse modules by path, parameters of host modules, parameters outside both)."""
    host = _host_prefixes(model)
    synapses: dict[str, nn.Module] = {}
    inside: set[int] = set()
    host_params = 0
    for name, module in model.named_modules():
        if host and f"{name}.".startswith(host):
            host_params += sum(p.numel() for p in module.parameters(recurse=False))
            inside.update(id(p) for p in module.parameters(recurse=False))
            continue
        conv = module if isinstance(module, nn.Conv2d) else getattr(module, "conv", None)
        if isinstance(conv, nn.Conv2d) and (conv is module or hasattr(module, "bn")):
            if id(conv.weight) not in inside:  # a ConvBN's own conv is not a second synapse
                synapses[name] = module
                inside.update(id(p) for p in module.parameters())
    outside = sum(p.numel() for p in model.parameters() if id(p) not in inside)
    return synapses, host_params, outside


def _node_kinds(recipes: dict[str, tuple], uses: dict[str, int]) -> dict[str, int]:
    kinds = {"direct": 0, "slice": 0, "embedded": 0, "composed": 0, "copies": 0}
    for steps in recipes.values():
        convs = [s for s in steps if isinstance(s, nt.ConvStep)]
        if any(not isinstance(s, nt.EmbedStep) for s in steps[1:]):
            kinds["composed"] += 1
        elif len(steps) > 1:
            kinds["embedded"] += 1
        elif convs and (convs[0].lo or convs[0].hi):
            kinds["slice"] += 1
        else:
            kinds["direct"] += 1
        kinds["copies"] += any(uses.get(s.where, 0) > 1 for s in convs)
    return kinds


def _pair_of(value: Any) -> tuple[int, int]:
    flat = np.asarray(value).reshape(-1)
    return (int(flat[0]), int(flat[0])) if flat.size == 1 else (int(flat[0]), int(flat[1]))
