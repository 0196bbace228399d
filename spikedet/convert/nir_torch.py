"""Reference executor of NIR semantics in torch (float; CUDA when available).

It runs any graph made of the supported primitives, not just ours: nodes are evaluated once per
time step in a topological order of the graph without its recurrent edges; a node's input is
the fan-in sum of its incoming edges; a recurrent edge (one that closes a cycle, found by a
depth-first search from the Input nodes) delivers its source's output of the previous step
(zero at t = 0), a one-step delay as in nirtorch. Neurons use forward Euler with the graph's
``dt`` (metadata ``dt``, default 1e-4):

    LI:  v <- v + (dt/τ)·(v_leak − v + r·I)           output v
    I:   v <- v + dt·r·I                               output v
    LIF: LI update, z = [v > v_th], v <- v_reset where z   output z
    IF:  I update,  z = [v > v_th], v <- v_reset where z   output z
    Threshold: [x > θ] (strict), Scale: s·x, Affine: W·x + b, Linear: W·x, Conv2d, Flatten,
    SumPool2d: window sums with zero padding.

spikedet's extension ops (docs/semantics.md §2.8) are SumPool2d nodes marked by
``metadata["spikedet.op"]``: ``upsample_nearest`` (nearest ×``spikedet.scale``) and ``max_pool``
(window max of the summed input, padding −∞). A graph must list the ops it uses in
``spikedet.extensions``; unknown ops or extensions, an op missing from the list, or a
``spikedet.format`` other than 1 and 2 (1: no §2.5-2.9 constructs) raise ``SpikedetError``.

States start at 0. Populations: I-LIF (§2.2) LI nodes with ``spikedet.neuron == "ilif"`` (spike
count = sum of the Threshold nodes they feed), EMS LIF (§2.5) LIF nodes with ``"lif"`` (their
binary output) and max-pooled spikes (§2.7b, Threshold nodes ``M.q{k}`` with ``"maxpool"``,
summed per ``M``). Readouts are the ``I`` nodes: the final value, divided by T when
``metadata["spikedet.readout"] == "mean"`` (§2.4).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nir
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from spikedet.convert import nir_steps
from spikedet.convert.nir_format import check_format, meta_str, pool_spec
from spikedet.deploy.nir_flat import flatten, split_edges
from spikedet.errors import SpikedetError
from spikedet.nirio import read_graph

_SUPPORTED = (
    nir.Input, nir.Output, nir.Conv2d, nir.Affine, nir.Linear, nir.Scale, nir.Threshold,
    nir.LI, nir.I, nir.LIF, nir.IF, nir.Flatten, nir.SumPool2d,
    nir.Conv1d, nir.AvgPool2d, nir.Delay, nir.CubaLI, nir.CubaLIF,
)  # fmt: skip
NEURON_KINDS = ("LIF", "IF", "CubaLIF", "Threshold")  # spiking nodes of a third-party graph
READOUT_KINDS = ("I", "LI", "CubaLI")


def load_nir(path: str | os.PathLike) -> nir.NIRGraph:
    """``nir.read(path, type_check=True)``; any failure becomes a SpikedetError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise SpikedetError("NIR file not found", str(path))
    try:
        graph = read_graph(path, type_check=True)
    except Exception as err:  # h5py/nir raise many types (OSError, KeyError, ValueError, ...)
        raise SpikedetError(
            f"not a readable NIR graph: {type(err).__name__}: {err}", str(path)
        ) from err
    if not isinstance(graph, nir.NIRGraph) or not graph.nodes:
        raise SpikedetError("file holds no NIR graph", str(path))
    return graph


@dataclass
class ExecResult:
    """Outputs of one run (batch B, T steps)."""

    spikes: dict[str, Tensor]  # population -> integer spike counts [T, B, C, H, W]
    readouts: dict[str, Tensor]  # integrator node -> [B, ...] (final value, / T for "mean")
    node_outputs: dict[str, Tensor] | None = None  # node -> [T, B, ...] when recorded


