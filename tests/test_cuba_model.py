"""The ``cuba`` kind (docs/semantics.md §3.6): Loihi's CUBA LIF as Lava 0.10's bit-accurate model
computes it, checked against numbers worked out by hand from Lava's equations, one feature at a
time (decays and their rounding, the 6-bit shifts, the bias exponent, strict threshold and hard
reset, the u wrap, the v clip, the periodic reset, per-neuron bias), plus the QuantGraph fields,
their validation and file round trip, and dilated convolutions in the fixed engine."""

from __future__ import annotations

import numpy as np
import pytest

from spikedet.errors import SpikedetError
from spikedet.sim.fixed import FixedEngine
from spikedet.sim.fixed_cuba import CubaState, cuba_step, run_cuba
from spikedet.sim.qgraph import QInput, QPopulation, QSynapse, QuantGraph


def pop(shape=(1, 1, 1), **kw) -> QPopulation:
    args = {"theta": 64, "bias": np.zeros(shape[0], np.int64), "D": 1, "du": 4095, "dv": 0,
            "vth": 131071, "bias_exp": 0, **kw}  # fmt: skip
    return QPopulation(name="p", kind="cuba", shape=shape, **args)


def trace(p: QPopulation, inputs: list[int]) -> tuple[list[int], list[int], list[int]]:
    """(u, v, s) of one neuron driven by ``inputs`` (one a_t per step)."""
    state, us, vs, ss = CubaState.zeros((1, *p.shape)), [], [], []
    for t, a in enumerate(inputs):
        s = cuba_step(state, np.full((1, *p.shape), a), p, t)
        us.append(int(state.u.flat[0]))
        vs.append(int(state.v.flat[0]))
        ss.append(int(s.flat[0]))
    return us, vs, ss


def test_decays_shifts_bias_exponent_and_rounding_toward_zero() -> None:
    # du = 2047: u keeps 2048/4096; dv = 3072: v keeps 1024/4096; bias 3 << 2 = 12 per step.
    p = pop(du=2047, dv=3072, bias=np.array([3]), bias_exp=2)
    u, v, s = trace(p, [5, -7, 0, 0])
    # t0: u = 5<<6 = 320, v = 320 + 12; t1: u = 160 - 448, v = 83 - 288 + 12;
    # t2: u = -144, v = trunc(-193/4) = -48 (floor would give -49) - 144 + 12;
    # t3: u = -72, v = trunc(-180/4) = -45 - 72 + 12
    assert u == [320, -288, -144, -72]
    assert v == [332, -193, -180, -105]
    assert s == [0, 0, 0, 0]


def test_strict_threshold_hard_reset_of_v_only() -> None:
    p = pop(du=4095, dv=0, vth=10)  # threshold 10 << 6 = 640; du = 4095: u = a << 6 each step
    u, v, s = trace(p, [10, 0, 1, 0])
    assert u == [640, 0, 64, 0]  # u is never reset; du = 4095 keeps no memory
    assert v == [640, 640, 0, 0]  # 640 is not > 640; 704 fires and v restarts at 0
    assert s == [0, 0, 1, 0]


def test_v_clips_to_24_bits_and_the_clipped_value_can_fire() -> None:
    _, v, s = trace(pop(), [1 << 16] * 3)  # u = 2^22 per step; threshold 131071 << 6 = 8388544
    assert v == [1 << 22, 0, 1 << 22] and s == [0, 1, 0]  # 2^23 clipped to 8388607 > 8388544
    _, v, s = trace(pop(), [-(1 << 16)] * 3)
    assert v == [-(1 << 22), -(1 << 23) + 1, -(1 << 23) + 1] and s == [0, 0, 0]


@pytest.mark.parametrize(
    "a, u",
    [
        ((1 << 17) + 1, (1 << 23) + 64 - (1 << 24)),  # above 2^23: minus 2^24
        (1 << 17, 1 << 23),  # exactly 2^23 stays (Lava's test is x > 2^23)
        (-(1 << 17), 1 << 23),  # exactly -2^23 becomes +2^23 (Lava's test is x <= -2^23)
        (-(1 << 17) - 1, (1 << 23) - 64),
        ((1 << 17) - 1, (1 << 23) - 64),  # in range: unchanged
    ],
)
def test_current_wraps_once_as_lava(a: int, u: int) -> None:
    assert trace(pop(dv=4095), [a])[0] == [u]


