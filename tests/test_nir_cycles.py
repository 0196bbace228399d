"""Cycles in third-party NIR graphs (docs/semantics.md §4.1, §4.4) on hand-computed cases.

Every case is IF neurons (r = 1, dt = 1: v <- v + x, spike when v > 0.5, v <- 0), so the float
reference (``NIRExecutor``), the ``fixed`` engine and Lava must give the same spikes exactly.
The recurrent edge of a cycle (the one that returns to the node the search from the Input
reached first) delivers the previous step; a Delay on the cycle adds its steps. A cycle of k
synapses whose lags add up to less than k has no hardware schedule: float only, refused by the
integer path naming the synapse. The mapper counts lags in its delays and relays long ones.
"""

from __future__ import annotations

import nir
import numpy as np
import pytest

from spikedet.deploy.nir_generic import Conventions, parse_generic
from spikedet.errors import SpikedetError


def if_(n: int = 1, thr: float = 0.5) -> nir.IF:
    return nir.IF(r=np.ones(n, np.float32), v_threshold=np.full(n, thr, np.float32))


def lin(w) -> nir.Linear:
    w = np.asarray(w, np.float32)
    return nir.Linear(weight=w.reshape(1, 1) if w.ndim == 0 else w)


def delay(steps: float, n: int = 1) -> nir.Delay:
    return nir.Delay(delay=np.full(n, steps, np.float32))


def graph(nodes: dict, edges: list, n_in: int = 1, n_out: int = 1) -> nir.NIRGraph:
    nodes = {"input": nir.Input(input_type=np.array([n_in])), **nodes}
    nodes["output"] = nir.Output(output_type=np.array([n_out]))
    return nir.NIRGraph(nodes=nodes, edges=edges, type_check=False)


def two_cycle(where: str | None) -> nir.NIRGraph:
    """input -> a -> b -> (-1) -> a; a Delay of one step on the way back, forward, or none."""
    nodes = {"wa": lin(1.0), "a": if_(), "ab": lin(1.0), "b": if_(), "ba": lin(-1.0)}
    edges = [("input", "wa"), ("wa", "a"), ("a", "ab"), ("b", "ba"), ("b", "output")]
    if where == "back":
        nodes["d"] = delay(1)
        return graph(nodes, [*edges, ("ab", "b"), ("ba", "d"), ("d", "a")])
    if where == "forward":
        nodes["d"] = delay(1)
        return graph(nodes, [*edges, ("ab", "d"), ("d", "b"), ("ba", "a")])
    return graph(nodes, [*edges, ("ab", "b"), ("ba", "a")])


def three_cycle(steps: int) -> nir.NIRGraph:
    """input -> a -> b -> c -> Delay(steps) -> (-1) -> a: lag 1 + steps around 3 synapses."""
    nodes = {"wa": lin(1.0), "a": if_(), "ab": lin(1.0), "b": if_(), "bc": lin(1.0), "c": if_()}
    nodes |= {"d": delay(steps), "ca": lin(-1.0)}
    edges = [("input", "wa"), ("wa", "a"), ("a", "ab"), ("ab", "b"), ("b", "bc"), ("bc", "c")]
    return graph(nodes, [*edges, ("c", "d"), ("d", "ca"), ("ca", "a"), ("c", "output")])


def cubalif(n: int) -> nir.CubaLIF:
    def full(v: float) -> np.ndarray:
        return np.full(n, v, np.float32)

    return nir.CubaLIF(tau_syn=full(2), tau_mem=full(4), r=full(2), v_leak=full(0),
                       v_threshold=full(0.75), w_in=full(2))  # fmt: skip


def tangle(seed: int = 0, neuron=lambda n: if_(n, 0.75)) -> nir.NIRGraph:
    """Three populations of 3 neurons, input into a and b; loops a -> b -> c -> a (Delay 2),
    b -> c -> b (Delay 1) and b -> b (Delay 1); weights in {-1, -1/2, 0, 1/2, 1}, IF thresholds
    3/4 (exact in the integer model)."""
    rng = np.random.default_rng(seed)

    def w(o: int, i: int) -> nir.Linear:
        return lin(rng.integers(-2, 3, (o, i)) / 2)

    nodes = {"ia": w(3, 2), "ib": w(3, 2), "a": neuron(3), "b": neuron(3), "c": neuron(3)}
    nodes |= {"ab": w(3, 3), "bc": w(3, 3), "ca": w(3, 3), "cb": w(3, 3), "bb": w(3, 3)}
    nodes |= {"d2": delay(2, 3), "d1": delay(1, 3), "e1": delay(1, 3)}
    edges = [("input", "ia"), ("ia", "a"), ("input", "ib"), ("ib", "b"), ("a", "ab"), ("ab", "b")]
    edges += [("b", "bc"), ("bc", "c"), ("c", "d2"), ("d2", "ca"), ("ca", "a"), ("c", "cb")]
    edges += [("cb", "d1"), ("d1", "b"), ("b", "bb"), ("bb", "e1"), ("e1", "b"), ("c", "output")]
    return graph(nodes, edges, n_in=2, n_out=3)


