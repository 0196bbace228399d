"""Spiking neurons: one pure step function per neuron, and thin multi-step modules.

Equations: docs/semantics.md §1. Tensors are time-first, ``[T, B, ...]``.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

from spikedet.errors import SpikedetError

# ---------------------------------------------------------------------------------------------
# I-LIF (SpikeYOLO): s = round_half_even(clamp(u, 0, D)), soft reset by the integer spike.


class _QuantizeSTE(torch.autograd.Function):
    """Q_D(u) = round(clamp(u, 0, D)) (half to even); straight-through gradient on 0 <= u <= D."""

    @staticmethod
    def forward(ctx, u: Tensor, levels: int) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(u)
        ctx.levels = levels
        return torch.round(torch.clamp(u, 0.0, float(levels)))

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        (u,) = ctx.saved_tensors
        inside = (u >= 0) & (u <= ctx.levels)
        return grad * inside.to(grad.dtype), None


def quantize_spike(u: Tensor, levels: int) -> Tensor:
    """Integer spike count in {0..levels} with a straight-through gradient."""
    return _QuantizeSTE.apply(u, levels)


class ILIFState(NamedTuple):
    u: Tensor  # membrane after the previous step's charge
    s: Tensor  # previous integer spike (detached)


def ilif_step(
    x: Tensor, state: ILIFState | None, levels: int = 4, beta: float = 0.25, alpha: float = 1.0
) -> tuple[Tensor, ILIFState]:
    """One I-LIF step.

    u_t = beta * (u_{t-1} - s_{t-1}) + alpha * x_t;  s_t = round(clamp(u_t, 0, D)).
    The reset term uses the detached previous spike (the papers' soft reset).
    """
    u = alpha * x if state is None else beta * (state.u - state.s) + alpha * x
    s = quantize_spike(u, levels)
    return s, ILIFState(u=u, s=s.detach())


class _ILIFSequence(torch.autograd.Function):
    """The whole I-LIF sequence as one autograd node (same numbers as iterating ``ilif_step``).

    Forward: u_t = beta * (u_{t-1} - s_{t-1}) + alpha * x_t, s_t = round(clamp(u_t, 0, D)).
    Backward in closed form: the reset uses the detached spike, so du_{t+1}/du_t = beta and
    g_u_t = g_s_t * [0 <= u_t <= D] + beta * g_u_{t+1};  g_x_t = alpha * g_u_t.
    Saving one bool mask per step instead of a graph of ~6 nodes per step makes it ~2x faster.
    """

    @staticmethod
    def forward(ctx, x: Tensor, levels: int, beta: float, alpha: float) -> Tensor:  # type: ignore[override]
        out = torch.empty_like(x)
        inside = torch.empty(x.shape, dtype=torch.bool, device=x.device)
        u = torch.zeros_like(x[0])
        for t in range(x.shape[0]):
            if t:
                u.sub_(out[t - 1]).mul_(beta)
            u.add_(x[t], alpha=alpha)
            torch.logical_and(u >= 0, u <= levels, out=inside[t])
            torch.round(torch.clamp(u, 0.0, float(levels)), out=out[t])
        ctx.save_for_backward(inside)
        ctx.beta, ctx.alpha = beta, alpha
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        (inside,) = ctx.saved_tensors
        gx = torch.empty_like(grad)
        g_u = torch.zeros_like(grad[0])
        for t in reversed(range(grad.shape[0])):
            g_u.mul_(ctx.beta).add_(grad[t] * inside[t])
            torch.mul(g_u, ctx.alpha, out=gx[t])
        return gx, None, None, None


class ILIF(nn.Module):
    """Multi-step I-LIF over ``[T, ...]`` input; returns integer spike counts ``[T, ...]``.

    COCO (SpikeYOLO): D=4, beta=0.25, alpha=1. Gen1 variant: beta=0.5, alpha=0.5.

    In ``spike_mode == "binary"`` (set with ``set_spike_mode``) the same integers leave as their
    thermometer code ``[T*D, ...]`` (docs/semantics.md §1.1); the consuming conv then sums its
    D slot outputs per logical step (``blocks.ConvBN.forward_slots``). ``slots`` is the number of
    output slots per logical step (1 in integer mode, D in binary mode).
    """

    def __init__(self, levels: int = 4, beta: float = 0.25, alpha: float = 1.0):
        super().__init__()
        self.levels, self.beta, self.alpha = int(levels), float(beta), float(alpha)
        self.spike_mode: str = "integer"

    @property
    def slots(self) -> int:
        return self.levels if self.spike_mode == "binary" else 1

    def forward(self, x: Tensor) -> Tensor:
        # Same numbers and gradients as iterating ilif_step (tests/test_neurons.py), fused.
        spikes = _ILIFSequence.apply(x, self.levels, self.beta, self.alpha)
        return to_binary_slots(spikes, self.levels) if self.spike_mode == "binary" else spikes

    def extra_repr(self) -> str:
        mode = ", binary" if self.spike_mode == "binary" else ""
        return f"D={self.levels}, beta={self.beta}, alpha={self.alpha}{mode}"


def ilif_gen1(levels: int = 4) -> ILIF:
    """SpikeYOLO's Gen1 neuron (bundled spikingjelly LIF, tau = 2, decay_input, soft reset):
    v_t = v_{t-1} + (x_t - v_{t-1}) / 2 = 0.5 * v_{t-1} + 0.5 * x_t, s_t = Q_D(v_t), v_t -= s_t,
    i.e. the I-LIF with beta = 0.5 and alpha = 0.5 (docs/semantics.md §1.1)."""
    return ILIF(levels, beta=0.5, alpha=0.5)


SPIKE_MODES = ("integer", "binary")


def set_spike_mode(model: nn.Module, mode: str) -> int:
    """Switch every I-LIF in ``model`` to ``"integer"`` (s in {0..D} per step, the training form)
    or ``"binary"`` (spike-driven: D binary slots per step, slot d fires iff d < s).

    Both modes compute the same numbers in exact arithmetic: a conv is linear, so
    conv(s) = sum_d conv(slot_d), and the consumer adds bias and BN once after the slot sum.
    Returns the number of I-LIF modules switched.
    """
    if mode not in SPIKE_MODES:
        raise SpikedetError(f"spike mode must be one of {list(SPIKE_MODES)}", repr(mode))
    count = 0
    for module in model.modules():
        if isinstance(module, ILIF):
            module.spike_mode = mode
            count += 1
    return count


def to_binary_slots(s: Tensor, levels: int) -> Tensor:
    """Thermometer code: ``[T, ...]`` integers -> ``[T*D, ...]`` binary, slot d fires iff d < s."""
    d = torch.arange(levels, device=s.device, dtype=s.dtype).view(1, levels, *([1] * (s.dim() - 1)))
    bits = (d < s.unsqueeze(1)).to(s.dtype)
    return bits.reshape(s.shape[0] * levels, *s.shape[1:])


# ---------------------------------------------------------------------------------------------
# EMS LIF (EMS-YOLO): hard reset to 0, strict threshold, rectangular surrogate on (0, 1).


class _HeavisideRect(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u: Tensor, threshold: float) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(u)
        ctx.threshold = threshold
        return (u > threshold).to(u.dtype)

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        (u,) = ctx.saved_tensors
        inside = (u - ctx.threshold).abs() < 0.5
        return grad * inside.to(grad.dtype), None


class LIFState(NamedTuple):
    u: Tensor
    s: Tensor


def lif_step(
    x: Tensor, state: LIFState | None, beta: float = 0.25, threshold: float = 0.5
) -> tuple[Tensor, LIFState]:
    """One EMS LIF step: u_t = beta * u_{t-1} * (1 - s_{t-1}) + x_t;  s_t = [u_t > V_th]."""
    u = x if state is None else beta * state.u * (1.0 - state.s) + x
    s = _HeavisideRect.apply(u, threshold)
    return s, LIFState(u=u, s=s.detach())


class _LIFSequence(torch.autograd.Function):
    """The EMS LIF sequence as one autograd node (same numbers as iterating ``lif_step``).

    du_{t+1}/du_t = beta * (1 - s_t) (detached spike), so
    g_u_t = g_s_t * [|u_t - V_th| < 0.5] + beta * (1 - s_t) * g_u_{t+1};  g_x_t = g_u_t.
    (1 - s) is exactly 0 or 1, so the product order cannot change a rounding.
    """

    @staticmethod
    def forward(ctx, x: Tensor, beta: float, threshold: float) -> Tensor:  # type: ignore[override]
        out = torch.empty_like(x)
        inside = torch.empty(x.shape, dtype=torch.bool, device=x.device)
        u = x[0].clone()
        for t in range(x.shape[0]):
            if t:
                u.mul_(1.0 - out[t - 1]).mul_(beta).add_(x[t])
            torch.lt((u - threshold).abs_(), 0.5, out=inside[t])
            torch.gt(u, threshold, out=out[t])
        ctx.save_for_backward(inside, out)
        ctx.beta = beta
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        inside, spikes = ctx.saved_tensors
        gx = torch.empty_like(grad)
        g_u = torch.zeros_like(grad[0])
        for t in reversed(range(grad.shape[0])):
            if t < grad.shape[0] - 1:
                g_u.mul_(1.0 - spikes[t]).mul_(ctx.beta)
            g_u.add_(grad[t] * inside[t])
            gx[t] = g_u
        return gx, None, None


class LIF(nn.Module):
    """Multi-step EMS LIF over ``[T, ...]``; returns binary spikes ``[T, ...]``."""

    def __init__(self, beta: float = 0.25, threshold: float = 0.5):
        super().__init__()
        self.beta, self.threshold = float(beta), float(threshold)

    def forward(self, x: Tensor) -> Tensor:
        # Same numbers and gradients as iterating lif_step (tests/test_neurons.py), fused.
        return _LIFSequence.apply(x, self.beta, self.threshold)

    def extra_repr(self) -> str:
        return f"beta={self.beta}, threshold={self.threshold}"
