"""The full SpikeYOLO blocks (BICLab/SpikeYOLO @ 309ef5e, ``ultralytics/nn/modules/yolo_spikformer.py``) on ``[T, B, C, H, W]`` tensors.

Training-time (re-parameterisable) forms:

- ``SepRepConv(Cin, Cout)``: BNAndPad(Cin, pad 1) -> Conv1x1 Cin->Cout -> depthwise Conv3x3 Cout
  (padding 0);
- ``RepConv(Cin, Cout)``: Conv1x1 Cin->Cin -> BNAndPad(Cin, pad 1) -> depthwise Conv3x3 Cin ->
  Conv1x1 Cin->Cout -> BN(Cout).

Both chains are affine with no neuron inside, and BNAndPad pads with BN(0), so each equals ONE
full 3x3 conv (padding 1) with bias: ``RepSpikeConv.fused()`` turns I-LIF -> chain -> BN into a
plain ``SpikeConv(bias=True)``, and ``reparameterize(model)`` does it for a whole model.

Export (docs/semantics.md §2): ``Upsample2x`` and ``Concat`` only rewrite the terms of a current
(§2.7, §2.8); ``SpikeSPPF`` at T = 1 exports its max pooling as max-pooled spike populations
(§2.7b) and refuses T > 1, where the pooling of currents has no exact spiking form.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from spikedet.errors import SpikedetError
from spikedet.train.models.blocks import (
    Builder,
    Current,
    MixerBlock,
    SpikeConv,
    exact_slot_conv,
    seq_apply,
    slot_conv,
)
from spikedet.train.neurons import ILIF


def _no_nir(module: nn.Module, why: str) -> SpikedetError:
    """The error a non-exportable module's ``trace`` raises, named by its model path."""
    where = getattr(module, "export_name", "") or type(module).__name__
    return SpikedetError(f"{type(module).__name__}: {why}", where)


def batchnorm(c: int) -> nn.BatchNorm2d:
    """ultralytics' initialize_weights: eps 1e-3, momentum 0.03."""
    return nn.BatchNorm2d(c, eps=1e-3, momentum=0.03)


