"""Training checkpoints: plain data only, so ``torch.load(weights_only=True)`` reads them.

A checkpoint is a dict with at least ``format`` (``CHECKPOINT_FORMAT``), ``version``, ``config``
(``SpikeYOLO.config``) and ``model`` (a state dict); the trainer adds ``ema``, ``optimizer``,
``epoch``, ``best_fitness``, ``train_config``, ``metrics`` and ``rng`` (RNG states as tensors).
Nothing pickled refers to code, so loading never executes anything from the file.
"""

from __future__ import annotations

import os
import pickle
import random
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from spikedet.errors import SpikedetError
from spikedet.fileio import atomic_path
from spikedet.train.models.registry import build_from_config
from spikedet.train.models.spikeyolo import SpikeYOLO
from spikedet.train.models.spikeyolo_v8 import SpikeYOLOv8

CHECKPOINT_FORMAT = "spikedet-checkpoint"
CHECKPOINT_VERSION = 1
REQUIRED_KEYS = ("format", "version", "config", "model")


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> None:
    """Write ``state`` (tensors, numbers, strings, lists, dicts) atomically with ``torch.save``.

    ``format``/``version`` are filled in when absent. Anything ``weights_only`` could not read
    back (an arbitrary object) is rejected here, before the file is replaced.
    """
    state = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, **state}
    missing = [k for k in REQUIRED_KEYS if k not in state]
    if missing:
        raise SpikedetError(f"checkpoint state lacks keys {missing}", str(path))
    _check_plain(state, "state")
    with atomic_path(path, suffix=".pt") as tmp:
        torch.save(state, tmp)


def _check_plain(value: Any, where: str) -> None:
    """Raise unless ``value`` is built from tensors, numbers, strings, None, lists and dicts."""
    if isinstance(value, torch.Tensor | str | int | float | bool | type(None) | torch.Size):
        return
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str | int):
                raise SpikedetError(f"non-plain dict key {k!r}", where)
            _check_plain(v, f"{where}.{k}")
        return
    if isinstance(value, list | tuple):
        for i, v in enumerate(value):
            _check_plain(v, f"{where}[{i}]")
        return
    raise SpikedetError(f"checkpoint value of type {type(value).__name__} is not plain data", where)


def capture_rng_state() -> dict[str, Any]:
    """Global RNG states as plain data: the torch CPU (and CUDA) generators and Python's
    ``random``. numpy's legacy global generator is not stored: the project never draws from it
    (all numpy randomness comes from ``default_rng`` seeded per item)."""
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of ``capture_rng_state`` (parts that are absent are left as they are)."""
    if "torch" in state:
        torch.set_rng_state(state["torch"])
    if "python" in state:
        version, internal, gauss_next = state["python"]
        random.setstate((version, tuple(internal), gauss_next))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(list(state["cuda"]))


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a checkpoint with ``weights_only=True``; any failure -> SpikedetError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise SpikedetError("checkpoint file not found", str(path))
    try:
        with warnings.catch_warnings():
            # Foreign pickles make torch warn about their protocol before failing: the error says it.
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        # weights_only refuses any global it does not allow-list: the file holds code or objects.
        first = str(err).strip().splitlines()[0] if str(err).strip() else "unpickling failed"
        raise SpikedetError(
            f"not a plain-data checkpoint (refused by weights_only: {first})", str(path)
        ) from err
    except Exception as err:  # noqa: BLE001 - arbitrary bytes fail in arbitrary ways in unpickling
        raise SpikedetError(
            f"not a readable torch checkpoint ({type(err).__name__})", str(path)
        ) from err
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise SpikedetError(
            f"not a spikedet checkpoint (format != {CHECKPOINT_FORMAT!r})", str(path)
        )
    missing = [k for k in REQUIRED_KEYS if k not in state]
    if missing:
        raise SpikedetError(f"checkpoint lacks keys {missing}", str(path))
    if int(state["version"]) > CHECKPOINT_VERSION:
        raise SpikedetError(
            f"checkpoint version {state['version']} is newer than supported ({CHECKPOINT_VERSION})",
            str(path),
        )
    return state


def load_model(path: str | os.PathLike) -> SpikeYOLO | SpikeYOLOv8 | nn.Module:
    """Rebuild the model from the stored config and load its EMA weights (or raw ones), in eval."""
    return model_from_state(load_checkpoint(path), path)


def model_from_state(
    state: dict[str, Any], path: str | os.PathLike
) -> SpikeYOLO | SpikeYOLOv8 | nn.Module:
    """``load_model`` for a checkpoint already read by ``load_checkpoint`` (from ``path``)."""
    try:
        model = build_from_config(state["config"])
    except SpikedetError as err:
        raise SpikedetError(f"bad model config in checkpoint: {err.one_line()}", str(path)) from err
    weights = state.get("ema") if state.get("ema") is not None else state["model"]
    if not isinstance(weights, dict):
        raise SpikedetError("checkpoint weights are not a state dict", str(path))
    try:
        model.load_state_dict(weights, strict=True)
    except (RuntimeError, KeyError, TypeError) as err:
        detail = " ".join(str(err).split())[:300]
        raise SpikedetError(
            f"weights do not match architecture {model.name}: {detail}", str(path)
        ) from err
    return model.eval()
