"""The released EMS-YOLO COCO model in its official layout (BICLab/EMS-YOLO @ fbfc2ca,
``models/common.py``, ``models/yolo.py``, ``models/resnet34-cat.yaml``), from facts about that
code, with its forward pass (per-step convs, BatchNorm3d over (B, T, H, W), the LIF with hard
reset, the SiLU-membrane ``Conv`` head layers, Detect's sum over T divided by T). Registered
under the official paths by ``official_layouts.official_modules``."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tests.official_layouts import official

COMMON, YOLO = "models.common", "models.yolo"
_T = [5]  # models/yolo.py time_window


@official(COMMON)
class mem_update(nn.Module):  # noqa: N801
    def __init__(self, act=False):
        super().__init__()
        self.actFun, self.act = nn.SiLU(), act

    def forward(self, x):
        spike, output, mem_old = torch.zeros_like(x[0]), torch.zeros_like(x), 0
        for i in range(_T[0]):
            mem = mem_old * 0.25 * (1 - spike.detach()) + x[i] if i >= 1 else x[i]
            spike = self.actFun(mem) if self.act else mem.gt(0.5).float()
            mem_old = mem.clone()
            output[i] = spike
        return output


@official(COMMON)
class Snn_Conv2d(nn.Conv2d):  # noqa: N801
    def forward(self, x):
        return torch.stack([F.conv2d(x[i], self.weight, self.bias, self.stride, self.padding,
                                     self.dilation, self.groups) for i in range(_T[0])])  # fmt: skip


@official(COMMON)
class BatchNorm3d1(nn.BatchNorm3d):
    pass


@official(COMMON)
class BatchNorm3d2(nn.BatchNorm3d):
    pass


@official(COMMON)
class batch_norm_2d(nn.Module):  # noqa: N801
    def __init__(self, c, last=False):
        super().__init__()
        self.bn = (BatchNorm3d2 if last else BatchNorm3d1)(c)

    def forward(self, x):
        y = self.bn(x.transpose(0, 2).contiguous().transpose(0, 1).contiguous())
        return y.contiguous().transpose(0, 1).contiguous().transpose(0, 2)


@official(COMMON)
class batch_norm_2d1(batch_norm_2d):  # noqa: N801
    def __init__(self, c):
        super().__init__(c, last=True)


def _residual(cin, cout, k, s):
    p = 1 if k == 3 else 0
    return nn.Sequential(
        mem_update(), Snn_Conv2d(cin, cout, k, s, p, bias=False), batch_norm_2d(cout),
        mem_update(), Snn_Conv2d(cout, cout, k, 1, p, bias=False), batch_norm_2d1(cout),
    )  # fmt: skip


@official(COMMON)
class BasicBlock_2(nn.Module):  # noqa: N801
    def __init__(self, cin, cout, k=3, s=1):
        super().__init__()
        self.residual_function = _residual(cin, cout, k, s)
        self.shortcut = nn.Sequential()
        if s != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.MaxPool3d((1, s, s), stride=(1, s, s)), mem_update(),
                Snn_Conv2d(cin, cout, 1, 1, bias=False), batch_norm_2d(cout),
            )  # fmt: skip

    def forward(self, x):
        return self.residual_function(x) + self.shortcut(x)


@official(COMMON)
class Concat_res2(nn.Module):  # noqa: N801
    def __init__(self, cin, cout, k=3, s=1):
        super().__init__()
        self.residual_function = _residual(cin, cout, k, s)
        self.shortcut = nn.Sequential(
            mem_update(), Snn_Conv2d(cin, cout - cin, 1, 1, bias=False), batch_norm_2d(cout - cin)
        )
        self.pools = nn.MaxPool3d((1, s, s), stride=(1, s, s))

    def forward(self, x):
        out = self.pools(torch.cat((self.shortcut(x), x), dim=2))
        return self.residual_function(x) + out


@official(COMMON)
class Conv_1(nn.Module):  # noqa: N801
    def __init__(self, c1, c2, k, s):
        super().__init__()
        self.conv, self.bn = Snn_Conv2d(c1, c2, k, s, k // 2, bias=False), batch_norm_2d(c2)

    def forward(self, x):
        return self.bn(self.conv(x))


@official(COMMON)
class Conv(Conv_1):
    def __init__(self, c1, c2, k, s):
        super().__init__(c1, c2, k, s)
        self.act = mem_update(act=True)

    def forward(self, x):
        return self.act(self.bn(self.conv(x)))


@official(COMMON)
class Sample(nn.Module):
    def __init__(self):
        super().__init__()
        self.scale_factor, self.up = 2, nn.Upsample(None, 2, mode="nearest")

    def forward(self, x):
        return torch.stack([self.up(x[i]) for i in range(_T[0])])


@official(COMMON)
class Concat(nn.Module):
    def __init__(self, d=2):
        super().__init__()
        self.d = d

    def forward(self, x):
        return torch.cat(x, self.d)


@official(YOLO)
class Detect(nn.Module):
    def __init__(self, nc, anchors, ch):
        super().__init__()
        self.nc, self.no, self.nl, self.na = nc, nc + 5, 2, 3
        self.register_buffer("anchors", torch.tensor(anchors).float().view(2, -1, 2))
        self.m = nn.ModuleList(Snn_Conv2d(x, self.no * self.na, 1) for x in ch)
        self.stride = torch.tensor([16.0, 32.0])
        self.anchors /= self.stride.view(-1, 1, 1)

    def forward(self, x):  # training-mode outputs [B, na, ny, nx, no]
        out = []
        for i in range(self.nl):
            y = self.m[i](x[i])
            t, bs, _, ny, nx = y.shape
            y = y.view(t, bs, self.na, self.no, ny, nx).permute(0, 1, 2, 4, 5, 3).contiguous()
            out.append(y.sum(dim=0) / y.size()[0])
        return out


@official(YOLO)
class Model(nn.Module):
    def __init__(self, yaml, layers):
        super().__init__()
        self.yaml, self.yaml_file = yaml, "resnet34-cat.yaml"
        self.model = nn.Sequential(*layers)
        self.save = [6, 9, 10, 14]
        self.names = [str(i) for i in range(yaml["nc"])]
        self.stride = torch.tensor([16.0, 32.0])

    def forward(self, x):  # x: [B, T, 3, H, W]
        x, y = x.permute(1, 0, 2, 3, 4).contiguous(), []
        for m in self.model:
            if m.f != -1:
                x = y[m.f] if isinstance(m.f, int) else [x if j == -1 else y[j] for j in m.f]
            x = m(x)
            y.append(x if m.i in self.save else None)
        return x


ANCHORS = [[10, 14, 23, 27, 37, 58], [81, 82, 135, 169, 344, 319]]
RESNET34_CAT = [
    [-1, 1, "Conv_1", [64, 7, 2]], [-1, 1, "BasicBlock_2", [64, 3, 2]],
    [-1, 2, "BasicBlock_2", [64, 3, 1]], [-1, 1, "Concat_res2", [128, 3, 2]],
    [-1, 3, "BasicBlock_2", [128, 3, 1]], [-1, 1, "Concat_res2", [256, 3, 2]],
    [-1, 5, "BasicBlock_2", [256, 3, 1]], [-1, 1, "Concat_res2", [512, 3, 2]],
    [-1, 2, "BasicBlock_2", [512, 3, 1]], [-1, 1, "BasicBlock_2", [256, 3, 1]],
    [-1, 1, "Conv", [512, 3, 1]], [-2, 1, "BasicBlock_2", [128, 1, 1]],
    [-1, 1, "Sample", [None, 2, "nearest"]], [[-1, 6], 1, "Concat", [2]],
    [-1, 1, "Conv", [256, 3, 1]], [[14, 10], 1, "Detect", ["nc", "anchors"]],
]  # fmt: skip


def build_resnet34_cat(nc: int = 80, T: int = 5) -> Model:
    """models/yolo.py parse_model for resnet34-cat.yaml (depth = width multiple 1)."""
    _T[0] = T
    classes = {"Conv_1": Conv_1, "BasicBlock_2": BasicBlock_2, "Concat_res2": Concat_res2,
               "Conv": Conv}  # fmt: skip
    ch, layers = [3], []
    for i, (f, n, name, args) in enumerate(RESNET34_CAT):
        c1 = ch[f] if isinstance(f, int) else None
        if name in classes:
            c2 = args[0]
            make = lambda c=classes[name], c1=c1, c2=c2, a=args: c(c1, c2, *a[1:])  # noqa: E731
        elif name == "Sample":
            make, c2 = Sample, c1
        elif name == "Concat":
            make, c2 = Concat, sum(ch[x] for x in f)
        else:
            make, c2 = (lambda f=f, chs=list(ch): Detect(nc, ANCHORS, [chs[x] for x in f])), None
        m = nn.Sequential(*(make() for _ in range(n))) if n > 1 else make()
        m.i, m.f, m.type = i, f, name
        layers.append(m)
        ch = [] if i == 0 else ch
        ch.append(c2)
    yaml = {"nc": nc, "depth_multiple": 1.0, "width_multiple": 1.0, "anchors": ANCHORS,
            "backbone": RESNET34_CAT[:9], "head": RESNET34_CAT[9:], "ch": 3}  # fmt: skip
    return Model(yaml, layers)


def set_time_window(T: int) -> None:
    _T[0] = T
