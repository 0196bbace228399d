"""NIR graph -> FloatGraph: recognises the encoding of docs/semantics.md §2 by its structure.

Metadata is cross-checked, never trusted alone:

- I-LIF ``P`` (§2.2): ``P.li`` (LI) -> ``P.q1..qD`` (Threshold k − ½) -> ``P.reset`` (Scale
  −β/α) -> ``P.li``; consumers read all of ``P.q1..qD``.
- LIF ``P`` (§2.5): ``P.lif`` (LIF, v_leak = v_reset = 0); consumers read ``P.lif``.
- max-pool ``M`` of ``S`` (§2.7b): per level k, spike node k of ``S`` -> ``M.pool{k}``
  (SumPool2d without ``spikedet.op``) -> ``M.q{k}`` (Threshold ½, metadata
  ``spikedet.neuron = "maxpool"``); consumers read all of ``M.q1..qD``.
- readout (§2.4): an I node with ``spikedet.readout`` metadata feeding Outputs.
- synapse: a Conv2d reading the Input or all spike nodes of one population and feeding LI /
  LIF / readout nodes directly or through one ``upsample_nearest`` node (§2.8); channel
  ranges (§2.7) and groups (§2.1) are restored from its metadata.
- extension op ``max_pool`` (§2.8): refused (it has no spike-driven hardware form).

Anything else is a SpikedetError naming the node.
"""

from __future__ import annotations

import json
import math
from typing import Any

import nir
import numpy as np

from spikedet.deploy.nir_conv import ConvReader
from spikedet.deploy.nir_graph import FloatGraph, FPopulation, one_line, plain
from spikedet.deploy.nir_maxpool import PARAM_TOL, MaxPoolReader
from spikedet.errors import SpikedetError

DEFAULT_DT = 1e-4  # §2: every tau and r is expressed at this Euler step unless metadata says
UNIFORM_RTOL = 1e-7  # per-neuron arrays must hold one value (float32 export noise allowed)
FORMAT_VERSION = 2  # graph metadata spikedet.format (§2); 1 = no §2.5-2.9 constructs
EXTENSION_OPS = ("upsample_nearest", "max_pool")  # §2.8
MAX_POOL_REFUSAL = (
    "extension op max_pool (a max of membrane currents) has no spike-driven hardware form; "
    "deploy the EMS '-avg' variant (pool: avg, average-pooled shortcuts) instead"
)
_KNOWN_TYPES = (
    nir.Input, nir.Output, nir.Conv2d, nir.LI, nir.LIF, nir.Threshold, nir.Scale, nir.I,
    nir.SumPool2d,
)  # fmt: skip


def parse_graph(graph: nir.NIRGraph, where: str = "graph") -> FloatGraph:
    """Parse a NIRGraph in the §2 encoding; SpikedetError naming the node or edge otherwise."""
    return _Parser(graph, where).parse()


