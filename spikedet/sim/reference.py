"""The float ``reference`` engine: the NIR graph executed in torch (GPU when present).

It wraps ``spikedet.convert.nir_torch.NIRExecutor`` (the float semantics of docs/semantics.md
§1-§2) and measures how far the integer model (§3) strays from it. torch is imported only
inside methods, so this module loads in the torch-free Lava environment too.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from spikedet.errors import SpikedetError
from spikedet.sim.interface import EngineResult, check_input, readout_floats
from spikedet.sim.qgraph import QuantGraph


class ReferenceEngine:
    """Float execution of the NIR graph; spikes are exact integers 0..D, readouts time-averaged."""

    name = "reference"

    def __init__(self, nir_graph: Any = None, device: str | None = None):
        self.nir_graph = nir_graph  # a nir.NIRGraph or a path to a .nir file
        self.device = device  # None: CUDA when present, else CPU (resolved on the first run)
        self._executor: Any = None

    def available(self) -> tuple[bool, str]:
        """(True, device) when torch, the NIR executor and a graph are at hand."""
        if self.nir_graph is None:
            return False, "needs the NIR graph (ReferenceEngine(nir_graph=...))"
        try:
            import torch

            from spikedet.convert.nir_torch import NIRExecutor  # noqa: F401
        except ImportError as err:
            return False, f"needs torch and spikedet.convert.nir_torch ({err})"
        return True, self._device(torch)

    def _device(self, torch: Any) -> str:
        if self.device:
            return self.device
        return "cuda" if torch.cuda.is_available() else "cpu"

    def _graph(self) -> Any:
        """The graph to build the executor from; a file is read with its big conv weights
        left on disk (``load_lazy``), compacted as the executor reads them, and not kept."""
        if self.nir_graph is None:
            raise SpikedetError("the reference engine needs the NIR graph", "engine reference")
        if isinstance(self.nir_graph, (str, Path)):
            from spikedet.convert.nir_torch_weights import load_lazy

            return load_lazy(self.nir_graph)
        return self.nir_graph

    def run_float(
        self, x_float: np.ndarray, T: int | None = None, batch: int = 32
    ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """Run on float input [B, C, H, W] (every step) or [T, B, C, H, W], ``batch`` samples
        at a time (bounded device memory).

        Returns (spikes: population -> integer counts [T, B, C, H, W] in the narrowest exact
        type (int8 for D <= 127, as the fixed engine's), readouts: name -> float32
        [B, C, H, W], the time-averaged integrator values).
        """
        ok, why = self.available()
        if not ok:
            raise SpikedetError(f"reference engine unavailable: {why}", "engine reference")
        import torch

        from spikedet.convert.nir_torch import NIRExecutor

        device = self.device = self._device(torch)
        if self._executor is None:  # built once: it holds the graph's tensors on the device
            self._executor = NIRExecutor(self._graph(), device=device)
        executor = self._executor
        spike_dtype = executor.spike_dtype_for()
        x_all = np.asarray(x_float, dtype=np.float32)
        axis = 1 if x_all.ndim == 5 else 0  # the batch axis
        spikes: dict[str, list[np.ndarray]] = {}
        readouts: dict[str, list[np.ndarray]] = {}
        for start in range(0, max(1, x_all.shape[axis]), max(1, batch)):
            stop = min(start + batch, x_all.shape[axis])
            part = x_all[:, start:stop] if axis else x_all[start:stop]
            result = executor.run(torch.as_tensor(part, device=device), T, spike_dtype=spike_dtype)
            for name, s in result.spikes.items():
                spikes.setdefault(name, []).append(s.detach().cpu().numpy())
            for name, r in result.readouts.items():
                readouts.setdefault(name, []).append(r.detach().cpu().numpy().astype(np.float32))
            del result
        return (
            {name: _joined(parts, 1) for name, parts in spikes.items()},
            {name: _joined(parts, 0) for name, parts in readouts.items()},
        )

    def run(self, qg: QuantGraph, x_int: np.ndarray) -> EngineResult:
        """The Engine interface: float run on x_int / input_scale; readouts are reported in
        the integer units of ``qg`` (round(mean * theta * T)) so ``compare`` applies, the float
        values are in ``info["readouts_float"]``."""
        start = time.perf_counter()
        x = check_input(qg, x_int)
        x_float = x.astype(np.float64) / qg.input.scale
        spikes, floats = self.run_float(x_float[0] if x.shape[0] == 1 else x_float, qg.T)
        readouts = {}
        for name, value in floats.items():
            theta = qg.pop(name).theta if name in {p.name for p in qg.populations} else 1
            readouts[name] = np.rint(value.astype(np.float64) * theta * qg.T).astype(np.int64)
        return EngineResult(
            spikes=spikes,
            readouts=readouts,
            wall_s=time.perf_counter() - start,
            engine=self.name,
            info={"readouts_float": floats, "device": self.device},
        )


def _joined(parts: list[np.ndarray], axis: int) -> np.ndarray:
    return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=axis)


def agreement(
    qg: QuantGraph,
    ref_spikes: dict[str, np.ndarray],
    fixed: EngineResult,
    ref_readouts: dict[str, np.ndarray],
) -> dict[str, Any]:
    """How close the integer run ``fixed`` is to the float reference.

    Per population: fraction of equal spike values and mean |s_ref - s_int|; per readout:
    max and mean |r_ref - v/(theta*T)|; overall: the value-weighted fraction and mean, and the
    largest readout error. Names missing on one side are listed under ``missing``.
    """
    pops: dict[str, dict[str, float]] = {}
    missing: list[str] = []
    equal = diff = count = 0.0
    for name, s_int in fixed.spikes.items():
        if name not in ref_spikes:
            missing.append(name)
            continue
        s_ref = np.asarray(ref_spikes[name])
        if s_ref.shape != s_int.shape:
            raise SpikedetError(
                f"reference spikes {s_ref.shape} vs integer {s_int.shape}", f"population {name}"
            )
        delta = np.abs(s_ref.astype(np.int64) - s_int)
        pops[name] = {
            "equal_fraction": float(np.mean(delta == 0)) if delta.size else 1.0,
            "mean_abs_diff": float(delta.mean()) if delta.size else 0.0,
            "values": int(delta.size),
        }
        equal += float(np.count_nonzero(delta == 0))
        diff += float(delta.sum())
        count += delta.size
    missing += [f"{n} (reference only)" for n in ref_spikes if n not in fixed.spikes]
    int_floats = readout_floats(qg, fixed)
    reads: dict[str, dict[str, float]] = {}
    for name, r_int in int_floats.items():
        if name not in ref_readouts:
            missing.append(name)
            continue
        r_ref = np.asarray(ref_readouts[name], dtype=np.float64)
        if r_ref.shape != r_int.shape:
            raise SpikedetError(
                f"reference readout {r_ref.shape} vs integer {r_int.shape}", f"readout {name}"
            )
        err = np.abs(r_ref - r_int.astype(np.float64))
        reads[name] = {
            "max_abs_err": float(err.max()) if err.size else 0.0,
            "mean_abs_err": float(err.mean()) if err.size else 0.0,
            "ref_abs_mean": float(np.abs(r_ref).mean()) if r_ref.size else 0.0,
        }
    missing += [f"{n} (reference only)" for n in ref_readouts if n not in int_floats]
    return {
        "populations": pops,
        "readouts": reads,
        "overall": {
            "spike_equal_fraction": equal / count if count else 1.0,
            "spike_mean_abs_diff": diff / count if count else 0.0,
            "readout_max_abs_err": max((r["max_abs_err"] for r in reads.values()), default=0.0),
            "readout_mean_abs_err": float(np.mean([r["mean_abs_err"] for r in reads.values()]))
            if reads
            else 0.0,
        },
        "missing": missing,
        "overall_spike_agreement": equal / count if count else 1.0,  # flat copy for log lines
    }
