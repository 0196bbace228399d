"""What the ``fixed`` engine works out once per graph: distinct convs and prepared weights.

A graph exported from a torch model holds many synapses that compute the same numbers: a conv
whose output feeds several populations (a membrane shortcut, a concatenation read by two
layers) becomes one synapse per destination, each with the same source, geometry and integer
weights; in spikeyolo-n a third of the engine's MACs were such copies. Their outputs before
placement (wrap24 included: it depends only on the conv and its source's peak) are equal, so
one conv per group is computed per run and its wrapped output reused by every member; only
the placement (``out_offset``, ``upsample``) is per synapse, and it happens after the conv.

The weight work (|W| bounds, the cast to the GEMM dtype, the matrix layout) is done here once
(``fixed_conv.prepare_conv``) instead of on every run. ``PlanCache`` keeps the plans of the
last graphs an engine ran, checked against the graph's structure at every run: a graph whose
synapses, weight arrays or populations were replaced gets a new plan. (A weight array written
into in place after a run is not detected: build a new engine for it.)

Distinct int8 convs (``fixed_torch``) that read the same source through the same geometry
(kernel size, stride, padding; e.g. a source feeding several populations, or the pools and
convs composed into one concatenation's readers) are stacked: their weight matrices are one
[sum Cout, K] matrix, so one im2col copy and one larger (faster) GEMM compute all of them;
each member's output is its row range, held until its synapses have used it.

Populations with lagged synapses (``fixed_lagged``) compute their input without the plan.
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass

import numpy as np

from spikedet.sim.fixed_conv import PreparedConv, Workspace, conv_int, prepare_conv, wrap24
from spikedet.sim.fixed_torch import stack_int8
from spikedet.sim.qgraph import QSynapse, QuantGraph


def source_peak(qg: QuantGraph, src: str) -> int:
    """The largest value a source sends: 2^bits - 1 for the input, D for spikes."""
    return (1 << qg.input.bits) - 1 if src == "input" else qg.pop(src).D


def conv_key(syn: QSynapse) -> tuple:
    """What makes two synapses compute the same conv output (before placement)."""
    digest = hashlib.blake2b(np.ascontiguousarray(syn.weight).tobytes(), digest_size=16)
    return (
        syn.src, syn.stride, syn.padding, syn.dilation, syn.groups, syn.weight.shape,
        digest.digest(),
    )  # fmt: skip


def graph_signature(qg: QuantGraph) -> tuple:
    """The structure a plan depends on (object identities of synapses and weight arrays)."""
    synapses = tuple(
        (id(s), id(s.weight), s.src, s.dst, s.stride, s.padding, s.dilation, s.groups, s.lag)
        for s in qg.synapses
    )
    pops = tuple((p.name, p.kind, p.D) for p in qg.populations)
    return qg.input.bits, synapses, pops


@dataclass
class Stack:
    """Convs computed as one: ``conv`` has the members' int8 weights stacked along Cout,
    ``members`` (conv index, first row, end row) their row ranges in its output."""

    conv: PreparedConv
    members: list[tuple[int, int, int]]


@dataclass
class GraphPlan:
    """Distinct convs of a graph: ``convs[conv_of[id(syn)]]`` is ``syn``'s prepared conv and
    ``uses[i]`` the number of synapses sharing conv i; ``stacks[stack_of[i]]`` the stack of
    conv i, if it is in one."""

    convs: list[PreparedConv]
    conv_of: dict[int, int]
    uses: list[int]
    synapses: list[QSynapse]  # held: the ids in conv_of stay theirs
    stacks: list[Stack] = dataclasses.field(default_factory=list)
    stack_of: dict[int, int] = dataclasses.field(default_factory=dict)

    def conv(self, syn: QSynapse) -> tuple[int, PreparedConv] | None:
        index = self.conv_of.get(id(syn))
        return None if index is None else (index, self.convs[index])

    def held(self, index: int) -> bool:
        """Conv ``index``'s output is kept for later synapses (shared, or from a stack)."""
        return index >= 0 and (self.uses[index] > 1 or index in self.stack_of)


def stack_key(syn: QSynapse, conv: PreparedConv) -> tuple | None:
    """What stacked convs have in common (None: the conv is not stackable)."""
    if conv.int8 is None or conv.out_dtype is not np.int32:
        return None
    return syn.src, conv.shape[1:], conv.stride, conv.padding, conv.int8.offset


