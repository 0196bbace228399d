"""EMS-YOLO checkpoints (BICLab/EMS-YOLO @ fbfc2ca): read the unpickled ``models.yolo.Model`` of
the released COCO EMS-ResNet34 (``runs/train/opt.yaml``: ``cfg: models/resnet34-cat.yaml``) and
plan our ``ems-res34-cat`` and its name map.

``Model.model`` is the yaml's ``nn.Sequential`` (``models/common.py`` blocks; n > 1 repeats are a
Sequential): 0 ``Conv_1`` stem, 1-8 the four stages (``BasicBlock_2`` / ``Concat_res2`` + extra
``BasicBlock_2``), 9 ``BasicBlock_2`` 512->256, 10 ``Conv`` (SiLU) P5 out, 11 ``BasicBlock_2`` 1x1
lateral, 12 ``Sample``, 13 ``Concat``, 14 ``Conv`` (SiLU) P4 out, 15 ``Detect``. Attribute map:

- ``BasicBlock_2``: residual_function = [mem_update, conv, batch_norm_2d, mem_update, conv,
  batch_norm_2d1] -> residual.a / residual.b (cb.conv, cb.bn); shortcut = [MaxPool3d,
  mem_update, conv, batch_norm_2d] -> shortcut.<LCB>.cb (our shortcut has no pool at stride 1)
- ``Concat_res2``: residual as above; shortcut = [mem_update, conv, batch_norm_2d] -> extra.cb
- ``Conv_1`` / ``Conv``: conv, bn (batch_norm_2d: the BatchNorm3d is ``bn.bn``) -> stem /
  p5_out.cb, p4_out.cb
- ``Detect``: m[k] -> detect.convs[k]; ``anchors`` (stored divided by the strides) -> ours
  in pixels. T is not in the checkpoint: 5 (models/yolo.py ``time_window``) unless given.
"""

from __future__ import annotations

from typing import Any

import torch

from spikedet.convert.official_ckpt import Opaque, attr, children, module_at, module_tensors
from spikedet.convert.official_plan import Pairs, Plan, blocks_of, short_class
from spikedet.errors import SpikedetError

# resnet34-cat.yaml: layer -> (block class, our module path; stage layers get block indices)
LAYERS: dict[int, tuple[str, str | None]] = {
    0: ("Conv_1", "stem"),
    1: ("BasicBlock_2", "stages.0.0"),
    2: ("BasicBlock_2", "stages.0"),
    3: ("Concat_res2", "stages.1.0"),
    4: ("BasicBlock_2", "stages.1"),
    5: ("Concat_res2", "stages.2.0"),
    6: ("BasicBlock_2", "stages.2"),
    7: ("Concat_res2", "stages.3.0"),
    8: ("BasicBlock_2", "stages.3"),
    9: ("BasicBlock_2", "h1"),
    10: ("Conv", "p5_out"),
    11: ("BasicBlock_2", "lateral"),
    12: ("Sample", None),
    13: ("Concat", None),
    14: ("Conv", "p4_out"),
    15: ("Detect", None),
}
EXTRA_LAYERS = (2, 4, 6, 8)  # extra blocks, numbered from 1 after the stage's first block
RELEASED_T = 5  # models/yolo.py: time_window = 5


def is_ems(root: Opaque) -> bool:
    layers = children(module_at(root, "model")) if module_at(root, "model") else {}
    return len(layers) == len(LAYERS) and short_class(layers[str(len(LAYERS) - 1)]) == "Detect"


def _residual(off: str, ours: str) -> Pairs:
    o, u = off + "residual_function.", ours + "residual."
    return [
        (o + "1.", u + "a.cb.conv."),
        (o + "2.bn.", u + "a.cb.bn."),
        (o + "4.", u + "b.cb.conv."),
        (o + "5.bn.", u + "b.cb.bn."),
    ]