ONES = np.ones((8, 1), np.float32)
# (graph, input [T, N], the spikes of each named population [T] (first neuron))
CASES = {
    # a_t = [1 - b_{t-2} > 0.5], b_t = a_t (lag 1 + Delay 1 = 2 >= 2 synapses)
    "two-back-delay": (two_cycle("back"), ONES, {"b": [1, 1, 0, 0, 1, 1, 0, 0]}),
    # a_t = [1 - b_{t-1} > 0.5], b_t = a_{t-1}: the Delay sits on the forward path
    "two-forward-delay": (
        two_cycle("forward"),
        ONES,
        {"a": [1, 1, 0, 0, 1, 1, 0, 0], "b": [0, 1, 1, 0, 0, 1, 1, 0]},
    ),
    # a_t = [1 - a_{t-3} > 0.5] (b, c copy a in the same step): period 6
    "three-delay-2": (three_cycle(2), ONES, {"c": [1, 1, 1, 0, 0, 0, 1, 1]}),
}


def _float(g: nir.NIRGraph, x: np.ndarray) -> dict[str, np.ndarray]:
    import torch

    from spikedet.convert.nir_torch import NIRExecutor

    ex = NIRExecutor(g, device="cpu", dtype=torch.float64, dt=1.0)
    res = ex.run(torch.from_numpy(x[:, None].astype(np.float64)), record=True)
    return {n: v[:, 0].numpy() for n, v in res.node_outputs.items()}


def _quantized(g: nir.NIRGraph, steps: int):
    from spikedet.deploy.quantize import quantize

    fg, _ = parse_generic(g, steps, Conventions(dt=1.0, reset="zero", input_scale=1.0), "case")
    return quantize(fg, max_delay=None)


def _fixed(qg, x: np.ndarray):
    from spikedet.sim.fixed import FixedEngine

    return FixedEngine().run(qg, x[:, None].reshape(len(x), 1, *qg.input.shape).astype(np.int64))


def test_recurrent_edge_delivers_the_previous_step_in_float() -> None:
    """No Delay: a_t = [1 - b_{t-1} > 0.5], b_t = a_t (nirtorch's convention)."""
    out = _float(two_cycle(None), ONES[:6])
    np.testing.assert_array_equal(out["a"][:, 0], [1, 0, 1, 0, 1, 0])
    np.testing.assert_array_equal(out["b"][:, 0], [1, 0, 1, 0, 1, 0])


@pytest.mark.parametrize(
    "make, loop, synapse, missing",
    [
        (lambda: two_cycle(None), "a -> b -> a", "ba->a", 1),
        (lambda: three_cycle(1), "a -> b -> c -> a", "d->a", 1),
        (lambda: three_cycle(0), "a -> b -> c -> a", "d->a", 2),
    ],
)
def test_cycle_with_too_little_lag_is_refused(make, loop: str, synapse: str, missing) -> None:
    """2 and 3 synapses with lags adding up to 1, 2 and 1: 1, 1 and 2 steps missing."""
    with pytest.raises(SpikedetError) as err:
        _quantized(make(), 6)
    text = str(err.value)
    assert f"({loop})" in text and f"add a Delay of {missing} step(s)" in text, text
    assert err.value.where == f"synapse {synapse}"


@pytest.mark.parametrize("name", list(CASES))
def test_cycle_float(name: str) -> None:
    g, x, want = CASES[name]
    out = _float(g, x)
    for pop, spikes in want.items():
        np.testing.assert_array_equal(out[pop][:, 0], spikes, err_msg=pop)


@pytest.mark.parametrize("name", list(CASES))
def test_cycle_integer(name: str) -> None:
    from spikedet.deploy.mapping.mapper import map_graph
    from spikedet.deploy.profiles import resolve_target

    g, x, want = CASES[name]
    qg = _quantized(g, len(x))
    res = _fixed(qg, x)
    for pop, spikes in want.items():
        np.testing.assert_array_equal(res.spikes[pop][:, 0].reshape(len(x), -1)[:, 0], spikes)
    for s in qg.synapses:  # every synapse's hardware delay is a real one (§3.3)
        assert s.delay >= 0, s.name
    mapping = map_graph(qg, resolve_target("loihi2-sim"))
    assert mapping.precision["delay_steps"]["after_relays"] >= 0


def test_forward_delay_in_a_cycle_keeps_both_populations_at_one_depth() -> None:
    """depth(b) >= depth(a) + 1 - lag: the forward Delay absorbs the synapse's step."""
    qg = _quantized(two_cycle("forward"), 8)
    assert {p.name: p.depth for p in qg.populations} == {"a": 1, "b": 1}
    assert {s.name: s.delay for s in qg.synapses} == {"wa->a": 0, "ba->a": 0, "ab->b": 0}


