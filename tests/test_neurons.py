"""The multi-step neuron modules equal their pure step functions (outputs and gradients), and
the step functions implement docs/semantics.md §1 (checked by hand on known values)."""

from __future__ import annotations

import pytest
import torch

from spikedet.train.neurons import ILIF, LIF, ilif_gen1, ilif_step, lif_step, to_binary_slots


def _loop(step, x, **kw):
    state, out = None, []
    for t in range(x.shape[0]):
        s, state = step(x[t], state, **kw)
        out.append(s)
    return torch.stack(out)


@pytest.mark.parametrize("T", [1, 3, 6])
@pytest.mark.parametrize(
    ("beta", "alpha", "levels"), [(0.25, 1.0, 4), (0.5, 0.5, 4), (0.3, 1.0, 2)]
)
def test_ilif_module_equals_step_function(T: int, beta: float, alpha: float, levels: int) -> None:
    gen = torch.Generator().manual_seed(T)
    base = torch.randn(T, 4, 5, 6, generator=gen) * 3
    weight = torch.randn(base.shape, generator=gen)
    xr, xm = base.clone().requires_grad_(True), base.clone().requires_grad_(True)
    yr = _loop(ilif_step, xr, levels=levels, beta=beta, alpha=alpha)
    ym = ILIF(levels, beta, alpha)(xm)
    (yr * weight).sum().backward()
    (ym * weight).sum().backward()
    assert torch.equal(yr, ym)
    assert torch.equal(xr.grad, xm.grad)
    assert set(ym.unique().tolist()) <= set(range(levels + 1))


@pytest.mark.parametrize("T", [1, 4])
@pytest.mark.parametrize("beta", [0.25, 0.7])
def test_lif_module_equals_step_function(T: int, beta: float) -> None:
    gen = torch.Generator().manual_seed(10 + T)
    base = torch.randn(T, 3, 7, 7, generator=gen)
    weight = torch.randn(base.shape, generator=gen)
    xr, xm = base.clone().requires_grad_(True), base.clone().requires_grad_(True)
    yr = _loop(lif_step, xr, beta=beta, threshold=0.5)
    ym = LIF(beta, 0.5)(xm)
    (yr * weight).sum().backward()
    (ym * weight).sum().backward()
    assert torch.equal(yr, ym)
    assert torch.equal(xr.grad, xm.grad)


def test_ilif_known_values() -> None:
    # u0 = 2.6 -> s0 = 3 (round), u1 = 0.25*(2.6-3) + 1.0 = 0.9 -> s1 = 1; 2.5 rounds to 2 (even)
    x = torch.tensor([[2.6, 2.5, -1.0, 9.0], [1.0, 0.0, 0.0, 0.0]])
    s = ILIF(4, 0.25, 1.0)(x)
    assert s.tolist() == [[3.0, 2.0, 0.0, 4.0], [1.0, 0.0, 0.0, 1.0]]


def test_lif_known_values() -> None:
    # strict threshold 0.5, hard reset: 0.5 does not fire; 0.6 fires then resets to 0
    x = torch.tensor([[0.5, 0.6], [0.4, 0.4]])
    s = LIF(0.25, 0.5)(x)
    # u1 = 0.25*0.5 + 0.4 = 0.525 > 0.5 fires; second neuron reset: u1 = 0 + 0.4 no spike
    assert s.tolist() == [[0.0, 1.0], [1.0, 0.0]]


def test_thermometer_code() -> None:
    s = torch.tensor([[0.0, 1.0, 4.0]])
    bits = to_binary_slots(s, 4)
    assert bits.shape == (4, 3)
    assert bits.sum(0).tolist() == [0.0, 1.0, 4.0]
    assert bits[:, 1].tolist() == [1.0, 0.0, 0.0, 0.0]


def test_gen1_variant_is_spikingjelly_tau2_soft_reset() -> None:
    # spikingjelly LIF, tau = 2, decay_input, v_reset None (soft), spike = Q_4(v), v -= spike
    x = torch.tensor([[2.0, 9.0, 0.9], [2.0, 0.0, 0.9], [5.0, 0.0, 0.9]])
    v = torch.zeros(3)
    expected = []
    for xt in x:
        v = v + (xt - v) / 2
        s = torch.round(torch.clamp(v, 0, 4))
        v = v - s
        expected.append(s)
    assert torch.equal(ilif_gen1(4)(x), torch.stack(expected))
