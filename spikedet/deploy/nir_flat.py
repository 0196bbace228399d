"""Structure of any NIR graph (no torch): nested subgraphs flattened, edges classified.

Shared by the generic parser (``spikedet.deploy.nir_generic``) and the float executor
(``spikedet.convert.nir_torch``) so that both see the same nodes and the same recurrent edges
(docs/semantics.md §4.1):

- ``flatten``: a node that is itself a ``NIRGraph`` is replaced by its nodes, named
  ``<sub>.<node>``; an edge into the subgraph goes to the successors of its Input node, an edge
  out of it leaves from the predecessors of its Output node (a subgraph has exactly one of each;
  its Input and Output are identities and disappear). Nesting is resolved recursively.
- ``split_edges``: an iterative depth-first search from the Input nodes, children in edge
  order; an edge into a node still on the search stack closes a cycle and is *recurrent* (it
  delivers its source's output of the previous step, as nirtorch's ``GraphExecutor`` reads a
  node not yet computed in the step from the previous step's cache); every other edge is
  forward. The forward edges form a DAG (an edge to a finished node is a cross or forward
  edge), so every cycle — a self-loop or one through several populations — holds at least one
  recurrent edge and is broken there, deterministically for a given file: the edge that
  returns to the node the search entered the loop by. Every node must be reachable from an
  Input.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import nir
import numpy as np

from spikedet.errors import SpikedetError


def _name(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def flatten(graph: nir.NIRGraph, prefix: str = "") -> tuple[dict[str, Any], list[tuple[str, str]]]:
    """(nodes, edges) of ``graph`` with every nested NIRGraph inlined (module docstring)."""
    nodes: dict[str, Any] = {}
    edges: list[tuple[str, str]] = []
    entry: dict[str, list[str]] = {}  # subgraph name -> its Input's successors (flat names)
    exit_: dict[str, list[str]] = {}  # subgraph name -> its Output's predecessors
    for key, node in graph.nodes.items():
        name = f"{prefix}{_name(key)}"
        if not isinstance(node, nir.NIRGraph):
            nodes[name] = node
            continue
        sub_nodes, sub_edges = flatten(node, f"{name}.")
        ins = [n for n, v in sub_nodes.items() if isinstance(v, nir.Input)]
        outs = [n for n, v in sub_nodes.items() if isinstance(v, nir.Output)]
        if len(ins) != 1 or len(outs) != 1:
            raise SpikedetError(
                f"a nested graph needs one Input and one Output node, has {len(ins)} and "
                f"{len(outs)}",
                f"node {name}",
            )
        entry[name] = [b for a, b in sub_edges if a == ins[0]]
        exit_[name] = [a for a, b in sub_edges if b == outs[0]]
        nodes.update({n: v for n, v in sub_nodes.items() if n not in (ins[0], outs[0])})
        edges += [(a, b) for a, b in sub_edges if a != ins[0] and b != outs[0]]
        edges += [(a, b) for a in exit_[name] for b in entry[name] if (a, ins[0]) in sub_edges]
    for a, b in graph.edges:
        a, b = f"{prefix}{_name(a)}", f"{prefix}{_name(b)}"
        for src in exit_.get(a, [a]):
            for dst in entry.get(b, [b]):
                edges.append((src, dst))
    for a, b in edges:
        if a not in nodes or b not in nodes:
            missing = a if a not in nodes else b
            raise SpikedetError(f"edge {a} -> {b} names an unknown node {missing}", "NIR graph")
    if len(set(edges)) != len(edges):
        dup = next(e for e in edges if edges.count(e) > 1)
        raise SpikedetError(f"repeated edge {dup[0]} -> {dup[1]}", f"node {dup[0]}")
    return nodes, edges


def split_edges(
    names: list[str], edges: list[tuple[str, str]], inputs: list[str]
) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """(forward_in, recurrent_in): per node, the sources of its forward and recurrent edges."""
    succ: dict[str, list[str]] = {n: [] for n in names}
    for src, dst in edges:
        succ[src].append(dst)
    forward_in: dict[str, list[str]] = {n: [] for n in names}
    recurrent_in: dict[str, list[str]] = {n: [] for n in names}
    color = dict.fromkeys(names, 0)  # 0 unseen, 1 on the stack, 2 done
    for root in inputs:
        if color[root]:
            continue
        color[root] = 1
        stack = [(root, iter(succ[root]))]
        while stack:
            node, children = stack[-1]
            child = next(children, None)
            if child is None:
                color[node] = 2
                stack.pop()
                continue
            if color[child] == 1:
                recurrent_in[child].append(node)
                continue
            forward_in[child].append(node)
            if color[child] == 0:
                color[child] = 1
                stack.append((child, iter(succ[child])))
    unreachable = [n for n in names if color[n] == 0]
    if unreachable:
        raise SpikedetError(
            f"not reachable from an Input node ({len(unreachable)} nodes)", f"node {unreachable[0]}"
        )
    return forward_in, recurrent_in


def read_any(path: str | Path) -> tuple[nir.NIRGraph, str | None]:
    """``nir.read`` with type checking; a file that only fails nir's type check (e.g. an Output
    declared (1, 1, 1) after a (1,) neuron, as rockpool writes) is read without it, and the
    parser's own shape inference takes its place. Returns (graph, the type-check message)."""
    from spikedet.deploy.nir_graph import one_line
    from spikedet.nirio import read_graph

    path = Path(path)
    if not path.is_file():
        raise SpikedetError("NIR file not found", str(path))
    try:
        return read_graph(path, type_check=True), None
    except Exception as err:  # h5py, KeyError, ValueError...: retried without the type check
        checked = one_line(err)
    try:
        graph = read_graph(path, type_check=False)
    except Exception as err:
        raise SpikedetError(f"cannot read NIR file: {one_line(err)}", str(path)) from None
    if not isinstance(graph, nir.NIRGraph) or not graph.nodes:
        raise SpikedetError("file holds no NIR graph", str(path))
    return graph, checked


def shape_of(value: Any) -> tuple[int, ...]:
    """A NIR type entry (array of dims) as a tuple of ints."""
    return tuple(int(v) for v in np.asarray(value).reshape(-1))
