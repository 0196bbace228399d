"""The float graph a NIR file describes: populations, conv synapses and readouts (no integers yet).

``read_nir`` / ``from_nir`` recognise the encoding of docs/semantics.md §2 (the parser lives in
``spikedet.deploy.nir_parse``) and return a ``FloatGraph``:

- populations, in topological order: ``ilif`` (§2.2, u = β·(u − s) + α·x, s in 0..D), ``lif``
  (§2.5, hard reset, s = [u > V_th]), ``maxpool`` (§2.7b, the max-pool of the spikes of ``src``,
  no synapse of its own) and ``readout`` integrators (§2.4);
- synapses: one ``FSynapse`` per (Conv2d, target population) with the compact weight, writing
  channels ``out_offset ..`` of the target (§2.7) after a nearest ``upsample`` (§2.8).

``check_head`` validates the ``spikedet.head`` JSON a deployment decodes (``dfl`` or
``anchor``). Every problem is a SpikedetError naming the node, population or field.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nir
import numpy as np

from spikedet.errors import SpikedetError
from spikedet.nirio import read_graph

POP_KINDS = ("ilif", "lif", "maxpool", "readout")
SPIKING_KINDS = ("ilif", "lif", "maxpool")  # kinds a synapse or a max-pool may read


def _require(ok: Any, what: str, where: str) -> None:
    if not ok:
        raise SpikedetError(what, where)


def conv_output_hw(hw: tuple, kernel: tuple, stride: tuple, padding: tuple) -> tuple[int, int]:
    """Output size of a cross-correlation: floor((n + 2p - k) / s) + 1 per axis (dilation 1)."""
    h, w = ((n + 2 * p - k) // s + 1 for n, k, s, p in zip(hw, kernel, stride, padding))
    return int(h), int(w)


def _pair(value: Any) -> tuple[int, int]:
    return tuple(int(v) for v in value)  # type: ignore[return-value]


@dataclass
class FPopulation:
    """A float population.

    - ``ilif``: u = β·(u − s) + α·x, s = round(clip(u, 0, D));
    - ``lif``: u = β·u·(1 − s) + α·x, s = [u > threshold] (D = 1);
    - ``maxpool``: s = maxpool(s of ``src``) over ``pool_kernel`` / ``pool_stride`` /
      ``pool_padding`` (zero padding), D = the source's D; no synapse, β and α unused;
    - ``readout``: v = v + α·x, never leaks (``beta`` is ignored).
    """

    name: str
    kind: str
    shape: tuple[int, int, int]
    D: int = 0
    beta: float = 0.0
    alpha: float = 1.0
    threshold: float = 0.5  # lif: V_th
    src: str = ""  # maxpool: the source population
    pool_kernel: tuple[int, int] = (1, 1)
    pool_stride: tuple[int, int] = (1, 1)
    pool_padding: tuple[int, int] = (0, 0)

    def __post_init__(self) -> None:
        self.shape = tuple(int(v) for v in self.shape)  # type: ignore[assignment]
        self.pool_kernel = _pair(self.pool_kernel)
        self.pool_stride = _pair(self.pool_stride)
        self.pool_padding = _pair(self.pool_padding)
        kind, where = self.kind, f"population {self.name}"
        _require(kind in POP_KINDS, f"unknown population kind {kind!r}", where)
        _require(len(self.shape) == 3 and min(self.shape) >= 1, f"bad shape {self.shape}", where)
        levels = kind in ("ilif", "maxpool")
        _require(not levels or 1 <= int(self.D) <= 255, f"D must be in 1..255, got {self.D}", where)
        _require(kind != "lif" or int(self.D) == 1, f"a lif has D = 1, got {self.D}", where)
        decays = kind in ("ilif", "lif")
        ok = not decays or 0 <= self.beta < 1
        _require(ok, f"beta must be in [0, 1), got {self.beta}", where)
        ok = math.isfinite(self.alpha) and self.alpha > 0
        _require(ok, f"alpha must be positive and finite, got {self.alpha}", where)
        ok = kind != "lif" or math.isfinite(self.threshold)
        _require(ok, f"threshold must be finite, got {self.threshold}", where)
        if kind == "maxpool":
            _require(self.src, "a maxpool population needs its source population", where)
            ok = min(self.pool_kernel) >= 1 and min(self.pool_stride) >= 1
            ok = ok and len(self.pool_padding) == 2 and min(self.pool_padding) >= 0
            _require(ok, "pool kernel/stride must be >= 1 and padding >= 0", where)


@dataclass
class FSynapse:
    """A Conv2d (cross-correlation, torch layout) from ``src`` (population or "input") to ``dst``.

    Its output, repeated ``upsample`` x ``upsample`` (nearest), adds into channels
    ``out_offset .. out_offset + Cout - 1`` of ``dst``.
    """

    name: str
    src: str
    dst: str
    weight: np.ndarray  # float64 (Cout, Cin/groups, KH, KW), compact (only the written rows)
    bias: np.ndarray  # float64 (Cout,), added at every step
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    groups: int = 1
    out_offset: int = 0  # first destination channel written (§2.7)
    upsample: int = 1  # nearest-neighbour factor applied to the conv output (§2.8)

    def __post_init__(self) -> None:
        self.weight = np.array(self.weight, dtype=np.float64)  # a copy: never alias NIR arrays
        self.bias = np.array(self.bias, dtype=np.float64).reshape(-1)
        self.stride = _pair(self.stride)
        self.padding = _pair(self.padding)
        self.groups, self.out_offset, self.upsample = (
            int(self.groups),
            int(self.out_offset),
            int(self.upsample),
        )
        where, w = f"synapse {self.name}", self.weight
        _require(w.ndim == 4, f"conv weight must be 4-D, got {w.shape}", where)
        finite = np.all(np.isfinite(w)) and np.all(np.isfinite(self.bias))
        _require(finite, "conv weight or bias holds NaN/inf", where)
        _require(self.bias.shape == w.shape[:1], f"bias {self.bias.shape} vs {w.shape}", where)
        _require(len(self.stride) == 2 and min(self.stride) >= 1, "stride must be >= 1", where)
        _require(len(self.padding) == 2 and min(self.padding) >= 0, "padding must be >= 0", where)
        ok = self.groups >= 1 and w.shape[0] % self.groups == 0
        _require(ok, f"groups={self.groups} does not divide the output channels", where)
        ok = self.out_offset >= 0 and self.upsample >= 1
        _require(ok, f"out_offset {self.out_offset} < 0 or upsample {self.upsample} < 1", where)

    @property
    def in_channels(self) -> int:
        return int(self.weight.shape[1]) * self.groups

    def output_shape(self, src_shape: tuple[int, int, int]) -> tuple[int, int, int]:
        """(Cout, f·H', f·W') for a (C, H, W) source; SpikedetError if the channels differ."""
        what = f"conv takes {self.in_channels} input channels, its source has {src_shape[0]}"
        _require(src_shape[0] == self.in_channels, what, f"synapse {self.name}")
        kernel = self.weight.shape[2:]
        h, w = conv_output_hw(src_shape[1:], kernel, self.stride, self.padding)
        _require(min(h, w) >= 1, f"conv output is empty ({h}x{w})", f"synapse {self.name}")
        return (int(self.weight.shape[0]), h * self.upsample, w * self.upsample)


@dataclass
class FloatGraph:
    """Populations (topological order, readouts included), synapses and run parameters."""

    input_shape: tuple[int, int, int]
    input_scale: float
    T: int
    populations: list[FPopulation]
    synapses: list[FSynapse]
    head: dict = field(default_factory=dict)
    metadata: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.input_shape = tuple(int(v) for v in self.input_shape)  # type: ignore[assignment]
        shape, scale = self.input_shape, self.input_scale
        _require(len(shape) == 3 and min(shape) >= 1, f"bad input shape {shape}", "input")
        _require(math.isfinite(scale) and scale > 0, f"bad input_scale {scale}", "input")
        _require(int(self.T) >= 1, f"T must be >= 1, got {self.T}", "FloatGraph")
        order = {"input": -1}
        for i, p in enumerate(self.populations):
            _require(p.name not in order, "population names must be unique, not 'input'", p.name)
            order[p.name] = i
        for s in self.synapses:
            where = f"synapse {s.name}"
            known = s.src in order and s.dst in order and s.dst != "input"
            _require(known, f"unknown endpoint {s.src} -> {s.dst}", where)
            _require(order[s.src] < order[s.dst], "populations not in topological order", where)
            ok = s.src == "input" or self.pop(s.src).kind in SPIKING_KINDS
            _require(ok, "a readout cannot be a synapse source", where)
            dst = self.pop(s.dst)
            _require(dst.kind != "maxpool", "a maxpool population has no synapse", where)
            cout, h, w = s.output_shape(self.src_shape(s.src))
            ok = (h, w) == dst.shape[1:] and s.out_offset + cout <= dst.shape[0]
            what = f"conv output {(cout, h, w)} at channel offset {s.out_offset} does not fit"
            _require(ok, f"{what} population {dst.shape}", where)
        for p in self.populations:
            if p.kind == "maxpool":
                self._check_maxpool(p, order)
                continue
            ok = any(s.dst == p.name for s in self.synapses)
            _require(ok, "population has no incoming synapse", f"population {p.name}")

    def _check_maxpool(self, p: FPopulation, order: dict[str, int]) -> None:
        where = f"population {p.name}"
        ok = p.src in order and p.src != "input" and order[p.src] < order[p.name]
        _require(ok, f"source {p.src!r} is not an earlier population", where)
        src = self.pop(p.src)
        _require(src.kind in SPIKING_KINDS, f"source {p.src} is a {src.kind}", where)
        h, w = conv_output_hw(src.shape[1:], p.pool_kernel, p.pool_stride, p.pool_padding)
        ok = p.D == src.D and p.shape == (src.shape[0], h, w)
        what = f"max-pool of {p.src} {src.shape} (D={src.D}) is {(src.shape[0], h, w)}"
        _require(ok, f"{what}, not {p.shape} (D={p.D})", where)

    def pop(self, name: str) -> FPopulation:
        for p in self.populations:
            if p.name == name:
                return p
        raise KeyError(name)

    def src_shape(self, src: str) -> tuple[int, int, int]:
        return self.input_shape if src == "input" else self.pop(src).shape


# ---- reading ---------------------------------------------------------------------------------


def one_line(err: BaseException, limit: int = 240) -> str:
    """An exception's message on one line, at most ``limit`` characters."""
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def load_nir(path: str | Path) -> nir.NIRGraph:
    """``nir.read`` with type checking; SpikedetError naming the file on any failure.

    Read through ``spikedet.nirio.read_graph`` (nir's own constructors and type check; constant
    per-neuron arrays come back as broadcast views, so big models stay small in memory).

    nir 1.0.8 infers a depthwise conv's input channels from weight.shape[1] (the NIR groups
    caveat), so a graph holding one never type-checks; only then is the file re-read without
    the check, and from_nir's own shape checks take its place.
    """
    path = Path(path)
    _require(path.is_file(), "NIR file not found", str(path))
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
    _require(grouped, f"NIR type check failed: {one_line(checked_error)}", str(path))
    return graph


