"""NIR files of big models: the layout ``nir.write`` produces, without its memory and time cost.

A NIR file is HDF5: ``version`` plus a ``node`` group that mirrors ``graph.to_dict()`` (one
dataset per array field, one group per dict). Neuron parameters are per-neuron arrays
(docs/semantics.md §2.2), and for our graphs almost all of them are one value repeated: a
SpikeYOLO-n at 640 px holds 2.0 GB of them (τ, r, v_leak, thresholds, reset scales) against
0.6 GB of weights, and ``nir.read`` of spikeyolo-l materializes tens of GB.

- ``write_graph`` writes exactly ``nir.write``'s layout, except that an array whose elements
  are all equal becomes a chunked dataset whose fill value is that element and whose chunks are
  never written. HDF5 returns the fill value for unwritten chunks, so ``nir.read`` and any other
  HDF5 reader see the same full array; the file stores no bytes for it and reading it costs no
  decompression.
- Big arrays (weights) are chunked and their all-zero chunks are not written either: grouped
  convs are stored as full convs (§2.1), 72 % exact zeros in spikeyolo-l, which then cost
  neither file space nor decompression.
- ``read_graph`` rebuilds the graph like ``nir.read(type_check=True)`` (the same ``nir`` node
  constructors and type check) but returns constant arrays as read-only broadcast views
  (``np.broadcast_to``): unwritten datasets are recognised without reading, written ones are
  checked chunk by chunk, so memory stays at one chunk plus the weights.

numpy + h5py + nir only (no torch): both the exporter and ``spikedet.deploy`` use it.
"""

from __future__ import annotations

import copy
import os
from typing import Any

import h5py
import nir
import numpy as np

from spikedet.errors import SpikedetError
from spikedet.fileio import atomic_path

# Arrays smaller than this are written and read plainly (the saving would not matter).
CONSTANT_MIN_ELEMENTS = 4096
# Arrays from this size on are chunked and their all-zero chunks left unwritten.
SPARSE_MIN_ELEMENTS = 1 << 20
_COMPRESSION = "gzip"


def _constant_value(array: np.ndarray) -> Any | None:
    """The repeated element of a numeric array whose elements are all equal (NaN never is)."""
    if array.size < CONSTANT_MIN_ELEMENTS or array.dtype.kind not in "biuf":
        return None
    first = array.flat[0]
    if all(stride == 0 for stride in array.strides):  # a broadcast scalar: constant by design
        return first
    if not np.all(array == first):
        return None
    return first


def _write_array(group: h5py.Group, key: str, value: np.ndarray) -> None:
    """A plain dataset, or for a big array (grouped convs stored full, §2.1, are mostly exact
    zeros) a chunked one with fill value 0 whose all-zero chunks are never written."""
    if value.size < SPARSE_MIN_ELEMENTS or value.dtype.kind not in "biuf":
        group.create_dataset(key, data=value, dtype=value.dtype, compression=_COMPRESSION)
        return
    dataset = group.create_dataset(
        key, shape=value.shape, dtype=value.dtype, chunks=True, compression=_COMPRESSION,
        fillvalue=0,
    )  # fmt: skip
    for chunk in dataset.iter_chunks():
        block = value[chunk]
        if block.any():
            dataset[chunk] = block


def _write_group(group: h5py.Group, node: dict) -> None:
    """``nir.write``'s recursion, with constant arrays stored as unwritten fill-value datasets."""
    for key, value in node.items():
        if key == "metadata":
            if value != {}:
                _write_group(group.create_group(key), value)
        elif isinstance(value, str):
            group.create_dataset(key, data=value, dtype=h5py.string_dtype())
        elif isinstance(value, np.ndarray):
            constant = _constant_value(value)
            if constant is None:
                _write_array(group, key, np.asarray(value).view(np.ndarray))
            else:
                group.create_dataset(
                    key,
                    shape=value.shape,
                    dtype=value.dtype,
                    chunks=True,
                    compression=_COMPRESSION,
                    fillvalue=constant,
                )
        elif isinstance(value, dict):
            _write_group(group.create_group(str(key)), value)
        else:
            group.create_dataset(key, data=value)


