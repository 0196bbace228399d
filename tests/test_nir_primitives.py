"""One hand-computed case per NIR 1.0.8 primitive (docs/semantics.md §4), float and integer.

Each graph is Input -> [the primitive] -> a neuron -> Output with weights that quantize
exactly (multiples of 1/2 or 1/4), so the float reference (``NIRExecutor``), the ``fixed``
engine and Lava all give the spikes (or the readout value) written in the case: Threshold
is a cuba neuron cleared before every step, LI / CubaLI an ``li`` readout (a cuba neuron that
never fires, v read out), reset by subtraction and a bias into a current with memory are cuba
fields (docs/semantics.md §4.5). What still has no integer form is refused naming the node.
The mapper places every integer case (README "NIR primitives" table).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import nir
import numpy as np
import pytest

from spikedet.deploy.nir_generic import Conventions, parse_generic
from spikedet.errors import SpikedetError


def a(*v) -> np.ndarray:
    return np.asarray(v, dtype=np.float32)


def lin(*w) -> nir.Linear:
    return nir.Linear(weight=np.asarray(w, dtype=np.float32).reshape(len(w), -1))


def if_(thr: float, n: int | tuple = 1) -> nir.IF:
    shape = (n,) if isinstance(n, int) else n
    return nir.IF(r=np.ones(shape, np.float32), v_threshold=np.full(shape, thr, np.float32))


def chain(in_shape: tuple, *nodes) -> nir.NIRGraph:
    names = [f"n{i}" for i in range(len(nodes))]
    graph = {"input": nir.Input(input_type=np.array(in_shape)), **dict(zip(names, nodes))}
    graph["output"] = nir.Output(output_type=np.array([1]))
    edges = list(zip(["input", *names], [*names, "output"]))
    return nir.NIRGraph(nodes=graph, edges=edges, type_check=False)


@dataclass
class Case:
    graph: nir.NIRGraph
    x: np.ndarray  # [T, *input_shape] (batch 1 added here)
    want: np.ndarray  # spikes [T, *shape] of the last neuron, or its final readout value
    dt: float = 1.0
    reset: str = "zero"  # --reset


def recurrent() -> nir.NIRGraph:
    nodes = {
        "input": nir.Input(input_type=np.array([1])), "w": lin(1.0), "if": if_(0.5),
        "rec": lin(-0.5), "output": nir.Output(output_type=np.array([1])),
    }  # fmt: skip
    edges = [("input", "w"), ("w", "if"), ("if", "rec"), ("rec", "if"), ("if", "output")]
    return nir.NIRGraph(nodes=nodes, edges=edges, type_check=False)


def recurrent_bias() -> nir.NIRGraph:
    cuba = nir.CubaLIF(
        tau_syn=a(2), tau_mem=a(2), r=a(2), v_leak=a(0), v_threshold=a(0.6), w_in=a(2)
    )
    nodes = {
        "input": nir.Input(input_type=np.array([1])), "w": lin(1.0), "lif": cuba,
        "rec": nir.Affine(weight=a([-0.5]), bias=a(0.5)),
        "output": nir.Output(output_type=np.array([1])),
    }  # fmt: skip
    edges = [("input", "w"), ("w", "lif"), ("lif", "rec"), ("rec", "lif"), ("lif", "output")]
    return nir.NIRGraph(nodes=nodes, edges=edges, type_check=False)


def nested() -> nir.NIRGraph:
    sub = chain((1,), lin(0.5), if_(1.0))
    return chain((1,), sub)


ONES = np.ones((4, 1), np.float32)
SEQ = a([1, 0], [0, 1], [0, 0], [1, 1])
MAP = a([[[1, 0, 0, 1], [0, 0, 1, 0], [1, 1, 0, 0], [1, 0, 0, 0]]])  # 2x2 windows: 1, 2, 3, 0
CASES = {
    # v_t = v + 1.5, 1.0 (= v_th: strict, no spike), 0.5, 2.0 ...
    "Affine": Case(
        chain((2,), nir.Affine(weight=a([1, 0.5]), bias=a(0.5)), if_(1.0)),
        SEQ,
        a([1], [0], [1], [1]),
    ),  # fmt: skip
    "Linear": Case(chain((2,), lin([1, 0.5]), if_(1.0)), SEQ, a([0], [1], [0], [1])),
    "Scale": Case(
        chain((2,), nir.Scale(scale=a(1, 0.5)), if_(1.0, 2)),
        np.ones((3, 2)),
        a([0, 0], [1, 0], [0, 1]),
    ),  # fmt: skip
    "Conv1d": Case(
        chain(
            (1, 4),
            nir.Conv1d(
                input_shape=4,
                weight=a([[1, 0.5]]),
                stride=1,
                padding=0,
                dilation=1,
                groups=1,
                bias=a(0),
            ),
            if_(1.0, (1, 3)),
        ),
        np.tile(a([[1, 0, 1, 1]]), (2, 1, 1)),
        a([[0, 0, 1]], [[1, 0, 1]]),
    ),  # fmt: skip
    "Conv2d": Case(
        chain(
            (1, 3, 3),
            nir.Conv2d(
                input_shape=(3, 3),
                weight=np.full((1, 1, 2, 2), 0.5, np.float32),
                stride=1,
                padding=0,
                dilation=1,
                groups=1,
                bias=a(0),
            ),
            if_(1.0, (1, 2, 2)),
        ),
        np.tile(a([[[1, 0, 1], [0, 1, 0], [1, 1, 1]]]), (2, 1, 1, 1)),
        a([[[0, 0], [1, 1]]], [[[1, 1], [1, 1]]]),
    ),  # fmt: skip
    "SumPool2d": Case(
        chain(
            (1, 4, 4),
            nir.Scale(scale=a(1)),
            if_(0.5, (1, 4, 4)),
            nir.SumPool2d(kernel_size=(2, 2), stride=(2, 2), padding=(0, 0)),
            if_(1.5, (1, 2, 2)),
        ),
        np.tile(MAP, (2, 1, 1, 1)),
        a([[[0, 1], [1, 0]]], [[[1, 1], [1, 0]]]),
    ),  # fmt: skip
    "AvgPool2d": Case(
        chain(
            (1, 4, 4),
            nir.Scale(scale=a(1)),
            if_(0.5, (1, 4, 4)),
            nir.AvgPool2d(kernel_size=(2, 2), stride=(2, 2), padding=(0, 0)),
            if_(0.5, (1, 2, 2)),
        ),
        np.tile(MAP, (2, 1, 1, 1)),
        a([[[0, 0], [1, 0]]], [[[0, 1], [1, 0]]]),
    ),  # fmt: skip
    # C-major flatten of [[1, 0], [1, 1]] is (1, 0, 1, 1): drive 1.0 (a W-major one: 1.5)
    "Flatten": Case(
        chain(
            (1, 2, 2),
            nir.Flatten(input_type={"input": np.array([1, 2, 2])}, start_dim=0),
            lin([0.5, 1, 0.5, 0]),
            if_(1.0),
        ),
        np.tile(a([[1, 0], [1, 1]]), (2, 1, 1, 1)),
        a([0], [1]),
    ),  # fmt: skip
    # 0.25, 0.75, 0.5 (= θ: strict), 1.0: no memory between steps (a 3 after the 2 still fires)
    "Threshold": Case(
        chain((1,), lin(0.25), nir.Threshold(threshold=a(0.5))),
        a([1], [3], [2], [4]),
        a([0], [1], [0], [1]),
    ),  # fmt: skip
    # the input of step 0 arrives at step 2
    "Delay": Case(
        chain((1,), lin(1.0), nir.Delay(delay=a(2.0)), if_(0.5)),
        a([1], [0], [0], [0]),
        a([0], [0], [1], [0]),
    ),  # fmt: skip
    "I": Case(chain((1,), lin(0.5), nir.I(r=a(1))), a([1], [2], [0], [1]), a(2.0)),
    # beta = 1 - dt/tau = 0.5, alpha = r dt/tau = 0.5: v = 0.5, 0.75, 0.375
    "LI": Case(
        chain((1,), lin(1.0), nir.LI(tau=a(2), r=a(1), v_leak=a(0))),
        a([1], [1], [0]),
        a(0.375),
    ),  # fmt: skip
    # beta 0.5, alpha 1, v = 0.25, 0.125, 0.0625, 0.28125, 0.390625 > 0.3
    "LIF": Case(
        chain(
            (1,),
            lin(0.25),
            nir.LIF(tau=a(2), r=a(2), v_leak=a(0), v_threshold=a(0.3), v_reset=a(0)),
        ),
        a([1], [0], [0], [1], [1]),
        a([0], [0], [0], [0], [1]),
    ),  # fmt: skip
    "IF": Case(chain((1,), lin(0.5), if_(1.0)), ONES, a([0], [0], [1], [0])),
    # i = 0.5 i + 0.5 x: 0.5, 0.75, 0.375, 0.1875; v = 0.5 v + i: 0.5, 1.0 (spike), 0.375, 0.375
    "CubaLIF": Case(
        chain(
            (1,),
            lin(0.5),
            nir.CubaLIF(
                tau_syn=a(2), tau_mem=a(2), r=a(2), v_leak=a(0), v_threshold=a(0.6), w_in=a(2)
            ),
        ),
        a([1], [1], [0], [0]),
        a([0], [1], [0], [0]),
    ),  # fmt: skip
    # v = 0.5 v + i with the same i: 0.5, 1.0, 0.875, 0.625
    "CubaLI": Case(
        chain(
            (1,), lin(0.5), nir.CubaLI(tau_syn=a(2), tau_mem=a(2), r=a(2), v_leak=a(0), w_in=a(2))
        ),
        a([1], [1], [0], [0]),
        a(0.625),
    ),  # fmt: skip
    # reset by subtraction: v = 0.75, 1.5 (spike, 0.5), 1.25 (spike, 0.25), 1.0 (= v_th), 1.75
    # (reset to zero would give 0, 1, 0, 1, 0)
    "IF-subtract": Case(
        chain((1,), lin(0.75), if_(1.0)),
        np.ones((5, 1)),
        a([0], [1], [1], [0], [1]),
        reset="subtract",
    ),  # fmt: skip
    # i = 0.5, 0.75, 0.875, 0.4375; v = 0.5, 1.0 (spike, 0.4), 1.075 (spike, 0.475), 0.675
    # (spike): reset to zero gives 0, 1, 1, 0
    "CubaLIF-subtract": Case(
        chain(
            (1,),
            lin(0.5),
            nir.CubaLIF(
                tau_syn=a(2), tau_mem=a(2), r=a(2), v_leak=a(0), v_threshold=a(0.6), w_in=a(2)
            ),
        ),
        a([1], [1], [1], [0]),
        a([0], [1], [1], [1]),
        reset="subtract",
    ),  # fmt: skip
    # an Affine bias into a current with memory enters it every step: i = 0.5, 0.75, 0.875,
    # 0.9375, 0.96875; v = 0.5, 1.0, 1.375 (spike), 0.9375, 1.4375 (spike). (Moved to v as its
    # steady state 1.0, as before, it fired at step 1.)
    "CubaLIF-bias": Case(
        chain(
            (1,),
            nir.Affine(weight=a([1.0]), bias=a(0.5)),
            nir.CubaLIF(
                tau_syn=a(2), tau_mem=a(2), r=a(2), v_leak=a(0), v_threshold=a(1.2), w_in=a(2)
            ),
        ),
        np.zeros((5, 1)),
        a([0], [0], [1], [0], [1]),
    ),  # fmt: skip
    # the recurrent Affine's bias arrives with its edge, from step 1 (x = 0, 0.5, 0.5, 0, 0.5):
    # i = 0, 0.5, 0.75, 0.375, 0.6875; v = 0, 0.5, 1.0 (spike), 0.375, 0.875 (spike)
    "recurrent-bias": Case(recurrent_bias(), np.zeros((5, 1)), a([0], [0], [1], [0], [1])),
    "NIRGraph": Case(nested(), ONES, a([0], [0], [1], [0])),
    # v = 1 (spike), 1 - 0.5 = 0.5 (= v_th), 1.5 (spike), 0.5
    "recurrent": Case(recurrent(), ONES, a([1], [0], [1], [0])),
}


def _float(case: Case) -> np.ndarray:
    import torch

    from spikedet.convert.nir_torch import NIRExecutor

    ex = NIRExecutor(case.graph, device="cpu", dtype=torch.float64, dt=case.dt, reset=case.reset)
    out = [n for n in ex.names if ex.kinds[n] == "Output"][0]
    (last,) = ex.forward_in[out]
    res = ex.run(torch.from_numpy(case.x[:, None].astype(np.float64)), record=True)
    if last in res.readouts:
        return res.readouts[last][0].numpy()
    return res.node_outputs[last][:, 0].numpy()


def _integer(case: Case):
    from spikedet.deploy.mapping.mapper import map_graph
    from spikedet.deploy.profiles import resolve_target
    from spikedet.deploy.quantize import quantize
    from spikedet.sim.fixed import FixedEngine

    conv = Conventions(dt=case.dt, reset=case.reset, input_scale=1.0)
    fg, info = parse_generic(case.graph, len(case.x), conv, "case")
    qg = quantize(fg, max_delay=None)
    x = case.x[:, None].reshape(len(case.x), 1, *fg.input_shape).astype(np.int64)
    res = FixedEngine().run(qg, x)
    map_graph(qg, resolve_target("loihi2-sim"))  # the mapper places it
    (last,) = info.outputs
    if last in res.readouts:
        return qg, x, res, (res.readouts[last][0] / qg.pop(last).theta).reshape(-1)
    return qg, x, res, res.spikes[last][:, 0].reshape(case.want.shape)


@pytest.mark.parametrize("name", list(CASES))
def test_primitive_float(name: str) -> None:
    case = CASES[name]
    got = _float(case)
    np.testing.assert_allclose(got.reshape(case.want.shape), case.want, atol=1e-9)


@pytest.mark.parametrize("name", list(CASES))
def test_primitive_integer(name: str) -> None:
    case = CASES[name]
    _, _, _, got = _integer(case)
    np.testing.assert_allclose(np.asarray(got, dtype=np.float64), case.want, atol=1e-9)


def li_feeds_a_neuron() -> nir.NIRGraph:  # v of a readout is not a spike a synapse carries
    return chain((1,), lin(1.0), nir.LI(tau=a(2), r=a(1), v_leak=a(0)), lin(1.0), if_(0.5))


REFUSED = {  # still no integer form: (graph, reset, what the one-line error says)
    "v_reset-not-zero": (
        chain((1,), lin(1.0), nir.IF(r=a(1), v_threshold=a(1), v_reset=a(0.5))),
        "zero",
        "v_reset=0.5",
    ),
    "negative-threshold": (
        chain((1,), lin(1.0), nir.Threshold(threshold=a(-0.5))),
        "zero",
        "not a non-negative fraction",
    ),
    "readout-as-synapse-source": (li_feeds_a_neuron(), "zero", "a readout cannot be"),
}


@pytest.mark.parametrize("name", list(REFUSED))
def test_without_integer_form_is_refused(name: str) -> None:
    graph, reset, what = REFUSED[name]
    case = Case(graph, np.ones((3, 1)), np.zeros(0), reset=reset)
    with pytest.raises(SpikedetError, match=what) as err:
        _integer(case)
    assert re.search(r"(node|population|synapse) n\d", str(err.value))  # names the node


@pytest.mark.lava
@pytest.mark.parametrize("name", list(CASES))
def test_primitive_lava_equals_fixed(name: str) -> None:
    """Lava (Loihi2SimCfg fixed_pt) gives fixed's integers; a kind or synapse it does not run
    yet (lagged synapses: Delay, recurrence) must be refused naming the synapse."""
    from spikedet.sim.interface import compare
    from spikedet.sim.registry import get_engine

    lava = get_engine("lava")
    ok, why = lava.available()
    if not ok:
        pytest.skip(why)
    qg, x, fixed, _ = _integer(CASES[name])
    try:
        result = lava.run(qg, x)
    except SpikedetError as err:
        assert any(s.lag for s in qg.synapses), err  # only lagged synapses may be refused
        assert "synapse" in str(err)
        pytest.skip(f"lava engine: {err}")
    assert compare(fixed, result)["total_mismatches"] == 0
