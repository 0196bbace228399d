"""Any NIR graph (written by snnTorch, norse, sinabs, rockpool, ...) -> FloatGraph (no torch).

docs/semantics.md §4. Populations are the neuron nodes (LIF, IF, I, LI, CubaLIF, CubaLI,
Threshold); every other node between two neurons (or the Input and a neuron) is linear and is
composed, path by path, into one conv synapse (``spikedet.deploy.nir_linear``). A path's *lag* is the number of
recurrent edges on it (each delivers the previous step, ``nir_flat.split_edges``) plus its
``Delay`` nodes' delays in steps of dt. The file cannot say dt or the reset mode: they come in
``Conventions`` (``--dt``, ``--reset``) and every assumed value is listed in
``Conventions.assumed`` so the caller can warn once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import nir
import numpy as np

from spikedet.deploy.nir_flat import flatten, shape_of, split_edges
from spikedet.deploy.nir_graph import FloatGraph, FPopulation, FSynapse, plain
from spikedet.deploy.nir_linear import LinConv, as_map, compose, identity, primitive
from spikedet.errors import SpikedetError

DEFAULT_DT = 1e-4  # s: snnTorch's export step and the NIR->Lava script's default
RESETS = ("zero", "subtract")
NEURONS = ("LIF", "IF", "I", "LI", "CubaLIF", "CubaLI", "Threshold")
LINEAR = ("Affine", "Linear", "Scale", "Conv1d", "Conv2d", "SumPool2d", "AvgPool2d", "Flatten")
KNOWN = (*NEURONS, *LINEAR, "Delay", "Input", "Output")
UNIFORM_RTOL = 1e-6


@dataclass
class Conventions:
    """What the file does not say: dt (s), the reset mode, the input scale (x_int = x·scale)."""

    dt: float | None = None
    reset: str | None = None
    input_scale: float | None = None
    data_dt: float | None = None  # dt of a NIR data input file, used when nothing else says
    assumed: list[str] = field(default_factory=list)

    def resolve(self, metadata: dict) -> None:
        """Fill dt / reset / input_scale from the options, then graph metadata, else assume."""
        if self.dt is None and "dt" in metadata:
            self.dt = float(np.asarray(metadata["dt"]).reshape(-1)[0])
        if self.dt is None and self.data_dt is not None:
            self.dt = float(self.data_dt)
            self.assumed.append(f"dt = {self.dt:g} s from the input data file")
        if self.dt is None:
            self.dt = DEFAULT_DT
            self.assumed.append(f"dt = {DEFAULT_DT:g} s (the graph has none; pass --dt)")
        ok = math.isfinite(self.dt) and self.dt > 0
        if not ok:
            raise SpikedetError(f"dt={self.dt} must be a positive number of seconds", "--dt")
        if self.reset is None and "spikedet.reset" in metadata:
            self.reset = str(plain(metadata["spikedet.reset"]))
        if self.reset is None:
            self.reset = "zero"
            self.assumed.append("reset = zero, to v_reset (the file cannot tell; pass --reset)")
        if self.reset not in RESETS:
            raise SpikedetError(f"reset {self.reset!r} is not one of {RESETS}", "--reset")
        if self.input_scale is None and "spikedet.input_scale" in metadata:
            self.input_scale = float(np.asarray(metadata["spikedet.input_scale"]).reshape(-1)[0])
        if self.input_scale is None:
            self.input_scale = 1.0
            self.assumed.append("input scale = 1: input values are integer counts/spikes")


@dataclass
class Term:
    """One path into a neuron: its source, the linear nodes (in order), its lag (steps) and,
    per linear node, the lag between its output and the neuron (its bias arrives that late)."""

    src: str
    ops: list[str]
    lag: int
    op_lags: list[int] = field(default_factory=list)


@dataclass
class GenericInfo:
    """What the deploy path needs besides the FloatGraph."""

    outputs: list[str]  # populations read by Output nodes
    nir_shapes: dict[str, tuple[int, ...]]  # population -> its NIR (unbatched) shape
    input_nir_shape: tuple[int, ...]
    conventions: Conventions
    # readout population -> the Output node it integrates (an Output fed by a linear layer)
    sums: dict[str, str] = field(default_factory=dict)


def is_generic(metadata: dict) -> bool:
    """A graph without spikedet's own encoding (§2): no spikedet.format / spikedet.T."""
    return "spikedet.format" not in metadata and "spikedet.T" not in metadata