class _SharedArray(np.ndarray):
    """A read-only array view that ``copy.deepcopy`` returns as is (writers only read it)."""

    def __deepcopy__(self, memo: dict) -> _SharedArray:
        return self


def _sharing_arrays(graph: nir.NIRGraph) -> nir.NIRGraph:
    """A shallow copy of ``graph`` whose arrays survive ``to_dict`` (``dataclasses.asdict``
    deep-copies every array: ~8 GiB for SpikeYOLO-l at 640 px) without being duplicated."""
    nodes = {}
    for name, node in graph.nodes.items():
        if isinstance(node, nir.NIRGraph):
            node = _sharing_arrays(node)
        else:
            node = copy.copy(node)  # shallow: the node's arrays are replaced, never modified
            for field, value in vars(node).items():
                if isinstance(value, np.ndarray) and field not in ("input_type", "output_type"):
                    setattr(node, field, value.view(_SharedArray))
        nodes[name] = node
    return nir.NIRGraph(nodes, list(graph.edges), dict(graph.metadata), type_check=False)


def write_graph(path: str | os.PathLike, graph: nir.NIRGraph) -> None:
    """Write ``graph`` in ``nir.write``'s HDF5 layout (readable by ``nir.read``), see above."""
    with h5py.File(path, "w") as f:
        f.create_dataset("version", data=nir.version, dtype=h5py.string_dtype())
        _write_group(f.create_group("node"), _sharing_arrays(graph).to_dict())


def _unwritten(dataset: h5py.Dataset) -> bool:
    return dataset.chunks is not None and dataset.id.get_storage_size() == 0


def _read_dataset(dataset: h5py.Dataset) -> Any:
    """The dataset's value; a constant array as a read-only broadcast view."""
    if dataset.shape is None or dataset.ndim == 0 or dataset.dtype.kind not in "biuf":
        value = dataset[()]
        return value.decode("utf8") if isinstance(value, bytes) else value
    if _unwritten(dataset):
        fill = np.array(dataset.fillvalue, dtype=dataset.dtype)
        return np.broadcast_to(fill, dataset.shape)
    if dataset.chunks is not None and dataset.size >= CONSTANT_MIN_ELEMENTS:
        first = None
        for chunk in dataset.iter_chunks():
            block = dataset[chunk]
            if first is None:
                first = block.flat[0]
            if not np.all(block == first):
                return dataset[()]
        return np.broadcast_to(np.array(first, dtype=dataset.dtype), dataset.shape)
    return dataset[()]


def _read_group(group: h5py.Group) -> dict:
    out: dict[str, Any] = {}
    for key, item in group.items():
        if isinstance(item, h5py.Group):
            out[key] = _read_group(item)
        else:
            out[key] = _read_dataset(item)
    return out


def read_graph(path: str | os.PathLike, type_check: bool = True) -> nir.NIRGraph:
    """Read a NIR file like ``nir.read``, with constant arrays as broadcast views (see above).

    Raises what ``nir.read`` raises for a bad file (OSError, KeyError, ValueError, ...).
    """
    with h5py.File(path, "r") as f:
        data = _read_group(f["node"])
    if "type_check" in data:
        raise ValueError("the graph holds a 'type_check' entry, which NIR does not allow")
    data["type_check"] = type_check
    return nir.dict2NIRNode(data)


def write_nir(graph: nir.NIRGraph, path: str | os.PathLike) -> None:
    """Write ``graph`` atomically in ``nir.write``'s layout and check that it reads back with
    type checking.

    ``write_graph`` stores per-neuron arrays that repeat one value as HDF5
    fill-value datasets (no bytes, no decompression; ``nir.read`` sees the same arrays) and
    avoids ``nir.write``'s deep copy of the whole graph; the check reads the file back with
    ``read_graph`` (``nir``'s own constructors and type check, constant arrays as
    broadcast views), so a big model never needs its neuron arrays in memory.
    """
    with atomic_path(path, suffix=".nir") as tmp:
        try:
            write_graph(tmp, graph)
            read_graph(tmp, type_check=True)
        except (ValueError, TypeError, KeyError, AssertionError, OSError) as err:
            raise SpikedetError(f"cannot write a readable NIR file: {err}", str(path)) from err
