"""Fold an eval-mode BatchNorm into the convolution in front of it (docs/semantics.md §2.1).

With s = γ / √(var + eps) per output channel, BN(conv(x)) = conv'(x) where

    W' = W · s          (broadcast over Cin/groups, KH, KW)
    b' = (b − mean) · s + β

A ConvBN without BN keeps its conv weight and bias (zeros when the conv has no bias).
"""

from __future__ import annotations

import numpy as np
import torch

from spikedet.errors import SpikedetError
from spikedet.train.models.blocks import ConvBN


def fold_conv_bn(cb: ConvBN, where: str = "ConvBN") -> tuple[np.ndarray, np.ndarray]:
    """Return the float32 ``(weight (Cout, Cin/g, KH, KW), bias (Cout,))`` of ``cb`` in eval mode.

    The fold is computed in float64 and rounded once to float32, so the only difference from
    running conv then BN in float32 is that one rounding (plus float32 conv summation order).
    ``where`` names the module in errors.
    """
    conv = cb.conv
    with torch.no_grad():
        weight = conv.weight.detach().to(torch.float64).cpu()
        cout = weight.shape[0]
        if conv.bias is not None:
            bias = conv.bias.detach().to(torch.float64).cpu()
        else:
            bias = torch.zeros(cout, dtype=torch.float64)
        bn = cb.bn
        if bn is not None:
            if bn.running_mean is None or bn.running_var is None:
                # Such a BN normalizes with batch statistics even in eval mode: not a constant.
                raise SpikedetError("BatchNorm without running statistics cannot be folded", where)
            mean = _bn_buffer(bn.running_mean, cout, 0.0)
            var = _bn_buffer(bn.running_var, cout, 1.0)
            gamma = _bn_buffer(bn.weight, cout, 1.0)
            beta = _bn_buffer(bn.bias, cout, 0.0)
            scale = gamma / torch.sqrt(var + float(bn.eps))
            weight = weight * scale.view(-1, 1, 1, 1)
            bias = (bias - mean) * scale + beta
    return (
        weight.numpy().astype(np.float32, copy=True),
        bias.numpy().astype(np.float32, copy=True),
    )


def _bn_buffer(value: torch.Tensor | None, n: int, default: float) -> torch.Tensor:
    """A BN statistic or affine parameter as float64; a BN without affine uses γ = 1, β = 0."""
    if value is None:
        return torch.full((n,), default, dtype=torch.float64)
    return value.detach().to(torch.float64).cpu()
