"""Shared test helpers: wake a freshly built spiking model up so comparisons are not vacuous.

A fresh model (BN statistics 0/1, small default conv weights) is nearly silent; tests that
compare two executions of it would pass trivially. These give every layer non-trivial spikes.
"""

from __future__ import annotations

import torch
from torch import nn

from spikedet.train.neurons import ILIF


def randomize_bn(model: nn.Module, seed: int = 1) -> nn.Module:
    """Non-trivial BN statistics and affines (only), so spikes span 0..D."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for bn in (m for m in model.modules() if isinstance(m, nn.BatchNorm2d)):
            for tensor, lo, hi in (
                (bn.running_mean, -0.2, 0.2),
                (bn.running_var, 0.5, 1.5),
                (bn.weight, 1.0, 2.0),
                (bn.bias, 0.0, 0.8),
            ):
                tensor.copy_(torch.empty(tensor.shape).uniform_(lo, hi, generator=gen))
    return model


def randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random BN statistics/affines and conv weights scaled by fan-in so neurons fire at several
    levels; returns the model in eval mode."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=gen) * 0.2)
                m.running_var.copy_(torch.rand(n, generator=gen) * 0.5 + 0.5)
                m.weight.copy_(torch.rand(n, generator=gen) * 1.5 + 0.5)
                m.bias.copy_(torch.randn(n, generator=gen) * 0.5 + 0.3)
            elif isinstance(m, nn.Conv2d):
                fan_in = m.weight[0].numel()
                m.weight.copy_(torch.randn(m.weight.shape, generator=gen) * 0.6 / fan_in**0.5)
                if m.bias is not None:
                    m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * 0.3)
    return model.eval()


def run_with_spikes(model: nn.Module, x: torch.Tensor) -> tuple[list, dict[str, torch.Tensor]]:
    """Outputs and every I-LIF's output, binary slots folded back to integers ``[T, ...]``."""
    spikes: dict[str, torch.Tensor] = {}

    def record(name: str, lif: ILIF, out: torch.Tensor) -> None:
        if lif.spike_mode == "binary":
            assert set(out.unique().tolist()) <= {0.0, 1.0}
            out = out.view(-1, lif.levels, *out.shape[1:]).sum(1)
        spikes[name] = out

    hooks = [
        m.register_forward_hook(lambda mod, i, o, k=name: record(k, mod, o))
        for name, m in model.named_modules()
        if isinstance(m, ILIF)
    ]
    try:
        with torch.no_grad():
            outs = model(x)
    finally:
        for h in hooks:
            h.remove()
    return outs, spikes
