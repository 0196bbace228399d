"""Corrupt and unsupported lava-dl netx ``.net`` files for ``spikedet import netx``.

Each ``Case`` damages a copy of a valid synthetic net (``tests/netx_files.small_net_layers``:
input, strided / padded / dilated / grouped convs, flatten, two dense layers) in place, with raw
bytes or with h5py, and returns the text the one-line error must contain: the file name and,
for a damaged layer, ``layer <i>`` and its type.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from tests.robustness.corrupt import GARBAGE, Case, Damage, _truncate, _write


def _h5(edit: Callable[[Any], str], layer: bool = True) -> Damage:
    """Damage with h5py; a layer's error names ``<file>: layer <i>``, a file-level error the
    returned text (the file name is in every line, checked by the test)."""

    def damage(path: Path) -> str:
        import h5py

        with h5py.File(path, "r+") as f:
            text = edit(f)
        return f"{path.name}: {text}" if layer else text

    return damage


def _replace(layer: int, key: str, value: Any, dtype: Any = None) -> Callable[[Any], str]:
    def edit(f: Any) -> str:
        group = f[f"layer/{layer}"]
        del group[key]
        group.create_dataset(key, data=value, dtype=dtype)
        return f"layer {layer}"

    return edit


def _delete(path_in_file: str, expected: str) -> Callable[[Any], str]:
    def edit(f: Any) -> str:
        del f[path_in_file]
        return expected

    return edit


def _retype(layer: int, kind: bytes) -> Callable[[Any], str]:
    return _replace(layer, "type", np.array([kind], dtype="S10"))


def _neuron_type(layer: int, kind: str) -> Callable[[Any], str]:
    def edit(f: Any) -> str:
        import h5py

        group = f[f"layer/{layer}/neuron"]
        del group["type"]
        group.create_dataset("type", data=kind, dtype=h5py.string_dtype("ascii"))
        return f"layer {layer}"

    return edit


def _weight_values(layer: int, fill: float) -> Callable[[Any], str]:
    def edit(f: Any) -> str:
        weight = f[f"layer/{layer}/weight"][()].astype(np.float64)
        weight.flat[len(weight.flat) // 2] = fill
        return _replace(layer, "weight", weight)(f)

    return edit


def _move_layer(src: int, dst: int) -> Callable[[Any], str]:
    def edit(f: Any) -> str:
        f["layer"].move(str(src), str(dst))
        return f"layer {src} is missing"

    return edit


NETX_CASES: list[Case] = [
    Case("zero-bytes", _write(b"")),
    Case("text", _write(b"layer 0: input\n")),
    Case("garbage", _write(GARBAGE)),
    Case("truncated-half", _truncate(lambda s: s // 2)),
    Case("no-layer-group", _h5(_delete("layer", "no 'layer' group"), layer=False)),
    Case("layer-numbering-gap", _h5(_move_layer(3, 9), layer=False)),
    Case("missing-type", _h5(_delete("layer/2/type", "layer 2"))),
    Case("missing-shape", _h5(_delete("layer/1/shape", "layer 1 (conv)"))),
    Case("missing-weight", _h5(_delete("layer/4/weight", "layer 4 (dense)"))),
    Case("missing-neuron-decay", _h5(_delete("layer/2/neuron/vDecay", "layer 2 (conv)"))),
    Case("nan-weight", _h5(_weight_values(1, np.nan))),
    Case("inf-weight", _h5(_weight_values(5, np.inf))),
    Case("fractional-weight", _h5(_weight_values(2, 0.5))),
    Case("shape-does-not-chain", _h5(_replace(1, "shape", np.array([6, 5, 5])))),
    Case("string-shape", _h5(_replace(2, "shape", np.array([b"4", b"3", b"2"])))),
    Case("bad-stride", _h5(_replace(1, "stride", np.array([0, 2])))),
    Case("pool-layer", _h5(_retype(2, b"pool"))),
    Case("average-layer", _h5(_retype(2, b"average"))),
    Case("concat-layer", _h5(_retype(4, b"concat"))),
    Case("convT-layer", _h5(_retype(1, b"convT"))),
    Case("unpool-layer", _h5(_retype(1, b"unpool"))),
    Case("dense-rec-layer", _h5(_retype(5, b"dense_rec"))),
    Case("unknown-layer", _h5(_retype(1, b"lstm"))),
    Case("no-input-first", _h5(_retype(0, b"conv"))),
    Case("numeric-type", _h5(_replace(1, "type", np.array([3])))),
    Case("non-ascii-type", _h5(_replace(2, "type", np.array([b"\xffconv"], dtype="S10")))),
    Case("sdnn-neuron", _h5(_neuron_type(1, "SDNN"))),
    Case("rf-neuron", _h5(_neuron_type(4, "RF_PHASE"))),
]
