"""``NodeWriter``: the NIR nodes and edges of a graph being exported, one node per distinct term.

Materialising a term (``nir_terms.Term``) gives one ``Conv2d`` node (its folded recipe, named
``<conv>``, ``<conv>#k`` or ``<base>@<map>@...``), followed by a ``<conv>.up2`` node when the term
is upsampled, or the §2.8 ``max_pool`` node of an identity term; equal terms share their nodes.
``NIRBuilder`` (``nir_builder``) builds on it with the tracing API a model's ``trace`` calls.
"""

from __future__ import annotations

import json
from typing import Any

import nir
import numpy as np

from spikedet.convert import nir_compose as nc
from spikedet.convert import nir_terms as nt
from spikedet.convert.nir_format import MAX_POOL_OP, UPSAMPLE_OP
from spikedet.errors import SpikedetError

INPUT_NODE = "input"


class NodeWriter:
    """Nodes, edges and their bookkeeping. ``factors``: module paths that appear in some conv
    node's recipe; ``extensions``: the §2.8 ops used; ``conv_shapes``: conv node -> output
    (C, H, W)."""

    def __init__(self, lookup: nt.ModuleLookup, input_shape: tuple[int, int, int]):
        self.lookup = lookup
        self.nodes: dict[str, nir.NIRNode] = {
            INPUT_NODE: nir.Input(input_type=np.array(input_shape))
        }
        self.edges: list[tuple[str, str]] = []
        self._edge_set: set[tuple[str, str]] = set()
        self.conv_shapes: dict[str, tuple[int, int, int]] = {}
        self.factors: set[str] = set()
        self.extensions: set[str] = set()
        self._node_of_term: dict[Any, str] = {}
        self._key_of_node: dict[str, Any] = {}

    def _materialize(self, term: nt.Term) -> str:
        """The node whose output is ``term`` (created on first use; equal terms share it)."""
        node = self._node_of_term.get(term)
        if node is not None:
            return node
        if term.identity:
            node = self._max_pool_node(term)
        else:
            node = self._conv_node(term)
            if term.up > 1:
                conv_node, node = node, f"{node}.up{term.up}"
                c, h, w = self.conv_shapes[conv_node]
                self._add_node(node, nir.SumPool2d(
                    np.array([1, 1]), np.array([1, 1]), np.array([h // 2, w // 2]),
                    metadata={"spikedet.op": UPSAMPLE_OP, "spikedet.scale": term.up},
                ), term)  # fmt: skip
                self._add_edge(conv_node, node)
                self.extensions.add(UPSAMPLE_OP)
        self._node_of_term[term] = node
        return node

    def _conv_node(self, term: nt.Term) -> str:
        conv_key = ("conv", term.source, term.steps)
        node = self._node_of_term.get(conv_key)
        if node is not None:
            return node
        source, steps = term.source, term.steps
        name = nt.node_name(source, steps)
        if source.kind == "max_pool":  # §2.9: a conv reading the max_pool node itself
            feeds: tuple[str, ...] = (self._max_pool_node(nt.Term(source, (), source.shape)),)
        else:
            feeds = source.nodes
        arrays = nc.node_arrays(nc.realize(source.shape[0], steps, self.lookup))
        metadata = {**arrays.metadata, "spikedet.recipe": nt.recipe_json(source, steps)}
        conv = nir.Conv2d(
            input_shape=source.shape[1:], weight=arrays.weight, stride=arrays.stride,
            padding=arrays.padding, dilation=(1, 1), groups=1, bias=arrays.bias,
            metadata=metadata,
        )  # fmt: skip
        self._add_node(name, conv, conv_key)
        for feed in feeds:
            self._add_edge(feed, name)
        shape = tuple(int(v) for v in conv.output_type["output"])
        expected = (
            term.shape if term.up == 1 else (term.shape[0], *(v // 2 for v in term.shape[1:]))
        )
        if shape != tuple(expected):
            raise SpikedetError(f"conv node has shape {shape}, its term {expected}", name)
        self.conv_shapes[name] = shape
        self.factors.update(s.where for s in steps if not isinstance(s, nt.EmbedStep))
        self._node_of_term[conv_key] = name
        return name

    def _max_pool_node(self, term: nt.Term) -> str:
        """The §2.8 ``max_pool`` node of an identity term: the pooled current's input terms,
        each with the term's embeddings (max pooling is per channel, and an all-zero channel
        stays zero), feed a SumPool2d marked ``spikedet.op = max_pool``."""
        source, embeds = term.source, term.steps
        key = ("max_pool", source, embeds)
        node = self._node_of_term.get(key)
        if node is not None:
            return node
        name = source.name + "".join(f"@{s.where}" for s in embeds)
        pool = nir.SumPool2d(
            np.array(source.kernel), np.array(source.stride), np.array(source.padding),
            metadata={"spikedet.op": MAX_POOL_OP, "spikedet.kernel": list(source.kernel),
                      "spikedet.stride": list(source.stride),
                      "spikedet.padding": list(source.padding)},
        )  # fmt: skip
        self._add_node(name, pool, key)
        self.extensions.add(MAX_POOL_OP)
        for inner in source.inputs:
            embedded = self._term(inner.source, inner.steps + embeds, name, inner.up)
            self._add_edge(self._materialize(embedded), name)
        self._node_of_term[key] = name
        return name

    def _term(self, source: nt.Source, steps: tuple, where: str, up: int = 1) -> nt.Term:
        """A term with its shape computed (and the geometry checked) step by step."""
        try:
            shape = nt.term_shape(source.shape, tuple(steps), up, self.lookup)
        except ValueError as err:
            raise SpikedetError(f"cannot export: {err}", where) from err
        if min(shape) < 1:
            raise SpikedetError(f"the map leaves an empty {shape} output", where)
        return nt.Term(source, tuple(steps), shape, up)

    def _add_node(self, name: str, node: nir.NIRNode, key: Any = None) -> None:
        if name in self.nodes:
            what = "node traced twice (each module may appear once)"
            if key is not None and self._key_of_node.get(name) != key:
                what = "two different synapses would get the same node name"
            raise SpikedetError(what, name)
        self.nodes[name] = node
        self._key_of_node[name] = key

    def _add_unit(self, nodes: dict[str, nir.NIRNode], edges: list[tuple[str, str]]) -> None:
        for name, node in nodes.items():
            self._add_node(name, node)
        for src, dst in edges:
            self._add_edge(src, dst)

    def _add_edge(self, src: str, dst: str) -> None:
        if (src, dst) in self._edge_set:
            raise SpikedetError(f"edge from {src} added twice", dst)
        self._edge_set.add((src, dst))
        self.edges.append((src, dst))


def extensions_json(writer: NodeWriter) -> str:
    """Graph metadata ``spikedet.extensions``: the sorted §2.8 ops the graph uses."""
    return json.dumps(sorted(writer.extensions))
