"""Inputs and labels of ``spikedet deploy --input FILE [--labels FILE]`` (no torch).

- ``.npy``: one array [T, B, *input_shape] (time, batch, the NIR Input node's shape);
- ``.npz``: that array under key ``input`` (or the file's only array), labels under ``labels``;
- any other file: NIR's own data format (``nir.write_data``): the ``TimeGriddedData`` of the
  graph's Input node (or of the file's only node), shape [B, T, N] with N = prod(input_shape);
  its ``dt`` is returned. ``EventData`` is gridded at that dt.
Labels: an integer array [B] (``.npy``, or ``labels`` inside the input ``.npz``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from spikedet.errors import SpikedetError


def _npz_array(path: Path, key: str, required: bool) -> np.ndarray | None:
    try:
        with np.load(path, allow_pickle=False) as z:
            if key in z.files:
                return np.asarray(z[key])
            if key == "input" and len([f for f in z.files if f != "labels"]) == 1:
                return np.asarray(z[next(f for f in z.files if f != "labels")])
    except Exception as err:
        raise SpikedetError(f"cannot read the .npz file: {err}", str(path)) from None
    if required:
        raise SpikedetError(f"the .npz file has no array {key!r}", str(path))
    return None


def _nir_data(path: Path, input_name: str, dt: float | None) -> tuple[np.ndarray, float]:
    import nir

    try:
        data = nir.read_data(str(path))
    except Exception as err:
        raise SpikedetError(
            f"not a .npy, .npz or NIR data file: {' '.join(str(err).split())[:160]}", str(path)
        ) from None
    nodes = data.nodes
    node = nodes.get(input_name) or (next(iter(nodes.values())) if len(nodes) == 1 else None)
    if node is None or not getattr(node, "observables", None):
        raise SpikedetError(f"NIR data holds no observables of node {input_name!r}", str(path))
    obs = next(iter(node.observables.values()))
    if not isinstance(obs, nir.TimeGriddedData):
        if dt is None:
            raise SpikedetError("event data needs --dt to be put on a time grid", str(path))
        obs = obs.to_time_gridded(dt)
    arr = np.asarray(obs.data)
    return np.ascontiguousarray(arr.transpose(1, 0, 2)), float(obs.dt)


def load_input(
    path: Path, input_shape: tuple[int, ...], input_name: str, dt: float | None
) -> tuple[np.ndarray, np.ndarray | None, float | None]:
    """(x float64 [T, B, *input_shape], labels from the same .npz or None, the data file's dt)."""
    path = Path(path)
    if not path.is_file():
        raise SpikedetError("input file not found", str(path))
    labels, data_dt = None, None
    if path.suffix == ".npy":
        try:
            x = np.load(path, allow_pickle=False)
        except Exception as err:
            raise SpikedetError(f"cannot read the .npy file: {err}", str(path)) from None
    elif path.suffix == ".npz":
        x = _npz_array(path, "input", True)
        labels = _npz_array(path, "labels", False)
    else:
        x, data_dt = _nir_data(path, input_name, dt)
    x = np.asarray(x)
    if x.dtype.kind not in "biuf":
        raise SpikedetError(f"input dtype {x.dtype} is not numeric", str(path))
    size = int(np.prod(input_shape))
    if x.ndim == 3 and x.shape[2] == size and len(input_shape) != 1:  # NIR data: flat neurons
        x = x.reshape(*x.shape[:2], *input_shape)
    if x.ndim != 2 + len(input_shape) or tuple(x.shape[2:]) != tuple(input_shape):
        raise SpikedetError(
            f"input has shape {tuple(x.shape)}; expected [T, B, {', '.join(map(str, input_shape))}]"
            " (time, batch, the graph's Input shape)",
            str(path),
        )
    if min(x.shape[:2]) < 1:
        raise SpikedetError(f"input has no steps or samples: {tuple(x.shape)}", str(path))
    x = x.astype(np.float64)
    if not np.all(np.isfinite(x)):
        raise SpikedetError("input holds NaN or inf", str(path))
    return x, labels, data_dt


def load_labels(path: Path | None, inline: np.ndarray | None, batch: int) -> np.ndarray | None:
    """Class indices [B] from ``--labels`` (or the input .npz), checked against the batch."""
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise SpikedetError("labels file not found", str(path))
        try:
            inline = (
                _npz_array(path, "labels", True)
                if path.suffix == ".npz"
                else np.load(path, allow_pickle=False)
            )
        except SpikedetError:
            raise
        except Exception as err:
            raise SpikedetError(f"cannot read labels: {err}", str(path)) from None
    if inline is None:
        return None
    labels = np.asarray(inline).reshape(-1)
    where = str(path) if path is not None else "labels"
    if labels.dtype.kind not in "iu" or labels.shape != (batch,) or labels.min() < 0:
        raise SpikedetError(
            f"labels must be {batch} non-negative class indices, got {labels.dtype} {labels.shape}",
            where,
        )
    return labels.astype(np.int64)


def to_integers(x: np.ndarray, scale: float, bits: int, where: str) -> np.ndarray:
    """x_int = x * scale: integers 0 .. 2^bits - 1 (unsigned graded input messages, §3.1)."""
    scaled = x * float(scale)
    x_int = np.rint(scaled)
    if np.any(np.abs(scaled - x_int) > 1e-6 * np.maximum(1.0, np.abs(scaled))):
        raise SpikedetError(
            f"input x * input_scale ({scale:g}) is not integer-valued; the chip receives "
            "integers: pass --input-scale so that x * scale are integers",
            where,
        )
    if x_int.min() < 0 or x_int.max() >= 1 << bits:
        raise SpikedetError(
            f"input x * input_scale spans {x_int.min():g}..{x_int.max():g}, outside the "
            f"{bits}-bit unsigned input messages 0..{(1 << bits) - 1}",
            where,
        )
    return x_int.astype(np.int64)
