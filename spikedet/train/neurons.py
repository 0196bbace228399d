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
    x: Tensor,
    state: ILIFState | None,
    levels: int = 4,
    beta: float = 0.25,
    alpha: float = 1.0,
    tau: float | None = None,
) -> tuple[Tensor, ILIFState]:
    """One I-LIF step.

    u_t = beta * (u_{t-1} - s_{t-1}) + alpha * x_t;  s_t = round(clamp(u_t, 0, D)).
    With ``tau`` (Gen1): u_t = h + (x_t - h) / tau, h = u_{t-1} - s_{t-1} (h = 0 at t = 0).
    The reset term uses the detached previous spike (the papers' soft reset).
    """
    if tau is not None:
        h = torch.zeros_like(x) if state is None else state.u - state.s
        u = h + (x - h) / tau
    else:
        u = alpha * x if state is None else beta * (state.u - state.s) + alpha * x
    s = quantize_spike(u, levels)
    return s, ILIFState(u=u, s=s.detach())


class _ILIFSequence(torch.autograd.Function):
    """The whole I-LIF sequence as one autograd node (same numbers as iterating ``ilif_step``).

    Forward: u_t = beta * (u_{t-1} - s_{t-1}) + alpha * x_t, s_t = round(clamp(u_t, 0, D));
    with ``tau`` (the Gen1 spikingjelly form) the charge is h + (x_t - h) / tau, h = u - s, in
    that float order (the official code's), which equals beta = 1 - 1/tau, alpha = 1/tau exactly
    only in exact arithmetic.
    Backward in closed form: the reset uses the detached spike, so du_{t+1}/du_t = beta and
    g_u_t = g_s_t * [0 <= u_t <= D] + beta * g_u_{t+1};  g_x_t = alpha * g_u_t.
    Saving one bool mask per step instead of a graph of ~6 nodes per step makes it ~2x faster.
    """

    @staticmethod
    def forward(ctx, x: Tensor, levels: int, beta: float, alpha: float, tau: float | None):  # type: ignore[override]
        out = torch.empty_like(x)
        inside = torch.empty(x.shape, dtype=torch.bool, device=x.device)
        u = torch.zeros_like(x[0])
        for t in range(x.shape[0]):
            if tau is not None:  # spikingjelly: v = v + (x - v) / tau on the reset membrane
                if t:
                    u.sub_(out[t - 1])
                u.add_((x[t] - u).div_(tau))
            else:
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
        return gx, None, None, None, None


class ILIF(nn.Module):
    """Multi-step I-LIF over ``[T, ...]`` input; returns integer spike counts ``[T, ...]``.

    COCO (SpikeYOLO): D=4, beta=0.25, alpha=1. Gen1 variant (``ilif_gen1``): tau = 2, i.e.
    beta = alpha = 0.5 with the official charge order (``_ILIFSequence``).

    In ``spike_mode == "binary"`` (set with ``set_spike_mode``) the same integers leave as their
    thermometer code ``[T*D, ...]`` (docs/semantics.md §1.1); the consuming conv then sums its
    D slot outputs per logical step (``blocks.ConvBN.forward_slots``). ``slots`` is the number of
    output slots per logical step (1 in integer mode, D in binary mode). ``exact`` asks the
    consuming conv to accumulate exactly (``blocks.exact_slot_conv``), which makes binary and
    integer mode spike-identical at any size.
    """

    def __init__(
        self, levels: int = 4, beta: float = 0.25, alpha: float = 1.0, tau: float | None = None
    ):
        super().__init__()
        self.levels = int(levels)
        self.spike_mode: str = "integer"
        self.exact: bool = False
        self.set_dynamics(beta, alpha, tau)

    def set_dynamics(self, beta: float = 0.25, alpha: float = 1.0, tau: float | None = None):
        """COCO form (beta, alpha) or, with ``tau``, the decay-input form (beta = 1 - 1/tau)."""
        if tau is not None:
            if not float(tau) > 1.0:
                raise SpikedetError("I-LIF tau must be > 1", repr(tau))
            beta, alpha = 1.0 - 1.0 / float(tau), 1.0 / float(tau)
        self.beta, self.alpha = float(beta), float(alpha)
        self.tau: float | None = None if tau is None else float(tau)

    @property
    def slots(self) -> int:
        return self.levels if self.spike_mode == "binary" else 1

    def forward(self, x: Tensor) -> Tensor:
        # Same numbers and gradients as iterating ilif_step (tests/test_neurons.py), fused.
        spikes = _ILIFSequence.apply(x, self.levels, self.beta, self.alpha, self.tau)
        return to_binary_slots(spikes, self.levels) if self.spike_mode == "binary" else spikes

    def extra_repr(self) -> str:
        mode = ", binary" if self.spike_mode == "binary" else ""
        form = (
            f"tau={self.tau}" if self.tau is not None else f"beta={self.beta}, alpha={self.alpha}"
        )
        return f"D={self.levels}, {form}{mode}"


GEN1_TAU = 2.0  # SpikeYOLO_for_Gen1: MultiStepLIFNode(tau=2.0 default, decay_input, v_reset=None)
NEURONS = ("coco", "gen1")  # model config ``neuron``: which I-LIF a SpikeYOLO model uses


def ilif_gen1(levels: int = 4) -> ILIF:
    """SpikeYOLO's Gen1 neuron (bundled spikingjelly LIF, tau = 2, decay_input, soft reset):
    v_t = v_{t-1} + (x_t - v_{t-1}) / 2, s_t = Q_D(v_t), v_t -= s_t, i.e. the I-LIF with
    beta = 0.5 and alpha = 0.5 (docs/semantics.md §1.1), computed in the official float order."""
    return ILIF(levels, tau=GEN1_TAU)


def set_neuron(model: nn.Module, neuron: str) -> int:
    """Give every I-LIF of ``model`` the COCO or the Gen1 dynamics; returns how many."""
    if neuron not in NEURONS:
        raise SpikedetError(f"neuron must be one of {list(NEURONS)}", repr(neuron))
    count = 0
    for module in model.modules():
        if isinstance(module, ILIF):
            if neuron == "gen1":
                module.set_dynamics(tau=GEN1_TAU)
            else:
                module.set_dynamics()
            count += 1
    return count


SPIKE_MODES = ("integer", "binary")


def set_spike_mode(model: nn.Module, mode: str, exact: bool | None = None) -> int:
    """Switch every I-LIF in ``model`` to ``"integer"`` (s in {0..D} per step, the training form)
    or ``"binary"`` (spike-driven: D binary slots per step, slot d fires iff d < s).

    Both modes compute the same numbers in exact arithmetic: a conv is linear, so
    conv(s) = sum_d conv(slot_d), and the consumer adds bias and BN once after the slot sum.
    In float32 the two sums round differently, so ``exact`` (default: on for binary, off for
    integer) makes the consuming convs accumulate exactly; binary and integer mode with
    ``exact=True`` are then spike-identical. Returns the number of I-LIF modules switched.
    """
    if mode not in SPIKE_MODES:
        raise SpikedetError(f"spike mode must be one of {list(SPIKE_MODES)}", repr(mode))
    exact = mode == "binary" if exact is None else bool(exact)
    count = 0
    for module in model.modules():
        if isinstance(module, ILIF):
            module.spike_mode = mode
            module.exact = exact
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
