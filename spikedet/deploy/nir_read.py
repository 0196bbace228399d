"""Reading a NIR file into a ``FloatGraph`` (docs/semantics.md §2) and checking the detection
head a deployment decodes.

``load_nir`` reads the file with nir's own constructors, ``from_nir`` parses the graph
(``spikedet.deploy.nir_parse``), and ``check_head`` validates the ``spikedet.head`` JSON
(``dfl`` or ``anchor``). Every problem is a SpikedetError naming the file, node or field.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import nir
import numpy as np

from spikedet.deploy.nir_graph import FloatGraph, one_line, require
from spikedet.deploy.nir_parse import parse_graph
from spikedet.errors import SpikedetError
from spikedet.nirio import read_graph


def load_nir(path: str | Path) -> nir.NIRGraph:
    """``nir.read`` with type checking; SpikedetError naming the file on any failure.

    Read through ``spikedet.nirio.read_graph`` (nir's own constructors and type check; constant
    per-neuron arrays come back as broadcast views, so big models stay small in memory).

    nir 1.0.8 infers a depthwise conv's input channels from weight.shape[1] (the NIR groups
    caveat), so a graph holding one never type-checks; only then is the file re-read without
    the check, and from_nir's own shape checks take its place.
    """
    path = Path(path)
    require(path.is_file(), "NIR file not found", str(path))
    try:
        return read_graph(path, type_check=True)
    except Exception as err:  # h5py, KeyError, ValueError... all mean "not a usable NIR file"
        checked_error = err
    try:
        graph = read_graph(path, type_check=False)
    except Exception as err:
        raise SpikedetError(f"cannot read NIR file: {one_line(err)}", str(path)) from None
    nodes = graph.nodes.values() if isinstance(graph, nir.NIRGraph) else ()
    grouped = any(type(n) is nir.Conv2d and int(np.asarray(n.groups)) > 1 for n in nodes)
    require(grouped, f"NIR type check failed: {one_line(checked_error)}", str(path))
    return graph


def read_nir(path: str | Path) -> FloatGraph:
    """Read a NIR file written in the §2 encoding into a FloatGraph."""
    return from_nir(load_nir(path), where=str(path))


def from_nir(graph: nir.NIRGraph, where: str = "graph") -> FloatGraph:
    """Parse a NIRGraph in the §2 encoding; SpikedetError naming the node or edge otherwise."""
    return parse_graph(graph, where)


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def check_head(graph: FloatGraph, where: str) -> None:
    """The §2.4 ``spikedet.head`` a deployment decodes.

    Both types: positive integers ``nc`` and ``imgsz`` (= the input's H and W), ``outputs`` and
    ``strides`` lists of one length with positive integer strides.
    ``dfl``: positive ``reg_max``, each output a ``[box, cls]`` pair of readout populations.
    ``anchor``: 2 strides, ``anchors`` = 2 x 3 positive (w, h) pairs, each output one readout
    population of na·(nc + 5) channels.
    """
    head = graph.head
    require(isinstance(head, dict) and head, "graph metadata spikedet.head is missing", where)
    kind = head.get("type")
    require(kind in ("dfl", "anchor"), f"spikedet.head type {kind!r}, not 'dfl'/'anchor'", where)
    for key in ("nc", "imgsz") + (("reg_max",) if kind == "dfl" else ()):
        ok = _positive_int(head.get(key))
        require(ok, f"spikedet.head {key}={head.get(key)!r} is not a positive integer", where)
    size = graph.input_shape[1:]
    ok = size == (head["imgsz"], head["imgsz"])
    require(ok, f"spikedet.head imgsz={head['imgsz']} but the input is {size}", where)
    readouts = {p.name: p for p in graph.populations if p.kind == "readout"}
    outputs, strides = head.get("outputs"), head.get("strides")
    ok = isinstance(outputs, list) and isinstance(strides, list) and len(outputs) == len(strides)
    require(ok and outputs, "spikedet.head needs lists outputs and strides of one length", where)
    for stride in strides:
        ok = _positive_int(stride)
        require(ok, f"spikedet.head stride {stride!r} is not a positive integer", where)
    if kind == "dfl":
        for pair in outputs:
            ok = isinstance(pair, list) and len(pair) == 2 and all(p in readouts for p in pair)
            require(
                ok, f"spikedet.head output {pair!r} is not a [box, cls] pair of readouts", where
            )
        return
    _check_anchor_head(head, outputs, readouts, where)


def _check_anchor_head(head: dict, outputs: list, readouts: dict, where: str) -> None:
    """EMS-YOLO: one readout per stride with na·(nc + 5) raw YOLOv5 logits (§2.4)."""
    anchors = head.get("anchors")
    ok = len(outputs) == 2 and isinstance(anchors, list) and len(anchors) == 2
    require(ok, "spikedet.head (anchor) needs 2 strides, 2 outputs and 2 anchor sets", where)
    for level in anchors:
        ok = isinstance(level, list) and len(level) == 3
        for pair in level if ok else ():
            ok = ok and isinstance(pair, list) and len(pair) == 2
            ok = ok and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in pair)
            ok = ok and all(math.isfinite(v) and v > 0 for v in pair)
        require(ok, f"spikedet.head anchors {level!r} are not 3 positive (w, h) pairs", where)
    channels = 3 * (head["nc"] + 5)
    for name in outputs:
        ok = isinstance(name, str) and name in readouts
        require(ok, f"spikedet.head output {name!r} is not a readout population", where)
        got = readouts[name].shape[0]
        what = f"spikedet.head output {name} has {got} channels, not na*(nc+5) = {channels}"
        require(got == channels, what, where)