def block_pairs(kind: str, off: str, ours: str, model: Any) -> Pairs:
    """The name map of one official block at ``off`` onto ours at ``ours`` (in ``model``)."""
    if kind == "Conv_1":
        return [(off + "conv.", ours + "conv."), (off + "bn.bn.", ours + "bn.")]
    if kind == "Conv":
        return [(off + "conv.", ours + "cb.conv."), (off + "bn.bn.", ours + "cb.bn.")]
    if kind == "Concat_res2":
        return _residual(off, ours) + [
            (off + "shortcut.1.", ours + "extra.cb.conv."),
            (off + "shortcut.2.bn.", ours + "extra.cb.bn."),
        ]
    if kind == "BasicBlock_2":
        pairs = _residual(off, ours)
        mine = model.get_submodule(ours.rstrip("."))
        if mine.shortcut is not None:
            lcb = f"{ours}shortcut.{len(mine.shortcut) - 1}.cb."
            pairs += [(off + "shortcut.2.", lcb + "conv."), (off + "shortcut.3.bn.", lcb + "bn.")]
        return pairs
    if kind == "Detect":
        return [(off + "m.0.", "detect.convs.0."), (off + "m.1.", "detect.convs.1.")]
    return []


def _check_layers(layers: dict[str, Opaque], where: str) -> None:
    for i, (kind, _) in LAYERS.items():
        got = {short_class(b) for b in blocks_of(layers[str(i)])}
        if got != {kind}:
            raise SpikedetError(
                f"layer {i} is {sorted(got)}, expected {kind}: only the released "
                "resnet34-cat.yaml layout is supported",
                where,
            )


def ems_plan(root: Opaque, where: str, T: int | None, model: str | None = None) -> Plan:
    """Our ``ems-res34-cat`` config (widths, extras, nc, anchors from here) and the name map;
    ``model`` instead takes that zoo entry as it is (anchors and nc from here)."""
    from spikedet.train.models.registry import build_from_config, model_config

    layers = children(module_at(root, "model"))
    _check_layers(layers, where)
    tensors = module_tensors(module_at(root, "model"), "model.")
    detect = layers["15"]
    anchors = tensors["model.15.anchors"].to(torch.float64)
    stride = attr(detect, "stride")
    strides = stride.to(torch.float64) if isinstance(stride, torch.Tensor) else None
    if strides is None or tuple(strides.tolist()) != (16.0, 32.0):
        raise SpikedetError(f"Detect strides {stride} are not (16, 32)", where)
    pixels = anchors * strides.view(-1, 1, 1)
    nc = int(attr(detect, "nc", tensors["model.15.m.0.weight"].shape[0] // 3 - 5))
    widths = [int(tensors[f"model.{i}.residual_function.1.weight"].shape[0]) for i in (1, 3, 5, 7)]
    extras = [len(blocks_of(layers[str(i)])) for i in EXTRA_LAYERS]
    fields: dict[str, Any] = {"anchors": pixels.tolist(), "T": T or RELEASED_T}
    if model is None:
        model = "ems-res34-cat"
        fields.update(
            widths=widths,
            extras=extras,
            stem=[int(tensors["model.0.conv.weight"].shape[0]), 7],
            in_channels=int(tensors["model.0.conv.weight"].shape[1]),
        )
    config = model_config(model, nc=nc, **fields)
    ours = build_from_config(config)
    pairs: Pairs = []
    for i, (kind, mine) in LAYERS.items():
        blocks = blocks_of(layers[str(i)])
        for j, _ in enumerate(blocks):
            off = f"model.{i}." + (f"{j}." if len(blocks) > 1 else "")
            target = "" if mine is None else mine + "."
            if i in EXTRA_LAYERS:
                target = f"{mine}.{j + 1}."
            pairs += block_pairs(kind, off, target, ours)
    notes = [f"T={config['T']} (not recorded in EMS-YOLO checkpoints; released {RELEASED_T})"]
    plan = Plan("ems-yolo", config, pairs, notes)
    plan.derived["detect.anchors"] = ("model.15.anchors", pixels.to(torch.float32))
    return plan
