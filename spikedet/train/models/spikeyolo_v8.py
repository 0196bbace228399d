"""``SpikeYOLOv8``: the paper's full SpikeYOLO detector (BICLab/SpikeYOLO @ 309ef5e,
``ultralytics/cfg/models/v8/snn_yolov8.yaml``): SPPF, nearest upsampling and concatenations in
the neck, on the blocks of ``blocks.py`` and ``yolo_blocks.py``. The FPN-less CPU variant and
the shared head pieces live in ``spikeyolo``.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from spikedet.errors import SpikedetError
from spikedet.train.models.blocks import (
    Builder,
    MSDownSampling,
    SpikeConv,
    time_first,
    time_mean,
)
from spikedet.train.models.spikeyolo import (
    SHARED_CONFIG_KEYS,
    STEM_STRIDE,
    ScaleHead,
    checked_keys,
    init_head_bias,
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
from spikedet.train.neurons import set_neuron

# Keys of ``SpikeYOLOv8.config`` (the paper's full detectors, ``snn_yolov8.yaml``).
FULL_CONFIG_KEYS = (
    *SHARED_CONFIG_KEYS,
    "widths",
    "repeats",
    "p5_ratio",
    "sep_kernel",
    "neuron",
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
        self.neuron: str = cfg["neuron"]
        set_neuron(self, self.neuron)
        for name, module in self.named_modules():  # errors from trace name the module path
            module.export_name = name

    def forward(self, x: Tensor, layout: str = "TB") -> list[tuple[Tensor, Tensor]]:
        """``layout="BT"``: a 5-D input is ``[B, T, C, H, W]`` (the official Gen1 order)."""
        x = time_first(x, self.T, self.in_channels, 32, self.name, layout)
        x = self.l2(self.l1_stem(x))
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
    cfg = checked_keys(config, FULL_CONFIG_KEYS, where)
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
