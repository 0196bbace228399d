"""Checkpoints in the authors' layouts, built from facts about their code (not from our map).

The classes below carry the official module paths and attribute names and follow the official
forward passes (BICLab/SpikeYOLO @ 309ef5e ``ultralytics/nn/modules/yolo_spikformer.py``,
``ultralytics/nn/tasks.py``; ``SpikeYOLO_for_Gen1`` with the bundled spikingjelly
``MultiStepLIFNode``; BICLab/EMS-YOLO @ fbfc2ca ``models/common.py``, ``models/yolo.py``), so a
test can compare the imported model with the official network's own outputs. They are written
for these tests (no code of either project is copied). Pickling needs the module paths to
exist: ``official_modules()`` registers them in ``sys.modules`` while a checkpoint is saved.
"""

from __future__ import annotations

import contextlib
import sys
import types
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

SPIKFORMER = "ultralytics.nn.modules.yolo_spikformer"
PATHS = (
    "ultralytics",
    "ultralytics.nn",
    "ultralytics.nn.tasks",
    "ultralytics.nn.modules",
    SPIKFORMER,
    "ultralytics.nn.modules.conv",
    "spikingjelly",
    "spikingjelly.clock_driven",
    "spikingjelly.clock_driven.neuron",
    "spikingjelly.clock_driven.surrogate",
    "models",
    "models.common",
    "models.yolo",
)
_CLASSES: dict[str, list[type]] = {}


def official(path: str):
    def mark(cls: type) -> type:
        cls.__module__ = path
        cls.__qualname__ = cls.__name__
        _CLASSES.setdefault(path, []).append(cls)
        return cls

    return mark


@contextlib.contextmanager
def official_modules() -> Iterator[None]:
    """The official module paths exist in ``sys.modules`` only inside this block."""
    saved = {p: sys.modules.get(p) for p in PATHS}
    try:
        for p in PATHS:
            mod = types.ModuleType(p)
            for cls in _CLASSES.get(p, []):
                setattr(mod, cls.__name__, cls)
            sys.modules[p] = mod
        yield
    finally:
        for p, old in saved.items():
            if old is None:
                sys.modules.pop(p, None)
            else:
                sys.modules[p] = old


# ---- SpikeYOLO (COCO) -------------------------------------------------------------------------


@official(SPIKFORMER)
class MultiSpike4(nn.Module):
    def forward(self, x):
        return torch.round(torch.clamp(x, min=0, max=4))


@official(SPIKFORMER)
class mem_update(nn.Module):  # noqa: N801 - the official name
    def __init__(self, act=False):
        super().__init__()
        self.act = act
        self.qtrick = MultiSpike4()

    def forward(self, x):
        spike, output, mem_old = torch.zeros_like(x[0]), torch.zeros_like(x), 0
        for i in range(x.shape[0]):
            mem = (mem_old - spike.detach()) * 0.25 + x[i] if i >= 1 else x[i]
            spike = self.qtrick(mem)
            mem_old = mem.clone()
            output[i] = spike
        return output


@official("spikingjelly.clock_driven.surrogate")
class Sigmoid(nn.Module):
    pass


@official("spikingjelly.clock_driven.neuron")
class MultiStepLIFNode(nn.Module):
    """Bundled spikingjelly 0.0.0.0.12 LIF: tau 2, decay_input, v_reset None, quant4 fire."""

    def __init__(self):
        super().__init__()
        self._memories = {"v": 0.0, "v_threshold": 1.0, "v_reset": None}
        self.tau, self.decay_input, self.detach_reset = 2.0, True, True
        self.surrogate_function = Sigmoid()

    def forward(self, x):
        v, out = 0.0, []
        for t in range(x.shape[0]):
            v = v + (x[t] - v) / self.tau
            s = torch.round(torch.clamp(v, 0, 4))
            v = v - s.detach()
            out.append(s)
        return torch.stack(out)


NEURON = {"coco": mem_update, "gen1": MultiStepLIFNode}
_neuron = ["coco"]


def lif():
    return NEURON[_neuron[0]]()


def seq(module, x):
    t, b = x.shape[:2]
    y = module(x.flatten(0, 1))
    return y.reshape(t, b, *y.shape[1:])


