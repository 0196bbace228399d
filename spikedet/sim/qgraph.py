"""The quantized graph: what both integer engines (``fixed`` and ``lava``) execute.

Plain dataclasses validated at construction, saved as one ``.npz`` (arrays) with a JSON header,
readable with numpy 1.x (inside ``.venv-lava``) and 2.x. Semantics: docs/semantics.md §3.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from spikedet.errors import SpikedetError
from spikedet.fileio import atomic_path

STATE_BITS = 24
DECAY_BITS = 12
POP_KINDS = ("ilif", "readout")


@dataclass
class QInput:
    """The graph input: integers ``x_int`` (= float input x input_scale), graded messages."""

    shape: tuple[int, int, int]
    scale: int
    bits: int = 8

    def __post_init__(self) -> None:
        self.shape = tuple(int(v) for v in self.shape)  # type: ignore[assignment]
        if len(self.shape) != 3 or min(self.shape) < 1:
            raise SpikedetError(f"input shape must be (C, H, W), got {self.shape}", "input")


@dataclass
class QPopulation:
    """A neuron population (docs/semantics.md §3.2): I-LIF or a non-spiking readout."""

    name: str
    kind: str
    shape: tuple[int, int, int]
    theta: int
    bias: np.ndarray  # int64, (C,)
    depth: int = 0
    D: int = 0  # spike levels (ilif)
    dv: int = 0  # 12-bit voltage decay: u <- u * (4096 - dv) >> 12
    metadata: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.shape = tuple(int(v) for v in self.shape)  # type: ignore[assignment]
        self.bias = np.asarray(self.bias, dtype=np.int64).reshape(-1)
        where = f"population {self.name}"
        if self.kind not in POP_KINDS:
            raise SpikedetError(f"unknown population kind {self.kind!r}", where)
        if len(self.shape) != 3 or min(self.shape) < 1:
            raise SpikedetError(f"shape must be (C, H, W), got {self.shape}", where)
        if self.bias.shape != (self.shape[0],):
            raise SpikedetError(f"bias has {self.bias.shape}, expected ({self.shape[0]},)", where)
        if self.theta < 2 or self.theta % 2:
            raise SpikedetError(f"theta must be an even integer >= 2, got {self.theta}", where)
        if self.kind == "ilif" and not (1 <= self.D <= 255):
            raise SpikedetError(f"D must be in 1..255, got {self.D}", where)
        if not (0 <= self.dv < 1 << DECAY_BITS):
            raise SpikedetError(f"dv must be a 12-bit decay, got {self.dv}", where)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))


@dataclass
class QSynapse:
    """A convolution from ``src`` (a population name or ``"input"``) into population ``dst``."""

    name: str
    src: str
    dst: str
    weight: np.ndarray  # int64, torch layout (Cout, Cin/groups, KH, KW)
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    groups: int = 1
    delay: int = 0  # extra steps beyond the one-step synapse latency (§3.3)

    def __post_init__(self) -> None:
        self.weight = np.asarray(self.weight, dtype=np.int64)
        self.stride = tuple(int(v) for v in self.stride)  # type: ignore[assignment]
        self.padding = tuple(int(v) for v in self.padding)  # type: ignore[assignment]
        where = f"synapse {self.name}"
        if self.weight.ndim != 4:
            raise SpikedetError(f"conv weight must be 4-D, got {self.weight.shape}", where)
        if self.weight.shape[0] % self.groups:
            raise SpikedetError("output channels not divisible by groups", where)
        if self.delay < 0:
            raise SpikedetError(f"negative delay {self.delay}", where)


@dataclass
class QuantGraph:
    """Populations in topological order, synapses, and the run length T (logical steps)."""

    T: int
    input: QInput
    populations: list[QPopulation]
    synapses: list[QSynapse]
    message_bits: int = 3  # graded payload of I-LIF spikes
    metadata: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        names = [p.name for p in self.populations]
        if len(set(names)) != len(names) or "input" in names:
            raise SpikedetError("population names must be unique and not 'input'", "QuantGraph")
        order = {n: i for i, n in enumerate(names)}
        order["input"] = -1
        for s in self.synapses:
            if s.src not in order or s.dst not in order:
                raise SpikedetError(f"unknown endpoint {s.src} -> {s.dst}", f"synapse {s.name}")
            if order[s.src] >= order[s.dst]:
                raise SpikedetError("populations are not in topological order", f"synapse {s.name}")
            if s.src != "input" and self.pop(s.src).kind != "ilif":
                raise SpikedetError("a readout cannot be a synapse source", f"synapse {s.name}")

    def pop(self, name: str) -> QPopulation:
        for p in self.populations:
            if p.name == name:
                return p
        raise KeyError(name)

    def incoming(self, name: str) -> list[QSynapse]:
        return [s for s in self.synapses if s.dst == name]

    def src_shape(self, src: str) -> tuple[int, int, int]:
        return self.input.shape if src == "input" else self.pop(src).shape

    @property
    def hw_steps(self) -> int:
        """Hardware steps of one run: max depth + T (§3.3)."""
        return max(p.depth for p in self.populations) + self.T

    # ---- serialization -------------------------------------------------------------------
    def save(self, path: str | Path) -> None:
        arrays: dict[str, np.ndarray] = {}
        header = {
            "format": 1,
            "T": self.T,
            "message_bits": self.message_bits,
            "metadata": self.metadata,
            "input": {
                "shape": list(self.input.shape),
                "scale": self.input.scale,
                "bits": self.input.bits,
            },
            "populations": [],
            "synapses": [],
        }
        for i, p in enumerate(self.populations):
            arrays[f"p{i}_bias"] = p.bias
            header["populations"].append(
                {
                    "name": p.name,
                    "kind": p.kind,
                    "shape": list(p.shape),
                    "theta": p.theta,
                    "depth": p.depth,
                    "D": p.D,
                    "dv": p.dv,
                    "metadata": p.metadata,
                }
            )
        for i, s in enumerate(self.synapses):
            arrays[f"s{i}_weight"] = s.weight
            header["synapses"].append(
                {
                    "name": s.name,
                    "src": s.src,
                    "dst": s.dst,
                    "stride": list(s.stride),
                    "padding": list(s.padding),
                    "groups": s.groups,
                    "delay": s.delay,
                }
            )
        arrays["header"] = np.array(json.dumps(header))
        with atomic_path(path, suffix=".npz") as tmp:
            np.savez_compressed(tmp, **arrays)

    @classmethod
    def load(cls, path: str | Path) -> QuantGraph:
        try:
            with np.load(path, allow_pickle=False) as z:
                header = json.loads(str(z["header"]))
                pops = [
                    QPopulation(bias=z[f"p{i}_bias"], **h)
                    for i, h in enumerate(header["populations"])
                ]
                syns = [
                    QSynapse(weight=z[f"s{i}_weight"], **h)
                    for i, h in enumerate(header["synapses"])
                ]
        except SpikedetError:
            raise
        except Exception as err:  # corrupt or foreign file
            raise SpikedetError(f"not a spikedet quantized graph: {err}", str(path)) from None
        return cls(
            T=header["T"],
            input=QInput(**header["input"]),
            populations=pops,
            synapses=syns,
            message_bits=header["message_bits"],
            metadata=header["metadata"],
        )
