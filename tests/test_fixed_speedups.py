"""The ``fixed`` engine's per-graph work (spikedet.sim.fixed_plan) and banded depthwise convs
change no number: a graph whose synapses repeat one conv (same source, geometry and integer
weights, placed at different channel offsets / upsampled into other populations) gives the
same spikes and readouts as the same graph with the repeats made distinct (each kernel grown
by a ring of zero taps, its padding by one: the same outputs through another conv), and both
match the hardware-step reference of tests/test_fixed_engine.py."""

from __future__ import annotations

import numpy as np
import pytest

from spikedet.sim.fixed import FixedEngine, conv_int
from spikedet.sim.fixed_depthwise import _per_tap, conv_depthwise, depthwise_weight
from spikedet.sim.fixed_plan import plan_graph
from spikedet.sim.interface import compare
from spikedet.sim.qgraph import QInput, QPopulation, QSynapse, QuantGraph
from tests.test_fixed_engine import hardware_reference, ref_conv


def _pop(name: str, kind: str, shape: tuple, depth: int, rng: np.random.Generator) -> QPopulation:
    bias = rng.integers(-50, 50, shape[0])
    D = 0 if kind == "readout" else 4
    return QPopulation(name, kind, shape, 64, bias, depth=depth, D=D, dv=1024)


def _ring(syn: QSynapse) -> QSynapse:
    """The same conv through a kernel with one more ring of zero taps and one more padding."""
    w = np.pad(syn.weight, ((0, 0), (0, 0), (1, 1), (1, 1)))
    pad = (syn.padding[0] + 1, syn.padding[1] + 1)
    return QSynapse(
        syn.name, syn.src, syn.dst, w, syn.stride, pad, syn.groups, syn.delay, syn.out_offset,
        syn.upsample,
    )  # fmt: skip


def shared_graph(rng: np.random.Generator, weight_max: int, T: int, distinct: bool) -> QuantGraph:
    """input -> a; a -> b (two convs, offsets 0 and 3), a -> c (the first again, upsampled x2),
    a -> d (the first again at offset 2) and input -> d (a's input conv again, offset 1)."""
    w_in = rng.integers(-weight_max, weight_max + 1, (4, 2, 3, 3))
    w_a = rng.integers(-weight_max, weight_max + 1, (3, 4, 3, 3))
    w_b = rng.integers(-weight_max, weight_max + 1, (3, 4, 3, 3))
    pops = [
        _pop("a", "ilif", (4, 8, 8), 1, rng),
        _pop("b", "ilif", (6, 8, 8), 2, rng),
        _pop("c", "ilif", (3, 16, 16), 2, rng),
        _pop("d", "readout", (5, 8, 8), 2, rng),
    ]
    p1 = (1, 1)
    syns = [
        QSynapse("in_a", "input", "a", w_in, padding=p1),
        QSynapse("a_b0", "a", "b", w_a, padding=p1),
        QSynapse("a_b3", "a", "b", w_b, padding=p1, out_offset=3),
        QSynapse("a_c", "a", "c", w_a.copy(), padding=p1, upsample=2),
        QSynapse("a_d", "a", "d", w_a.copy(), padding=p1, out_offset=2),
        QSynapse("in_d", "input", "d", w_in.copy(), padding=p1, delay=1, out_offset=1),
    ]
    if distinct:
        rings = {"a_c": 1, "a_d": 2, "in_d": 1}  # a_c and a_d must not share either
        for k in range(2):
            syns = [_ring(s) if rings.get(s.name, 0) > k else s for s in syns]
    return QuantGraph(T=T, input=QInput((2, 8, 8), scale=1), populations=pops, synapses=syns)


@pytest.mark.parametrize(("weight_max", "T", "static"), [(127, 3, False), (1 << 17, 2, True)])
def test_shared_convs_equal_distinct_convs(weight_max: int, T: int, static: bool) -> None:
    shared = shared_graph(np.random.default_rng(5), weight_max, T, distinct=False)
    distinct = shared_graph(np.random.default_rng(5), weight_max, T, distinct=True)
    assert len(plan_graph(shared).convs) == 3 and len(plan_graph(distinct).convs) == 6
    rng = np.random.default_rng(6)
    x = rng.integers(0, 256, (2, 2, 8, 8) if static else (T, 2, 2, 8, 8))
    engine = FixedEngine()
    got, want = engine.run(shared, x), engine.run(distinct, x)
    assert compare(got, want)["total_mismatches"] == 0, compare(got, want)["first_mismatch"]
    counter = {"wraps": 0, "clips": 0}
    hw = hardware_reference(shared, x, counter)
    assert compare(got, hw)["total_mismatches"] == 0, compare(got, hw)["first_mismatch"]
    assert any(v.any() for v in got.spikes.values()) and got.readouts["d"].any()
    if weight_max > 127:  # the shared outputs went through the 24-bit wrap (int64 convs)
        assert counter["wraps"] > 0
    again = engine.run(shared, x)  # the cached plan gives the same numbers
    assert compare(got, again)["total_mismatches"] == 0


def test_plan_follows_replaced_weights() -> None:
    qg = shared_graph(np.random.default_rng(7), 127, 2, distinct=False)
    x = np.random.default_rng(8).integers(0, 256, (1, 2, 8, 8))
    engine = FixedEngine()
    engine.run(qg, x)
    syn = qg.synapses[3]  # a_c, a member of a shared conv
    qg.synapses[3] = QSynapse(
        syn.name, syn.src, syn.dst, -syn.weight, syn.stride, syn.padding, upsample=2
    )
    fresh = FixedEngine().run(qg, x)
    assert compare(engine.run(qg, x), fresh)["total_mismatches"] == 0


@pytest.mark.parametrize(
    ("channels", "per", "hw", "kernel", "stride"),
    [(5, 1, (12, 40), 7, 1), (3, 2, (9, 13), 3, 1), (4, 1, (10, 11), 5, 2), (2, 3, (6, 48), 3, 1)],
)
def test_banded_depthwise_is_exact(channels: int, per: int, hw: tuple, kernel: int, stride: int):
    rng = np.random.default_rng(channels * 10 + per)
    w = rng.integers(-127, 128, (channels * per, 1, kernel, kernel))
    syn = QSynapse("dw", "input", "p", w, (stride, stride), (kernel // 2,) * 2, groups=channels)
    x = rng.integers(0, 256, (3, channels, *hw))
    assert np.array_equal(conv_int(x, syn), ref_conv(x, syn))
    xs = rng.integers(0, 5, (channels, 2, hw[0] + kernel - 1, hw[1] + kernel - 1))
    dw = depthwise_weight(w, np.float32)
    banded = conv_depthwise(xs.astype(np.float32), dw, w.shape, (1, 1), _Scratch())
    taps = _per_tap(xs.astype(np.float32), dw.kernel, channels, (1, 1), hw, _Scratch())
    assert np.array_equal(banded, taps)


class _Scratch:
    """A workspace that hands out fresh arrays (no aliasing between the two results)."""

    def get(self, role: str, shape: tuple, dtype: type) -> np.ndarray:
        return np.empty(shape, dtype=dtype)