def test_tangled_cycles_float_equals_fixed() -> None:
    rng = np.random.default_rng(1)
    x = rng.integers(0, 2, (12, 2)).astype(np.float32)
    g = tangle()
    out = _float(g, x)
    res = _fixed(_quantized(g, len(x)), x)
    assert sum(int(res.spikes[p].sum()) for p in "abc") > 10  # the loops carry spikes
    for pop in "abc":
        np.testing.assert_array_equal(res.spikes[pop][:, 0].reshape(len(x), -1), out[pop], pop)


@pytest.mark.lava
@pytest.mark.parametrize("name", [*CASES, "tangle", "tangle-cubalif"])
def test_cycle_lava_equals_fixed(name: str) -> None:
    """Lava (Loihi2SimCfg fixed_pt; IF and CubaLIF on Lava's own LIF) gives fixed's integers."""
    from spikedet.sim.interface import compare
    from spikedet.sim.registry import get_engine

    lava = get_engine("lava")
    ok, why = lava.available()
    if not ok:
        pytest.skip(why)
    if name.startswith("tangle"):
        g = tangle(neuron=cubalif) if name.endswith("cubalif") else tangle()
        x = np.random.default_rng(1).integers(0, 2, (12, 2)).astype(np.float32)
    else:
        g, x, _ = CASES[name]
    qg = _quantized(g, len(x))
    fixed = _fixed(qg, x)
    result = lava.run(qg, x[:, None].reshape(len(x), 1, *qg.input.shape).astype(np.int64))
    assert sum(int(s.sum()) for s in fixed.spikes.values()) > 0
    assert compare(fixed, result)["total_mismatches"] == 0
    assert set(result.info["neuron_models"].values()) == {
        "lava.proc.lif.models.PyLifResetModelBitAcc"
    }


def delayed_chain(steps: int) -> nir.NIRGraph:
    """input -> a -> Delay(steps) -> b: b fires ``steps`` after a."""
    nodes = {"wa": lin(1.0), "a": if_(), "ab": lin(1.0), "d": delay(steps), "b": if_()}
    edges = [("input", "wa"), ("wa", "a"), ("a", "ab"), ("ab", "d"), ("d", "b"), ("b", "output")]
    return graph(nodes, edges)


@pytest.mark.parametrize("steps, needed, stages", [(5, 4, 0), (64, 63, 0), (70, 69, 1)])
def test_mapper_counts_delay_lags(steps: int, needed: int, stages: int) -> None:
    """A Delay is synaptic delay on the hardware: depth(b) = depth(a) = 1, so the synapse needs
    steps - 1 (its own step is one of them); beyond Loihi 2's 63 it is relayed (exact)."""
    from spikedet.deploy.mapping.mapper import map_graph
    from spikedet.deploy.profiles import resolve_target

    T = steps + 3
    qg = _quantized(delayed_chain(steps), T)
    mapping = map_graph(qg, resolve_target("loihi2-sim"))
    figures = mapping.precision["delay_steps"]
    assert (figures["needed"], figures["logical"], figures["available"]) == (needed, needed, 63)
    assert figures["after_relays"] == min(needed, 63)
    assert mapping.relay_stages == stages
    x = np.zeros((T, 1), np.float32)
    x[0] = 1
    spikes = _fixed(qg, x).spikes["b"].reshape(-1)
    assert np.flatnonzero(spikes).tolist() == [steps]


def wide_recurrent(with_delay: bool) -> nir.NIRGraph:
    """A population of 8 reading 5000 spiking neurons (above Loihi 2's 4096 fan-in axons: a
    fan-in split) and itself through a recurrent edge (with an optional Delay of 1)."""
    rng = np.random.default_rng(0)
    n = 5000
    nodes = {"w0": lin(np.ones((n, 1))), "src": if_(n), "w": lin(rng.integers(-2, 3, (8, n)) / 2)}
    nodes |= {"p": if_(8), "rec": lin(rng.integers(-2, 3, (8, 8)) / 2)}
    edges = [("input", "w0"), ("w0", "src"), ("src", "w"), ("w", "p"), ("p", "rec")]
    edges += [("p", "output")]
    if with_delay:
        nodes["d"] = delay(1)
        return graph(nodes, [*edges, ("rec", "d"), ("d", "p")], n_out=8)
    return graph(nodes, [*edges, ("rec", "p")], n_out=8)


def test_fan_in_split_inside_a_cycle_needs_spare_lag() -> None:
    """The split adds a hardware step to the loop p -> psum -> p: with lag 1 there is none."""
    from spikedet.deploy.mapping.mapper import map_graph
    from spikedet.deploy.profiles import resolve_target

    with pytest.raises(SpikedetError, match=r"split layer\(s\) p.*add a Delay") as err:
        map_graph(_quantized(wide_recurrent(False), 4), resolve_target("loihi2-sim"))
    assert "synapse rec->p" in str(err.value)
    mapping = map_graph(_quantized(wide_recurrent(True), 4), resolve_target("loihi2-sim"))
    layer = next(lm for lm in mapping.layers if lm.name == "p")
    assert layer.psums and mapping.precision["delay_steps"]["after_relays"] >= 0
