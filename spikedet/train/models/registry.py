"""Named model configurations and the builders that turn them into modules.

A config is a plain JSON-serializable dict (see ``spikeyolo.CONFIG_KEYS``); checkpoints store it
so ``build_from_config`` can rebuild exactly the trained architecture.

``spikeyolo-pico`` (64 px, 2 scales) choices, measured at 64x64 (docs in the report):
- widths 16/32/64 at strides 4/8/16; no block at stride 4: a SepConv block there alone holds
  ~29k I-LIF neurons (its 2C-channel depthwise map at 16x16), which would double the neuron count
  the Lava simulator must step; the stem's 7x7/4 conv already sees 7x7 pixels per cell;
- one MSAllConvBlock at strides 8 and 16 with channel ratio 2 (ratio 4 exceeds 0.5 M params);
- SepConv kernel 3: at 8x8 and 4x4 maps a 7x7 depthwise kernel is mostly padding;
- head hidden width 32 = YOLOv8's max(16, C_P3/4, 4*reg_max) with reg_max 8;
- reg_max 8: distances up to 7 strides (56 px at stride 8), more than a 64 px image needs.

``spikeyolo-v8-pico`` is the full SpikeYOLOv8 architecture (SPPF, both upsamplings, all four
concatenations) at widths 8/16/32/64, one block per stage, 64 px, T = 1: a fast test model for
the export and deploy paths, not a trained detector.

EMS-YOLO names take the suffix ``-avg`` (``ems-pico-avg``, ``ems-res10-avg``, ...): the same
model with average-pooled shortcuts (config ``pool: avg``), the variant whose NIR graph has no
extension ops (docs/semantics.md §2.8).
"""

from __future__ import annotations

import copy
from typing import Any

from spikedet.errors import SpikedetError
from spikedet.train.models.ems import AVG_SUFFIX, EMS_MODEL_NAMES, EMSYOLO, ems_config
from spikedet.train.models.spikeyolo import CONFIG_KEYS, SpikeYOLO
from spikedet.train.models.spikeyolo_v8 import FULL_CONFIG_KEYS, SpikeYOLOv8

# SpikeYOLO scales (BICLab/SpikeYOLO @ 309ef5e, snn_yolov8.yaml): widths = int(w * (128, 256, 512, 1024)) at
# strides 4/8/16/32, repeats = max(round(d * (3, 6, 9, 3)), 1) for layers 2/4/6/8, and the
# layer-25 MS_ConvBlock ratio (1 for n/s, 2 for m/l per the yaml comment; issue #22).
_SCALES: dict[str, tuple[list[int], list[int], int]] = {
    "n": ([48, 96, 192, 384], [1, 2, 3, 1], 1),
    "s": ([64, 128, 256, 512], [1, 2, 3, 1], 1),
    "m": ([80, 160, 320, 640], [2, 3, 4, 2], 2),
    "l": ([96, 192, 384, 768], [2, 3, 4, 2], 2),
}
COCO_NC = 80

_CONFIGS: dict[str, dict[str, Any]] = {
    "spikeyolo-pico": {
        "name": "spikeyolo-pico",
        "nc": 3,
        "names": ["class0", "class1", "class2"],
        "imgsz": 64,
        "T": 1,
        "levels": 4,
        "reg_max": 8,
        "in_channels": 3,
        "widths": [16, 32, 64],
        "blocks": [0, 1, 1],
        "ratio": 2,
        "sep_kernel": 3,
        "head_hidden": 32,
        "detect_stages": [1, 2],
    },
}
for _scale, (_widths, _repeats, _p5_ratio) in _SCALES.items():
    _CONFIGS[f"spikeyolo-{_scale}"] = {
        "name": f"spikeyolo-{_scale}",
        "nc": COCO_NC,
        "names": [f"class{i}" for i in range(COCO_NC)],
        "imgsz": 640,
        "T": 1,
        "levels": 4,
        "reg_max": 16,
        "in_channels": 3,
        "widths": _widths,
        "repeats": _repeats,
        "p5_ratio": _p5_ratio,
        "sep_kernel": 7,
    }

