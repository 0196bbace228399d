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

Execution (the same values, less work): convs tagged ``spikedet.groups`` run grouped and
convs writing part of a concatenation (``spikedet.out_offset``) compute only their rows, after
checking that the weights left out are zero (``nir_torch_weights``); constant per-neuron
arrays are held compact; without ``record`` a step program (``nir_torch_plan``) computes each
distinct value once, frees it after its last use and skips nodes nothing reads. Summation
orders inside a conv differ from the expanded conv's, so results agree with it to float
rounding (bit for bit where the sums are exact, tests/test_reference_speed.py).
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
from spikedet.convert.nir_torch_plan import (
    Planner,
    Ref,
    execute,
    materialize,
    run_every_node,
    topological_order,
)
from spikedet.convert.nir_torch_weights import compact_param, conv_spec
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
        self.order = topological_order(self.names, self.forward_in)
        self.recurrent_sources = sorted({s for srcs in self.recurrent_in.values() for s in srcs})
        self.input_shapes = {
            n: tuple(int(v) for v in np.asarray(nodes[n].input_type["input"]).reshape(-1))
            for n in self.inputs
        }
        self.static: dict[str, dict[str, Any]] = {}
        self.conv_specs: dict[str, dict[str, Any]] = {}
        self._buffer_names: dict[str, dict[str, str]] = {}
        self._full_shapes: dict[tuple[str, str], tuple[int, ...]] = {}
        self._identity: dict[str, tuple[bool, bool]] = {}  # LI/LIF: (gain == 1, leak == 0)
        for index, name in enumerate(self.names):
            self._prepare(index, name, nodes[name])
        self.populations = self._find_populations(nodes, edges)
        self.readout_means = {
            n: meta_str(nodes[n].metadata, "spikedet.readout") == "mean"
            for n in self.names
            if self.kinds[n] in (READOUT_KINDS if self.generic else ("I",))
        }
        self.to(device)
        for name, kind in self.kinds.items():
            if kind in ("LI", "LIF"):
                self._identity[name] = (
                    _is_scalar(self._compact(name, "gain"), 1.0),
                    _is_scalar(self._compact(name, "leak"), 0.0),
                )
        self.planner = Planner(self)

    # -- construction -----------------------------------------------------------------------

    def _tensor(self, index: int, node_name: str, field: str, value: Any) -> None:
        """Register a node array as a buffer (so ``.to()`` moves it); names must be dot-free.

        Elementwise parameters (all but weights, biases and pooling ones) are stored compact
        (``compact_param``) and broadcast back to their shape when read."""
        buffer = f"n{index}_{field}"
        value = np.asarray(value)
        if field not in ("weight", "bias", "ones"):
            self._full_shapes[node_name, field] = value.shape
            value = compact_param(value)
        # float32 arrays go straight to a float32 buffer (exact); anything else via float64.
        source = value if value.dtype == np.float32 else value.astype(np.float64)
        self.register_buffer(buffer, torch.tensor(source, dtype=self.dtype))
        self._buffer_names.setdefault(node_name, {})[field] = buffer

    def _prepare(self, index: int, name: str, node: nir.NIRNode) -> None:
        kind = self.kinds[name]
        if kind in nir_steps.EXTRA_KINDS:
            nir_steps.prepare(self, index, name, node)
        elif kind == "Conv2d":  # grouped and cut to its non-zero rows (nir_torch_weights)
            spec = conv_spec(name, node, np.float64 if self.dtype == torch.float64 else np.float32)
            self._tensor(index, name, "weight", spec.weight)
            self._tensor(index, name, "bias", spec.bias)
            self.static[name] = {
                "stride": spec.stride, "padding": spec.padding,
                "dilation": spec.dilation, "groups": spec.groups,
            }  # fmt: skip
            self.conv_specs[name] = {
                "signature": spec.signature(), "offset": spec.offset,
                "channels": spec.channels, "placed": spec.placed,
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

    def _compact(self, name: str, field: str) -> Tensor:
        return getattr(self, self._buffer_names[name][field])

    def _p(self, name: str, field: str) -> Tensor:
        """A node's parameter; a compact one broadcast (a view) to its full shape."""
        value = self._compact(name, field)
        shape = self._full_shapes.get((name, field))
        return value if shape is None or tuple(value.shape) == shape else value.expand(shape)

    # -- execution --------------------------------------------------------------------------

    def forward(self, x: Tensor, T: int | None = None) -> ExecResult:
        return self.run(x, T)

    @torch.inference_mode()
    def run(
        self,
        x: Tensor,
        T: int | None = None,
        record: bool = False,
        spike_dtype: torch.dtype = torch.int64,
    ) -> ExecResult:
        """Run T steps on ``x`` ([B, C, H, W] repeated each step, or [T, B, C, H, W]).

        ``record`` evaluates every node in order and also returns every node's output per
        step in ``node_outputs``; otherwise the step program of ``nir_torch_plan`` computes
        the same spikes and readouts with each distinct value once. Spike counts are
        ``spike_dtype`` (``spike_dtype_for`` gives the narrowest exact one).
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
        if record:
            spikes, recorded = run_every_node(self, frames, state, spike_dtype)
        else:
            spikes, recorded = execute(self.planner, frames, state, spike_dtype), {}
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

    def spike_dtype_for(self) -> torch.dtype:
        """The narrowest integer type that holds every population's largest count."""
        largest = max((len(nodes) for nodes in self.populations.values()), default=1)
        return torch.int8 if largest <= 127 else torch.int16 if largest <= 32767 else torch.int64

    def _step(self, name: str, x: Tensor, state: dict[str, Tensor]) -> Tensor:
        """One node, one step: ``x`` is its summed input; neuron state lives in ``state``."""
        kind = self.kinds[name]
        if kind == "Output":
            return x
        if kind in nir_steps.EXTRA_KINDS:
            return nir_steps.step(self, name, x, state)
        if kind == "Conv2d":  # the node's full output: the computed rows placed
            conv = F.conv2d(x, self._p(name, "weight"), self._p(name, "bias"), **self.static[name])
            spec = self.conv_specs[name]
            placed = Ref(None, spec["offset"], spec["channels"]) if spec["placed"] else None
            return conv if placed is None else materialize(placed, {None: conv})
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
        if kind in ("LI", "LIF"):  # a gain of exactly 1 / leak of exactly 0 changes no value
            unit_gain, zero_leak = self._identity[name]
            drive = x if unit_gain else self._p(name, "gain") * x
            drive = drive if zero_leak else drive + self._p(name, "leak")
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


def _is_scalar(value: Tensor, target: float) -> bool:
    return value.numel() == 1 and float(value.reshape(-1)[0]) == target
