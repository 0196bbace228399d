"""EMS-YOLO detectors (EMS-ResNet backbones, 2-scale anchor head) on the EMS LIF neuron.

Source: BICLab/EMS-YOLO @ fbfc2ca: ``models/common.py`` (``mem_update``, the blocks), the
``models/*.yaml`` layer tables and ``models/yolo.py`` (head); parameter counts checked against
the paper's (Su et al., ICCV 2023, arXiv 2307.11411). Tensors are time-first
``[T, B, C, H, W]``; every conv runs per time step and BatchNorm statistics are shared over (T, B, H, W).

Blocks pass membrane-level currents: a residual branch is ``LCB(k, s) -> LCB(k, 1)`` with
``LCB = LIF -> Conv (no bias) -> BN``, and its output is *added* to the shortcut without a neuron
(the MS-ResNet membrane shortcut), so the next block's first LIF sees the sum.

Families (``EMS_MODEL_NAMES``):
- ``ems-res10/18/34``: the half-width "-ee" models (stem Conv3x3/2 3->32, widths 64..512,
  hidden width Cout/2, stage extras 0/1/(2,3,5,2)), 2 classes, T = 5 (Gen1).
  **Deviation from "all spikes", kept on purpose:** EMS-YOLO's half-width ``BasicBlock_ms`` has a
  conv shortcut *without* a LIF (MaxPool -> Conv1x1 -> BN on the real-valued current); we follow
  the code, because the published 6.20/9.34/14.40 M counts are of that code. Those shortcut
  convs, the stem and the Detect convs take real-valued inputs and count as MACs (instrument.py).
- ``ems-res34-coco``: full width (stem Conv7x7/2 3->64), the released ``resnet34-cat`` layout,
  but the two SiLU ``Conv`` head layers are spiking ``LCB``s (same parameters), and the shortcut
  convs of ``BasicBlock_2`` read spikes; 80 classes, T = 4. Parameters equal resnet34-cat's.
- ``ems-res34-cat``: the released COCO model exactly: ``ems-res34-coco`` with the official head
  (config ``head: "silu"``: the two ``Conv`` layers conv -> BN -> SiLU membrane, not
  spike-driven, so eval runs it and export/deploy refuse it) and the released T = 5.
- ``ems-pico``: a quarter-width "-ee" model for tests (64 px, T = 2).
- ``<name>-avg`` (config ``pool: "avg"``): every shortcut pooling is an average pool with the
  same kernel and stride instead of the paper's max pool (``pool: "max"``, the default).

Export (``trace``, docs/semantics.md §2.5-2.9): LIF populations, shortcut convs on currents
composed into the convs before them, concatenations as channel embeddings; a max-pooled current
is the ``max_pool`` extension op (float only, no spike-driven hardware form), while the ``-avg``
variant's pooling composes like a conv, so its graph has no extension ops.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import Tensor, nn

from spikedet.errors import SpikedetError
from spikedet.train.models.blocks import Builder, time_first
from spikedet.train.models.ems_blocks import (
    LCB,
    NUM_ANCHORS,
    POOL_KINDS,
    STRIDES,
    AnchorDetect,
    BasicBlock,
    ConcatBlock,
    EMSConvBN,
    Sample,
    SiLUConv,
)

_COCO_ANCHORS = [[[10, 14], [23, 27], [37, 58]], [[81, 82], [135, 169], [344, 319]]]
_GEN1_ANCHORS = [[[10, 14], [23, 27], [37, 58]], [[81, 82], [135, 169], [216, 269]]]
AVG_SUFFIX = "-avg"  # model name suffix of the average-pool variant


_CONFIG_KEYS = ("name", "nc", "T", "imgsz", "family", "stem", "widths", "extras", "anchors")
# Keys a config may lack (checkpoints written before they existed): their defaults.
# ``head``: "lcb" (spiking LIF -> conv -> BN head layers) or "silu" (the released resnet34-cat's
# conv -> BN -> SiLU-membrane ``Conv`` layers, full width only; not spike-driven).
_OPTIONAL_KEYS: dict[str, Any] = {"pool": "max", "in_channels": 3, "head": "lcb"}
HEAD_KINDS = ("lcb", "silu")

_CONFIGS: dict[str, dict[str, Any]] = {
    "ems-res10": {"family": "ee", "stem": [32, 3], "extras": [0, 0, 0, 0]},
    "ems-res18": {"family": "ee", "stem": [32, 3], "extras": [1, 1, 1, 1]},
    "ems-res34": {"family": "ee", "stem": [32, 3], "extras": [2, 3, 5, 2]},
    "ems-res34-coco": {
        "family": "full",
        "stem": [64, 7],
        "extras": [2, 3, 5, 2],
        "nc": 80,
        "T": 4,
        "imgsz": 640,
        "anchors": _COCO_ANCHORS,
    },
    "ems-pico": {
        "family": "ee",
        "stem": [8, 3],
        "widths": [16, 32, 64, 128],
        "extras": [0, 0, 0, 0],
        "T": 2,
        "imgsz": 64,
        # anchor_loss.fit_anchors of the train boxes of benchmarks/learn.py's two synthetic sets
        # at the imgsz of their runs (COCO shapes 18-80 px at 128; Gen1 at 160: cars ~33x19,
        # pedestrians ~8x25), the sets weighted equally, rounded to 0.1 px; recomputed by
        # tests/test_anchor_loss.py. Every box of both sets now has a stride-16 anchor; the
        # Gen1 anchors scaled to 64 px used before fitted only stride 32 on the COCO shapes.
        "anchors": [
            [[8.1, 23.2], [8.9, 30.2], [30.5, 20.6]],
            [[42.8, 18.1], [37.8, 38.2], [57.8, 57.5]],
        ],
    },
}
# The released COCO checkpoint exactly (runs/train/opt.yaml: models/resnet34-cat.yaml; T = 5,
# models/yolo.py ``time_window``): ems-res34-coco with the official SiLU head; the paper's T = 4
# is ``T=4``.
_CONFIGS["ems-res34-cat"] = {**_CONFIGS["ems-res34-coco"], "T": 5, "head": "silu"}

_DEFAULTS: dict[str, Any] = {
    "nc": 2,
    "T": 5,
    "imgsz": 320,
    "widths": [64, 128, 256, 512],
    "anchors": _GEN1_ANCHORS,
}
EMS_MODEL_NAMES: tuple[str, ...] = tuple(_CONFIGS)


class EMSYOLO(nn.Module):
    """EMS-YOLO: stem (no LIF) -> 4 EMS stages (strides 4..32) -> 2-scale head (16, 32).

    ``forward(x)``: x is ``[B, 3, S, S]`` (repeated T times, direct encoding) or
    ``[T, B, 3, S, S]``; returns per stride ``[B, na*(nc+5), S/stride, S/stride]`` averaged over T.
    ``trace`` mirrors it for NIR export (head metadata type "anchor", §2.4).
    """

    head_type = "anchor"

    def __init__(self, config: dict[str, Any]):
        super().__init__()
        cfg = _validated(config)
        self.config = cfg
        self.name: str = cfg["name"]
        self.nc: int = cfg["nc"]
        self.T: int = cfg["T"]
        self.imgsz: int = cfg["imgsz"]
        # 3 (images, Gen1 polarity3); Gen1 counts2: 2, histogram: 2 * bins
        self.in_channels: int = cfg["in_channels"]
        self.strides = list(STRIDES)
        self.names: list[str] = [f"class{i}" for i in range(self.nc)]  # configs hold no names
        half = cfg["family"] == "ee"
        pool = cfg["pool"]
        c0, k0 = cfg["stem"]
        w2, w3, w4, w5 = cfg["widths"]
        # Encoding layer: real-valued image -> conv/2 + BN, no LIF (counts as MACs).
        self.stem = EMSConvBN(self.in_channels, c0, k0, 2)
        stages: list[nn.Sequential] = []
        cin = c0
        for i, (width, n_extra) in enumerate(zip(cfg["widths"], cfg["extras"])):
            # Full-width P2 downsamples with BasicBlock_2 (64->64); everything else with Block2.
            if not half and i == 0:
                down: nn.Module = BasicBlock(cin, width, 3, 2, half=False, pool=pool)
            else:
                down = ConcatBlock(cin, width, 3, 2, half=half, pool=pool)
            extra = [BasicBlock(width, width, 3, 1, half=half) for _ in range(n_extra)]
            stages.append(nn.Sequential(down, *extra))
            cin = width
        self.stages = nn.ModuleList(stages)
        # Head (YOLOv3-tiny style): P5 branch, lateral 1x1, x2 up, concat with P4, P4 branch.
        self.h1 = BasicBlock(w5, w5 // 2, 3, 1, half=half)
        full_head = SiLUConv if cfg["head"] == "silu" else LCB
        self.p5_out: nn.Module = (
            ConcatBlock(w5 // 2, w5, 3, 1, half=True) if half else full_head(w5 // 2, w5, 3)
        )
        self.lateral = BasicBlock(w5 // 2, w5 // 4, 1, 1, half=half)
        self.up = Sample()
        cat = w5 // 4 + w4
        self.p4_out: nn.Module = (
            BasicBlock(cat, w4, 3, 1, half=True) if half else full_head(cat, w4, 3)
        )
        self.detect = AnchorDetect([w4, w5], self.nc, cfg["anchors"])
        for name, module in self.named_modules():  # errors from trace name the module path
            module.export_name = name

    def forward(self, x: Tensor, layout: str = "TB") -> list[Tensor]:
        """``layout="BT"``: a 5-D input is ``[B, T, C, H, W]`` (models/yolo.py's order)."""
        y = self.stem(time_first(x, self.T, self.in_channels, 32, self.name, layout))
        feats = []
        for stage in self.stages:
            y = stage(y)
            feats.append(y)
        h = self.h1(feats[3])
        p5 = self.p5_out(h)
        p4 = self.p4_out(torch.cat([self.up(self.lateral(h)), feats[2]], dim=2))
        return self.detect([p4, p5])

    def trace(self, g: Builder) -> list[str]:
        """Symbolic mirror of ``forward``: the readout names (stride 16, stride 32)."""
        y = g.conv(g.input, self.stem)
        feats = []
        for stage in self.stages:
            for block in stage:
                y = block.trace(g, y)
            feats.append(y)
        h = self.h1.trace(g, feats[3])
        p5 = self.p5_out.trace(g, h)
        up = self.up.trace(g, self.lateral.trace(g, h))
        p4 = self.p4_out.trace(g, g.concat([up, feats[2]], self, "cat"))
        return self.detect.trace(g, [p4, p5])

    def extra_repr(self) -> str:
        return f"name={self.name}, nc={self.nc}, T={self.T}, strides={self.strides}"


def ems_config(name: str, nc: int | None = None, **overrides: Any) -> dict[str, Any]:
    """The named EMS config with ``nc`` and field overrides (e.g. ``T=4``) applied; a name with
    the suffix ``-avg`` is the base model with ``pool: "avg"``."""
    base, avg = name, name.endswith(AVG_SUFFIX)
    if avg:
        base = name[: -len(AVG_SUFFIX)]
    if base not in _CONFIGS:
        known = ", ".join(EMS_MODEL_NAMES)
        raise SpikedetError(
            f"unknown EMS model; known: {known} (each also with {AVG_SUFFIX})", name
        )
    bad = [k for k in overrides if k not in (*_CONFIG_KEYS, *_OPTIONAL_KEYS) or k == "name"]
    if bad:
        raise SpikedetError(f"unknown or fixed config fields {bad}", name)
    cfg = {"name": name, **copy.deepcopy(_DEFAULTS), **copy.deepcopy(_CONFIGS[base])}
    if avg:
        cfg["pool"] = "avg"
    cfg.update({k: v for k, v in overrides.items() if v is not None})
    if nc is not None:
        cfg["nc"] = int(nc)
    return cfg


def build_ems(name: str, nc: int | None = None, **overrides: Any) -> EMSYOLO:
    """Build a named EMS-YOLO model, e.g. ``build_ems("ems-res10", T=2)``."""
    return EMSYOLO(ems_config(name, nc, **overrides))


def _validated(config: dict[str, Any]) -> dict[str, Any]:
    where = f"model config {config.get('name', '?')}"
    missing = [k for k in _CONFIG_KEYS if k not in config]
    unknown = [k for k in config if k not in _CONFIG_KEYS and k not in _OPTIONAL_KEYS]
    if missing or unknown:
        raise SpikedetError(f"missing keys {missing}, unknown keys {unknown}", where)
    try:
        cfg = {
            "name": str(config["name"]),
            "nc": int(config["nc"]),
            "T": int(config["T"]),
            "imgsz": int(config["imgsz"]),
            "family": str(config["family"]),
            "stem": [int(v) for v in config["stem"]],
            "widths": [int(v) for v in config["widths"]],
            "extras": [int(v) for v in config["extras"]],
            "anchors": [[[float(v) for v in wh] for wh in scale] for scale in config["anchors"]],
            "pool": str(config.get("pool", _OPTIONAL_KEYS["pool"])),
            "in_channels": int(config.get("in_channels", _OPTIONAL_KEYS["in_channels"])),
            "head": str(config.get("head", _OPTIONAL_KEYS["head"])),
        }
    except (TypeError, ValueError) as err:
        raise SpikedetError(f"bad value type: {err}", where) from err
    checks = [
        (min(cfg["nc"], cfg["T"], cfg["in_channels"]) >= 1, "nc, T and in_channels must be >= 1"),
        (cfg["family"] in ("ee", "full"), "family must be 'ee' or 'full'"),
        (len(cfg["stem"]) == 2 and cfg["stem"][1] % 2 == 1, "stem is [channels, odd kernel]"),
        (len(cfg["widths"]) == 4 and len(cfg["extras"]) == 4, "4 widths and 4 extras needed"),
        (all(w % 4 == 0 and w > 0 for w in cfg["widths"]), "widths must be multiples of 4"),
        (all(n >= 0 for n in cfg["extras"]), "extras must be >= 0"),
        (
            cfg["stem"][0] <= cfg["widths"][0] or cfg["family"] == "full",
            "stem width must not exceed the first stage width",
        ),
        (
            all(a <= b for a, b in zip(cfg["widths"], cfg["widths"][1:])),
            "widths must not decrease",
        ),
        (
            len(cfg["anchors"]) == 2
            and all(len(s) == NUM_ANCHORS and all(len(a) == 2 for a in s) for s in cfg["anchors"]),
            "anchors must be 2 scales x 3 (w, h) pairs",
        ),
        (cfg["imgsz"] % 32 == 0, "imgsz must be a multiple of 32"),
        (cfg["pool"] in POOL_KINDS, f"pool must be one of {list(POOL_KINDS)}"),
        (cfg["head"] in HEAD_KINDS, f"head must be one of {list(HEAD_KINDS)}"),
        (cfg["head"] == "lcb" or cfg["family"] == "full", "the silu head needs family full"),
    ]
    for ok, msg in checks:
        if not ok:
            raise SpikedetError(msg, where)
    return cfg
