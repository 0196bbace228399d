"""EMS-YOLO's blocks on time-first ``[T, B, C, H, W]`` tensors: conv + BN per step, the
LIF -> conv -> BN unit (``LCB``), shortcut pooling, the EMS residual blocks and the anchor head
(BICLab/EMS-YOLO @ fbfc2ca, ``models/common.py`` and ``models/yolo.py``). The detectors that
assemble them are in ``ems``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from spikedet.errors import SpikedetError
from spikedet.train.models.blocks import Builder, Current
from spikedet.train.neurons import LIF

V_TH = 0.5  # EMS LIF threshold; BN weights are initialised relative to it
BN_INIT = V_TH  # ordinary BN weight
BN_INIT_LAST = 0.2 * V_TH  # last BN of every residual branch (EMS-YOLO's batch_norm_2d1)
DECAY = 0.25  # EMS LIF decay (models/common.py ``decay``)
NUM_ANCHORS = 3
STRIDES = (16, 32)
POOL_KINDS = ("max", "avg")


class LCB(nn.Module):
    """LIF -> Conv -> BN: y = BN(W * s), s = LIF(x) binary spikes."""

    def __init__(self, cin: int, cout: int, k: int = 3, s: int = 1, bn_init: float = BN_INIT):
        super().__init__()
        self.lif = LIF(beta=0.25, threshold=V_TH)
        self.cb = EMSConvBN(cin, cout, k, s, bn_init)

    def forward(self, x: Tensor) -> Tensor:
        return self.cb(self.lif(x))

    def trace(self, g: Builder, x: Current) -> Current:
        return g.conv(g.spikes(x, self.lif), self.cb)


class SiLUMembrane(nn.Module):
    """EMS-YOLO's ``mem_update(act=True)``: a non-spiking membrane that outputs SiLU(u),
    u_t = u_{t-1} * 0.25 * (1 - SiLU(u_{t-1})) + x_t (the official float order), u_0 = x_0.

    The official input is batch_norm_2d's output, a ``[T, B, C, H, W]`` view of a
    ``[C, B, T, H, W]``-contiguous tensor; torch's SiLU rounds differently on that layout
    (scalar instead of vectorised exp on short rows), so the same layout is used here."""

    def forward(self, x: Tensor) -> Tensor:
        x = x.permute(2, 1, 0, 3, 4).contiguous().permute(2, 1, 0, 3, 4)
        out = torch.zeros_like(x)
        mem = x[0]
        out[0] = F.silu(mem)
        for t in range(1, x.shape[0]):
            mem = mem * DECAY * (1 - out[t - 1].detach()) + x[t]
            out[t] = F.silu(mem)
        return out


class SiLUConv(nn.Module):
    """The official ``Conv`` head layer of ``resnet34-cat`` / ``resnet18``: conv (no bias) -> BN ->
    SiLU membrane. It reads a real-valued current and sends real values to Detect: not
    spike-driven, so it has no NIR export (``trace`` refuses, naming the layer)."""

    def __init__(self, cin: int, cout: int, k: int = 3):
        super().__init__()
        self.cb = EMSConvBN(cin, cout, k, 1)
        self.act = SiLUMembrane()

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.cb(x))

    def trace(self, g: Builder, x: Current) -> Current:
        where = getattr(self, "export_name", "") or "SiLUConv"
        raise SpikedetError(
            "official SiLU head layer (conv -> BN -> non-spiking SiLU membrane) is not "
            "spike-driven: it has no NIR / hardware form (use the spiking-head model instead)",
            where,
        )


def per_step(module: nn.Module, x: Tensor) -> Tensor:
    """Apply a per-frame module to ``[T, B, ...]`` by folding time into the batch."""
    t, b = x.shape[:2]
    y = module(x.flatten(0, 1))
    return y.view(t, b, *y.shape[1:])


class StepConv2d(nn.Conv2d):
    """EMS-YOLO's ``Snn_Conv2d``: the conv runs once per time step on ``[B, ...]`` (float32
    sums depend on the batch a conv kernel sees, so folding T into the batch is not bit-exact
    with the official model). Takes ``[T, B, C, H, W]`` and returns the time-folded
    ``[T*B, C', H', W']`` (one module call, so hooks see the whole spike tensor); a 4-D input is
    an ordinary conv."""

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() == 4:
            return super().forward(x)
        return torch.cat([super(StepConv2d, self).forward(x[t]) for t in range(x.shape[0])])


class EMSConvBN(nn.Module):
    """Conv2d (per step, no bias) -> BN over (T, B, H, W) = EMS-YOLO's BatchNorm3d.

    ``bn_init`` is the initial BN weight γ (0.5, or 0.1 for a residual branch's last BN).
    """

    def __init__(self, cin: int, cout: int, k: int = 1, s: int = 1, bn_init: float = BN_INIT):
        super().__init__()
        self.conv = StepConv2d(cin, cout, k, s, k // 2, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=1e-5, momentum=0.1)
        nn.init.constant_(self.bn.weight, bn_init)
        nn.init.zeros_(self.bn.bias)

    def forward(self, x: Tensor) -> Tensor:
        y = self.bn(self.conv(x))
        return y.view(x.shape[0], x.shape[1], *y.shape[1:])


class Pool(nn.Module):
    """Max-pool kernel = stride = s over H, W at every time step (MaxPool3d((1, s, s))), or
    with ``kind="avg"`` the average pool of the same window (the deployable variant)."""

    def __init__(self, s: int, kind: str = "max"):
        super().__init__()
        if kind not in POOL_KINDS:
            raise SpikedetError(f"pool must be one of {list(POOL_KINDS)}, got {kind!r}", "ems")
        self.pool = nn.MaxPool2d(s, s) if kind == "max" else nn.AvgPool2d(s, s)

    def forward(self, x: Tensor) -> Tensor:
        return per_step(self.pool, x)

    def trace(self, g: Builder, x: Current) -> Current:
        """Max: the §2.8 max_pool op on the current; avg: a linear map composed away (§2.6)."""
        if isinstance(self.pool, nn.MaxPool2d):
            return g.max_pool(x, self.pool)
        return g.linear(x, self.pool)


class Sample(nn.Module):
    """Nearest x2 upsampling per time step."""

    def forward(self, x: Tensor) -> Tensor:
        return per_step(lambda f: F.interpolate(f, scale_factor=2.0, mode="nearest"), x)

    def trace(self, g: Builder, x: Current) -> Current:
        return g.upsample(x, self, 2)


class Residual(nn.Module):
    """Residual branch: LCB(k, s, Cin->Chid, γ0 0.5) -> LCB(k, 1, Chid->Cout, γ0 0.1)."""

    def __init__(self, cin: int, chid: int, cout: int, k: int, s: int):
        super().__init__()
        self.a = LCB(cin, chid, k, s)
        self.b = LCB(chid, cout, k, 1, BN_INIT_LAST)

    def forward(self, x: Tensor) -> Tensor:
        return self.b(self.a(x))

    def trace(self, g: Builder, x: Current) -> Current:
        return self.b.trace(g, self.a.trace(g, x))


class BasicBlock(nn.Module):
    """y = Residual(x) + shortcut(x) (MS-Block / EMS-Block1).

    shortcut = identity when s == 1 and Cin == Cout, else MaxPool(s) -> [LIF] -> Conv1x1 -> BN.
    ``half`` (BasicBlock_ms): Chid = Cout/2 and the shortcut has NO LIF (real-valued conv input,
    EMS-YOLO code); full width (BasicBlock_2): Chid = Cout, spiking shortcut.
    """

    def __init__(
        self, cin: int, cout: int, k: int = 3, s: int = 1, half: bool = True, pool: str = "max"
    ):
        super().__init__()
        self.residual = Residual(cin, cout // 2 if half else cout, cout, k, s)
        self.shortcut: nn.Module | None = None
        if s != 1 or cin != cout:
            layers: list[nn.Module] = [Pool(s, pool)] if s > 1 else []
            layers.append(EMSConvBN(cin, cout, 1) if half else LCB(cin, cout, 1))
            self.shortcut = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        short = x if self.shortcut is None else self.shortcut(x)
        return self.residual(x) + short

    def trace(self, g: Builder, x: Current) -> Current:
        """The half-width shortcut conv reads the (pooled) current: composed away (§2.6)."""
        short = x
        for layer in self.shortcut if self.shortcut is not None else ():
            short = (
                g.linear(short, layer) if isinstance(layer, EMSConvBN) else layer.trace(g, short)
            )
        return self.residual.trace(g, x) + short


class ConcatBlock(nn.Module):
    """EMS-Block2: y = Residual(x) + MaxPool(s)(cat[LCB1x1(Cin->Cout-Cin)(x), x]).

    The concatenation keeps the input current and adds spike-driven channels only for the missing
    Cout - Cin (so the shortcut costs fewer synaptic ops than a full conv); when Cin >= Cout the
    shortcut is MaxPool(s)(x). ``half`` (ConcatBlock_ms): Chid = Cout/2, else Chid = Cout.
    """

    def __init__(
        self, cin: int, cout: int, k: int = 3, s: int = 1, half: bool = True, pool: str = "max"
    ):
        super().__init__()
        if cin > cout:
            raise SpikedetError(f"ConcatBlock needs Cin <= Cout, got {cin}->{cout}", "ems")
        self.residual = Residual(cin, cout // 2 if half else cout, cout, k, s)
        self.extra = LCB(cin, cout - cin, 1) if cin < cout else None
        self.pool = Pool(s, pool) if s > 1 else None

    def forward(self, x: Tensor) -> Tensor:
        short = x if self.extra is None else torch.cat([self.extra(x), x], dim=2)
        if self.pool is not None:
            short = self.pool(short)
        return self.residual(x) + short

    def trace(self, g: Builder, x: Current) -> Current:
        """The concatenation (map ``<block>.cat``) embeds channel ranges (§2.7)."""
        short = x if self.extra is None else g.concat([self.extra.trace(g, x), x], self, "cat")
        if self.pool is not None:
            short = self.pool.trace(g, short)
        return self.residual.trace(g, x) + short


class AnchorDetect(nn.Module):
    """YOLOv5 anchor head: per scale a 1x1 conv with bias to na*(nc+5), per step, mean over T.

    Bias prior (YOLOv5): objectness += log(8 / (640/stride)^2), classes += log(0.6/(nc-0.99)).
    """

    def __init__(self, cins: list[int], nc: int, anchors: list[list[list[float]]]):
        super().__init__()
        self.nc, self.no = nc, nc + 5
        self.register_buffer("anchors", torch.tensor(anchors, dtype=torch.float32))
        self.convs = nn.ModuleList(StepConv2d(c, NUM_ANCHORS * self.no, 1) for c in cins)
        with torch.no_grad():
            for conv, stride in zip(self.convs, STRIDES):
                b = conv.bias.view(NUM_ANCHORS, self.no)
                b[:, 4] += math.log(8 / (640 / stride) ** 2)
                b[:, 5:] += math.log(0.6 / (nc - 0.99))

    def forward(self, feats: list[Tensor]) -> list[Tensor]:
        # sum / T in this order, as models/yolo.py Detect (x.sum(dim=0) / T), not mean().
        out = []
        for conv, f in zip(self.convs, feats):
            y = conv(f)
            t, b, h, w = f.shape[0], f.shape[1], y.shape[-2], y.shape[-1]
            # The official [T, B, na, H, W, no] layout: torch's sum over T rounds by layout.
            y = y.view(t, b, NUM_ANCHORS, self.no, h, w).permute(0, 1, 2, 4, 5, 3).contiguous()
            y = y.sum(dim=0) / t
            out.append(y.permute(0, 1, 4, 2, 3).reshape(b, NUM_ANCHORS * self.no, h, w))
        return out

    def trace(self, g: Builder, feats: list[Current]) -> list[str]:
        """One readout ``detect.k`` per stride; each 1x1 conv is composed into its current."""
        return [
            g.readout(g.linear(f, conv), f"detect.{k}")
            for k, (conv, f) in enumerate(zip(self.convs, feats))
        ]
