"""SpikeYOLO detectors assembled only from the exportable blocks of ``blocks.py``.

Layout (docs/semantics.md §2, reference detectors.md §3.2 simplified to what NIR can express):

    image -> MS_GetT (repeat T times) -> stem MSDownSampling(first, k7 s4 p2)      stride 4
          -> stage 0: n0 x MSAllConvBlock
          -> stage i>0: MSDownSampling(k3 s2 p1) + ni x MSAllConvBlock            stride 4*2^i
    head: for every detect stage a DetectBranch for boxes (4*reg_max) and one for classes (nc),
          both reading the stage output current; outputs are averaged over T.

There is deliberately no upsampling, concatenation or max-pooling, so the head reads the
backbone stages directly (an FPN-less YOLOv8 head) and the graph needs no §2.7-2.8 constructs.
``SpikeYOLOv8`` is the paper's full detector (SPPF, upsampling, concatenations); it exports too.

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
    SpikeConv,
    time_first,
    time_mean,
)
from spikedet.train.models.yolo_blocks import (
    DFL,
    Concat,
    MSConvBlock,
    RepAllConvBlock,
    SpikeSPPF,
    Upsample2x,
    reparameterize,
)
from spikedet.train.neurons import ILIF

STEM_STRIDE = 4

# Keys of ``SpikeYOLO.config``; every one is needed to rebuild the model.
CONFIG_KEYS = (
    "name",
    "nc",
    "names",
    "imgsz",
    "T",
    "levels",
    "reg_max",
    "in_channels",
    "widths",
    "blocks",
    "ratio",
    "sep_kernel",
    "head_hidden",
    "detect_stages",
)


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

    def _init_head_bias(self) -> None:
        init_head_bias(self.head, self.strides, self.imgsz, self.nc)

    @property
    def max_stride(self) -> int:
        return STEM_STRIDE * 2 ** (len(self.stages) - 1)

    def _time_first(self, x: Tensor) -> Tensor:
        return time_first(x, self.T, self.in_channels, self.max_stride, self.name)

    def forward(self, x: Tensor) -> list[tuple[Tensor, Tensor]]:
        y = self.stem(self._time_first(x))
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


# Keys of ``SpikeYOLOv8.config`` (the paper's full detectors, reference detectors.md §3.2).
FULL_CONFIG_KEYS = (
    "name",
    "nc",
    "names",
    "imgsz",
    "T",
    "levels",
    "reg_max",
    "in_channels",
    "widths",
    "repeats",
    "p5_ratio",
    "sep_kernel",
)


class SpikeYOLOv8(nn.Module):
    """SpikeYOLO as published (snn_yolov8.yaml), in its training-time re-parameterisable form.

    ``widths`` = channels at strides 4/8/16/32 (C2, C3, C4, C5), ``repeats`` = blocks of layers
    2/4/6/8, ``p5_ratio`` = r of layer 25. Attribute names carry the yaml layer index. Forward API
    as ``SpikeYOLO``: per stride 8/16/32, ``(box [B, 4*reg_max, H, W], cls [B, nc, H, W])``
    averaged over T. ``trace`` (after ``reparameterize``) mirrors forward for NIR export; it
    raises ``SpikedetError`` naming the module where an exact export is impossible (an unfused
    RepConv chain, SPPF at T > 1, upsampling of an odd-sized map).
    """

    max_stride = 32
    # Applied by the host after the readouts (box decoding, spikedet.detection), not exported.
    host_modules = ("dfl",)

    def __init__(self, config: dict[str, Any]):
        super().__init__()
        cfg = _validated_full(config)
        self.config: dict[str, Any] = cfg
        self.name: str = cfg["name"]
        self.nc: int = cfg["nc"]
        self.names: list[str] = list(cfg["names"])
        self.imgsz, self.T, self.levels = cfg["imgsz"], cfg["T"], cfg["levels"]
        self.reg_max, self.in_channels = cfg["reg_max"], cfg["in_channels"]
        self.strides: list[int] = [8, 16, 32]
        c2, c3, c4, c5 = cfg["widths"]
        n2, n4, n6, n8 = cfg["repeats"]
        k, d = cfg["sep_kernel"], self.levels

        def down(cin: int, cout: int) -> MSDownSampling:
            return MSDownSampling(cin, cout, 3, 2, 1, levels=d)

        def stage(block: type[nn.Module], c: int, ratio: int, n: int) -> nn.Sequential:
            return nn.Sequential(*(block(c, ratio, k, d) for _ in range(n)))

        self.l1_stem = MSDownSampling(self.in_channels, c2, 7, STEM_STRIDE, 2, first=True, levels=d)
        self.l2 = stage(RepAllConvBlock, c2, 4, n2)
        self.l3, self.l4 = down(c2, c3), stage(RepAllConvBlock, c3, 4, n4)  # P3 backbone
        self.l5, self.l6 = down(c3, c4), stage(MSConvBlock, c4, 3, n6)  # P4 backbone
        self.l7, self.l8 = down(c4, c5), stage(MSConvBlock, c5, 2, n8)
        self.l9_sppf = SpikeSPPF(c5, c5, 5, d)
        self.l10 = SpikeConv(c5, c4, 1, levels=d)
        self.l11_up, self.l12 = Upsample2x(), MSConvBlock(c4, 3, k, d)
        self.l13_cat, self.l14 = Concat(), SpikeConv(2 * c4, c3, 1, levels=d)
        self.l15_up, self.l16 = Upsample2x(), RepAllConvBlock(c3, 4, k, d)
        self.l17_cat, self.l18 = Concat(), SpikeConv(2 * c3, c3, 1, levels=d)
        self.l19 = RepAllConvBlock(c3, 4, k, d)  # P3 out
        self.l20, self.l21_cat = SpikeConv(c3, c3, 3, 2, levels=d), Concat()
        self.l22 = MSConvBlock(2 * c3, 3, k, d)  # P4 out
        self.l23, self.l24_cat = SpikeConv(2 * c3, c4, 3, 2, levels=d), Concat()
        self.l25 = MSConvBlock(2 * c4, cfg["p5_ratio"], k, d)  # P5 out
        # SpikeDetect: c2 = max(16, C_P3/4, 4*reg_max), c3 = max(C_P3, min(nc, 100)).
        box_hidden = max(16, c3 // 4, 4 * self.reg_max)
        cls_hidden = max(c3, min(self.nc, 100))
        self.head = nn.ModuleList(
            ScaleHead(cin, box_hidden, self.reg_max, self.nc, d, cls_hidden)
            for cin in (c3, 2 * c3, 2 * c4)
        )
        self.dfl = DFL(self.reg_max)
        init_head_bias(self.head, self.strides, self.imgsz, self.nc)
        for name, module in self.named_modules():  # errors from trace name the module path
            module.export_name = name

    def forward(self, x: Tensor) -> list[tuple[Tensor, Tensor]]:
        x = self.l2(self.l1_stem(time_first(x, self.T, self.in_channels, 32, self.name)))
        p3 = self.l4(self.l3(x))
        p4 = self.l6(self.l5(p3))
        lat10 = self.l10(self.l9_sppf(self.l8(self.l7(p4))))
        lat14 = self.l14(self.l13_cat([self.l12(self.l11_up(lat10)), p4]))
        x = self.l18(self.l17_cat([self.l16(self.l15_up(lat14)), p3]))
        out3 = self.l19(x)
        out4 = self.l22(self.l21_cat([self.l20(out3), lat14]))
        out5 = self.l25(self.l24_cat([self.l23(out4), lat10]))
        return [
            (time_mean(h.box(f)), time_mean(h.cls(f)))
            for h, f in zip(self.head, (out3, out4, out5))
        ]

    def trace(self, g: Builder) -> list[tuple[str, str]]:
        """Symbolic mirror of ``forward``: one (box_role, cls_role) pair per stride."""
        x = self.l1_stem.trace(g, g.input)
        for layer in (*self.l2, self.l3, *self.l4):
            x = layer.trace(g, x)
        p3 = x
        for layer in (self.l5, *self.l6):
            x = layer.trace(g, x)
        p4 = x
        for layer in (self.l7, *self.l8, self.l9_sppf, self.l10):
            x = layer.trace(g, x)
        lat10 = x
        up = self.l12.trace(g, self.l11_up.trace(g, lat10))
        lat14 = self.l14.trace(g, self.l13_cat.trace(g, [up, p4]))
        up = self.l16.trace(g, self.l15_up.trace(g, lat14))
        out3 = self.l19.trace(g, self.l18.trace(g, self.l17_cat.trace(g, [up, p3])))
        out4 = self.l22.trace(g, self.l21_cat.trace(g, [self.l20.trace(g, out3), lat14]))
        out5 = self.l25.trace(g, self.l24_cat.trace(g, [self.l23.trace(g, out4), lat10]))
        return [
            (h.box.trace(g, f, f"head.{i}.box"), h.cls.trace(g, f, f"head.{i}.cls"))
            for i, (h, f) in enumerate(zip(self.head, (out3, out4, out5)))
        ]

    def reparameterize(self) -> int:
        """Fuse every RepConv / SepRepConv chain into one 3x3 conv with bias (exact in eval)."""
        return reparameterize(self)

    def extra_repr(self) -> str:
        return f"name={self.name}, nc={self.nc}, T={self.T}, D={self.levels}, strides=[8, 16, 32]"


def _validated_full(config: dict[str, Any]) -> dict[str, Any]:
    """Check a SpikeYOLOv8 config and return a normalized JSON-serializable copy."""
    where = f"model config {config.get('name', '?')}"
    missing = [k for k in FULL_CONFIG_KEYS if k not in config]
    unknown = [k for k in config if k not in FULL_CONFIG_KEYS]
    if missing or unknown:
        raise SpikedetError(f"missing keys {missing}, unknown keys {unknown}", where)
    cfg = {k: config[k] for k in FULL_CONFIG_KEYS}
    try:
        for key in ("nc", "imgsz", "T", "levels", "reg_max", "in_channels", "p5_ratio"):
            cfg[key] = int(cfg[key])
        cfg["sep_kernel"] = int(cfg["sep_kernel"])
        cfg["name"], cfg["names"] = str(cfg["name"]), [str(n) for n in cfg["names"]]
        cfg["widths"] = [int(v) for v in cfg["widths"]]
        cfg["repeats"] = [int(v) for v in cfg["repeats"]]
    except (TypeError, ValueError) as err:
        raise SpikedetError(f"bad value type: {err}", where) from err
    checks = [
        (cfg["nc"] >= 1 and len(cfg["names"]) == cfg["nc"], "need nc >= 1 and nc names"),
        (cfg["T"] >= 1 and cfg["levels"] >= 1 and cfg["reg_max"] >= 2, "bad T, levels, reg_max"),
        (len(cfg["widths"]) == 4 and min(cfg["widths"]) >= 2, "widths: 4 values >= 2"),
        (len(cfg["repeats"]) == 4 and min(cfg["repeats"]) >= 1, "repeats: 4 values >= 1"),
        (cfg["p5_ratio"] >= 1 and cfg["sep_kernel"] % 2 == 1, "p5_ratio >= 1, odd sep_kernel"),
        (cfg["imgsz"] % 32 == 0, f"imgsz {cfg['imgsz']} is not a multiple of 32"),
    ]
    for ok, msg in checks:
        if not ok:
            raise SpikedetError(msg, where)
    return cfg


def _validated(config: dict[str, Any]) -> dict[str, Any]:
    """Check a model config and return a normalized JSON-serializable copy."""
    where = f"model config {config.get('name', '?')}"
    missing = [k for k in CONFIG_KEYS if k not in config]
    unknown = [k for k in config if k not in CONFIG_KEYS]
    if missing or unknown:
        raise SpikedetError(f"missing keys {missing}, unknown keys {unknown}", where)
    cfg = {k: config[k] for k in CONFIG_KEYS}
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
