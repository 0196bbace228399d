"""Float semantics of the NIR primitives beyond spikedet's own encoding (docs/semantics.md §4.3),
used by ``spikedet.convert.nir_torch.NIRExecutor``: Conv1d, AvgPool2d, Delay, CubaLI, CubaLIF,
and the reset mode. Forward Euler at step dt, states start at 0:

    CubaLI:  I <- I + (dt/τ_syn)·(w_in·x − I);  v <- v + (dt/τ_mem)·(v_leak − v + r·I)  out v
    CubaLIF: the same, then z = [v > v_th] and the reset                               out z
    Delay:   y_t = x_{t − d}, d = delay / dt (a whole number), 0 before
    reset "zero": v <- v_reset where z; "subtract": v <- v − v_th where z

The synaptic current is updated first and the membrane reads the new current (snnTorch's
``Synaptic`` order; with the export convention w_in = τ_syn/dt, r = τ_mem/dt this is
syn = α·syn + x, mem = β·mem + syn).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from spikedet.errors import SpikedetError

EXTRA_KINDS = ("Conv1d", "AvgPool2d", "Delay", "CubaLI", "CubaLIF")


def _pair(value: Any) -> tuple[int, int]:
    arr = np.asarray(value).reshape(-1)
    return (int(arr[0]), int(arr[0])) if arr.size == 1 else (int(arr[0]), int(arr[1]))


def prepare(ex: Any, index: int, name: str, node: Any) -> None:
    """Buffers and static settings of one node of an EXTRA_KINDS type."""
    kind, dt = ex.kinds[name], ex.dt
    if kind == "Conv1d":
        ex._tensor(index, name, "weight", node.weight)
        ex._tensor(index, name, "bias", 0.0 if node.bias is None else node.bias)
        padding = node.padding
        if not isinstance(padding, str):
            padding = int(np.asarray(padding).reshape(-1)[0])
        ex.static[name] = {
            "stride": int(np.asarray(node.stride).reshape(-1)[0]),
            "padding": padding,
            "dilation": int(np.asarray(node.dilation).reshape(-1)[0]),
            "groups": int(np.asarray(node.groups).reshape(-1)[0]),
        }
    elif kind == "AvgPool2d":
        ex.static[name] = {
            "kernel_size": _pair(node.kernel_size),
            "stride": _pair(node.stride),
            "padding": _pair(node.padding),
        }
    elif kind == "Delay":
        delay = np.asarray(node.delay, dtype=np.float64)
        steps = float(delay.max()) / dt if delay.size else 0.0
        if not delay.size or delay.min() != delay.max() or abs(steps - round(steps)) > 1e-6:
            raise SpikedetError(
                f"delay must be one whole number of steps of dt={dt:g}, got {delay.ravel()[:4]}",
                name,
            )
        ex.static[name] = {"steps": int(round(steps))}
    elif kind in ("CubaLI", "CubaLIF"):
        syn = dt / np.asarray(node.tau_syn, np.float64)
        mem = dt / np.asarray(node.tau_mem, np.float64)
        ex._tensor(index, name, "keep_syn", 1.0 - syn)
        ex._tensor(index, name, "gain_syn", syn * np.asarray(node.w_in, np.float64))
        ex._tensor(index, name, "keep", 1.0 - mem)
        ex._tensor(index, name, "gain", mem * np.asarray(node.r, np.float64))
        ex._tensor(index, name, "leak", mem * np.asarray(node.v_leak, np.float64))
        if kind == "CubaLIF":
            ex._tensor(index, name, "v_threshold", node.v_threshold)
            ex._tensor(index, name, "v_reset", node.v_reset)


def fire(ex: Any, name: str, v: Tensor, state: dict[str, Tensor]) -> Tensor:
    """z = [v > v_th]; the membrane after the reset goes to ``state[name]``."""
    threshold = ex._p(name, "v_threshold")
    fired = v > threshold
    if ex.reset == "subtract":
        after = v - fired.to(v.dtype) * threshold
    else:
        after = torch.where(fired, ex._p(name, "v_reset").expand_as(v), v)
    state[name] = after
    return fired.to(ex.dtype)


def step(ex: Any, name: str, x: Tensor, state: dict[str, Tensor]) -> Tensor:
    """One step of an EXTRA_KINDS node on its summed input ``x``."""
    kind, p = ex.kinds[name], ex._p
    if kind == "Conv1d":
        return F.conv1d(x, p(name, "weight"), p(name, "bias"), **ex.static[name])
    if kind == "AvgPool2d":
        return F.avg_pool2d(x, **ex.static[name], count_include_pad=True)
    if kind == "Delay":
        steps = ex.static[name]["steps"]
        if steps == 0:
            return x
        line = state.get(name)
        line = [torch.zeros_like(x)] * steps if line is None else line
        state[name] = [*line[1:], x]  # type: ignore[assignment]
        return line[0]
    current = state.get(name + "#syn")
    drive = p(name, "gain_syn") * x
    current = drive if current is None else p(name, "keep_syn") * current + drive
    state[name + "#syn"] = current
    v = state.get(name)
    drive = p(name, "gain") * current + p(name, "leak")
    v = drive if v is None else p(name, "keep") * v + drive
    if kind == "CubaLI":
        state[name] = v
        return v
    return fire(ex, name, v, state)