def plan_stacks(convs: list[PreparedConv], first: list[QSynapse]) -> tuple[list, dict]:
    """Group stackable convs by ``stack_key``; groups of two or more become ``Stack``s."""
    groups: dict[tuple, list[int]] = {}
    for index, (conv, syn) in enumerate(zip(convs, first, strict=True)):
        key = stack_key(syn, conv)
        if key is not None:
            groups.setdefault(key, []).append(index)
    stacks: list[Stack] = []
    stack_of: dict[int, int] = {}
    for members in groups.values():
        if len(members) < 2:
            continue
        rows, start = [], 0
        for index in members:
            rows.append((index, start, start + convs[index].shape[0]))
            start += convs[index].shape[0]
        head = convs[members[0]]
        stacked = dataclasses.replace(
            head, shape=(start, *head.shape[1:]), int8=stack_int8([convs[i].int8 for i in members]),
            bound=max(convs[i].bound for i in members), wrap=False,
        )  # fmt: skip
        for index in members:
            stack_of[index] = len(stacks)
        stacks.append(Stack(stacked, rows))
    return stacks, stack_of


def compute_stack(
    plan: GraphPlan, index: int, flat: np.ndarray, ws: Workspace, shared: SharedOutputs
) -> np.ndarray:
    """Every member of conv ``index``'s stack on ``flat`` [N, Cin, H, W] at once, each wrapped
    where it can wrap and kept in ``shared``; returns conv ``index``'s output (a row view)."""
    stack = plan.stacks[plan.stack_of[index]]
    ho, wo = stack.conv.out_hw(*flat.shape[2:])
    out = np.empty((flat.shape[0], stack.conv.shape[0], ho, wo), np.int32)
    conv_int(flat, None, out=out, workspace=ws, prepared=stack.conv)
    for member, start, end in stack.members:
        view = out[:, start:end]
        if plan.convs[member].wrap:
            wrap24(view, inplace=True)
        shared.put(member, view)
    return shared.get(index)


def plan_graph(qg: QuantGraph) -> GraphPlan:
    """Group the synapses into distinct convs (``conv_key`` and equal weights) and prepare
    each once; synapses into populations with a lagged synapse are left out."""
    lagged = {s.dst for s in qg.synapses if s.lag}
    convs: list[PreparedConv] = []
    first: list[QSynapse] = []  # one member of each conv, to confirm equal weights
    uses: list[int] = []
    conv_of: dict[int, int] = {}
    by_key: dict[tuple, list[int]] = {}
    for syn in qg.synapses:
        if syn.dst in lagged:
            continue
        candidates = by_key.setdefault(conv_key(syn), [])
        index = next((i for i in candidates if np.array_equal(first[i].weight, syn.weight)), None)
        if index is None:
            index = len(convs)
            convs.append(prepare_conv(syn, source_peak(qg, syn.src)))
            first.append(syn)
            uses.append(0)
            candidates.append(index)
        conv_of[id(syn)] = index
        uses[index] += 1
    stacks, stack_of = plan_stacks(convs, first)
    return GraphPlan(convs, conv_of, uses, list(qg.synapses), stacks, stack_of)


class PlanCache:
    """The plans of the last ``size`` graphs run, each valid while ``graph_signature`` holds."""

    def __init__(self, size: int = 2) -> None:
        self.size = size
        self._entries: list[tuple[QuantGraph, tuple, GraphPlan]] = []

    def get(self, qg: QuantGraph) -> GraphPlan:
        signature = graph_signature(qg)
        for graph, sig, plan in self._entries:
            if graph is qg and sig == signature:
                return plan
        kept = [e for e in self._entries if e[0] is not qg]
        self._entries = kept[max(0, len(kept) - self.size + 1) :]
        plan = plan_graph(qg)
        self._entries.append((qg, signature, plan))
        return plan


class SharedOutputs:
    """Wrapped outputs of convs with several members during one run, freed after their last
    use (``GraphPlan.uses``)."""

    def __init__(self, plan: GraphPlan) -> None:
        self._left = list(plan.uses)
        self._outputs: dict[int, np.ndarray] = {}

    def get(self, index: int) -> np.ndarray | None:
        return self._outputs.get(index)

    def put(self, index: int, value: np.ndarray) -> None:
        self._outputs[index] = value

    def used(self, index: int) -> None:
        self._left[index] -= 1
        if self._left[index] <= 0:
            self._outputs.pop(index, None)
