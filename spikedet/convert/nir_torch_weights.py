"""Compact parameters for the float NIR executor (``spikedet.convert.nir_torch``).

The executor runs a graph's own numbers; this module only drops what is structurally zero or
repeated, checking it first, so that every value it computes is the one the full arrays give:

- ``conv_spec``: a ``Conv2d`` stored full with ``spikedet.groups = g`` (docs/semantics.md §2.1)
  becomes the grouped weight (Cout, Cin/g, KH, KW), run as a grouped convolution; one carrying
  ``spikedet.out_offset`` / ``spikedet.out_channels`` (§2.7, a conv writing channels
  [o, o + c) of a concatenation) keeps rows [o, o + c) only, its output placed there. Weights
  outside the groups and rows outside the range must be exactly zero (else SpikedetError).
  The full product has the same value: every dropped term is 0·x (x finite).
- ``compact_param``: a per-neuron array that repeats one value along an axis keeps one slice
  on that axis (broadcasting restores it, elementwise ops give the same values).
- ``load_lazy``: the graph of a NIR file read through ``spikedet.nirio`` (nir's constructors
  and type check), with the big conv weights left on disk as zero-stride placeholders of the
  right shape; ``conv_spec`` reads them chunk by chunk, so the dense (mostly zero) depthwise
  weights never sit in memory.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import h5py
import nir
import numpy as np

from spikedet.errors import SpikedetError
from spikedet.nirio import _read_dataset

# Conv weights from this many elements on stay on disk until the executor compacts them.
LAZY_MIN_ELEMENTS = 1 << 16
_ROW_BLOCK_ELEMENTS = 1 << 22  # rows read at a time from an unchunked dataset


class LazyWeight(np.ndarray):
    """A zero-stride stand-in for a conv weight left in the file (shape and dtype only)."""

    source: tuple[str, str] | None  # (file, dataset name)

    def __array_finalize__(self, obj: Any) -> None:  # views and copies still name the file
        self.source = getattr(obj, "source", None)


def _lazy(dataset: h5py.Dataset, path: str) -> LazyWeight:
    stand_in = np.broadcast_to(np.zeros((), dtype=dataset.dtype), dataset.shape)
    lazy = stand_in.view(LazyWeight)
    lazy.source = (path, dataset.name)
    return lazy


def _read_group(group: h5py.Group, path: str) -> dict:
    out: dict[str, Any] = {}
    is_conv = "type" in group and _read_dataset(group["type"]) == "Conv2d"
    for key, item in group.items():
        if isinstance(item, h5py.Group):
            out[key] = _read_group(item, path)
        elif is_conv and key == "weight" and item.size >= LAZY_MIN_ELEMENTS:
            out[key] = _lazy(item, path)
        else:
            out[key] = _read_dataset(item)
    return out


def _dicts_copied(data: dict) -> dict:
    """A copy of the nested dicts (nir's constructors pop their keys), arrays shared."""
    return {k: _dicts_copied(v) if isinstance(v, dict) else v for k, v in data.items()}


def load_lazy(path: str | os.PathLike) -> nir.NIRGraph:
    """The graph in ``path`` (type-checked like ``spikedet.deploy.nir_read.load_nir``: a
    graph holding a grouped Conv2d, which nir 1.0.8 cannot type-check, is read without the
    check), big conv weights as ``LazyWeight`` placeholders; SpikedetError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise SpikedetError("NIR file not found", str(path))
    try:
        with h5py.File(path, "r") as f:
            data = _read_group(f["node"], str(path))
    except Exception as err:  # h5py/nir raise many types (OSError, KeyError, ValueError, ...)
        what = f"not a readable NIR graph: {type(err).__name__}: {err}"
        raise SpikedetError(what, str(path)) from None
    if "type_check" in data:
        raise SpikedetError("the graph holds a 'type_check' entry", str(path))
    try:
        graph = nir.dict2NIRNode({**_dicts_copied(data), "type_check": True})
    except Exception as checked:  # noqa: BLE001 - any failure of nir's check
        try:
            graph = nir.dict2NIRNode({**_dicts_copied(data), "type_check": False})
        except Exception as err:
            raise SpikedetError(f"not a readable NIR graph: {err}", str(path)) from None
        nodes = graph.nodes.values() if isinstance(graph, nir.NIRGraph) else ()
        if not any(type(n) is nir.Conv2d and int(np.asarray(n.groups)) > 1 for n in nodes):
            raise SpikedetError(f"NIR type check failed: {checked}", str(path)) from None
    if not isinstance(graph, nir.NIRGraph) or not graph.nodes:
        raise SpikedetError("file holds no NIR graph", str(path))
    return graph


def compact_param(value: Any) -> np.ndarray:
    """``value`` with every axis along which it repeats one slice cut to length 1.

    A broadcast view (zero stride, as ``spikedet.nirio`` returns constant arrays) is cut
    without reading; other axes are compared. ``np.broadcast_to(result, value.shape)`` equals
    ``value`` element for element."""
    array = np.asarray(value)
    if array.ndim == 0 or array.dtype.kind not in "biuf":
        return array
    index = tuple(slice(0, 1) if s == 0 and n > 1 else slice(None)
                  for s, n in zip(array.strides, array.shape))  # fmt: skip
    array = array[index]
    for axis in range(array.ndim):
        if array.shape[axis] > 1:
            first = np.take(array, [0], axis=axis)
            if np.array_equal(array, np.broadcast_to(first, array.shape)):
                array = first
    return np.ascontiguousarray(array)


@dataclass
class ConvSpec:
    """One Conv2d as the executor runs it: ``conv2d(x, weight, bias, stride, padding,
    dilation, groups)`` gives output channels [offset, offset + weight.shape[0]) of the node's
    ``channels``-channel output (the others are exactly zero)."""

    weight: np.ndarray  # (Cout', Cin/groups, KH, KW)
    bias: np.ndarray  # (Cout',)
    stride: tuple[int, int]
    padding: tuple[int, int] | str
    dilation: tuple[int, int]
    groups: int
    offset: int
    channels: int  # the node's output channels (full)

    @property
    def placed(self) -> bool:
        return self.offset != 0 or self.weight.shape[0] != self.channels

    def signature(self) -> tuple:
        """Equal signatures (and inputs) mean equal outputs: the executor computes it once."""
        digest = hashlib.blake2b(digest_size=16)
        for array in (self.weight, self.bias):
            digest.update(str((array.dtype, array.shape)).encode())
            digest.update(np.ascontiguousarray(array).tobytes())
        geometry = (self.stride, self.padding, self.dilation, self.groups)
        return ("conv", digest.hexdigest(), geometry)


def _pair(value: Any) -> tuple[int, int]:
    arr = np.asarray(value).reshape(-1)
    return (int(arr[0]), int(arr[0])) if arr.size == 1 else (int(arr[0]), int(arr[1]))


def _blocks(weight: np.ndarray) -> Iterator[tuple[tuple[int, ...], np.ndarray]]:
    """(offset of the block, block) covering every element that may be non-zero: an
    in-memory array whole; a ``LazyWeight`` chunk by chunk (chunks never written hold the
    fill value 0 and are skipped) or in row blocks."""
    if not isinstance(weight, LazyWeight) or weight.source is None:
        yield (0, 0, 0, 0), np.asarray(weight)
        return
    path, name = weight.source
    with h5py.File(path, "r") as f:
        dataset = f[name]
        if dataset.chunks is None or dataset.fillvalue != 0:
            rows = max(1, _ROW_BLOCK_ELEMENTS // max(1, int(np.prod(dataset.shape[1:]))))
            for start in range(0, dataset.shape[0], rows):
                yield (start, 0, 0, 0), dataset[start : start + rows]
            return
        for index in range(dataset.id.get_num_chunks()):
            offset = dataset.id.get_chunk_info(index).chunk_offset
            window = tuple(slice(o, o + c) for o, c in zip(offset, dataset.chunks))
            yield tuple(int(o) for o in offset), dataset[window]


def conv_spec(name: str, node: nir.Conv2d, dtype: Any = np.float32) -> ConvSpec:
    """The compact form of ``node`` (module docstring), weights and bias cast to ``dtype``
    (float32 arrays stay exact; others go through float64, as the executor's buffers do)."""
    meta = node.metadata if isinstance(node.metadata, dict) else {}
    shape = tuple(int(v) for v in node.weight.shape)
    if len(shape) != 4:
        raise SpikedetError(f"Conv2d weight must be 4-D, got {shape}", name)
    rows_full, cols = shape[0], shape[1]
    groups = int(np.asarray(node.groups).reshape(-1)[0])
    offset = int(meta.get("spikedet.out_offset", 0))
    count = int(meta.get("spikedet.out_channels", rows_full - offset))
    if not (0 <= offset and count >= 1 and offset + count <= rows_full):
        raise SpikedetError(
            f"spikedet.out_offset={offset}, out_channels={count} do not fit {rows_full} rows", name
        )
    if groups > 1:  # natively grouped: rows cannot be cut without breaking the groups
        offset, count = 0, rows_full
    tagged = int(meta.get("spikedet.groups", 1)) if groups == 1 else 1
    if tagged > 1 and (count % tagged or cols % tagged):
        raise SpikedetError(f"spikedet.groups={tagged} does not divide {count}x{cols}", name)
    rows_per_group = count // tagged
    cols_per_group = cols // tagged
    compact = np.zeros((count, cols_per_group, *shape[2:]), dtype=np.float64)
    for (r0, c0, k0, l0), block in _blocks(node.weight):
        rows = np.arange(r0, r0 + block.shape[0])
        columns = np.arange(c0, c0 + block.shape[1])
        inside = (rows >= offset) & (rows < offset + count)
        group_of_row = (rows - offset) // rows_per_group
        keep = inside[:, None] & (group_of_row[:, None] == columns[None, :] // cols_per_group)
        nonzero = np.any(block.reshape(*block.shape[:2], -1) != 0, axis=2)
        if np.any(nonzero & ~keep):
            what = f"spikedet.groups={tagged}" if tagged > 1 else "spikedet.out_offset"
            raise SpikedetError(f"{what} but weights lie outside the kept groups/rows", name)
        ri, ci = np.nonzero(keep)
        into_cols = columns[ci] - group_of_row[ri] * cols_per_group
        taps = (slice(k0, k0 + block.shape[2]), slice(l0, l0 + block.shape[3]))
        compact[rows[ri] - offset, into_cols, taps[0], taps[1]] = block[ri, ci]
    bias = np.asarray(0.0 if node.bias is None else node.bias, dtype=np.float64)
    bias = np.broadcast_to(bias, (rows_full,))
    if np.any(bias[:offset]) or np.any(bias[offset + count :]):
        raise SpikedetError("bias outside spikedet.out_offset's rows is not zero", name)
    padding = node.padding if isinstance(node.padding, str) else _pair(node.padding)
    return ConvSpec(
        weight=compact.astype(dtype),
        bias=np.array(bias[offset : offset + count], dtype=dtype),
        stride=_pair(node.stride),
        padding=padding,
        dilation=_pair(node.dilation),
        groups=groups * tagged,
        offset=offset,
        channels=rows_full,
    )