def parse_generic(
    graph: nir.NIRGraph, T: int, conv: Conventions, where: str = "graph"
) -> tuple[FloatGraph, GenericInfo]:
    """The FloatGraph of any NIR graph (module docstring); errors name the file and node."""
    try:
        return _GenericParser(graph, conv, where).parse(T)
    except SpikedetError as err:
        if err.where and err.where.startswith(where):
            raise
        raise SpikedetError(err.what, f"{where}: {err.where}" if err.where else where) from None


class _GenericParser:
    def __init__(self, graph: nir.NIRGraph, conv: Conventions, where: str):
        self.where = where
        meta = plain(graph.metadata if isinstance(graph.metadata, dict) else {})
        conv.resolve(meta)
        self.conv, self.meta = conv, meta
        self.nodes, self.edges = flatten(graph)
        for n, node in self.nodes.items():
            kind = type(node).__name__
            self.need(kind in KNOWN, f"unsupported NIR node type {kind}", n)
        inputs = [n for n in self.nodes if self.kind(n) == "Input"]
        self.need(len(inputs) == 1, f"the graph needs one Input node, found {len(inputs)}")
        self.input = inputs[0]
        self.forward_in, self.recurrent_in = split_edges(list(self.nodes), self.edges, inputs)

    def need(self, ok: Any, what: str, node: str | None = None) -> None:
        if not ok:
            raise SpikedetError(what, f"{self.where}: node {node}" if node else self.where)

    def kind(self, n: str) -> str:
        return type(self.nodes[n]).__name__

    # ---- structure -------------------------------------------------------------------
    def terms(self, n: str) -> list[Term]:
        """Every path into neuron ``n`` back to a neuron or the Input."""
        found: list[Term] = []

        def walk(node: str, ops: list[str], lags: list[int], lag: int, seen: tuple) -> None:
            preds = [(p, 0) for p in self.forward_in[node]]
            preds += [(p, 1) for p in self.recurrent_in[node]]
            self.need(preds, f"{self.kind(node)} node has no input", node)
            for p, rec in preds:
                if p == self.input or self.kind(p) in NEURONS:
                    found.append(Term(p, ops[::-1], lag + rec, lags[::-1]))
                    continue
                what = f"cycle through linear nodes only ({', '.join((*seen, p))}): no neuron"
                self.need(p not in seen, what, p)
                self.need(self.kind(p) != "Output", "an Output node feeds another node", p)
                steps = self.delay_steps(p) if self.kind(p) == "Delay" else 0
                walk(p, [*ops, p], [*lags, lag + rec], lag + rec + steps, (*seen, p))

        walk(n, [], [], 0, ())
        return found

    def delay_steps(self, n: str) -> int:
        """A Delay node's delay (s, one value) in whole steps of dt."""
        delay = np.asarray(self.nodes[n].delay, dtype=np.float64)
        self.need(delay.size and np.all(np.isfinite(delay)), "delay is empty or not finite", n)
        lo, hi = float(delay.min()), float(delay.max())
        self.need(hi - lo <= UNIFORM_RTOL * max(abs(hi), 1e-30), "delay varies across neurons", n)
        steps = hi / self.conv.dt
        ok = steps >= 0 and abs(steps - round(steps)) <= 1e-6 * max(1.0, steps)
        self.need(ok, f"delay {hi:g} s is not a whole number of steps of dt={self.conv.dt:g}", n)
        return int(round(steps))

    def compose_term(self, term: Term, shape: tuple[int, int, int]) -> tuple[LinConv, tuple]:
        """The term's chain as one conv, and the parts of its bias that arrive late: a node's
        bias pushed through the nodes after it, keyed by the lag after that node (§4.4)."""
        current, flat = identity(shape), False
        first, parts = True, []  # parts: [lag after the node, its bias as seen at the end]
        for op, op_lag in zip(term.ops, term.op_lags):
            kind = self.kind(op)
            if kind == "Delay":
                continue
            if kind == "Flatten":
                node = self.nodes[op]
                start, end = int(node.start_dim), int(node.end_dim)
                self.need((start, end) in ((0, -1), (0, 2)), "only a full Flatten is supported", op)
                flat = True
                current.flat = True
                continue
            step = primitive(kind, self.nodes[op], current.out_shape, flat, op)
            current = step if first else compose(current, step, f"{self.where}: node {op}")
            parts = [(k, np.einsum("omuv,m->o", step.weight, b)) for k, b in parts]
            parts.append((op_lag, step.bias))
            first, flat = False, False
        late: dict[int, np.ndarray] = {}
        for k, b in parts:
            if k > 0 and np.any(b):
                late[k] = late.get(k, 0) + b
        return current, tuple(sorted(late.items()))

    # ---- the graph -------------------------------------------------------------------
    def parse(self, T: int) -> tuple[FloatGraph, GenericInfo]:
        in_shape = shape_of(self.nodes[self.input].input_type["input"])
        src_shape = {self.input: as_map(in_shape, f"{self.where}: node {self.input}")}
        neurons = [n for n in self.nodes if self.kind(n) in NEURONS]
        self.need(neurons, "the graph has no neuron node")
        terms = {n: self.terms(n) for n in neurons}
        sums = {}  # an Output fed by linear nodes: an integrator of its value (§4.4)
        for o in [n for n in self.nodes if self.kind(n) == "Output"]:
            if not all(self.kind(p) in NEURONS for p in self.forward_in[o]):
                sums[f"{o}.sum"] = o
                terms[f"{o}.sum"] = self.terms(o)
        synapses: dict[str, list[FSynapse]] = {n: [] for n in terms}
        pending = dict(terms)
        while pending:  # a population's shape comes from a term whose source shape is known
            progress = False
            for n in list(pending):
                known = [t for t in pending[n] if t.src in src_shape]
                if not known:
                    continue
                for t in known:
                    lin, late = self.compose_term(t, src_shape[t.src])
                    shape = src_shape.setdefault(n, lin.out_shape)
                    what = f"inputs disagree: {t.src} gives {lin.out_shape}, others {shape}"
                    self.need(lin.out_shape == shape, what, n)
                    synapses[n].append(self.synapse(t, lin, n, late))
                pending[n] = [t for t in pending[n] if t not in known]
                if not pending[n]:
                    del pending[n]
                progress = True
            if not progress:
                self.need(False, "no input of known shape reaches it", next(iter(pending)))
        pops = [self.population(n, src_shape[n], synapses[n]) for n in neurons]
        pops += [FPopulation(n, "readout", src_shape[n], beta=1.0, alpha=1.0) for n in sums]
        order = self.order(neurons) + list(sums)
        outputs = []
        for o in [n for n in self.nodes if self.kind(n) == "Output"]:
            if f"{o}.sum" in sums:
                outputs.append(f"{o}.sum")
                continue
            outputs += self.forward_in[o]
        self.need(outputs, "no Output node")
        all_syn = [s for n in order for s in synapses[n]]
        try:
            fg = FloatGraph(
                input_shape=src_shape[self.input],
                input_scale=float(self.conv.input_scale),
                T=int(T),
                populations=[p for n in order for p in pops if p.name == n],
                synapses=all_syn,
                head={},
                metadata={**self.meta, "spikedet.generic": True, "dt": self.conv.dt},
            )
        except SpikedetError as err:
            raise SpikedetError(err.what, f"{self.where}: {err.where}") from None
        nir_shapes = {n: self.param_shape(n) or src_shape[n] for n in neurons}
        info = GenericInfo(outputs, nir_shapes, in_shape, self.conv, sums)
        return fg, info

    def order(self, neurons: list[str]) -> list[str]:
        """Neurons in the order of the forward edges (Kahn, ties in node order)."""
        rank = {n: i for i, n in enumerate(self.nodes)}
        pending = {n: len(self.forward_in[n]) for n in self.nodes}
        ready = sorted((n for n in self.nodes if pending[n] == 0), key=rank.__getitem__)
        out: list[str] = []
        while ready:
            node = ready.pop(0)
            out.append(node)
            for d in [d for d in self.nodes if node in self.forward_in[d]]:
                pending[d] -= self.forward_in[d].count(node)
                if pending[d] == 0:
                    ready.append(d)
            ready.sort(key=rank.__getitem__)
        return [n for n in out if n in neurons]

    def synapse(self, term: Term, lin: LinConv, dst: str, late: tuple = ()) -> FSynapse:
        src = "input" if term.src == self.input else term.src
        name = f"{term.ops[0] if term.ops else term.src}->{dst}"
        return FSynapse(
            name, src, dst, lin.weight, lin.bias, lin.stride, lin.padding, lag=term.lag,
            late_bias=late,
        )  # fmt: skip

    def param_shape(self, n: str) -> tuple[int, ...] | None:
        node = self.nodes[n]
        for key in ("tau", "tau_mem", "r", "threshold"):
            if hasattr(node, key):
                return tuple(int(v) for v in np.shape(getattr(node, key)))
        return None

    def uniform(self, n: str, key: str, size: int) -> float:
        value = np.asarray(getattr(self.nodes[n], key), dtype=np.float64)
        what = f"{key} has {value.size} values for {size} neurons"
        self.need(value.size in (1, size), what, n)
        self.need(np.all(np.isfinite(value)), f"{key} is not finite", n)
        lo, hi = float(value.min()), float(value.max())
        what = f"{key} varies across neurons ({lo:.6g}..{hi:.6g}); one value per population"
        self.need(hi - lo <= UNIFORM_RTOL * max(1.0, abs(hi)), what, n)
        return hi

    def population(self, n: str, shape: tuple, syns: list[FSynapse]) -> FPopulation:
        """The float population of neuron node ``n`` (§4.3) under the resolved dt and reset."""
        kind, dt, size = self.kind(n), float(self.conv.dt), int(np.prod(shape))
        p = lambda key: self.uniform(n, key, size)  # noqa: E731
        loihi = plain(self.nodes[n].metadata or {}).get("loihi")
        if loihi is not None:  # Lava's own integers (spikedet import netx, §3.6)
            ok = kind in ("LIF", "IF", "CubaLIF")
            self.need(ok, f"metadata 'loihi' on a {kind} node (a spiking neuron needed)", n)
            return FPopulation(n, "cuba", shape, D=1, loihi=loihi)
        if kind == "Threshold":  # z = [x > θ]: a cuba neuron without memory (§4.5)
            return FPopulation(n, "cuba", shape, D=1, beta=0.0, alpha=1.0, threshold=p("threshold"))
        beta_syn = 0.0
        if kind in ("CubaLIF", "CubaLI"):
            tau_syn = p("tau_syn")
            self.need(tau_syn > 0, f"tau_syn={tau_syn:g} must be > 0", n)
            beta_syn = self.decay(dt, tau_syn, "tau_syn", n)
        if kind in ("LIF", "LI", "CubaLIF", "CubaLI"):
            tau = p("tau_mem" if kind.startswith("Cuba") else "tau")
            self.need(tau > 0, f"tau={tau:g} must be > 0", n)
            beta = self.decay(dt, tau, "tau", n)
            alpha, leak = p("r") * dt / tau, p("v_leak")
            if kind.startswith("Cuba"):
                alpha *= (1.0 - beta_syn) * p("w_in")
        else:  # IF, I
            beta, alpha, leak = 1.0, p("r") * dt, 0.0
        self.need(alpha > 0, f"the input gain (r, w_in, dt/tau) is {alpha:g}, not > 0", n)
        if kind == "I":
            return FPopulation(n, "readout", shape, beta=1.0, alpha=alpha)
        if kind in ("LI", "CubaLI"):  # a decaying readout: the cuba update, v read out (§4.5)
            return FPopulation(
                n, "li", shape, D=1, beta=beta, alpha=alpha, threshold=0.0,  # never fires
                beta_syn=beta_syn, v_bias=(1.0 - beta) * leak,
            )  # fmt: skip
        vth, v_reset = p("v_threshold"), p("v_reset")
        what = f"v_reset={v_reset:g}: Loihi's neurons reset to 0 (or subtract the threshold)"
        self.need(v_reset == 0 or self.conv.reset == "subtract", what, n)
        # LIF / IF are Loihi's CUBA LIF without current memory (beta_syn = 0, du = 4095, §4.5)
        return FPopulation(
            n, "cuba", shape, D=1, beta=beta, alpha=alpha, threshold=vth,
            beta_syn=beta_syn, v_bias=(1.0 - beta) * leak, reset=str(self.conv.reset),
        )  # fmt: skip

    def decay(self, dt: float, tau: float, what: str, n: str) -> float:
        """Forward Euler's 1 - dt/tau, which must be a decay in [0, 1)."""
        beta = 1.0 - dt / tau
        msg = f"dt={dt:g} s exceeds {what}={tau:g} s: the Euler factor 1 - dt/{what} = {beta:.4g}"
        self.need(beta >= 0, f"{msg} < 0 makes the neuron unstable (lower --dt)", n)
        return beta
