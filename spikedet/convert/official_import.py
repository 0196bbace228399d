"""``spikedet import-weights``: an authors' checkpoint -> our weights_only checkpoint.

Steps: read the file with the restricted unpickler (``official_ckpt``, nothing in it runs), take
the EMA module when present (ultralytics strips it into ``model``; yolov5 keeps both until
``strip_optimizer``), recognise the family from the module classes, let the family's reader plan
our config and the tensor-name map (``official_spikeyolo`` / ``official_ems``), map every tensor
(``official_plan.map_state``: any tensor left over on either side is an error), load it into the
zoo model and return our checkpoint state (config, model weights, where it came from).
"""

from __future__ import annotations

import os
from typing import Any

import torch

from spikedet.convert.official_ckpt import class_of, is_module, read_official
from spikedet.convert.official_ems import ems_plan, is_ems
from spikedet.convert.official_plan import Plan, map_state
from spikedet.convert.official_spikeyolo import is_spikeyolo, spikeyolo_plan
from spikedet.errors import SpikedetError

FAMILIES = ("spikeyolo", "ems-yolo")


def _plain_args(value: Any) -> dict[str, Any]:
    """The recorded train args (ultralytics ``train_args``) that are plain values."""
    if not isinstance(value, dict):
        return {}
    plain = (str, int, float, bool, type(None))
    return {str(k): v for k, v in value.items() if isinstance(v, plain)}


def _family(root: Any, forced: str | None, where: str) -> str:
    found = "spikeyolo" if is_spikeyolo(root) else "ems-yolo" if is_ems(root) else None
    if found is None:
        raise SpikedetError(
            f"{class_of(root)} is neither a SpikeYOLO (snn_yolov8.yaml) nor an EMS-YOLO "
            "(resnet34-cat.yaml) model",
            where,
        )
    if forced is not None and forced != found:
        raise SpikedetError(f"--family {forced}, but the checkpoint holds a {found} model", where)
    return found


def import_official(
    path: str | os.PathLike,
    family: str | None = None,
    model: str | None = None,
    T: int | None = None,
) -> tuple[dict[str, Any], Plan, list[str]]:
    """Our checkpoint state for the official checkpoint at ``path``, the plan, summary lines."""
    where = str(path)
    if family is not None and family not in FAMILIES:
        raise SpikedetError(f"family must be one of {list(FAMILIES)}", repr(family))
    if T is not None and T < 1:
        raise SpikedetError(f"T must be >= 1, got {T}", "--T")
    ckpt = read_official(path)
    top = ckpt.top
    if top.get("format") == "spikedet-checkpoint":
        raise SpikedetError("already a spikedet checkpoint: nothing to import", where)
    ema, raw = top.get("ema"), top.get("model")
    root = ema if is_module(ema) else raw if is_module(raw) else None
    if root is None:
        raise SpikedetError("no model or ema module in the checkpoint", where)
    source = "ema" if root is ema else "model"
    found = _family(root, family, where)
    args = _plain_args(top.get("train_args"))
    if found == "spikeyolo":
        plan = spikeyolo_plan(root, where, args, T, model)
    else:
        plan = ems_plan(root, where, T, model)
    from spikedet.train.models.registry import build_from_config

    try:
        net = build_from_config(plan.config)
    except SpikedetError as err:
        msg = f"cannot build {plan.config.get('name')}: {err.one_line()}"
        raise SpikedetError(msg, where) from err
    weights = map_state(root, "model.", plan, net, where)
    net.load_state_dict(weights, strict=True)
    dtypes = sorted({str(t.dtype).replace("torch.", "") for t in weights.values()})
    state: dict[str, Any] = {
        "config": net.config,
        "model": weights,
        "imported_from": {
            "file": os.path.basename(where),
            "family": found,
            "class": class_of(root),
            "weights": source,
            "epoch": top.get("epoch") if isinstance(top.get("epoch"), int) else None,
        },
    }
    if plan.config.get("neuron") == "gen1":
        # What eval / export read as the input encoding: the official Gen1 frames (polarity3).
        state["train_config"] = {"dataset": "gen1", "representation": "polarity3",
                                 "time_steps": int(plan.config["T"]),
                                 "imgsz": int(plan.config["imgsz"])}  # fmt: skip
    lines = [
        f"{os.path.basename(where)}: {class_of(root)} ({found}), weights from '{source}'",
        f"-> {net.config['name']}: {len(weights)} tensors mapped, none left over "
        f"({sum(t.numel() for t in net.parameters()):,} parameters; loaded as {', '.join(dtypes)})",
        *plan.notes,
    ]
    return state, plan, lines


def imported_model(state: dict[str, Any]) -> torch.nn.Module:
    """The model an ``import_official`` state describes (eval mode)."""
    from spikedet.train.models.registry import build_from_config

    net = build_from_config(state["config"])
    net.load_state_dict(state["model"], strict=True)
    return net.eval()