def bn_affine(bn: nn.BatchNorm2d) -> tuple[Tensor, Tensor]:
    """Eval-mode BN as y = scale * x + shift (running statistics)."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    return scale, bn.bias - bn.running_mean * scale


def pad_value(bn: nn.BatchNorm2d) -> Tensor:
    """What BN gives a zero input, in the official float32 order (BICLab/SpikeYOLO @ 309ef5e,
    ``yolo_spikformer.py`` BNAndPadLayer): bias - running_mean * weight / sqrt(var + eps).
    ``bn_affine``'s bias - mean * (weight / sqrt(...)) rounds differently, which flips rare
    spikes at T > 1 that then cascade."""
    return bn.bias - bn.running_mean * bn.weight / torch.sqrt(bn.running_var + bn.eps)


class BNAndPad(nn.Module):
    """BN, then pad ``pad`` pixels with the value BN gives a zero input: bias - mean*gamma/std.

    So BNAndPad(x) = scale * zero_pad(x) + shift everywhere, which is what lets the following
    padding-0 conv fuse into a padding-1 conv. The pad value uses running statistics (detached),
    also in training, as in the reference code.
    """

    def __init__(self, c: int, pad: int = 1):
        super().__init__()
        self.pad = int(pad)
        self.bn = batchnorm(c)

    def forward(self, x: Tensor) -> Tensor:
        y = self.bn(x)
        if self.pad == 0:
            return y
        with torch.no_grad():
            shift = pad_value(self.bn)
        border = F.pad(torch.zeros_like(x[:1, :1]), [self.pad] * 4, value=1.0)
        return F.pad(y, [self.pad] * 4) + border * shift.view(1, -1, 1, 1)


class SepRepConv(nn.Module):
    """BNAndPad(Cin) -> Conv1x1 Cin->Cout -> depthwise Conv3x3 Cout (padding 0), no bias."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.bnpad = BNAndPad(cin, 1)
        self.pw = nn.Conv2d(cin, cout, 1, bias=False)
        self.dw = nn.Conv2d(cout, cout, 3, 1, 0, groups=cout, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.dw(self.pw(self.bnpad(x)))

    def fused_weight_bias(self) -> tuple[Tensor, Tensor]:
        """W[c,m,i,j] = K[c,i,j]·P[c,m]·a[m];  b[c] = (Σ_ij K[c,i,j])·Σ_m P[c,m]·shift[m]."""
        a, shift = bn_affine(self.bnpad.bn)
        pw = self.pw.weight[:, :, 0, 0]
        k = self.dw.weight[:, 0]
        weight = k[:, None] * (pw * a[None, :])[:, :, None, None]
        return weight, k.sum((1, 2)) * (pw @ shift)


class RepConv(nn.Module):
    """Conv1x1 Cin->Cin -> BNAndPad(Cin) -> depthwise Conv3x3 Cin -> Conv1x1 Cin->Cout -> BN."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.pw1 = nn.Conv2d(cin, cin, 1, bias=False)
        self.bnpad = BNAndPad(cin, 1)
        self.dw = nn.Conv2d(cin, cin, 3, 1, 0, groups=cin, bias=False)
        self.pw2 = nn.Conv2d(cin, cout, 1, bias=False)
        self.bn = batchnorm(cout)

    def forward(self, x: Tensor) -> Tensor:
        return self.bn(self.pw2(self.dw(self.bnpad(self.pw1(x)))))

    def fused_weight_bias(self) -> tuple[Tensor, Tensor]:
        """W[c,n,i,j] = a2[c]·Σ_m P2[c,m]·K[m,i,j]·a1[m]·P1[m,n];
        b[c] = a2[c]·Σ_m P2[c,m]·shift1[m]·Σ_ij K[m,i,j] + shift2[c]."""
        a1, shift1 = bn_affine(self.bnpad.bn)
        a2, shift2 = bn_affine(self.bn)
        p1, p2 = self.pw1.weight[:, :, 0, 0], self.pw2.weight[:, :, 0, 0]
        k = self.dw.weight[:, 0]
        weight = torch.einsum("cm,mij,m,mn->cnij", p2, k, a1, p1) * a2.view(-1, 1, 1, 1)
        bias = a2 * (p2 @ (shift1 * k.sum((1, 2)))) + shift2
        return weight, bias


class RepSpikeConv(nn.Module):
    """I-LIF -> SepRepConv or RepConv chain -> BN: current in, current out (training form).

    Binary spike mode runs the eval-mode fused 3x3 kernel per slot without bias and adds the
    fused bias once per logical step (a chain with internal BNs has no bias-free form of its own).
    """

    def __init__(self, cin: int, cout: int, kind: str, levels: int = 4):
        super().__init__()
        if kind not in ("sep", "rep"):
            raise ValueError(f"kind must be 'sep' or 'rep', got {kind!r}")
        self.cin, self.cout, self.kind = cin, cout, kind
        self.lif = ILIF(levels)
        self.rep = SepRepConv(cin, cout) if kind == "sep" else RepConv(cin, cout)
        self.bn = batchnorm(cout)

    def forward(self, x: Tensor) -> Tensor:
        spikes = self.lif(x)
        if self.lif.slots == 1 and not self.lif.exact:
            return seq_apply(self.bn, seq_apply(self.rep, spikes))
        if self.training:
            raise SpikedetError(
                "binary or exact spike mode of a RepConv chain needs eval mode", self.kind
            )
        weight, bias = self.rep.fused_weight_bias()
        if self.lif.exact:
            summed = exact_slot_conv(spikes, self.lif.slots, weight, 1, 1, levels=self.lif.levels)
        else:
            summed = slot_conv(spikes, self.lif.slots, weight, 1, 1)
        return seq_apply(self.bn, summed + bias.view(1, 1, -1, 1, 1))

    @torch.no_grad()
    def fused(self) -> SpikeConv:
        """The equivalent SpikeConv: same I-LIF, one full 3x3 conv with bias, the same BN."""
        weight, bias = self.rep.fused_weight_bias()
        out = SpikeConv(self.cin, self.cout, 3, levels=self.lif.levels, bias=True)
        out = out.to(device=weight.device, dtype=weight.dtype).train(self.training)
        out.lif = self.lif
        out.cb.conv.weight.copy_(weight)
        out.cb.conv.bias.copy_(bias)
        out.cb.bn.load_state_dict(self.bn.state_dict())
        return out

    def trace(self, g: Builder, x: Current) -> Current:
        raise _no_nir(self, "re-parameterisable chain; call reparameterize(model) before export")


def reparameterize(model: nn.Module) -> int:
    """Replace every ``RepSpikeConv`` in ``model`` by its fused ``SpikeConv``; returns how many.

    Exact in eval mode (running statistics); call ``model.eval()`` before comparing outputs.
    """
    targets = [
        (parent, name)
        for parent in model.modules()
        for name, child in parent.named_children()
        if isinstance(child, RepSpikeConv)
    ]
    for parent, name in targets:
        setattr(parent, name, getattr(parent, name).fused())
    return len(targets)


class RepSepConv(nn.Module):
    """SpikeYOLO SepConv (expansion 2): SpikeConv1x1 C->2C, depthwise SpikeConv k, then
    I-LIF -> SepRepConv(2C->C) -> BN."""

    def __init__(self, c: int, k: int = 7, levels: int = 4):
        super().__init__()
        self.pw = SpikeConv(c, 2 * c, 1, levels=levels)
        self.dw = SpikeConv(2 * c, 2 * c, k, groups=2 * c, levels=levels)
        self.out: nn.Module = RepSpikeConv(2 * c, c, "sep", levels)

    def forward(self, x: Tensor) -> Tensor:
        return self.out(self.dw(self.pw(x)))

    def trace(self, g: Builder, x: Current) -> Current:
        return self.out.trace(g, self.dw.trace(g, self.pw.trace(g, x)))


class RepAllConvBlock(MixerBlock):
    """MS_AllConvBlock (SNN-Block-1): conv1/conv2 are SpikeConv3x3 C->rC->C."""

    def __init__(self, c: int, ratio: int = 4, k: int = 7, levels: int = 4):
        super().__init__()
        self.sep = RepSepConv(c, k, levels)
        self.conv1 = SpikeConv(c, ratio * c, 3, levels=levels)
        self.conv2 = SpikeConv(ratio * c, c, 3, levels=levels)


class MSConvBlock(MixerBlock):
    """MS_ConvBlock (SNN-Block-2): H = BN(RepConv(LIF(X'), C->rC)); conv2 = BN(RepConv(LIF(H),
    rC->C)). Fused, it has RepAllConvBlock's inference graph."""

    def __init__(self, c: int, ratio: int = 3, k: int = 7, levels: int = 4):
        super().__init__()
        self.sep = RepSepConv(c, k, levels)
        self.conv1 = RepSpikeConv(c, ratio * c, "rep", levels)
        self.conv2 = RepSpikeConv(ratio * c, c, "rep", levels)


class SpikeSPPF(nn.Module):
    """SpikeConv1x1 c1->c1/2; three chained MaxPool k/1 on that current (per time step);
    concat [x, y1, y2, y3] on channels; SpikeConv1x1 -> c2."""

    def __init__(self, c1: int, c2: int, k: int = 5, levels: int = 4):
        super().__init__()
        hidden = c1 // 2
        self.cv1 = SpikeConv(c1, hidden, 1, levels=levels)
        self.cv2 = SpikeConv(4 * hidden, c2, 1, levels=levels)
        self.pool = nn.MaxPool2d(k, 1, k // 2)

    def forward(self, x: Tensor) -> Tensor:
        y = [self.cv1(x)]
        for _ in range(3):
            y.append(seq_apply(self.pool, y[-1]))
        return self.cv2(torch.cat(y, 2))

    def trace(self, g: Builder, x: Current) -> Current:
        """cv2(cat[y, mp(y), mp²(y), mp³(y)]) with y = cv1(x). At T = 1 the I-LIF is stateless
        and monotone (u = α·x, α > 0), so I-LIF(maxpool(y)) = maxpool(I-LIF(y)): cv2's neuron
        becomes the population S of y and three chained max-pooled populations of S, and cv2's
        conv reads their concatenation (split into ``cv2.cb#0..#3``, §2.7b)."""
        y = self.cv1.trace(g, x)
        lif = self.cv2.lif
        if g.T != 1:
            raise _no_nir(
                self,
                f"max pooling of a current before an I-LIF is exact only at T = 1 (T = {g.T}): "
                "with membrane state, I-LIF(maxpool(x)) != maxpool(I-LIF(x))",
            )
        if not lif.alpha > 0:
            raise _no_nir(self, f"max pooling needs a monotone I-LIF (alpha {lif.alpha} <= 0)")
        parts = [g.spikes(y, lif, part=0)]
        for k in range(1, 4):
            parts.append(g.pool_spikes(parts[-1], self.pool, lif, part=k))
        return g.conv(parts, self.cv2.cb)


class Upsample2x(nn.Module):
    """Nearest-neighbour x2 upsampling of H and W (per time step); parameter-free."""

    def forward(self, x: Tensor) -> Tensor:
        return seq_apply(lambda z: F.interpolate(z, scale_factor=2.0, mode="nearest"), x)

    def trace(self, g: Builder, x: Current) -> Current:
        """Every term of ``x`` gets a ``.up2`` node after its conv (§2.8)."""
        return g.upsample(x, self, 2)


class Concat(nn.Module):
    """Channel concatenation (dim 2 of ``[T, B, C, H, W]``) of currents; parameter-free."""

    def forward(self, xs: list[Tensor]) -> Tensor:
        return torch.cat(xs, 2)

    def trace(self, g: Builder, xs: list[Current]) -> Current:
        """Each part's terms write their channel range of the concatenation (§2.7)."""
        return g.concat(xs, self)


class DFL(nn.Module):
    """Distribution focal loss decoder: d_side = Σ_k k·softmax_k(logits_side).

    Its 1x1 conv holds the fixed weights 0..reg_max-1 (frozen, but a parameter, as in YOLOv8, so
    it counts towards the model size). Decoding itself lives in ``spikedet.detection``.
    """

    def __init__(self, reg_max: int = 16):
        super().__init__()
        self.reg_max = int(reg_max)
        self.conv = nn.Conv2d(reg_max, 1, 1, bias=False).requires_grad_(False)
        with torch.no_grad():
            self.conv.weight.copy_(torch.arange(reg_max, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, box: Tensor) -> Tensor:
        """``[B, 4*reg_max, H, W]`` logits -> ``[B, 4, H, W]`` expected distances (in strides)."""
        b, _, h, w = box.shape
        prob = box.view(b, 4, self.reg_max, h, w).softmax(2).transpose(1, 2)
        return self.conv(prob.reshape(b, self.reg_max, 4 * h, w)).view(b, 4, h, w)


__all__ = [
    "BNAndPad",
    "Concat",
    "DFL",
    "MSConvBlock",
    "RepAllConvBlock",
    "RepConv",
    "RepSepConv",
    "RepSpikeConv",
    "SepRepConv",
    "SpikeSPPF",
    "Upsample2x",
    "batchnorm",
    "bn_affine",
    "pad_value",
    "reparameterize",
]