def test_periodic_reset_before_the_step() -> None:
    p = pop(bias=np.array([1]), reset_interval=3, reset_offset=1)  # v counts the bias steps
    assert trace(p, [0] * 7)[1] == [1, 1, 2, 3, 1, 2, 3]  # zeroed before t = 1 and t = 4


def test_per_neuron_bias_and_run_cuba_matches_steps() -> None:
    p = pop(shape=(1, 1, 2), bias=np.array([1, -2]), bias_exp=1, dv=2048)
    record: dict = {}
    spikes = run_cuba(p, np.zeros((1, 1, 1, 1, 2), np.int64), steps=3, record=record)
    # v = v/2 + b with b = [2, -4]: [2, -4], [3, -6], [3, -7] (trunc(-3.5) = -3)
    assert record["v"][:, 0, 0, 0].tolist() == [[2, -4], [3, -6], [3, -7]]
    assert not spikes.any()


def test_cuba_fields_validate() -> None:
    bad = [
        {"du": 4096},
        {"dv": -1},
        {"vth": 1 << 17},
        {"bias": np.array([1 << 12])},
        {"bias_exp": 8},
        {"reset_interval": 4, "reset_offset": 4},
        {"reset_interval": 0, "reset_offset": 1},
        {"D": 2},
        {"bias": np.zeros(3, np.int64)},  # neither per channel (1) nor per neuron (2)
    ]
    for change in bad:
        with pytest.raises(SpikedetError):
            pop(shape=(1, 1, 2), **change)


def small_graph(weight: np.ndarray, dilation=(1, 1), T: int = 3) -> QuantGraph:
    c, h, w = 2, 6, 7
    syn = QSynapse("s", "input", "p", weight, padding=(1, 0), dilation=dilation)
    shape = syn.output_shape((c, h, w))
    p = QPopulation("p", "cuba", shape, theta=64, bias=np.arange(shape[0]) - 1, depth=1, D=1,
                    du=1023, dv=512, vth=40, bias_exp=6, reset_interval=2)  # fmt: skip
    return QuantGraph(T, QInput((c, h, w), 1), [p], [syn], 1)


def naive_conv(x: np.ndarray, w: np.ndarray, pad: tuple, dil: tuple) -> np.ndarray:
    """Cross-correlation by definition, one output element at a time."""
    xp = np.pad(x, ((0, 0), (pad[0], pad[0]), (pad[1], pad[1])))
    cout, _, kh, kw = w.shape
    ho = xp.shape[1] - dil[0] * (kh - 1)
    wo = xp.shape[2] - dil[1] * (kw - 1)
    out = np.zeros((cout, ho, wo), np.int64)
    for o in range(cout):
        for i in range(ho):
            for j in range(wo):
                patch = xp[:, i : i + dil[0] * (kh - 1) + 1 : dil[0],
                           j : j + dil[1] * (kw - 1) + 1 : dil[1]]  # fmt: skip
                out[o, i, j] = int((patch * w[o]).sum())
    return out


def test_fixed_engine_runs_cuba_with_a_dilated_conv_and_records_states() -> None:
    rng = np.random.default_rng(3)
    weight = rng.integers(-9, 10, (3, 2, 2, 3))
    qg = small_graph(weight, dilation=(2, 2))
    x = rng.integers(0, 4, (1, *qg.input.shape))
    res = FixedEngine(record_states=True).run(qg, x)
    a = naive_conv(x[0], weight, (1, 0), (2, 2))
    p = qg.populations[0]
    expected = run_cuba(p, a[None, None], steps=3, record=(rec := {}))
    assert np.array_equal(res.spikes["p"][:, 0], expected[:, 0])
    for key in ("u", "v"):
        assert np.array_equal(res.info["states"]["p"][key][:, 0], rec[key][:, 0])
    assert res.spikes["p"].any() and not res.spikes["p"].all()  # a non-trivial trace


def test_cuba_graph_file_round_trip(tmp_path) -> None:
    qg = small_graph(np.ones((3, 2, 2, 3), np.int64), dilation=(2, 1))
    qg.save(tmp_path / "g.npz")
    back = QuantGraph.load(tmp_path / "g.npz")
    p, q = qg.populations[0], back.populations[0]
    fields = ("kind", "du", "dv", "vth", "bias_exp", "reset_interval", "reset_offset", "shape")
    assert all(getattr(p, f) == getattr(q, f) for f in fields)
    assert np.array_equal(p.bias, q.bias) and back.synapses[0].dilation == (2, 1)