def read_nir(path: str | Path) -> FloatGraph:
    """Read a NIR file written in the §2 encoding into a FloatGraph."""
    return from_nir(load_nir(path), where=str(path))


def plain(value: Any) -> Any:
    """numpy scalars/arrays and bytes (as nir.read returns metadata) -> JSON-safe Python values."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, (np.ndarray, np.generic)):
        return plain(value.tolist())
    return value


def from_nir(graph: nir.NIRGraph, where: str = "graph") -> FloatGraph:
    """Parse a NIRGraph in the §2 encoding; SpikedetError naming the node or edge otherwise."""
    from spikedet.deploy.nir_parse import parse_graph  # it builds on the classes above

    return parse_graph(graph, where)


# ---- the head --------------------------------------------------------------------------------


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
    _require(isinstance(head, dict) and head, "graph metadata spikedet.head is missing", where)
    kind = head.get("type")
    _require(kind in ("dfl", "anchor"), f"spikedet.head type {kind!r}, not 'dfl'/'anchor'", where)
    for key in ("nc", "imgsz") + (("reg_max",) if kind == "dfl" else ()):
        ok = _positive_int(head.get(key))
        _require(ok, f"spikedet.head {key}={head.get(key)!r} is not a positive integer", where)
    size = graph.input_shape[1:]
    ok = size == (head["imgsz"], head["imgsz"])
    _require(ok, f"spikedet.head imgsz={head['imgsz']} but the input is {size}", where)
    readouts = {p.name: p for p in graph.populations if p.kind == "readout"}
    outputs, strides = head.get("outputs"), head.get("strides")
    ok = isinstance(outputs, list) and isinstance(strides, list) and len(outputs) == len(strides)
    _require(ok and outputs, "spikedet.head needs lists outputs and strides of one length", where)
    for stride in strides:
        ok = _positive_int(stride)
        _require(ok, f"spikedet.head stride {stride!r} is not a positive integer", where)
    if kind == "dfl":
        for pair in outputs:
            ok = isinstance(pair, list) and len(pair) == 2 and all(p in readouts for p in pair)
            _require(
                ok, f"spikedet.head output {pair!r} is not a [box, cls] pair of readouts", where
            )
        return
    _check_anchor_head(head, outputs, readouts, where)


def _check_anchor_head(head: dict, outputs: list, readouts: dict, where: str) -> None:
    """EMS-YOLO: one readout per stride with na·(nc + 5) raw YOLOv5 logits (§2.4)."""
    anchors = head.get("anchors")
    ok = len(outputs) == 2 and isinstance(anchors, list) and len(anchors) == 2
    _require(ok, "spikedet.head (anchor) needs 2 strides, 2 outputs and 2 anchor sets", where)
    for level in anchors:
        ok = isinstance(level, list) and len(level) == 3
        for pair in level if ok else ():
            ok = ok and isinstance(pair, list) and len(pair) == 2
            ok = ok and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in pair)
            ok = ok and all(math.isfinite(v) and v > 0 for v in pair)
        _require(ok, f"spikedet.head anchors {level!r} are not 3 positive (w, h) pairs", where)
    channels = 3 * (head["nc"] + 5)
    for name in outputs:
        ok = isinstance(name, str) and name in readouts
        _require(ok, f"spikedet.head output {name!r} is not a readout population", where)
        got = readouts[name].shape[0]
        what = f"spikedet.head output {name} has {got} channels, not na*(nc+5) = {channels}"
        _require(got == channels, what, where)