class _Parser(ConvReader, MaxPoolReader):
    """One pass over a NIRGraph; keeps the adjacency and the node -> population maps."""

    def __init__(self, graph: nir.NIRGraph, where: str):
        self.where = where
        if not isinstance(graph, nir.NIRGraph):
            raise SpikedetError(f"expected a NIRGraph, got {type(graph).__name__}", where)
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
        self.owner: dict[str, str] = {}  # q / reset / lif / pool node -> population name
        self.spike_owner: dict[str, str] = {}  # node whose output is spikes -> population
        self.spike_nodes: dict[str, list[str]] = {}  # population -> its spike nodes, by level
        self.pops: dict[str, FPopulation] = {}
        self.pop_of_node: dict[str, str] = {}  # LI / LIF / I node -> population (synapse targets)
        self.upsample_factor: dict[str, int] = {}  # upsample_nearest node -> factor (§2.8)

    def need(self, ok: Any, what: str, node: str | None = None) -> None:
        if not ok:
            raise SpikedetError(what, f"{self.where}: node {node}" if node else self.where)

    def kind(self, name: str) -> str:
        return type(self.nodes[name]).__name__

    def op(self, name: str) -> Any:
        """The ``spikedet.op`` of a SumPool2d (None: a max-pool population's pooling)."""
        return plain(self.nodes[name].metadata or {}).get("spikedet.op")

    def uniform(self, value: Any, what: str, n: str) -> tuple[float, tuple[int, ...]]:
        """The one value of a per-neuron array (Loihi/Lava take one decay per population)."""
        arr = np.asarray(value)
        if arr.size and all(stride == 0 for stride in arr.strides):  # a broadcast constant
            arr = arr.reshape(-1)[:1].reshape((1,) * arr.ndim)
            shape = tuple(int(v) for v in np.shape(value))
        else:
            shape = tuple(int(v) for v in arr.shape)
        arr = np.asarray(arr, dtype=np.float64)
        self.need(arr.size and np.all(np.isfinite(arr)), f"{what} is empty or not finite", n)
        lo, hi = float(arr.min()), float(arr.max())
        msg = f"{what} varies across neurons ({lo:.6g}..{hi:.6g}); one value per population needed"
        self.need(hi - lo <= UNIFORM_RTOL * max(1.0, abs(hi)), msg, n)
        return hi, shape

    # ---- the whole graph -----------------------------------------------------------------
    def parse(self) -> FloatGraph:
        meta, need = self.meta, self.need
        for n in self.nodes:  # refused first: no other problem of the file matters then
            if self.kind(n) == "SumPool2d" and self.op(n) == "max_pool":
                need(False, MAX_POOL_REFUSAL, n)
        self.dt = float(meta.get("dt", DEFAULT_DT))
        need(math.isfinite(self.dt) and self.dt > 0, f"metadata dt={self.dt} is not > 0")
        need("spikedet.T" in meta, "graph metadata spikedet.T (logical steps) is missing")
        version = meta.get("spikedet.format", 1)
        ok = isinstance(version, int) and 1 <= version <= FORMAT_VERSION
        need(ok, f"metadata spikedet.format={version!r}; this reader knows 1..{FORMAT_VERSION}")
        self.check_extensions(version)
        head = meta.get("spikedet.head", {})
        try:
            head = json.loads(head) if isinstance(head, str) and head.strip() else head or {}
        except json.JSONDecodeError as err:
            need(False, f"metadata spikedet.head is not JSON: {one_line(err)}")
        inputs = [n for n in self.nodes if self.kind(n) == "Input"]
        need(len(inputs) == 1, f"the graph needs exactly one Input node, found {len(inputs)}")
        self.input_name = inputs[0]
        shape = np.asarray(self.nodes[self.input_name].input_type["input"]).ravel()
        self.input_shape = tuple(int(v) for v in shape)
        need(len(shape) == 3, f"input shape must be (C, H, W), got {shape}", self.input_name)
        kinds = (("LI", self.parse_ilif), ("LIF", self.parse_lif), ("I", self.parse_readout))
        for kind, parse in kinds:
            for n in [n for n in self.nodes if self.kind(n) == kind]:
                parse(n)
        self.parse_maxpools()
        for n in self.nodes:
            loose = self.kind(n) == "SumPool2d" and n not in self.owner
            loose = loose and n not in self.upsample_factor
            need(
                not loose,
                "SumPool2d without a known spikedet.op is not part of a maxpool population",
                n,
            )
            loose = self.kind(n) in ("Threshold", "Scale") and n not in self.owner
            need(not loose, f"{self.kind(n)} node is not part of an I-LIF or maxpool population", n)
            for p in self.preds[n] if self.kind(n) == "Output" else []:
                need(p in self.pops, f"Output is fed by {p} ({self.kind(p)}), not a readout", n)
        for n in self.succs[self.input_name]:
            need(self.kind(n) == "Conv2d", f"Input feeds {n} ({self.kind(n)}), not a conv", n)
        synapses = [s for n in self.nodes if self.kind(n) == "Conv2d" for s in self.parse_conv(n)]
        deps = [(s.src, s.dst) for s in synapses] + [
            (p.src, p.name) for p in self.pops.values() if p.kind == "maxpool"
        ]
        order = self.topological(deps)
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

    def check_extensions(self, version: int) -> None:
        """§2.8: every op used is known and listed in ``spikedet.extensions``; format 1 graphs
        hold none of the §2.5-2.9 constructs."""
        listed = self.meta.get("spikedet.extensions", [])
        try:
            listed = json.loads(listed) if isinstance(listed, str) else listed
        except json.JSONDecodeError as err:
            self.need(False, f"metadata spikedet.extensions is not JSON: {one_line(err)}")
        ok = isinstance(listed, list) and all(isinstance(op, str) for op in listed)
        self.need(ok, f"metadata spikedet.extensions={listed!r} is not a list of op names")
        unknown = [op for op in listed if op not in EXTENSION_OPS]
        self.need(not unknown, f"unknown extension ops {unknown} in spikedet.extensions")
        for n in self.nodes:
            new = self.kind(n) in ("LIF", "SumPool2d")
            what = f"a spikedet.format=1 graph holds no {self.kind(n)} node (format 2, §2.5-2.8)"
            self.need(version >= 2 or not new, what, n)
            if self.kind(n) != "SumPool2d":
                continue
            if self.op(n) is None:  # must be the pooling of a max-pool population (§2.7b)
                reads = [self.nodes[q].metadata or {} for q in self.succs[n]]
                ok = len(reads) == 1 and plain(reads[0]).get("spikedet.neuron") == "maxpool"
                what = "SumPool2d without a known spikedet.op is not part of a maxpool population"
                self.need(ok, f"{what} (it must feed one maxpool Threshold)", n)
                continue
            op = self.op(n)
            self.need(op in EXTENSION_OPS, f"unknown extension op spikedet.op={op!r}", n)
            what = f"uses extension op {op} that graph metadata spikedet.extensions does not list"
            self.need(op in listed, what, n)
            self.upsample_factor[n] = self.parse_upsample(n)

    def topological(self, deps: list[tuple[str, str]]) -> list[str]:
        """Kahn's order over populations (ties in node order); any cycle is an error."""
        indeg = {p: sum(d == p and s != "input" for s, d in deps) for p in self.pops}
        ready = [p for p in self.pops if indeg[p] == 0]
        order: list[str] = []
        while ready:
            order.append(ready.pop(0))
            for s, d in deps:
                if s == order[-1]:
                    indeg[d] -= 1
                    ready += [d] if indeg[d] == 0 else []
        stuck = [p for p in self.pops if p not in order]
        while stuck:  # peel off what only lies downstream of a cycle; what is left loops
            ends = [p for p in stuck if not any(s == p and d in stuck for s, d in deps)]
            node = next(n for n, p in {**self.pop_of_node, **self.owner}.items() if p == stuck[0])
            self.need(ends, f"cycle through {', '.join(stuck)} (only resets may loop)", node)
            stuck = [p for p in stuck if p not in ends]
        return order

    # ---- populations ---------------------------------------------------------------------
    def neuron_params(self, n: str, meta: dict) -> tuple[float, float, tuple[int, ...]]:
        """(β, α, shape) of an LI / LIF node: τ = dt/(1 − β), α = r·dt/τ (forward Euler)."""
        node, need = self.nodes[n], self.need
        tau, shape = self.uniform(node.tau, "tau", n)
        r, r_shape = self.uniform(node.r, "r", n)
        need(len(shape) == 3 and r_shape == shape, f"tau/r shapes {shape}/{r_shape}", n)
        need(not np.any(np.asarray(node.v_leak) != 0), "v_leak must be 0", n)
        beta = 1.0 - self.dt / tau if tau > 0 else -1.0
        beta = 0.0 if abs(beta) < 1e-12 else beta
        alpha = r * self.dt / tau if tau > 0 else 0.0
        msg = f"tau={tau:.6g}, r={r:.6g} give beta={beta:.6g}, alpha={alpha:.6g}: out of range"
        need(0 <= beta < 1 and alpha > 0, msg, n)
        for key, got in (("beta", beta), ("alpha", alpha)):
            ok = key not in meta or abs(float(meta[key]) - got) <= PARAM_TOL
            need(ok, f"metadata {key}={meta.get(key)} disagrees with tau/r/dt ({got:.9g})", n)
        # consistent metadata holds the trained values exactly (tau and r may be float32)
        return float(meta.get("beta", beta)), float(meta.get("alpha", alpha)), shape

    def check_feeds(self, n: str, allowed: tuple[str, ...], what: str) -> None:
        """The inputs of a population node: convs, upsample nodes (§2.8) and ``allowed``."""
        for p in self.preds[n]:
            ok = p in allowed or self.kind(p) == "Conv2d" or p in self.upsample_factor
            others = "convs and the reset" if allowed else "convs"
            self.need(ok, f"{what} is fed by {p} ({self.kind(p)}); only {others} may", n)

    def check_readers(self, n: str, allowed: tuple[str, ...], what: str) -> None:
        """The readers of a spike node: convs, max-pool poolings (§2.7b) and ``allowed``."""
        for s in self.succs[n]:
            ok = s in allowed or self.kind(s) == "Conv2d"
            ok = ok or (self.kind(s) == "SumPool2d" and s not in self.upsample_factor)
            others = "convs, max-pools and the reset" if allowed else "convs and max-pools"
            self.need(ok, f"{what} feeds {s} ({self.kind(s)}); only {others} may", n)

    def add_spiking(self, pop: FPopulation, spike_nodes: list[str], owned: list[str]) -> None:
        self.need(
            pop.name not in self.pops and pop.name != "input",
            f"population name {pop.name!r} is used twice or is 'input'",
            spike_nodes[0],
        )
        self.pops[pop.name] = pop
        self.spike_nodes[pop.name] = spike_nodes
        self.spike_owner.update({m: pop.name for m in spike_nodes})
        self.owner.update({m: pop.name for m in (*owned, *spike_nodes)})

    def parse_ilif(self, n: str) -> None:
        """P.li -> P.q1..qD (thresholds k - 1/2) -> P.reset (Scale -beta/alpha) -> P.li (§2.2)."""
        need = self.need
        meta = plain(self.nodes[n].metadata or {})
        need(meta.get("spikedet.neuron") == "ilif", "LI without spikedet.neuron='ilif'", n)
        beta, alpha, shape = self.neuron_params(n, meta)
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
        self.check_feeds(n, (reset,), "LI")
        for q in qs:
            self.check_readers(q, (reset,), "Threshold")
        pop = n[: -len(".li")] if n.endswith(".li") else n
        self.add_spiking(FPopulation(pop, "ilif", shape, D=D, beta=beta, alpha=alpha), qs, [reset])
        self.pop_of_node[n] = pop

    def parse_lif(self, n: str) -> None:
        """P.lif: LIF(tau, r, v_leak=0, v_threshold=V_th, v_reset=0), hard reset (§2.5)."""
        node, need = self.nodes[n], self.need
        meta = plain(node.metadata or {})
        need(meta.get("spikedet.neuron") == "lif", "LIF without spikedet.neuron='lif'", n)
        beta, alpha, shape = self.neuron_params(n, meta)
        vth, vth_shape = self.uniform(node.v_threshold, "v_threshold", n)
        reset, reset_shape = self.uniform(node.v_reset, "v_reset", n)
        need(vth_shape == shape and reset_shape == shape, "v_threshold/v_reset shapes differ", n)
        need(reset == 0, f"v_reset={reset:.6g}; a LIF population resets to 0 (§2.5)", n)
        ok = "threshold" not in meta or abs(float(meta["threshold"]) - vth) <= PARAM_TOL
        need(ok, f"metadata threshold={meta.get('threshold')} disagrees with v_threshold", n)
        vth = float(meta.get("threshold", vth))
        self.check_feeds(n, (), "LIF")
        self.check_readers(n, (), "LIF")
        pop = n[: -len(".lif")] if n.endswith(".lif") else n
        lif = FPopulation(pop, "lif", shape, D=1, beta=beta, alpha=alpha, threshold=vth)
        self.add_spiking(lif, [n], [])
        self.pop_of_node[n] = pop

    def parse_readout(self, n: str) -> None:
        """An I node with spikedet.readout metadata, fed by convs, feeding Outputs (§2.4)."""
        need, outs = self.need, self.succs[n]
        meta = plain(self.nodes[n].metadata or {})
        need("spikedet.readout" in meta, "I node without metadata spikedet.readout", n)
        r, shape = self.uniform(self.nodes[n].r, "r", n)
        need(len(shape) == 3, f"r must have shape (C, H, W), got {shape}", n)
        need(outs and all(self.kind(s) == "Output" for s in outs), "must feed Outputs only", n)
        self.check_feeds(n, (), "readout")
        # v_t = v_{t-1} + r*dt*I_t: r = 1/dt gives alpha = 1; readouts never leak (beta = 1).
        need(n not in self.pops and n != "input", f"population name {n!r} is used twice", n)
        self.pops[n] = FPopulation(n, "readout", shape, beta=1.0, alpha=r * self.dt)
        self.pop_of_node[n] = n