@official(SPIKFORMER)
class BNAndPadLayer(nn.Module):
    def __init__(self, pad_pixels, num_features):
        super().__init__()
        self.bn, self.pad_pixels = nn.BatchNorm2d(num_features), pad_pixels

    def forward(self, x):
        out = self.bn(x)
        bn = self.bn
        pad = bn.bias.detach() - bn.running_mean * bn.weight.detach() / torch.sqrt(
            bn.running_var + bn.eps
        )
        out = F.pad(out, [self.pad_pixels] * 4)
        pad, p = pad.view(1, -1, 1, 1), self.pad_pixels
        out[:, :, 0:p, :] = pad
        out[:, :, -p:, :] = pad
        out[:, :, :, 0:p] = pad
        out[:, :, :, -p:] = pad
        return out


@official(SPIKFORMER)
class RepConv(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        c3 = nn.Sequential(
            nn.Conv2d(cin, cin, 3, 1, 0, groups=cin, bias=False),
            nn.Conv2d(cin, cout, 1, 1, 0, bias=False),
            nn.BatchNorm2d(cout),
        )
        self.body = nn.Sequential(
            nn.Conv2d(cin, cin, 1, 1, 0, bias=False), BNAndPadLayer(1, cin), c3
        )

    def forward(self, x):
        return self.body(x)


@official(SPIKFORMER)
class SepRepConv(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        c3 = nn.Sequential(
            nn.Conv2d(cin, cout, 1, 1, 0, bias=False),
            nn.Conv2d(cout, cout, 3, 1, 0, groups=cout, bias=False),
        )
        self.body = nn.Sequential(BNAndPadLayer(1, cin), c3)

    def forward(self, x):
        return self.body(x)


@official(SPIKFORMER)
class SepConv(nn.Module):
    def __init__(self, dim, kernel_size=7):
        super().__init__()
        med = 2 * dim
        self.pwconv1 = nn.Conv2d(dim, med, 1, bias=False)
        self.dwconv2 = nn.Conv2d(
            med, med, kernel_size, padding=kernel_size // 2, groups=med, bias=False
        )
        self.pwconv3 = SepRepConv(med, dim)
        self.bn1, self.bn2, self.bn3 = nn.BatchNorm2d(med), nn.BatchNorm2d(med), nn.BatchNorm2d(dim)
        self.lif1, self.lif2, self.lif3 = lif(), lif(), lif()

    def forward(self, x):
        x = seq(lambda z: self.bn1(self.pwconv1(z)), self.lif1(x))
        x = seq(lambda z: self.bn2(self.dwconv2(z)), self.lif2(x))
        return seq(lambda z: self.bn3(self.pwconv3(z)), self.lif3(x))


@official(SPIKFORMER)
class MS_StandardConv(nn.Module):  # noqa: N801
    def __init__(self, c1, c2, k=1, s=1):
        super().__init__()
        self.c2, self.s = c2, s
        self.conv = nn.Conv2d(c1, c2, k, s, k // 2, bias=False)
        self.bn, self.lif = nn.BatchNorm2d(c2), lif()

    def forward(self, x):
        return seq(lambda z: self.bn(self.conv(z)), self.lif(x))


@official(SPIKFORMER)
class SpikeConv(MS_StandardConv):
    pass


@official(SPIKFORMER)
class SpikeConvWithoutBN(nn.Module):
    def __init__(self, c1, c2):
        super().__init__()
        self.conv, self.lif = nn.Conv2d(c1, c2, 1, bias=True), lif()

    def forward(self, x):
        return seq(self.conv, self.lif(x))


@official(SPIKFORMER)
class MS_AllConvBlock(nn.Module):  # noqa: N801
    def __init__(self, dim, mlp_ratio=4, k=7):
        super().__init__()
        self.Conv = SepConv(dim, k)
        self.conv1 = MS_StandardConv(dim, dim * mlp_ratio, 3)
        self.conv2 = MS_StandardConv(dim * mlp_ratio, dim, 3)

    def forward(self, x):
        x = self.Conv(x) + x
        return x + self.conv2(self.conv1(x))


@official(SPIKFORMER)
class MS_ConvBlock(nn.Module):  # noqa: N801
    def __init__(self, dim, mlp_ratio=4, k=7):
        super().__init__()
        self.Conv = SepConv(dim, k)
        self.lif1, self.lif2 = lif(), lif()
        self.conv1, self.bn1 = RepConv(dim, dim * mlp_ratio), nn.BatchNorm2d(dim * mlp_ratio)
        self.conv2, self.bn2 = RepConv(dim * mlp_ratio, dim), nn.BatchNorm2d(dim)

    def forward(self, x):
        x = self.Conv(x) + x
        h = seq(lambda z: self.bn1(self.conv1(z)), self.lif1(x))
        return x + seq(lambda z: self.bn2(self.conv2(z)), self.lif2(h))


@official(SPIKFORMER)
class MS_DownSampling(nn.Module):  # noqa: N801
    def __init__(self, cin, cout, k, s, p, first):
        super().__init__()
        self.encode_conv = nn.Conv2d(cin, cout, k, s, p)
        self.encode_bn = nn.BatchNorm2d(cout)
        if not first:
            self.encode_lif = lif()

    def forward(self, x):
        if hasattr(self, "encode_lif"):
            x = self.encode_lif(x)
        return seq(lambda z: self.encode_bn(self.encode_conv(z)), x)


@official(SPIKFORMER)
class MS_GetT(nn.Module):  # noqa: N801
    def __init__(self, T):
        super().__init__()
        self.T, self.in_channels = T, 3

    def forward(self, x):
        if x.dim() == 4:
            return x.unsqueeze(0).repeat(self.T, 1, 1, 1, 1)
        return x.transpose(0, 1)  # the Gen1 code: [B, T, ...] -> [T, B, ...]


@official(SPIKFORMER)
class SpikeSPPF(nn.Module):
    def __init__(self, c1, c2):
        super().__init__()
        self.cv1, self.cv2 = SpikeConv(c1, c1 // 2), SpikeConv(c1 // 2 * 4, c2)
        self.m = nn.MaxPool2d(5, 1, 2)

    def forward(self, x):
        x = self.cv1(x)
        y1 = seq(self.m, x)
        y2 = seq(self.m, y1)
        return self.cv2(torch.cat((x, y1, y2, seq(self.m, y2)), 2))


@official("ultralytics.nn.modules.conv")
class Concat(nn.Module):
    def forward(self, x):
        return torch.cat(x, 2)


@official(SPIKFORMER)
class SpikeDFL(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(16, 1, 1, bias=False).requires_grad_(False)
        self.conv.weight.data[:] = torch.arange(16.0).view(1, 16, 1, 1)
        self.lif = lif()


@official(SPIKFORMER)
class SpikeDetect(nn.Module):
    def __init__(self, nc, ch):
        super().__init__()
        self.nc, self.nl, self.reg_max = nc, len(ch), 16
        c2, c3 = max(16, ch[0] // 4, 64), max(ch[0], min(nc, 100))
        self.cv2 = nn.ModuleList(
            nn.Sequential(SpikeConv(x, c2, 3), SpikeConv(c2, c2, 3), SpikeConvWithoutBN(c2, 64))
            for x in ch
        )
        self.cv3 = nn.ModuleList(
            nn.Sequential(SpikeConv(x, c3, 3), SpikeConv(c3, c3, 3), SpikeConvWithoutBN(c3, nc))
            for x in ch
        )
        self.dfl = SpikeDFL()
        self.stride = torch.tensor([8.0, 16.0, 32.0])

    def forward(self, x):  # the training-mode outputs: per scale cat(box, cls) averaged over T
        return [torch.cat((self.cv2[i](x[i]), self.cv3[i](x[i])), 2).mean(0) for i in range(3)]


@official("ultralytics.nn.tasks")
class DetectionModel(nn.Module):
    def __init__(self, yaml: dict, layers: list[nn.Module], names: dict):
        super().__init__()
        self.yaml, self.names = yaml, names
        self.model = nn.Sequential(*layers)
        self.save = sorted({f % i for i, m in enumerate(layers) for f in _froms(m) if f != -1})
        self.stride = torch.tensor([8.0, 16.0, 32.0])

    def forward(self, x):
        y = []
        for m in self.model:
            if m.f != -1:
                x = y[m.f] if isinstance(m.f, int) else [x if j == -1 else y[j] for j in m.f]
            x = m(x)
            y.append(x if m.i in self.save else None)
        return x


def _froms(m: nn.Module) -> list[int]:
    return [m.f] if isinstance(m.f, int) else list(m.f)


SCALES = {"n": (0.33, 0.375, 1024), "s": (0.33, 0.5, 1024), "m": (0.5, 0.625, 7024),
          "l": (0.5, 0.75, 1024)}  # fmt: skip
UP = (None, (1, 2, 2), "nearest")


def snn_yolov8_yaml(nc: int, shipped_ratio: int = 1) -> dict:
    """snn_yolov8.yaml's layer list (layer 25 as shipped: [1, 7])."""
    backbone = [
        [-1, 1, "MS_GetT", [3, 1]],
        [-1, 1, "MS_DownSampling", [128, 7, 4, 2, True]],
        [-1, 3, "MS_AllConvBlock", [4, 7]],
        [-1, 1, "MS_DownSampling", [256, 3, 2, 1, False]],
        [-1, 6, "MS_AllConvBlock", [4, 7]],
        [-1, 1, "MS_DownSampling", [512, 3, 2, 1, False]],
        [-1, 9, "MS_ConvBlock", [3, 7]],
        [-1, 1, "MS_DownSampling", [1024, 3, 2, 1, False]],
        [-1, 3, "MS_ConvBlock", [2, 7]],
        [-1, 1, "SpikeSPPF", [1024, 5]],
    ]
    head = [
        [-1, 1, "MS_StandardConv", [512, 1, 1]], [-1, 1, "nn.Upsample", list(UP)],
        [-1, 1, "MS_ConvBlock", [3, 7]], [[-1, 6], 1, "Concat", [2]],
        [-1, 1, "MS_StandardConv", [256, 1, 1]], [-1, 1, "nn.Upsample", list(UP)],
        [-1, 1, "MS_AllConvBlock", [4, 7]], [[-1, 4], 1, "Concat", [2]],
        [-1, 1, "MS_StandardConv", [256, 1, 1]], [-1, 1, "MS_AllConvBlock", [4, 7]],
        [-1, 1, "MS_StandardConv", [256, 3, 2]], [[-1, 14], 1, "Concat", [2]],
        [-1, 1, "MS_ConvBlock", [3, 7]], [-1, 1, "MS_StandardConv", [512, 3, 2]],
        [[-1, 10], 1, "Concat", [2]], [-1, 1, "MS_ConvBlock", [shipped_ratio, 7]],
        [[19, 22, 25], 1, "SpikeDetect", ["nc"]],
    ]  # fmt: skip
    return {"nc": nc, "scales": {k: list(v) for k, v in SCALES.items()}, "backbone": backbone,
            "head": head}  # fmt: skip


def build_spikeyolo(scale: str, nc: int, neuron: str = "coco", p5_ratio: int = 1, T: int = 1):
    """parse_model of ultralytics/nn/tasks.py for these modules, at ``scale``; layer 25 built
    with ``p5_ratio`` (the released 69M l checkpoint: 2) while the yaml keeps the shipped 1."""
    depth, width, max_ch = SCALES[scale]
    d = snn_yolov8_yaml(nc)
    d.update(scale=scale, yaml_file=f"snn_yolov8{scale}.yaml", ch=3)
    _neuron[0] = neuron
    ch, layers = [3], []
    for i, (f, n, name, args) in enumerate(d["backbone"] + d["head"]):
        n = max(round(n * depth), 1) if n > 1 else n
        c1 = ch[f] if isinstance(f, int) else None
        if name == "MS_GetT":
            make, c2 = (lambda: MS_GetT(T)), 3
        elif name == "MS_DownSampling":
            c2 = int(args[0] * width)
            make = lambda c1=c1, c2=c2, a=args: MS_DownSampling(c1, c2, *a[1:])  # noqa: E731
        elif name in ("MS_AllConvBlock", "MS_ConvBlock"):
            ratio = p5_ratio if i == 25 else args[0]
            cls = MS_AllConvBlock if name == "MS_AllConvBlock" else MS_ConvBlock
            make, c2 = (lambda cls=cls, c1=c1, r=ratio: cls(c1, r, 7)), c1
        elif name == "MS_StandardConv":
            c2 = min(int(args[0] * width), int(max_ch * width))
            make = lambda c1=c1, c2=c2, a=args: MS_StandardConv(c1, c2, *a[1:])  # noqa: E731
        elif name == "SpikeSPPF":
            c2 = int(min(args[0], max_ch) * width // 8 * 8)
            make = lambda c1=c1, c2=c2: SpikeSPPF(c1, c2)  # noqa: E731
        elif name == "nn.Upsample":
            make, c2 = (lambda: nn.Upsample(*UP)), c1
        elif name == "Concat":
            make, c2 = Concat, sum(ch[x] for x in f)
        else:
            make, c2 = (lambda f=f, chs=list(ch): SpikeDetect(nc, [chs[x] for x in f])), None
        m = nn.Sequential(*(make() for _ in range(n))) if n > 1 else make()
        m.i, m.f, m.type = i, f, name
        layers.append(m)
        ch = [] if i == 0 else ch
        ch.append(c2)
    return DetectionModel(d, layers, {k: f"name{k}" for k in range(nc)})
