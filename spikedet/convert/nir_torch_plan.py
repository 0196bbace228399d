"""The fast step program of the float NIR executor (``spikedet.convert.nir_torch``).

The same numbers as evaluating every node of the graph in order (``NIRExecutor.run`` with
``record=True``), with less work and memory:

- every value is named by what it computes, not by the node that holds it: two Conv2d nodes
  with the same compact weights, bias and geometry (``nir_torch_weights.ConvSpec``) on the
  same input, an upsample of either, and the fan-in sum of the same parts are computed once
  (the exporter writes one conv per destination population);
- a conv writing channels [o, o + c) of a concatenation (§2.7) computes those c channels and
  fan-in sums add them into that slice (x + 0 = x: the other channels are unchanged);
- a fan-in of Threshold nodes only (an I-LIF population's spikes s = Σ_k [v > k − ½], §2.2)
  is an exact integer, computed without the per-Threshold tensors; when the thresholds are
  the scalars ½, 3⁄2, …, m − ½ as clamp(ceil(v − ½), 0, m): v − ½ is exact for v ≥ ¼ (and for
  v < ¼ both give 0), and for an integer k, v − ½ > k − 1 ⟺ ceil(v − ½) ≥ k. (A NaN membrane,
  which finite inputs never produce, would count 0 in the sum and NaN here.);
- a value is freed after its last use in the step; nodes whose outputs reach no population,
  readout or later step are not evaluated (on the last step: the reset nodes, the Outputs);
  neuron states are dropped after the last step except the readouts'.

Plans are built once per (first step, last step) and reused.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from spikedet.errors import SpikedetError


class Ref(NamedTuple):
    """A node's output: the value under ``key``, or, with ``offset`` set, that value placed at
    channels [offset, offset + c) of a ``channels``-channel tensor that is zero elsewhere."""

    key: Any
    offset: int | None = None
    channels: int = 0


@dataclass
class Plan:
    ops: list[tuple] = field(default_factory=list)  # (op, key, args, input keys)
    free_after: list[list[Any]] = field(default_factory=list)
    carry: list[Any] = field(default_factory=list)  # keys kept for the next step


def materialize(ref: Ref, values: dict[Any, Tensor]) -> Tensor:
    value = values[ref.key]
    if ref.offset is None:
        return value
    full = value.new_zeros((value.shape[0], ref.channels, *value.shape[2:]))
    full[:, ref.offset : ref.offset + value.shape[1]] = value
    return full


def fan_in(refs: list[Ref], values: dict[Any, Tensor]) -> Tensor:
    """Σ parts in edge order, each element summed in the same order as ``a + b + c``
    (commuting the first two is exact; placed parts add into their slice)."""
    if len(refs) == 1:
        return materialize(refs[0], values)
    if refs[0].offset is not None and refs[1].offset is None:
        refs = [refs[1], refs[0], *refs[2:]]
    total = values[refs[0].key]
    total = total.clone() if refs[0].offset is None else materialize(refs[0], values)
    for ref in refs[1:]:
        part = values[ref.key]
        if ref.offset is not None:
            total[:, ref.offset : ref.offset + part.shape[1]] += part
        elif part.shape == total.shape:
            total += part
        else:  # broadcasting (a third-party graph): as ``total + part``
            total = total + part
    return total


class Planner:
    """Builds the step program of one executor (see the module docstring)."""

    def __init__(self, ex: Any):
        self.ex = ex
        self.plans: dict[tuple[bool, bool], Plan] = {}
        kinds = ex.kinds
        self.consumers: dict[str, list[str]] = {n: [] for n in ex.names}
        for dst, srcs in ex.forward_in.items():
            for src in srcs:
                self.consumers[src].append(dst)
        self.is_threshold = {n: kinds[n] == "Threshold" for n in ex.names}

    def plan(self, first: bool, last: bool) -> Plan:
        if (first, last) not in self.plans:
            self.plans[first, last] = self._build(first, last)
        return self.plans[first, last]

    # -- building ----------------------------------------------------------------------------

    def _needed(self, last: bool) -> set[str]:
        """Nodes to evaluate: ancestors of the populations' spike nodes and the readouts,
        and on every step but the last, of the stateful nodes and recurrent sources too."""
        ex = self.ex
        roots = {n for nodes in ex.populations.values() for n in nodes} | set(ex.readout_means)
        if not last:
            roots |= {n for n in ex.names if ex.kinds[n] != "Output"}
        needed, stack = set(), list(roots)
        while stack:
            node = stack.pop()
            if node in needed:
                continue
            needed.add(node)
            stack += ex.forward_in[node]
        return needed

    def _build(self, first: bool, last: bool) -> Plan:
        ex, plan = self.ex, Plan()
        self.refs: dict[str, Ref] = {}
        self.defined: set[Any] = set()
        self.plan_ops = plan.ops
        needed = self._needed(last)
        if not first:
            for src in ex.recurrent_sources:
                self.defined.add(("prev", src))
        position = {n: i for i, n in enumerate(ex.order)}
        ready: dict[int, list[str]] = {}  # a population's spikes, as soon as its nodes exist
        for pop, nodes in ex.populations.items():
            ready.setdefault(max(position[n] for n in nodes), []).append(pop)
        for index, name in enumerate(ex.order):
            if name in needed:
                self._node(name, first)
            for pop in ready.get(index, []):
                nodes = ex.populations[pop]
                ref = self._sum_ref([self.refs[n] for n in nodes], nodes, counted=True)
                exact = all(self.is_threshold[n] for n in nodes)
                plan.ops.append(("spikes", pop, exact, [self._value(ref)]))
        if not last:  # recurrent sources of this step, carried to the next
            plan.carry = [self._value(self.refs[s]) for s in ex.recurrent_sources]
        self._liveness(plan)
        return plan

    def _emit(self, op: str, key: Any, args: Any, inputs: list[Any]) -> Any:
        if key not in self.defined:
            self.defined.add(key)
            self.plan_ops.append((op, key, args, inputs))
        return key

    def _value(self, ref: Ref) -> Any:
        """The key holding ``ref`` as a dense tensor (placing it if needed)."""
        if ref.key[0] == "thr" and ref.key not in self.defined:
            name = ref.key[1]
            parent = self._value(self._input_ref(name))
            self._emit("thr", ref.key, name, [parent])
        if ref.offset is None:
            return ref.key
        return self._emit("place", ("place", ref), ref, [ref.key])

    def _input_ref(self, name: str) -> Ref:
        return self._sum_ref(
            [self.refs[s] for s in self.ex.forward_in[name]], self.ex.forward_in[name]
        )

    def _sum_ref(self, refs: list[Ref], sources: list[str], counted: bool = False) -> Ref:
        """The fan-in of ``sources`` (forward edges only)."""
        if sources and all(self.is_threshold[s] for s in sources):
            return self._count_ref(sources)
        if len(refs) == 1 and not counted:
            return refs[0]
        if len(refs) == 1:
            return Ref(self._value(refs[0]))
        for ref in refs:
            if ref.key[0] == "thr":
                self._value(ref)
        key = ("sum", tuple(refs))
        return Ref(self._emit("sum", key, list(refs), [r.key for r in refs]))

    def _count_ref(self, thresholds: list[str]) -> Ref:
        """Σ of Threshold outputs: an exact integer in any order, so keyed by the set."""
        key = ("count", frozenset(thresholds))
        if key in self.defined:
            return Ref(key)
        by_parent: dict[Any, list[str]] = {}
        for name in sorted(thresholds):
            by_parent.setdefault(self._value(self._input_ref(name)), []).append(name)
        groups = [(parent, self._count_rule(names)) for parent, names in by_parent.items()]
        return Ref(self._emit("count", key, groups, list(by_parent)))

    def _count_rule(self, names: list[str]) -> tuple:
        """('ceil', m) for scalar thresholds ½ … m − ½, else ('compare', names)."""
        levels = []
        for name in names:
            value = self.ex._compact(name, "threshold")
            if value.numel() != 1:
                return ("compare", names)
            levels.append(float(value.reshape(-1)[0]))
        if sorted(levels) == [k - 0.5 for k in range(1, len(levels) + 1)]:
            return ("ceil", len(levels))
        return ("compare", names)

    def _node(self, name: str, first: bool) -> None:
        ex, kind = self.ex, self.ex.kinds[name]
        if kind == "Input":
            self.refs[name] = Ref(self._emit("input", ("in", name), name, []))
            return
        if kind == "Threshold":  # evaluated only where a consumer needs it alone
            self.refs[name] = Ref(("thr", name))
            return
        sources = list(ex.forward_in[name])
        parts = [self.refs[s] for s in sources]
        if not first:  # recurrent edges deliver the previous step's value (none at t = 0)
            parts += [Ref(("prev", s)) for s in ex.recurrent_in[name]]
        if not parts:
            raise SpikedetError("node has no input at this step", name)
        if kind == "Conv2d" and len(parts) == len(ex.forward_in[name]):
            source = self._sum_ref(parts, sources)
            spec = ex.conv_specs[name]
            key = ("conv", spec["signature"], source)
            self._emit("conv", key, (name, source), [source.key])
            self.refs[name] = (
                Ref(key, spec["offset"], spec["channels"]) if spec["placed"] else Ref(key)
            )
            return
        if kind == "SumPool2d" and ex.static[name]["op"] == "upsample_nearest" and len(parts) == 1:
            source = parts[0]
            key = ("up", float(ex.static[name]["scale"]), source.key)
            self._emit("up", key, (name, source.key), [self._value(Ref(source.key))])
            self.refs[name] = source._replace(key=key)
            return
        source = self._sum_ref(parts, sources) if len(parts) == len(ex.forward_in[name]) else None
        if source is None:  # recurrent parts: an ordered sum
            for ref in parts:
                if ref.key[0] == "thr":
                    self._value(ref)
            source = Ref(self._emit("sum", ("sum", tuple(parts)), parts, [r.key for r in parts]))
        dense = self._value(source)
        self.refs[name] = Ref(self._emit("node", ("node", name), name, [dense]))

    def _liveness(self, plan: Plan) -> None:
        last_use: dict[Any, int] = {}
        for index, (_, _, _, inputs) in enumerate(plan.ops):
            for key in inputs:
                last_use[key] = index
        keep = set(plan.carry)
        plan.free_after = [[] for _ in plan.ops]
        for key, index in last_use.items():
            if key not in keep:
                plan.free_after[index].append(key)


def _count(ex: Any, values: dict[Any, Tensor], groups: list[tuple[Any, tuple]]) -> Tensor:
    """Σ_k [v > θ_k] over the Threshold nodes of each parent value v (module docstring)."""
    total: Tensor | None = None
    for parent, rule in groups:
        v = values[parent]
        if rule[0] == "ceil":
            count = torch.sub(v, 0.5).ceil_().clamp_(0, rule[1])
        else:
            names = rule[1]
            count = (v > ex._p(names[0], "threshold")).to(ex.dtype)
            for name in names[1:]:
                count += v > ex._p(name, "threshold")
        total = count if total is None else total + count
    assert total is not None
    return total


def execute(
    planner: Planner, frames: list[Tensor], state: dict[str, Tensor], spike_dtype: Any
) -> dict[str, list[Tensor]]:
    """Run the plans over ``frames``; neuron states in ``state`` (only the readouts' remain
    after the last step); returns population -> spike counts per step (``spike_dtype``)."""
    ex = planner.ex
    spikes: dict[str, list[Tensor]] = {p: [] for p in ex.populations}
    carried: list[Tensor] = []
    for step, frame in enumerate(frames):
        last = step == len(frames) - 1
        plan = planner.plan(step == 0, last)
        values: dict[Any, Tensor] = {("prev", s): v for s, v in zip(ex.recurrent_sources, carried)}
        carried = []
        for index, (op, key, args, inputs) in enumerate(plan.ops):
            if op == "conv":
                name, source = args
                x = materialize(source, values)
                values[key] = F.conv2d(
                    x, ex._p(name, "weight"), ex._p(name, "bias"), **ex.static[name]
                )
            elif op == "count":
                values[key] = _count(ex, values, args)
            elif op == "node":
                values[key] = ex._step(args, values[inputs[0]], state)
                if last and args not in ex.readout_means:  # no later step reads the state
                    for entry in (args, args + "#syn"):
                        state.pop(entry, None)
            elif op == "spikes":
                value = values[inputs[0]]
                spikes[key].append((value if args else value.round()).to(spike_dtype))
            elif op == "sum":
                values[key] = fan_in(args, values)
            elif op == "place":
                values[key] = materialize(args, values)
            elif op == "up":
                values[key] = ex._pool(args[0], values[args[1]])
            elif op == "thr":
                values[key] = (values[inputs[0]] > ex._p(args, "threshold")).to(ex.dtype)
            elif op == "input":
                values[key] = frame
            for done in plan.free_after[index]:
                del values[done]
        carried = [values[k] for k in plan.carry]
    return spikes


def run_every_node(
    ex: Any, frames: list[Tensor], state: dict[str, Tensor], spike_dtype: torch.dtype
) -> tuple[dict[str, list[Tensor]], dict[str, list[Tensor]]]:
    """Every node in topological order, each output kept for the step (and recorded)."""
    previous: dict[str, Tensor] = {}
    spikes: dict[str, list[Tensor]] = {p: [] for p in ex.populations}
    recorded: dict[str, list[Tensor]] = {n: [] for n in ex.names}
    for frame in frames:
        out: dict[str, Tensor] = {}
        for name in ex.order:
            if ex.kinds[name] == "Input":
                out[name] = frame
                continue
            parts = [out[s] for s in ex.forward_in[name]]
            parts += [previous[s] for s in ex.recurrent_in[name] if s in previous]
            if not parts:
                raise SpikedetError("node has no input at this step", name)
            total = parts[0]
            for part in parts[1:]:
                total = total + part
            out[name] = ex._step(name, total, state)
        for pop, thresholds in ex.populations.items():
            count = out[thresholds[0]]
            for q in thresholds[1:]:
                count = count + out[q]
            spikes[pop].append(count.round().to(spike_dtype))
        previous = {s: out[s] for s in ex.recurrent_sources}
        for name in recorded:
            recorded[name].append(out[name])
    return spikes, recorded


def topological_order(names: list[str], forward_in: dict[str, list[str]]) -> list[str]:
    """Kahn's algorithm over the forward edges, ties broken by node order (deterministic)."""
    pending = {n: len(forward_in[n]) for n in names}
    consumers: dict[str, list[str]] = {n: [] for n in names}
    for dst, srcs in forward_in.items():
        for src in srcs:
            consumers[src].append(dst)
    rank = {n: i for i, n in enumerate(names)}
    ready = sorted((n for n in names if pending[n] == 0), key=rank.__getitem__)
    order: list[str] = []
    while ready:
        node = ready.pop(0)
        order.append(node)
        for dst in consumers[node]:
            pending[dst] -= 1
            if pending[dst] == 0:
                ready.append(dst)
        ready.sort(key=rank.__getitem__)
    if len(order) != len(names):  # cannot happen after split_edges; kept as a guard
        raise SpikedetError("forward edges contain a cycle", "NIR graph")
    return order
