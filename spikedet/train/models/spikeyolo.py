"""SpikeYOLO detectors assembled only from the exportable blocks of ``blocks.py``.

Layout (docs/semantics.md §2; BICLab/SpikeYOLO @ 309ef5e, ``ultralytics/cfg/models/v8/snn_yolov8.yaml`` simplified
to what NIR can express):

    image -> MS_GetT (repeat T times) -> stem MSDownSampling(first, k7 s4 p2)      stride 4
          -> stage 0: n0 x MSAllConvBlock
          -> stage i>0: MSDownSampling(k3 s2 p1) + ni x MSAllConvBlock            stride 4*2^i
    head: for every detect stage a DetectBranch for boxes (4*reg_max) and one for classes (nc),
          both reading the stage output current; outputs are averaged over T.

There is deliberately no upsampling, concatenation or max-pooling, so the head reads the
backbone stages directly (an FPN-less YOLOv8 head) and the graph needs no §2.7-2.8 constructs.
``SpikeYOLOv8`` (``spikeyolo_v8``) is the paper's full detector (SPPF, upsampling,
concatenations); it exports too.

Box decoding (docs/semantics.md §2.4): channel ``side*reg_max + bin`` for sides l, t, r, b;
softmax over bins; expectation with weights 0..reg_max-1; times the stride; anchors at cell
centres; box = (cx - l, cy - t, cx + r, cy + b).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from spikedet.errors import SpikedetError
from spikedet.train.models.blocks import (
    Builder,
    Current,
    DetectBranch,
    MSAllConvBlock,
    MSDownSampling,
    time_first,
    time_mean,
)
from spikedet.train.neurons import ILIF, NEURONS, set_neuron

STEM_STRIDE = 4

# Config keys of both SpikeYOLO layouts (this one and ``spikeyolo_v8``).
SHARED_CONFIG_KEYS = ("name", "nc", "names", "imgsz", "T", "levels", "reg_max", "in_channels")
# Keys of ``SpikeYOLO.config``; every one is needed to rebuild the model.
CONFIG_KEYS = (
    *SHARED_CONFIG_KEYS,
    "widths",
    "blocks",
    "ratio",
    "sep_kernel",
    "head_hidden",
    "detect_stages",
    "neuron",
)

# Keys a config may lack (checkpoints written before they existed): their defaults. ``neuron``:
# "coco" (I-LIF beta 0.25, alpha 1) or "gen1" (SpikeYOLO_for_Gen1's tau = 2 LIF, ilif_gen1).
OPTIONAL_KEYS = {"neuron": "coco"}


class ScaleHead(nn.Module):
    """The decoupled head of one stride: a box branch and a class branch on the same current."""

    def __init__(
        self, cin: int, hidden: int, reg_max: int, nc: int, levels: int, cls_hidden: int = 0
    ):
        super().__init__()
        self.box = DetectBranch(cin, hidden, 4 * reg_max, levels)
        self.cls = DetectBranch(cin, cls_hidden or hidden, nc, levels)


def init_head_bias(head: nn.ModuleList, strides: list[int], imgsz: int, nc: int) -> None:
    """YOLOv8 prior: box logits start flat (bias 1); a class fires ~5 times per image.

    cls bias = log(5 / nc / (imgsz / stride)^2), i.e. a prior probability of 5 objects per
    class spread over the cells of that stride.
    """
    with torch.no_grad():
        for scale_head, stride in zip(head, strides):
            scale_head.box.pred.cb.conv.bias.fill_(1.0)
            cells = (imgsz / stride) ** 2
            scale_head.cls.pred.cb.conv.bias.fill_(math.log(5.0 / nc / cells))


class SpikeYOLO(nn.Module):
    """Spiking YOLOv8-style detector on I-LIF neurons (float training form).

    ``forward`` returns, per stride, ``(box logits [B, 4*reg_max, H, W], cls logits [B, nc, H, W])``
    averaged over the T time steps; ``trace`` mirrors it on a symbolic builder for NIR export.
    """

    def __init__(self, config: dict[str, Any]):
        super().__init__()
        cfg = _validated(config)
        self.config: dict[str, Any] = cfg
        self.name: str = cfg["name"]
        self.nc: int = cfg["nc"]
        self.names: list[str] = list(cfg["names"])
        self.imgsz: int = cfg["imgsz"]
        self.T: int = cfg["T"]
        self.levels: int = cfg["levels"]
        self.reg_max: int = cfg["reg_max"]
        self.in_channels: int = cfg["in_channels"]
        widths: list[int] = cfg["widths"]
        levels = self.levels

        self.stem = MSDownSampling(
            self.in_channels, widths[0], 7, STEM_STRIDE, 2, first=True, levels=levels
        )
        stages: list[nn.Sequential] = []
        for i, (width, n_blocks) in enumerate(zip(widths, cfg["blocks"])):
            layers: list[nn.Module] = []
            if i > 0:
                layers.append(MSDownSampling(widths[i - 1], width, 3, 2, 1, levels=levels))
            layers += [
                MSAllConvBlock(width, cfg["ratio"], cfg["sep_kernel"], levels)
                for _ in range(n_blocks)
            ]
            stages.append(nn.Sequential(*layers))
        self.stages = nn.ModuleList(stages)
        self.detect_stages: list[int] = list(cfg["detect_stages"])
        self.strides: list[int] = [STEM_STRIDE * 2**i for i in self.detect_stages]
        self.head = nn.ModuleList(
            ScaleHead(widths[i], cfg["head_hidden"], self.reg_max, self.nc, levels)
            for i in self.detect_stages
        )
        self._init_head_bias()
        self.neuron: str = cfg["neuron"]
        set_neuron(self, self.neuron)

    def _init_head_bias(self) -> None:
        init_head_bias(self.head, self.strides, self.imgsz, self.nc)

    @property
    def max_stride(self) -> int:
        return STEM_STRIDE * 2 ** (len(self.stages) - 1)

    def _time_first(self, x: Tensor, layout: str = "TB") -> Tensor:
        return time_first(x, self.T, self.in_channels, self.max_stride, self.name, layout)

    def forward(self, x: Tensor, layout: str = "TB") -> list[tuple[Tensor, Tensor]]:
        """``layout="BT"``: a 5-D input is ``[B, T, C, H, W]`` (the official Gen1 order)."""
        y = self.stem(self._time_first(x, layout))
        feats: list[Tensor] = []
        for stage in self.stages:
            y = stage(y)
            feats.append(y)
        # DetectBranch starts with an I-LIF: the head reads membrane-level stage outputs.
        return [
            (time_mean(h.box(feats[i])), time_mean(h.cls(feats[i])))
            for h, i in zip(self.head, self.detect_stages)
        ]

    def trace(self, g: Builder) -> list[tuple[str, str]]:
        """Symbolic mirror of ``forward``: one (box_role, cls_role) pair per stride."""
        x: Current = self.stem.trace(g, g.input)
        feats: list[Current] = []
        for stage in self.stages:
            for layer in stage:
                x = layer.trace(g, x)
            feats.append(x)
        return [
            (
                h.box.trace(g, feats[i], f"head.{k}.box"),
                h.cls.trace(g, feats[i], f"head.{k}.cls"),
            )
            for k, (h, i) in enumerate(zip(self.head, self.detect_stages))
        ]

    def extra_repr(self) -> str:
        return (
            f"name={self.name}, nc={self.nc}, T={self.T}, D={self.levels}, strides={self.strides}"
        )


def checked_keys(config: dict[str, Any], keys: tuple[str, ...], where: str) -> dict[str, Any]:
    """``config`` restricted to ``keys`` (``OPTIONAL_KEYS`` filled in with their defaults): an
    error names missing and unknown keys, or a neuron that is not one of ``NEURONS``."""
    missing = [k for k in keys if k not in config and k not in OPTIONAL_KEYS]
    unknown = [k for k in config if k not in keys]
    if missing or unknown:
        raise SpikedetError(f"missing keys {missing}, unknown keys {unknown}", where)
    cfg = {k: config.get(k, OPTIONAL_KEYS.get(k)) for k in keys}
    if cfg["neuron"] not in NEURONS:
        raise SpikedetError(f"neuron must be one of {list(NEURONS)}, got {cfg['neuron']!r}", where)
    return cfg


def _validated(config: dict[str, Any]) -> dict[str, Any]:
    """Check a model config and return a normalized JSON-serializable copy."""
    where = f"model config {config.get('name', '?')}"
    cfg = checked_keys(config, CONFIG_KEYS, where)
    try:
        for key in (
            "nc",
            "imgsz",
            "T",
            "levels",
            "reg_max",
            "in_channels",
            "ratio",
            "sep_kernel",
            "head_hidden",
        ):
            cfg[key] = int(cfg[key])
        cfg["name"] = str(cfg["name"])
        cfg["names"] = [str(n) for n in cfg["names"]]
        cfg["widths"] = [int(v) for v in cfg["widths"]]
        cfg["blocks"] = [int(v) for v in cfg["blocks"]]
        cfg["detect_stages"] = [int(v) for v in cfg["detect_stages"]]
    except (TypeError, ValueError) as err:
        raise SpikedetError(f"bad value type: {err}", where) from err
    checks = [
        (cfg["nc"] >= 1, "nc must be >= 1"),
        (len(cfg["names"]) == cfg["nc"], f"{len(cfg['names'])} names for nc={cfg['nc']}"),
        (cfg["T"] >= 1 and cfg["levels"] >= 1, "T and levels must be >= 1"),
        (cfg["reg_max"] >= 2, "reg_max must be >= 2"),
        (len(cfg["widths"]) == len(cfg["blocks"]) >= 1, "widths and blocks differ in length"),
        (
            all(w >= 1 for w in cfg["widths"]) and all(n >= 0 for n in cfg["blocks"]),
            "widths must be >= 1 and blocks >= 0",
        ),
        (cfg["ratio"] >= 1 and cfg["sep_kernel"] % 2 == 1, "ratio >= 1, odd sep_kernel"),
        (cfg["head_hidden"] >= 1, "head_hidden must be >= 1"),
        (
            len(cfg["detect_stages"]) >= 1
            and cfg["detect_stages"] == sorted(set(cfg["detect_stages"]))
            and all(0 <= i < len(cfg["widths"]) for i in cfg["detect_stages"]),
            "detect_stages must be increasing stage indices",
        ),
    ]
    for ok, msg in checks:
        if not ok:
            raise SpikedetError(msg, where)
    max_stride = STEM_STRIDE * 2 ** (len(cfg["widths"]) - 1)
    if cfg["imgsz"] % max_stride:
        raise SpikedetError(f"imgsz {cfg['imgsz']} is not a multiple of {max_stride}", where)
    return cfg


def count_neurons(model: nn.Module, imgsz: int | None = None) -> int:
    """I-LIF neurons per time step at ``imgsz``, counting a population once per input current.

    Two I-LIFs fed by the same tensor spike identically and are one population after export
    (blocks.py ``Builder.spikes``), so inputs are deduplicated by tensor identity.
    """
    size = model.imgsz if imgsz is None else imgsz
    seen: dict[int, int] = {}
    hooks = []

    def record(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
        seen[id(inputs[0])] = output[0, 0].numel()

    keep: list[Tensor] = []  # keeps inputs alive so ids are not reused during the pass
    for module in model.modules():
        if isinstance(module, ILIF):
            hooks.append(module.register_forward_hook(record))
            hooks.append(module.register_forward_pre_hook(lambda m, a: keep.append(a[0])))
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, model.in_channels, size, size))
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    return int(sum(seen.values()))