# The released Gen1 checkpoint ("23M, T=2, D=4, Gen1"): the s scale on SpikeYOLO_for_Gen1's
# neuron (tau = 2 LIF), 2 classes, 320 px letterbox, T = 2 (gen1.yaml: gen1_yolo_T2).
_CONFIGS["spikeyolo-s-gen1"] = {
    **copy.deepcopy(_CONFIGS["spikeyolo-s"]),
    "name": "spikeyolo-s-gen1",
    "nc": 2,
    "names": ["car", "pedestrian"],
    "imgsz": 320,
    "T": 2,
    "neuron": "gen1",
}

_CONFIGS["spikeyolo-v8-pico"] = {
    "name": "spikeyolo-v8-pico",
    "nc": 3,
    "names": ["class0", "class1", "class2"],
    "imgsz": 64,
    "T": 1,
    "levels": 4,
    "reg_max": 8,
    "in_channels": 3,
    "widths": [8, 16, 32, 64],
    "repeats": [1, 1, 1, 1],
    "p5_ratio": 1,
    "sep_kernel": 3,
}

SPIKEYOLO_NAMES: tuple[str, ...] = tuple(_CONFIGS)
EMS_AVG_NAMES: tuple[str, ...] = tuple(f"{n}{AVG_SUFFIX}" for n in EMS_MODEL_NAMES)
MODEL_NAMES: tuple[str, ...] = SPIKEYOLO_NAMES + EMS_MODEL_NAMES + EMS_AVG_NAMES


def model_config(
    name: str, nc: int | None = None, names: list[str] | None = None, **overrides: Any
) -> dict[str, Any]:
    """The named config with the data's classes and any field overrides applied."""
    if name in EMS_MODEL_NAMES or name in EMS_AVG_NAMES:
        if names is not None:
            nc = len(names)
        return ems_config(name, nc, **overrides)
    if name not in _CONFIGS:
        raise SpikedetError(f"unknown model; known models: {', '.join(MODEL_NAMES)}", name)
    cfg = copy.deepcopy(_CONFIGS[name])
    keys = FULL_CONFIG_KEYS if "repeats" in cfg else CONFIG_KEYS
    bad = [k for k in overrides if k not in keys or k in ("name", "nc", "names")]
    if bad:
        raise SpikedetError(f"unknown or fixed config fields {bad}", name)
    cfg.update({k: v for k, v in overrides.items() if v is not None})
    if names is not None:
        if nc is not None and nc != len(names):
            raise SpikedetError(f"nc={nc} but {len(names)} class names given", name)
        cfg["names"], cfg["nc"] = [str(n) for n in names], len(names)
    elif nc is not None:
        cfg["nc"], cfg["names"] = int(nc), [f"class{i}" for i in range(int(nc))]
    return cfg


def build_model(
    name: str, nc: int | None = None, names: list[str] | None = None, **overrides: Any
) -> SpikeYOLO | SpikeYOLOv8 | EMSYOLO:
    """Build a named model, e.g. ``build_model("spikeyolo-pico", names=ds.names, T=2)``."""
    return build_from_config(model_config(name, nc, names, **overrides))


def build_from_config(config: dict[str, Any]) -> SpikeYOLO | SpikeYOLOv8 | EMSYOLO:
    """Rebuild a model from its ``config`` (e.g. as stored in a checkpoint).

    Configs with ``anchors`` are EMS-YOLO (``EMSYOLO``), configs with ``repeats`` the full
    SpikeYOLO family (``SpikeYOLOv8``), the others the exportable ``SpikeYOLO`` layout
    (spikeyolo-pico).
    """
    if not isinstance(config, dict):
        raise SpikedetError("model config must be a dict", type(config).__name__)
    if "anchors" in config:  # the anchor-based EMS-YOLO family
        return EMSYOLO(dict(config))
    family = SpikeYOLOv8 if "repeats" in config else SpikeYOLO
    return family(dict(config))