class NIRExecutor(nn.Module):
    """Executes a (type-checked) NIR graph step by step; see the module docstring."""

    def __init__(
        self,
        graph: nir.NIRGraph,
        device: str | torch.device | None = None,
        dtype: torch.dtype = torch.float32,
        dt: float | None = None,
        reset: str = "zero",
    ):
        super().__init__()
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.dtype = dtype
        nodes, edges = flatten(graph)  # nested subgraphs inlined (§4.1)
        self.names: list[str] = list(nodes)
        self.kinds: dict[str, str] = {}
        for name, node in nodes.items():
            if not isinstance(node, _SUPPORTED):
                raise SpikedetError(f"unsupported NIR node type {type(node).__name__}", name)
            self.kinds[name] = type(node).__name__
        metadata = graph.metadata if isinstance(graph.metadata, dict) else {}
        self.extensions = check_format(graph, metadata)
        # dt: the caller's (--dt), else the graph's, else 1e-4 (spikedet's own graphs carry it)
        self.dt = float(dt if dt is not None else metadata.get("dt", 1e-4))
        self.reset = reset
        # a graph without spikedet metadata: its neuron nodes are the populations (§4)
        self.generic = "spikedet.format" not in metadata and "spikedet.T" not in metadata
        self.default_T = int(metadata["spikedet.T"]) if "spikedet.T" in metadata else None
        self.inputs = [n for n in self.names if self.kinds[n] == "Input"]
        if not self.inputs:
            raise SpikedetError("graph has no Input node", "NIR graph")
        self.forward_in, self.recurrent_in = split_edges(self.names, edges, self.inputs)
        self.order = _topological_order(self.names, self.forward_in)
        self.recurrent_sources = sorted({s for srcs in self.recurrent_in.values() for s in srcs})
        self.input_shapes = {
            n: tuple(int(v) for v in np.asarray(nodes[n].input_type["input"]).reshape(-1))
            for n in self.inputs
        }
        self.static: dict[str, dict[str, Any]] = {}
        self._buffer_names: dict[str, dict[str, str]] = {}
        for index, name in enumerate(self.names):
            self._prepare(index, name, nodes[name])
        self.populations = self._find_populations(nodes, edges)
        self.readout_means = {
            n: meta_str(nodes[n].metadata, "spikedet.readout") == "mean"
            for n in self.names
            if self.kinds[n] in (READOUT_KINDS if self.generic else ("I",))
        }
        self.to(device)

    # -- construction -----------------------------------------------------------------------

    def _tensor(self, index: int, node_name: str, field: str, value: Any) -> None:
        """Register a node array as a buffer (so ``.to()`` moves it); names must be dot-free."""
        buffer = f"n{index}_{field}"
        value = np.asarray(value)
        # float32 arrays go straight to a float32 buffer (exact); anything else via float64.
        source = value if value.dtype == np.float32 else value.astype(np.float64)
        self.register_buffer(buffer, torch.tensor(source, dtype=self.dtype))
        self._buffer_names.setdefault(node_name, {})[field] = buffer

    def _prepare(self, index: int, name: str, node: nir.NIRNode) -> None:
        kind = self.kinds[name]
        if kind in nir_steps.EXTRA_KINDS:
            nir_steps.prepare(self, index, name, node)
        elif kind == "Conv2d":
            self._tensor(index, name, "weight", node.weight)
            self._tensor(index, name, "bias", node.bias)
            padding = node.padding if isinstance(node.padding, str) else _pair(node.padding)
            self.static[name] = {
                "stride": _pair(node.stride), "padding": padding,
                "dilation": _pair(node.dilation), "groups": int(node.groups),
            }  # fmt: skip
        elif kind in ("Affine", "Linear"):
            self._tensor(index, name, "weight", node.weight)
            if kind == "Affine":
                self._tensor(index, name, "bias", node.bias)
        elif kind == "Scale":
            self._tensor(index, name, "scale", node.scale)
        elif kind == "Threshold":
            self._tensor(index, name, "threshold", node.threshold)
        elif kind in ("LI", "LIF"):
            # Coefficients in float64 then rounded once: v <- keep·v + gain·I + leak.
            step = self.dt / np.asarray(node.tau, np.float64)
            self._tensor(index, name, "keep", 1.0 - step)
            self._tensor(index, name, "gain", step * np.asarray(node.r, np.float64))
            self._tensor(index, name, "leak", step * np.asarray(node.v_leak, np.float64))
        elif kind in ("I", "IF"):
            self._tensor(index, name, "gain", self.dt * np.asarray(node.r, np.float64))
        if kind in ("LIF", "IF"):
            self._tensor(index, name, "v_threshold", node.v_threshold)
            self._tensor(index, name, "v_reset", node.v_reset)
        if kind == "Flatten":
            self.static[name] = {"start": int(node.start_dim), "end": int(node.end_dim)}
        if kind == "SumPool2d":
            self.static[name] = pool_spec(name, node)
            if self.static[name]["op"] == "sum":  # ones per channel: exact integer sums
                self._tensor(index, name, "ones", np.ones((1, 1, *self.static[name]["kernel"])))

    def _find_populations(self, nodes: dict, edges: list) -> dict[str, list[str]]:
        """Population name -> the nodes whose summed output is its spike count: an I-LIF's
        Threshold nodes (name = LI node without ``.li``), an EMS LIF node (without ``.lif``),
        a max-pooled population's ``M.q{k}`` nodes (name ``M``)."""
        pops: dict[str, list[str]] = {}
        for name in self.names:
            neuron = meta_str(nodes[name].metadata, "spikedet.neuron")
            kind = self.kinds[name]
            if self.generic and kind in NEURON_KINDS:
                pops[name] = [name]
            elif kind == "LI" and neuron == "ilif":
                pop = name[: -len(".li")] if name.endswith(".li") else name
                pops[pop] = [d for s, d in edges if s == name and self.kinds[d] == "Threshold"]
                if not pops[pop]:
                    raise SpikedetError("I-LIF population has no Threshold nodes", name)
            elif kind == "LIF" and neuron == "lif":
                pops[name[: -len(".lif")] if name.endswith(".lif") else name] = [name]
            elif kind == "Threshold" and neuron == "maxpool":
                match = re.fullmatch(r"(.+)\.q\d+", name)
                pops.setdefault(match.group(1) if match else name, []).append(name)
        return pops

    def _p(self, name: str, field: str) -> Tensor:
        return getattr(self, self._buffer_names[name][field])

    # -- execution --------------------------------------------------------------------------

    def forward(self, x: Tensor, T: int | None = None) -> ExecResult:
        return self.run(x, T)

    @torch.no_grad()
    def run(self, x: Tensor, T: int | None = None, record: bool = False) -> ExecResult:
        """Run T steps on ``x`` ([B, C, H, W] repeated each step, or [T, B, C, H, W]).

        ``record`` also returns every node's output per step in ``node_outputs``.
        """
        if len(self.inputs) != 1:
            raise SpikedetError(f"run() feeds one Input node, graph has {self.inputs}", "NIR graph")
        (input_name,) = self.inputs
        shape = self.input_shapes[input_name]
        device = next((b.device for b in self.buffers()), torch.device("cpu"))
        x = torch.as_tensor(x).to(device=device, dtype=self.dtype)
        if x.dim() == len(shape) + 1:
            steps = T if T is not None else self.default_T
            if steps is None or int(steps) < 1:
                raise SpikedetError(f"need T >= 1 steps (given or spikedet.T), got {steps}", "run")
            frames = [x] * int(steps)
        elif x.dim() == len(shape) + 2:
            if T is not None and T != x.shape[0]:
                raise SpikedetError(f"T={T} but the input has {x.shape[0]} steps", "run")
            frames = list(x.unbind(0))
        else:
            frames = []
        if not frames or tuple(frames[0].shape[1:]) != shape:
            raise SpikedetError(
                f"input must be [B,{','.join(map(str, shape))}] or [T,B,...], got {list(x.shape)}",
                input_name,
            )
        state: dict[str, Tensor] = {}
        previous: dict[str, Tensor] = {}
        spikes: dict[str, list[Tensor]] = {p: [] for p in self.populations}
        recorded: dict[str, list[Tensor]] = {n: [] for n in self.names} if record else {}
        for frame in frames:
            out: dict[str, Tensor] = {}
            for name in self.order:
                if self.kinds[name] == "Input":
                    out[name] = frame
                    continue
                parts = [out[s] for s in self.forward_in[name]]
                parts += [previous[s] for s in self.recurrent_in[name] if s in previous]
                if not parts:
                    raise SpikedetError("node has no input at this step", name)
                total = parts[0]
                for part in parts[1:]:
                    total = total + part
                out[name] = self._step(name, total, state)
            for pop, thresholds in self.populations.items():
                count = out[thresholds[0]]
                for q in thresholds[1:]:
                    count = count + out[q]
                spikes[pop].append(count.round().to(torch.int64))
            previous = {s: out[s] for s in self.recurrent_sources}
            for name in recorded:
                recorded[name].append(out[name])
        steps = len(frames)
        readouts = {
            n: state[n] / steps if mean else state[n].clone()
            for n, mean in self.readout_means.items()
            if n in state
        }
        return ExecResult(
            spikes={p: torch.stack(v) for p, v in spikes.items()},
            readouts=readouts,
            node_outputs={n: torch.stack(v) for n, v in recorded.items()} if record else None,
        )

    def _step(self, name: str, x: Tensor, state: dict[str, Tensor]) -> Tensor:
        """One node, one step: ``x`` is its summed input; neuron state lives in ``state``."""
        kind = self.kinds[name]
        if kind == "Output":
            return x
        if kind in nir_steps.EXTRA_KINDS:
            return nir_steps.step(self, name, x, state)
        if kind == "Conv2d":
            return F.conv2d(x, self._p(name, "weight"), self._p(name, "bias"), **self.static[name])
        if kind == "Affine":
            return F.linear(x, self._p(name, "weight"), self._p(name, "bias"))
        if kind == "Linear":
            return F.linear(x, self._p(name, "weight"))
        if kind == "Scale":
            return x * self._p(name, "scale")
        if kind == "Threshold":
            return (x > self._p(name, "threshold")).to(self.dtype)
        if kind == "SumPool2d":
            return self._pool(name, x)
        if kind == "Flatten":
            # NIR dims exclude the batch axis; negative dims count from the end either way.
            start, end = self.static[name]["start"], self.static[name]["end"]
            return torch.flatten(
                x, start + 1 if start >= 0 else start, end + 1 if end >= 0 else end
            )
        v = state.get(name)
        if kind in ("LI", "LIF"):
            drive = self._p(name, "gain") * x + self._p(name, "leak")
            v = drive if v is None else self._p(name, "keep") * v + drive
        else:  # I, IF
            drive = self._p(name, "gain") * x
            v = drive if v is None else v + drive
        if kind in ("LI", "I"):
            state[name] = v
            return v
        return nir_steps.fire(self, name, v, state)

    def _pool(self, name: str, x: Tensor) -> Tensor:
        """A SumPool2d node: plain sum pooling, or one of the §2.8 extension ops."""
        st = self.static[name]
        if st["op"] == "max_pool":
            return F.max_pool2d(x, st["kernel"], st["stride"], st["padding"])
        if st["op"] == "upsample_nearest":
            if tuple(x.shape[-2:]) != tuple(2 * p for p in st["padding"]):
                raise SpikedetError(
                    f"upsample_nearest declares padding {st['padding']} for a "
                    f"{tuple(x.shape[-2:])} input (padding must be H/2, W/2)",
                    name,
                )
            return F.interpolate(x, scale_factor=float(st["scale"]), mode="nearest")
        channels = x.shape[1]
        ones = self._p(name, "ones").expand(channels, 1, *st["kernel"])
        return F.conv2d(x, ones, None, st["stride"], st["padding"], 1, channels)


def _pair(value: Any) -> tuple[int, int]:
    arr = np.asarray(value).reshape(-1)
    return (int(arr[0]), int(arr[0])) if arr.size == 1 else (int(arr[0]), int(arr[1]))


def _topological_order(names: list[str], forward_in: dict[str, list[str]]) -> list[str]:
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
