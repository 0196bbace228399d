"""NIR graph -> FloatGraph: I-LIF populations, conv synapses and readouts, still in float.

Recognises the encoding of docs/semantics.md §2 by its structure (metadata is cross-checked,
never trusted alone): an I-LIF population ``P`` is ``P.li`` (LI) -> ``P.q1..P.qD`` (Threshold
k - 1/2) -> ``P.reset`` (Scale -beta/alpha) -> ``P.li``; a synapse is a Conv2d reading the
Input or all q nodes of one population and feeding LI / readout-I nodes; a readout is an I
node with ``spikedet.readout`` metadata feeding an Output. Anything else is a SpikedetError
naming the node.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nir
import numpy as np

from spikedet.errors import SpikedetError

DEFAULT_DT = 1e-4  # §2: every tau and r is expressed at this Euler step unless metadata says
PARAM_TOL = 1e-6  # recovered beta/alpha vs metadata, threshold offsets, reset scale
UNIFORM_RTOL = 1e-7  # per-neuron arrays must hold one value (float32 export noise allowed)
POP_KINDS = ("ilif", "readout")
FORMAT_VERSION = 1  # graph metadata spikedet.format (§2)


def _require(ok: Any, what: str, where: str) -> None:
    if not ok:
        raise SpikedetError(what, where)


def conv_output_hw(hw: tuple, kernel: tuple, stride: tuple, padding: tuple) -> tuple[int, int]:
    """Output size of a cross-correlation: floor((n + 2p - k) / s) + 1 per axis (dilation 1)."""
    h, w = ((n + 2 * p - k) // s + 1 for n, k, s, p in zip(hw, kernel, stride, padding))
    return int(h), int(w)


@dataclass
class FPopulation:
    """A float population: I-LIF (u = beta*(u - s) + alpha*x, s in 0..D) or a readout integrator
    (v = v + alpha*x, never leaks; ``beta`` is ignored for readouts)."""

    name: str
    kind: str
    shape: tuple[int, int, int]
    D: int = 0
    beta: float = 0.0
    alpha: float = 1.0

    def __post_init__(self) -> None:
        self.shape = tuple(int(v) for v in self.shape)  # type: ignore[assignment]
        where, ilif = f"population {self.name}", self.kind == "ilif"
        _require(self.kind in POP_KINDS, f"unknown population kind {self.kind!r}", where)
        _require(len(self.shape) == 3 and min(self.shape) >= 1, f"bad shape {self.shape}", where)
        _require(not ilif or 1 <= int(self.D) <= 255, f"D must be in 1..255, got {self.D}", where)
        _require(not ilif or 0 <= self.beta < 1, f"beta must be in [0, 1), got {self.beta}", where)
        ok = math.isfinite(self.alpha) and self.alpha > 0
        _require(ok, f"alpha must be positive and finite, got {self.alpha}", where)


@dataclass
class FSynapse:
    """A Conv2d (cross-correlation, torch layout) from ``src`` (population or "input") to ``dst``."""

    name: str
    src: str
    dst: str
    weight: np.ndarray  # float64 (Cout, Cin/groups, KH, KW)
    bias: np.ndarray  # float64 (Cout,), added at every step
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    groups: int = 1

    def __post_init__(self) -> None:
        self.weight = np.array(self.weight, dtype=np.float64)  # a copy: never alias NIR arrays
        self.bias = np.array(self.bias, dtype=np.float64).reshape(-1)
        self.stride = tuple(int(v) for v in self.stride)  # type: ignore[assignment]
        self.padding = tuple(int(v) for v in self.padding)  # type: ignore[assignment]
        self.groups = int(self.groups)
        where, w = f"synapse {self.name}", self.weight
        _require(w.ndim == 4, f"conv weight must be 4-D, got {w.shape}", where)
        finite = np.all(np.isfinite(w)) and np.all(np.isfinite(self.bias))
        _require(finite, "conv weight or bias holds NaN/inf", where)
        _require(self.bias.shape == w.shape[:1], f"bias {self.bias.shape} vs {w.shape}", where)
        _require(len(self.stride) == 2 and min(self.stride) >= 1, "stride must be >= 1", where)
        _require(len(self.padding) == 2 and min(self.padding) >= 0, "padding must be >= 0", where)
        ok = self.groups >= 1 and w.shape[0] % self.groups == 0
        _require(ok, f"groups={self.groups} does not divide the output channels", where)

    @property
    def in_channels(self) -> int:
        return int(self.weight.shape[1]) * self.groups

    def output_shape(self, src_shape: tuple[int, int, int]) -> tuple[int, int, int]:
        """(Cout, H', W') for a source of shape (C, H, W); SpikedetError if channels differ."""
        what = f"conv takes {self.in_channels} input channels, its source has {src_shape[0]}"
        _require(src_shape[0] == self.in_channels, what, f"synapse {self.name}")
        kernel = self.weight.shape[2:]
        h, w = conv_output_hw(src_shape[1:], kernel, self.stride, self.padding)
        _require(min(h, w) >= 1, f"conv output is empty ({h}x{w})", f"synapse {self.name}")
        return (int(self.weight.shape[0]), h, w)


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
            ok = s.src == "input" or self.pop(s.src).kind == "ilif"
            _require(ok, "a readout cannot be a synapse source", where)
            out, want = s.output_shape(self.src_shape(s.src)), self.pop(s.dst).shape
            _require(out == want, f"conv output {out} does not match population {want}", where)
        for p in self.populations:
            ok = any(s.dst == p.name for s in self.synapses)
            _require(ok, "population has no incoming synapse", f"population {p.name}")

    def pop(self, name: str) -> FPopulation:
        for p in self.populations:
            if p.name == name:
                return p
        raise KeyError(name)

    def src_shape(self, src: str) -> tuple[int, int, int]:
        return self.input_shape if src == "input" else self.pop(src).shape


# ---- reading ---------------------------------------------------------------------------------


def _one_line(err: BaseException, limit: int = 240) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def load_nir(path: str | Path) -> nir.NIRGraph:
    """``nir.read`` with type checking; SpikedetError naming the file on any failure.

    nir 1.0.8 infers a depthwise conv's input channels from weight.shape[1] (the NIR groups
    caveat), so a graph holding one never type-checks; only then is the file re-read without
    the check, and from_nir's own shape checks take its place.
    """
    path = Path(path)
    _require(path.is_file(), "NIR file not found", str(path))
    try:
        return nir.read(path, type_check=True)
    except Exception as err:  # h5py, KeyError, ValueError... all mean "not a usable NIR file"
        checked_error = err
    try:
        graph = nir.read(path, type_check=False)
    except Exception as err:
        raise SpikedetError(f"cannot read NIR file: {_one_line(err)}", str(path)) from None
    nodes = graph.nodes.values() if isinstance(graph, nir.NIRGraph) else ()
    grouped = any(type(n) is nir.Conv2d and int(np.asarray(n.groups)) > 1 for n in nodes)
    _require(grouped, f"NIR type check failed: {_one_line(checked_error)}", str(path))
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
    return _Parser(graph, where).parse()


_KNOWN_TYPES = (nir.Input, nir.Output, nir.Conv2d, nir.LI, nir.Threshold, nir.Scale, nir.I)


class _Parser:
    """One pass over a NIRGraph; keeps the adjacency and the node -> population maps."""

    def __init__(self, graph: nir.NIRGraph, where: str):
        self.where = where
        ok = isinstance(graph, nir.NIRGraph)
        _require(ok, f"expected a NIRGraph, got {type(graph).__name__}", where)
        self.nodes: dict[str, Any] = {str(k): v for k, v in graph.nodes.items()}
        self.meta = plain(graph.metadata if isinstance(graph.metadata, dict) else {})
        for n, node in self.nodes.items():
            self.need(type(node) in _KNOWN_TYPES, f"unsupported NIR node type {self.kind(n)}", n)
        self.preds: dict[str, list[str]] = {n: [] for n in self.nodes}
        self.succs: dict[str, list[str]] = {n: [] for n in self.nodes}
        for edge in graph.edges:
            a, b = (e.decode() if isinstance(e, bytes) else str(e) for e in edge)
            self.need(a in self.nodes and b in self.nodes, f"edge {a} -> {b}: unknown node")
            self.need(a != b and b not in self.succs[a], f"repeated edge {a} -> {b}", a)
            self.preds[b].append(a)
            self.succs[a].append(b)
        self.owner: dict[str, str] = {}  # q / reset node -> population name
        self.q_nodes: dict[str, list[str]] = {}  # population -> its q nodes, by bit k
        self.pops: dict[str, FPopulation] = {}
        self.pop_of_node: dict[str, str] = {}  # LI / I node -> population (synapse targets)

    def need(self, ok: Any, what: str, node: str | None = None) -> None:
        _require(ok, what, f"{self.where}: node {node}" if node else self.where)

    def kind(self, name: str) -> str:
        return type(self.nodes[name]).__name__

    def uniform(self, value: Any, what: str, n: str) -> tuple[float, tuple[int, ...]]:
        """The one value of a per-neuron array (Loihi/Lava take one decay per population)."""
        arr = np.asarray(value, dtype=np.float64)
        self.need(arr.size and np.all(np.isfinite(arr)), f"{what} is empty or not finite", n)
        lo, hi = float(arr.min()), float(arr.max())
        msg = f"{what} varies across neurons ({lo:.6g}..{hi:.6g}); one value per population needed"
        self.need(hi - lo <= UNIFORM_RTOL * max(1.0, abs(hi)), msg, n)
        return hi, tuple(int(v) for v in arr.shape)

    def parse(self) -> FloatGraph:
        meta, need = self.meta, self.need
        self.dt = float(meta.get("dt", DEFAULT_DT))
        need(math.isfinite(self.dt) and self.dt > 0, f"metadata dt={self.dt} is not > 0")
        need("spikedet.T" in meta, "graph metadata spikedet.T (logical steps) is missing")
        version = meta.get("spikedet.format", FORMAT_VERSION)
        ok = isinstance(version, int) and 1 <= version <= FORMAT_VERSION
        need(ok, f"metadata spikedet.format={version!r}; this reader knows 1..{FORMAT_VERSION}")
        head = meta.get("spikedet.head", {})
        try:
            head = json.loads(head) if isinstance(head, str) and head.strip() else head or {}
        except json.JSONDecodeError as err:
            need(False, f"metadata spikedet.head is not JSON: {_one_line(err)}")
        inputs = [n for n in self.nodes if self.kind(n) == "Input"]
        need(len(inputs) == 1, f"the graph needs exactly one Input node, found {len(inputs)}")
        self.input_name = inputs[0]
        shape = np.asarray(self.nodes[self.input_name].input_type["input"]).ravel()
        self.input_shape = tuple(int(v) for v in shape)
        need(len(shape) == 3, f"input shape must be (C, H, W), got {shape}", self.input_name)
        for kind, parse in (("LI", self.parse_ilif), ("I", self.parse_readout)):
            for n in [n for n in self.nodes if self.kind(n) == kind]:
                parse(n)
        for n in self.nodes:
            loose = self.kind(n) in ("Threshold", "Scale") and n not in self.owner
            need(not loose, f"{self.kind(n)} node is not part of an I-LIF population", n)
            for p in self.preds[n] if self.kind(n) == "Output" else []:
                need(p in self.pops, f"Output is fed by {p} ({self.kind(p)}), not a readout", n)
        for n in self.succs[self.input_name]:
            need(self.kind(n) == "Conv2d", f"Input feeds {n} ({self.kind(n)}), not a conv", n)
        synapses = [s for n in self.nodes if self.kind(n) == "Conv2d" for s in self.parse_conv(n)]
        order = self.topological(synapses)
        try:
            return FloatGraph(
                input_shape=self.input_shape,
                input_scale=float(meta.get("spikedet.input_scale", 1.0)),
                T=int(meta["spikedet.T"]),
                populations=[self.pops[p] for p in order],
                synapses=synapses,
                head=head if isinstance(head, dict) else {"value": head},
                metadata=meta,
            )
        except SpikedetError as err:
            raise SpikedetError(err.what, f"{self.where}: {err.where}") from None

    def topological(self, synapses: list[FSynapse]) -> list[str]:
        """Kahn's order over populations (ties in node order); any cycle is an error."""
        indeg = {p: sum(s.dst == p and s.src != "input" for s in synapses) for p in self.pops}
        ready = [p for p in self.pops if indeg[p] == 0]
        order: list[str] = []
        while ready:
            order.append(ready.pop(0))
            for s in synapses:
                if s.src == order[-1]:
                    indeg[s.dst] -= 1
                    ready += [s.dst] if indeg[s.dst] == 0 else []
        stuck = [p for p in self.pops if p not in order]
        while stuck:  # peel off what only lies downstream of a cycle; what is left loops
            ends = [p for p in stuck if not any(s.src == p and s.dst in stuck for s in synapses)]
            node = next(n for n, p in self.pop_of_node.items() if p == stuck[0])
            self.need(ends, f"cycle through {', '.join(stuck)} (only resets may loop)", node)
            stuck = [p for p in stuck if p not in ends]
        return order

    def parse_ilif(self, n: str) -> None:
        """P.li -> P.q1..qD (thresholds k - 1/2) -> P.reset (Scale -beta/alpha) -> P.li (§2.2)."""
        li, need = self.nodes[n], self.need
        meta = plain(li.metadata or {})
        need(meta.get("spikedet.neuron") == "ilif", "LI without spikedet.neuron='ilif'", n)
        tau, shape = self.uniform(li.tau, "tau", n)
        r, r_shape = self.uniform(li.r, "r", n)
        need(len(shape) == 3 and r_shape == shape, f"tau/r shapes {shape}/{r_shape}", n)
        need(not np.any(np.asarray(li.v_leak) != 0), "v_leak must be 0", n)
        # tau = dt/(1 - beta), r = alpha/(1 - beta)  =>  beta = 1 - dt/tau, alpha = r*dt/tau
        beta = 1.0 - self.dt / tau if tau > 0 else -1.0
        beta = 0.0 if abs(beta) < 1e-12 else beta
        alpha = r * self.dt / tau if tau > 0 else 0.0
        msg = f"tau={tau:.6g}, r={r:.6g} give beta={beta:.6g}, alpha={alpha:.6g}: out of range"
        need(0 <= beta < 1 and alpha > 0, msg, n)
        for key, got in (("beta", beta), ("alpha", alpha)):
            ok = key not in meta or abs(float(meta[key]) - got) <= PARAM_TOL
            need(ok, f"metadata {key}={meta.get(key)} disagrees with tau/r/dt ({got:.9g})", n)
        # consistent metadata holds the trained values exactly (tau and r may be float32)
        beta, alpha = float(meta.get("beta", beta)), float(meta.get("alpha", alpha))
        D = len(self.succs[n])
        need(D, "LI node has no Threshold nodes", n)
        by_bit: dict[int, str] = {}
        for q in self.succs[n]:
            need(self.kind(q) == "Threshold", f"LI feeds {q} ({self.kind(q)}), not a Threshold", n)
            need(self.preds[q] == [n], f"Threshold must read only {n}", q)
            thr, thr_shape = self.uniform(self.nodes[q].threshold, "threshold", q)
            k = round(thr + 0.5)
            bit = plain(self.nodes[q].metadata or {}).get("spikedet.bit", k)
            ok = thr_shape == shape and abs(thr - (k - 0.5)) <= PARAM_TOL and 1 <= k <= D
            msg = f"threshold {thr:.6g} (shape {thr_shape}, bit {bit}) is not k - 0.5, k in 1..{D}"
            need(ok and int(bit) == k and k not in by_bit, msg, q)
            by_bit[k] = q
        need(int(meta.get("D", D)) == D, f"metadata D={meta.get('D')} but {D} Thresholds", n)
        qs = [by_bit[k] for k in range(1, D + 1)]
        resets = sorted({s for q in qs for s in self.succs[q] if self.kind(s) == "Scale"})
        need(len(resets) == 1, f"needs one reset Scale fed by its Thresholds, has {len(resets)}", n)
        reset = resets[0]
        ok = sorted(self.preds[reset]) == sorted(qs) and self.succs[reset] == [n]
        need(ok, f"reset must be fed by all of {', '.join(qs)} and feed only {n}", reset)
        scale, scale_shape = self.uniform(self.nodes[reset].scale, "scale", reset)
        ok = scale_shape in ((), (1,), shape)
        ok = ok and abs(scale + beta / alpha) <= PARAM_TOL * max(1.0, beta / alpha)
        need(ok, f"reset scale {scale:.6g} {scale_shape} is not -beta/alpha", reset)
        for p in self.preds[n]:
            ok = p == reset or self.kind(p) == "Conv2d"
            need(ok, f"LI is fed by {p} ({self.kind(p)}); only convs and the reset may", n)
        for q in qs:
            for s in self.succs[q]:
                ok = s == reset or self.kind(s) == "Conv2d"
                need(ok, f"Threshold feeds {s} ({self.kind(s)}); only convs/the reset may", q)
        pop = n[: -len(".li")] if n.endswith(".li") else n
        self.owner.update({m: pop for m in (reset, *qs)})
        self.q_nodes[pop] = qs
        self.add_pop(FPopulation(pop, "ilif", shape, D=D, beta=beta, alpha=alpha), n)

    def parse_readout(self, n: str) -> None:
        """An I node with spikedet.readout metadata, fed by convs, feeding Outputs (§2.4)."""
        need, outs = self.need, self.succs[n]
        meta = plain(self.nodes[n].metadata or {})
        need("spikedet.readout" in meta, "I node without metadata spikedet.readout", n)
        r, shape = self.uniform(self.nodes[n].r, "r", n)
        need(len(shape) == 3, f"r must have shape (C, H, W), got {shape}", n)
        need(outs and all(self.kind(s) == "Output" for s in outs), "must feed Outputs only", n)
        for p in self.preds[n]:
            need(self.kind(p) == "Conv2d", f"readout fed by {p} ({self.kind(p)}), not a conv", n)
        # v_t = v_{t-1} + r*dt*I_t: r = 1/dt gives alpha = 1; readouts never leak (beta = 1).
        self.add_pop(FPopulation(n, "readout", shape, beta=1.0, alpha=r * self.dt), n)

    def add_pop(self, pop: FPopulation, n: str) -> None:
        free = pop.name not in self.pops and pop.name != "input"
        self.need(free, f"population name {pop.name!r} is used twice or is 'input'", n)
        self.pops[pop.name] = pop
        self.pop_of_node[n] = pop.name

    def parse_conv(self, n: str) -> list[FSynapse]:
        """One FSynapse per (conv, target LI or readout I); shapes checked against both ends."""
        node, need = self.nodes[n], self.need
        weight = np.asarray(node.weight, dtype=np.float64)
        need(weight.ndim == 4, f"Conv2d weight must be 4-D, got {weight.shape}", n)
        need(np.all(np.asarray(node.dilation) == 1), f"dilation {node.dilation} unsupported", n)
        stride = tuple(int(v) for v in np.broadcast_to(np.asarray(node.stride), (2,)))
        padding = node.padding
        if isinstance(padding, str):  # 'same' keeps the size only at stride 1 with odd kernels
            odd = weight.shape[2] % 2 and weight.shape[3] % 2
            need(padding == "valid" or (stride == (1, 1) and odd), "bad padding 'same'", n)
            padding = (0, 0) if padding == "valid" else (weight.shape[2] // 2, weight.shape[3] // 2)
        pad = tuple(int(v) for v in np.broadcast_to(np.asarray(padding), (2,)))
        groups = int(np.asarray(node.groups))
        meta = plain(node.metadata or {})
        if groups == 1 and int(meta.get("spikedet.groups", 1)) > 1:
            groups = int(meta["spikedet.groups"])
            weight = self.regroup(weight, groups, n)
        bias = np.asarray(0.0 if node.bias is None else node.bias)
        ok = bias.ndim == 0 or bias.shape == weight.shape[:1]
        need(ok, f"bias shape {bias.shape} does not match {weight.shape[0]} output channels", n)
        bias = np.broadcast_to(bias, weight.shape[:1])
        cin = weight.shape[1] * groups
        meta_cin = meta.get("spikedet.in_channels", cin)
        need(int(meta_cin) == cin, f"spikedet.in_channels={meta_cin}, weight gives {cin}", n)
        src = self.conv_source(n)
        src_shape = self.input_shape if src == "input" else self.pops[src].shape
        given = None if node.input_shape is None else tuple(np.asarray(node.input_shape).ravel())
        ok = given in (None, tuple(src_shape[1:]))
        need(ok, f"input_shape {given} differs from its source {src} {src_shape[1:]}", n)
        need(self.succs[n], "conv output feeds nothing", n)
        synapses = []
        for target in self.succs[n]:
            ok = target in self.pop_of_node
            need(ok, f"conv feeds {target} ({self.kind(target)}), not an LI or a readout", n)
            dst = self.pop_of_node[target]
            try:
                syn = FSynapse(f"{n}->{dst}", src, dst, weight, bias, stride, pad, groups)
                out = syn.output_shape(src_shape)
            except SpikedetError as err:
                raise SpikedetError(err.what, f"{self.where}: node {n}") from None
            want = self.pops[dst].shape
            need(out == want, f"edge {n} -> {target}: output {out} != population {want}", n)
            synapses.append(syn)
        return synapses

    def regroup(self, weight: np.ndarray, groups: int, n: str) -> np.ndarray:
        """A grouped conv the exporter wrote as its full equivalent (zeros between groups, since
        nir 1.0.8 cannot read grouped convs back) -> the grouped weight (Cout, Cin/g, KH, KW)."""
        cout, cin = weight.shape[:2]
        self.need(cout % groups == 0 and cin % groups == 0, f"{groups} groups do not divide", n)
        rows, cols = cout // groups, cin // groups
        inside = np.zeros(weight.shape, dtype=bool)
        for g in range(groups):
            inside[g * rows : (g + 1) * rows, g * cols : (g + 1) * cols] = True
        ok = not np.any(weight[~inside])
        self.need(ok, f"spikedet.groups={groups} but weights lie outside the groups", n)
        blocks = [
            weight[g * rows : (g + 1) * rows, g * cols : (g + 1) * cols] for g in range(groups)
        ]
        return np.concatenate(blocks, axis=0)

    def conv_source(self, n: str) -> str:
        """'input' for a conv reading the Input, else the population whose q nodes ALL feed it."""
        preds = self.preds[n]
        if preds == [self.input_name]:
            return "input"
        for p in preds:
            ok = p in self.owner and self.kind(p) == "Threshold"
            self.need(ok, f"conv is fed by {p} ({self.kind(p)}), not Input or Thresholds", n)
        pops = sorted({self.owner[p] for p in preds})
        what = f"conv reads {len(pops)} populations ({', '.join(pops)}); sums before a conv"
        self.need(len(pops) == 1, what + " are not supported", n)
        qs = self.q_nodes[pops[0]]
        what = f"conv is fed by {len(preds)} of the {len(qs)} Threshold nodes of {pops[0]}"
        self.need(sorted(preds) == sorted(qs), what + "; it must read all of them", n)
        return pops[0]


def check_head(graph: FloatGraph, where: str) -> None:
    """The §2.4 ``spikedet.head`` a deployment decodes: type ``dfl``, positive integer ``nc``,
    ``reg_max`` and ``imgsz`` (= the input's H and W), and one positive stride per
    ``[box, cls]`` pair of readout population names."""
    head = graph.head
    _require(isinstance(head, dict) and head, "graph metadata spikedet.head is missing", where)
    _require(
        head.get("type") == "dfl", f"spikedet.head type {head.get('type')!r}, not 'dfl'", where
    )
    for key in ("nc", "reg_max", "imgsz"):
        ok = isinstance(head.get(key), int) and not isinstance(head[key], bool) and head[key] >= 1
        _require(ok, f"spikedet.head {key}={head.get(key)!r} is not a positive integer", where)
    size = graph.input_shape[1:]
    ok = size == (head["imgsz"], head["imgsz"])
    _require(ok, f"spikedet.head imgsz={head['imgsz']} but the input is {size}", where)
    readouts = {p.name for p in graph.populations if p.kind == "readout"}
    outputs, strides = head.get("outputs"), head.get("strides")
    ok = isinstance(outputs, list) and isinstance(strides, list) and len(outputs) == len(strides)
    _require(ok and outputs, "spikedet.head needs lists outputs and strides of one length", where)
    for pair, stride in zip(outputs, strides):
        ok = isinstance(pair, list) and len(pair) == 2 and all(p in readouts for p in pair)
        _require(ok, f"spikedet.head output {pair!r} is not a [box, cls] pair of readouts", where)
        ok = isinstance(stride, int) and not isinstance(stride, bool) and stride >= 1
        _require(ok, f"spikedet.head stride {stride!r} is not a positive integer", where)
