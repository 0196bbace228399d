"""The engine interface: what every simulator of a QuantGraph returns, and how results compare.

Every engine imports this module; the registry of engines by name is ``spikedet.sim.registry``.

An engine executes docs/semantics.md §3 on integer input ``x_int`` ([B, C, H, W], presented at
every logical step, or [T, B, C, H, W]) and reports per logical step the integer spikes of
every spiking population (I-LIF, LIF, maxpool) and the final integrator value of every
readout.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from spikedet.errors import SpikedetError
from spikedet.sim.qgraph import QuantGraph


@dataclass
class EngineResult:
    """Spikes [T, B, C, H, W] per spiking population (ilif, lif, maxpool; integers: int64, or
    int8 / int16 from the ``fixed`` engine's I-LIF, LIF and maxpool populations); readout
    v_{T-1} int64 [B, C, H, W] per readout population."""

    spikes: dict[str, np.ndarray]
    readouts: dict[str, np.ndarray]
    wall_s: float
    engine: str
    info: dict = field(default_factory=dict)


class Engine(Protocol):
    """A simulator of QuantGraphs (a profile says *what*, an engine implements *how*)."""

    name: str

    def available(self) -> tuple[bool, str]:
        """(usable here?, why not / which backend)."""
        ...

    def run(self, qg: QuantGraph, x_int: np.ndarray) -> EngineResult: ...


def check_input(qg: QuantGraph, x_int: np.ndarray) -> np.ndarray:
    """Validate ``x_int`` and return it as int64 [T', B, C, H, W] with T' = 1 (static) or T.

    Values are graded input messages of ``qg.input.bits`` bits: 0 <= x < 2^bits.
    """
    x = np.asarray(x_int)
    where = "engine input"
    if not (np.issubdtype(x.dtype, np.integer) or x.dtype == np.bool_):
        raise SpikedetError(f"input must be integers (x * input_scale), got dtype {x.dtype}", where)
    if x.ndim == 4:
        x = x[None]
    if x.ndim != 5 or x.shape[0] not in (1, qg.T) or tuple(x.shape[2:]) != qg.input.shape:
        raise SpikedetError(
            f"input shape {tuple(np.shape(x_int))} is neither [B, *{qg.input.shape}] nor "
            f"[T={qg.T}, B, *{qg.input.shape}]",
            where,
        )
    if x.shape[1] < 1:
        raise SpikedetError("empty batch", where)
    x = x.astype(np.int64)
    if x.size and (x.min() < 0 or x.max() >= 1 << qg.input.bits):
        raise SpikedetError(
            f"input values {x.min()}..{x.max()} exceed {qg.input.bits}-bit graded messages", where
        )
    return x


def readout_floats(qg: QuantGraph, result: EngineResult) -> dict[str, np.ndarray]:
    """Float readouts (§3.2): v_{T-1} / (theta * T), the time-average in membrane units."""
    return {
        name: (v.astype(np.float64) / (qg.pop(name).theta * qg.T)).astype(np.float32)
        for name, v in result.readouts.items()
    }


def _first_difference(kind: str, name: str, a: np.ndarray, b: np.ndarray) -> str:
    if a.shape != b.shape:
        return f"{kind} {name}: shape {a.shape} vs {b.shape}"
    idx = tuple(int(i) for i in np.argwhere(a != b)[0])
    return f"{kind} {name} at index {idx}: {a[idx]} vs {b[idx]}"


def _compare_maps(kind: str, a: dict, b: dict, report: dict) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for name in list(a) + [n for n in b if n not in a]:
        if name not in a or name not in b:
            present = a.get(name, b.get(name))
            out[name] = {"mismatches": int(present.size), "values": int(present.size)}
            if report["first_mismatch"] is None:
                side = "second" if name not in b else "first"
                report["first_mismatch"] = f"{kind} {name}: missing in the {side} result"
            continue
        x, y = np.asarray(a[name]), np.asarray(b[name])
        if x.shape != y.shape:
            wrong = max(x.size, y.size)
        else:
            wrong = int(np.count_nonzero(x != y))
        out[name] = {"mismatches": wrong, "values": int(max(x.size, y.size))}
        if wrong and report["first_mismatch"] is None:
            report["first_mismatch"] = _first_difference(kind, name, x, y)
    return out


def compare(a: EngineResult, b: EngineResult) -> dict[str, Any]:
    """Element-wise equality of two results: per population and readout, mismatch counts."""
    report: dict[str, Any] = {"first_mismatch": None}
    pops = _compare_maps("population", a.spikes, b.spikes, report)
    reads = _compare_maps("readout", a.readouts, b.readouts, report)
    total = sum(v["mismatches"] for v in pops.values()) + sum(
        v["mismatches"] for v in reads.values()
    )
    return {
        "populations": pops,
        "readouts": reads,
        "total_mismatches": int(total),
        "first_mismatch": report["first_mismatch"],
    }
