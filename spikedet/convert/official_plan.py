"""Shared pieces of the official-checkpoint import: a ``Plan`` (our config plus the tensor-name
map) and the function that turns an unpickled official module into our state dict, accounting
for every tensor on both sides.

A name map is a list of ``(official_prefix, our_prefix)`` pairs; an official tensor takes the
pair with the longest matching prefix, and the rest of its name (``weight``, ``running_mean`` ...)
is kept. The official module at a BN / conv prefix must also agree with ours on what the state
dict does not hold (BN eps, conv stride / padding / groups), or the import would not be exact.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from spikedet.convert.official_ckpt import (
    Opaque,
    attr,
    children,
    class_of,
    module_at,
    module_tensors,
)
from spikedet.errors import SpikedetError

Pairs = list[tuple[str, str]]


@dataclass
class Plan:
    """What one family's reader decided: our config, the name map and notes for the summary.

    ``derived``: our tensors not copied from an official tensor of the same name, with the
    official tensors they come from (e.g. EMS anchors, stored in grid units there)."""

    family: str
    config: dict[str, Any]
    pairs: Pairs
    notes: list[str] = field(default_factory=list)
    derived: dict[str, tuple[str, torch.Tensor]] = field(default_factory=dict)


def short_class(obj: Any) -> str:
    """``ultralytics.nn.modules.yolo_spikformer.MS_ConvBlock`` -> ``MS_ConvBlock``."""
    return class_of(obj).rsplit(".", 1)[-1]


def blocks_of(layer: Opaque) -> list[Opaque]:
    """The blocks of one yaml layer: ultralytics / yolov5 wrap n > 1 repeats in a Sequential."""
    if short_class(layer) == "Sequential":
        return list(children(layer).values())
    return [layer]


def _target(pairs: Pairs, name: str) -> str | None:
    best: tuple[str, str] | None = None
    for off, ours in pairs:
        if name.startswith(off) and (best is None or len(off) > len(best[0])):
            best = (off, ours)
    return None if best is None else best[1] + name[len(best[0]) :]


def _shape(t: torch.Tensor) -> str:
    return "x".join(str(v) for v in t.shape) or "scalar"


def _check_hyper(root: Opaque, pairs: Pairs, model: nn.Module, where: str) -> None:
    """BN eps and conv geometry are attributes, not tensors: they must match ours too."""
    ours = dict(model.named_modules())
    for off, mine in pairs:
        theirs, target = module_at(root, off.rstrip(".")), ours.get(mine.rstrip("."))
        if theirs is None or target is None:
            continue
        if isinstance(target, nn.modules.batchnorm._BatchNorm):
            eps = attr(theirs, "eps")
            if eps is not None and float(eps) != float(target.eps):
                raise SpikedetError(
                    f"{off.rstrip('.')}: BN eps {eps} differs from {mine.rstrip('.')}'s "
                    f"{target.eps}; the import would not be exact",
                    where,
                )
        if isinstance(target, nn.Conv2d):
            for key in ("stride", "padding", "groups", "dilation"):
                value = attr(theirs, key)
                if value is not None and tuple(_as_tuple(value)) != _as_tuple(getattr(target, key)):
                    raise SpikedetError(
                        f"{off.rstrip('.')}: conv {key} {value} differs from "
                        f"{mine.rstrip('.')}'s {getattr(target, key)}",
                        where,
                    )


def _as_tuple(value: Any) -> tuple:
    return tuple(value) if isinstance(value, tuple | list) else (value, value)


def map_state(
    root: Opaque, prefix: str, plan: Plan, model: nn.Module, where: str
) -> dict[str, torch.Tensor]:
    """Our float32 state dict for ``model`` from the official module ``root``.

    Every official tensor under ``prefix`` must land on exactly one of ours with the same shape,
    and every one of ours must be filled: the first that does not is a one-line SpikedetError
    naming the file (``where``) and the tensor."""
    official = module_tensors(root)
    ours = model.state_dict()
    out: dict[str, torch.Tensor] = {}
    used_by_derived = {src for src, _ in plan.derived.values()}
    for name, tensor in official.items():
        if name in used_by_derived:
            continue
        target = _target(plan.pairs, name) if name.startswith(prefix) else None
        if target is None or target not in ours:
            raise SpikedetError(
                f"official tensor {name} ({_shape(tensor)}) has no counterpart in "
                f"{plan.config['name']}{f' (would be {target})' if target else ''}",
                where,
            )
        if target in out:
            raise SpikedetError(f"official tensor {name} maps onto {target} twice", where)
        if tuple(tensor.shape) != tuple(ours[target].shape):
            raise SpikedetError(
                f"official tensor {name} ({_shape(tensor)}) does not fit {target} "
                f"({_shape(ours[target])}) of {plan.config['name']}",
                where,
            )
        out[target] = tensor.detach().to(ours[target].dtype).clone()
    for target, (_src, value) in plan.derived.items():
        out[target] = value.to(ours[target].dtype)
    missing = [k for k in ours if k not in out]
    if missing:
        raise SpikedetError(
            f"{plan.config['name']} tensor {missing[0]} has no counterpart in the checkpoint "
            f"({len(missing)} unfilled)",
            where,
        )
    _check_hyper(root, plan.pairs, model, where)
    return out
