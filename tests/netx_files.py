"""Synthetic lava-dl netx ``.net`` files (h5py, the layout lava-dl's exporter writes) for tests.

``small_net_layers`` is a valid chain that touches every block the reader supports (input,
conv with stride / padding / dilation / groups, flatten, dense after a map and after a dense);
``write_net`` writes any list of such layer dicts. Shapes are (C, H, W) as in the format.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import h5py
import numpy as np

LOIHI = {"type": b"LOIHI", "iDecay": 4096, "vDecay": 1024, "vThMant": 25, "refDelay": 1,
         "wgtExp": 0, "theta": 1600, "tauRho": 0.5, "scaleRho": 1.0}  # fmt: skip


def neuron(**changes: Any) -> dict:
    return {**LOIHI, **changes}


def small_net_layers(seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    w = lambda *shape: rng.integers(-12, 13, shape).astype(np.float32) * 2  # noqa: E731
    return [
        {"type": b"input", "shape": [4, 9, 10], "neuron": neuron(), "weight": 40.0, "bias": 36.0},
        {"type": b"conv", "shape": [6, 5, 4], "neuron": neuron(), "weight": w(6, 4, 3, 3),
         "bias": rng.integers(-20, 40, 6).astype(np.float32), "stride": [2, 2],
         "padding": [1, 0], "dilation": [1, 1], "groups": 1},
        {"type": b"conv", "shape": [4, 3, 2], "neuron": neuron(vDecay=512), "weight": w(4, 3, 3, 3, 1),
         "bias": np.zeros(4, np.float32), "stride": 1, "padding": 1,
         "dilation": [2, 2], "groups": 2},
        {"type": b"flatten", "shape": [1, 1, 24]},
        {"type": b"dense", "shape": [7, 1, 1], "neuron": neuron(), "weight": w(7, 24),
         "bias": rng.integers(-8, 16, 7).astype(np.float32)},
        {"type": b"dense", "shape": [2, 1, 1], "neuron": neuron(vDecay=0, vThMant=131071),
         "weight": w(14), "bias": np.zeros(2)},
    ]  # fmt: skip


def _put(group: h5py.Group, key: str, value: Any) -> None:
    if isinstance(value, dict):
        sub = group.create_group(key)
        for k, v in value.items():
            _put(sub, k, v)
    elif key == "type" and group.name.endswith("neuron"):
        group.create_dataset(key, data=value, dtype=h5py.string_dtype("ascii"))
    elif key == "type":
        group.create_dataset(key, data=np.array([value], dtype="S10"))
    else:
        group.create_dataset(key, data=np.asarray(value))


def write_net(path: Path, layers: list[dict]) -> Path:
    """Write ``layers`` as ``layer/<i>/...`` plus netx's unused ``simulation`` group."""
    with h5py.File(path, "w") as f:
        top = f.create_group("layer")
        for i, layer in enumerate(layers):
            group = top.create_group(str(i))
            for key, value in layer.items():
                _put(group, key, value)
        f.create_group("simulation").create_dataset("Ts", data=1)
    return path
