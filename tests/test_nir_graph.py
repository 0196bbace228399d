"""NIR (§2 encoding) -> FloatGraph parsing, malformed graphs, and quantization (§3.1, §3.3)."""

from __future__ import annotations

import json
from pathlib import Path

import nir
import numpy as np
import pytest

from spikedet.deploy.nir_graph import FloatGraph, FPopulation, FSynapse
from spikedet.deploy.nir_read import from_nir, read_nir
from spikedet.deploy.quantize import quantize
from spikedet.errors import SpikedetError
from spikedet.sim.fixed import FixedEngine
from spikedet.sim.interface import EngineResult, compare
from spikedet.sim.qgraph import QuantGraph
from spikedet.sim.reference import ReferenceEngine, agreement

DT = 1e-4


def ilif(name: str, shape: tuple, D: int = 4, beta: float = 0.25, alpha: float = 1.0):
    """The §2.2 composition of population ``name``: nodes and edges."""
    full = lambda v: np.full(shape, v, dtype=np.float64)  # noqa: E731
    nodes = {
        f"{name}.li": nir.LI(
            tau=full(DT / (1 - beta)),
            r=full(alpha / (1 - beta)),
            v_leak=full(0.0),
            metadata={"spikedet.neuron": "ilif", "D": D, "beta": beta, "alpha": alpha},
        ),
        f"{name}.reset": nir.Scale(scale=full(-beta / alpha)),
    }
    edges = []
    for k in range(1, D + 1):
        nodes[f"{name}.q{k}"] = nir.Threshold(threshold=full(k - 0.5), metadata={"spikedet.bit": k})
        edges += [(f"{name}.li", f"{name}.q{k}"), (f"{name}.q{k}", f"{name}.reset")]
    edges.append((f"{name}.reset", f"{name}.li"))
    return nodes, edges


def conv(
    weight: np.ndarray,
    hw: tuple,
    stride: int = 1,
    padding: int = 0,
    groups: int = 1,
    bias: np.ndarray | None = None,
) -> nir.Conv2d:
    bias = np.zeros(weight.shape[0]) if bias is None else bias
    node = nir.Conv2d(
        input_shape=hw,
        weight=weight,
        stride=stride,
        padding=padding,
        dilation=1,
        groups=groups,
        bias=bias,
    )
    if groups > 1:  # the NIR groups caveat: record the real input channels, patch the type
        node.metadata = {"spikedet.in_channels": weight.shape[1] * groups}
        node.input_type = {"input": np.array([weight.shape[1] * groups, *hw])}
    return node


def feed(edges: list, pop: str, D: int, target: str) -> None:
    """Edges from every q node of ``pop`` into ``target`` (a conv)."""
    edges += [(f"{pop}.q{k}", target) for k in range(1, D + 1)]


def residual_net(seed: int = 0, depthwise: bool = True, gain: float = 1.0):
    """input(2,8,8) -c0-> p0(4,8,8) -c1 s2-> p1(4,4,4) -dw-> p2 (+ c1 shortcut) -hc-> box;
    p1 -hk-> cls. c1 feeds p1.li and p2.li (membrane shortcut), so c1->p2 needs a delay."""
    rng = np.random.default_rng(seed)
    w = lambda *s: rng.normal(0, gain / np.sqrt(np.prod(s[1:])), size=s)  # noqa: E731
    nodes = {"input": nir.Input(input_type=np.array([2, 8, 8]))}
    edges = [("input", "c0"), ("c0", "p0.li"), ("c1", "p1.li"), ("c1", "p2.li")]
    for name, shape in (("p0", (4, 8, 8)), ("p1", (4, 4, 4)), ("p2", (4, 4, 4))):
        n, e = ilif(
            name, shape, beta=0.5 if name == "p1" else 0.25, alpha=0.5 if name == "p1" else 1.0
        )
        nodes.update(n)
        edges += e
    nodes["c0"] = conv(w(4, 2, 3, 3) * 60, (8, 8), padding=1, bias=rng.normal(0.3, 0.2, 4))
    nodes["c1"] = conv(w(4, 4, 3, 3), (8, 8), stride=2, padding=1, bias=rng.normal(0.2, 0.1, 4))
    if depthwise:
        nodes["dw"] = conv(w(4, 1, 3, 3), (4, 4), padding=1, groups=4)
    else:
        nodes["dw"] = conv(w(4, 4, 3, 3), (4, 4), padding=1)
    nodes["hc"] = conv(w(3, 4, 1, 1), (4, 4), bias=np.array([0.1, -0.2, 0.3]))
    nodes["hk"] = conv(w(2, 4, 1, 1), (4, 4))
    for name, c in (("box", 3), ("cls", 2)):
        nodes[name] = nir.I(r=np.full((c, 4, 4), 1 / DT), metadata={"spikedet.readout": "mean"})
        nodes[f"out_{name}"] = nir.Output(output_type=np.array([c, 4, 4]))
        edges.append((name, f"out_{name}"))
    feed(edges, "p0", 4, "c1")
    feed(edges, "p1", 4, "dw")
    feed(edges, "p1", 4, "hk")
    feed(edges, "p2", 4, "hc")
    edges += [("dw", "p2.li"), ("hc", "box"), ("hk", "cls")]
    return nodes, edges


def make_graph(nodes: dict, edges: list, T: int = 2) -> nir.NIRGraph:
    head = {"type": "dfl", "outputs": [["box", "cls"]], "strides": [2]}
    meta = {
        "spikedet.format": 1,
        "spikedet.T": T,
        "dt": DT,
        "spikedet.input_scale": 255.0,
        "spikedet.head": json.dumps(head),
    }
    return nir.NIRGraph(nodes=nodes, edges=edges, metadata=meta, type_check=False)


def test_parse_residual_depthwise_and_readouts() -> None:
    fg = from_nir(make_graph(*residual_net()))
    names = [p.name for p in fg.populations]
    assert sorted(names) == ["box", "cls", "p0", "p1", "p2"]
    assert names.index("p0") < names.index("p1") < names.index("p2") < names.index("box")
    p1 = fg.pop("p1")
    assert (p1.kind, p1.shape, p1.D) == ("ilif", (4, 4, 4), 4)
    assert p1.beta == pytest.approx(0.5, abs=1e-9) and p1.alpha == pytest.approx(0.5, abs=1e-9)
    assert fg.pop("p0").beta == pytest.approx(0.25, abs=1e-9)
    box = fg.pop("box")
    assert (box.kind, box.shape, box.alpha) == ("readout", (3, 4, 4), pytest.approx(1.0))
    syn = {s.name: (s.src, s.dst, s.groups, s.stride, s.padding) for s in fg.synapses}
    assert syn == {
        "c0->p0": ("input", "p0", 1, (1, 1), (1, 1)),
        "c1->p1": ("p0", "p1", 1, (2, 2), (1, 1)),
        "c1->p2": ("p0", "p2", 1, (2, 2), (1, 1)),
        "dw->p2": ("p1", "p2", 4, (1, 1), (1, 1)),
        "hc->box": ("p2", "box", 1, (1, 1), (0, 0)),
        "hk->cls": ("p1", "cls", 1, (1, 1), (0, 0)),
    }
    (dw,) = [s for s in fg.synapses if s.name == "dw->p2"]
    assert dw.weight.shape == (4, 1, 3, 3) and dw.in_channels == 4
    assert (fg.input_shape, fg.input_scale, fg.T) == ((2, 8, 8), 255.0, 2)
    assert fg.head["outputs"] == [["box", "cls"]]


def test_read_nir_round_trip(tmp_path: Path) -> None:
    for depthwise in (False, True):  # a depthwise conv never type-checks in nir 1.0.8
        path = tmp_path / f"net{int(depthwise)}.nir"
        nir.write(path, make_graph(*residual_net(depthwise=depthwise)))
        fg = read_nir(path)
        want = from_nir(make_graph(*residual_net(depthwise=depthwise)))
        assert [p.name for p in fg.populations] == [p.name for p in want.populations]
        for a, b in zip(fg.synapses, want.synapses):
            assert a.name == b.name and np.array_equal(a.weight, b.weight)
        assert fg.pop("p0").D == 4 and fg.head["type"] == "dfl"


def test_read_nir_bad_files(tmp_path: Path) -> None:
    with pytest.raises(SpikedetError, match="not found") as err:
        read_nir(tmp_path / "missing.nir")
    assert "missing.nir" in str(err.value)
    corrupt = tmp_path / "corrupt.nir"
    corrupt.write_bytes(b"\x89HDF\r\n this is not hdf5 at all" * 10)
    with pytest.raises(SpikedetError, match="corrupt.nir"):
        read_nir(corrupt)
    nodes, edges = residual_net(depthwise=False)
    nodes["c1"] = conv(np.ones((4, 4, 3, 3)), (6, 6), stride=2, padding=1)  # wrong input_shape
    bad = tmp_path / "badtype.nir"
    nir.write(bad, make_graph(nodes, edges))
    with pytest.raises(SpikedetError, match="type check failed"):
        read_nir(bad)


def test_full_conv_written_with_spikedet_groups_is_regrouped() -> None:
    """The exporter writes a grouped conv as its full equivalent (zeros between groups) plus
    metadata spikedet.groups, because nir 1.0.8 cannot read grouped convs back."""
    nodes, edges = residual_net()
    grouped = nodes["dw"].weight  # (4, 1, 3, 3), groups = 4
    full = np.zeros((4, 4, 3, 3))
    for c in range(4):
        full[c, c] = grouped[c, 0]
    nodes["dw"] = conv(full, (4, 4), padding=1)
    nodes["dw"].metadata = {"spikedet.groups": 4, "spikedet.in_channels": 4}
    (syn,) = [s for s in from_nir(make_graph(nodes, edges)).synapses if s.name == "dw->p2"]
    assert syn.groups == 4 and np.array_equal(syn.weight, grouped)
    nodes["dw"].weight[0, 1, 0, 0] = 0.5  # a weight between groups: not a grouped conv
    with pytest.raises(SpikedetError, match="outside the groups") as err:
        from_nir(make_graph(nodes, edges))
    assert "node dw" in str(err.value)


def _drop(edges: list, *gone: tuple) -> list:
    return [e for e in edges if e not in gone]


def _malformed(case: str):
    nodes, edges = residual_net()
    if case == "cubalif":
        nodes["extra"] = nir.CubaLIF(
            tau_syn=np.ones(3),
            tau_mem=np.ones(3),
            r=np.ones(3),
            v_leak=np.zeros(3),
            v_threshold=np.ones(3),
        )
    elif case == "flatten":
        nodes["extra"] = nir.Flatten(input_type={"input": np.array([4, 4, 4])})
        edges.append(("hc", "extra"))
    elif case == "partial_q":
        edges = _drop(edges, ("p1.q2", "dw"))
    elif case == "threshold":
        nodes["p1.q2"] = nir.Threshold(threshold=np.full((4, 4, 4), 1.6))
    elif case == "no_reset":
        del nodes["p0.reset"]
        edges = [e for e in edges if "p0.reset" not in e]
    elif case == "nan":
        nodes["c1"].weight[0, 0, 0, 0] = np.nan
    elif case == "shape":
        nodes["c0"] = conv(np.ones((4, 2, 3, 3)), (8, 8), stride=2, padding=1)
    elif case == "no_input":
        del nodes["input"]
        edges = [e for e in edges if e[0] != "input"]
    elif case == "cycle":
        nodes["back"] = conv(np.ones((4, 4, 1, 1)), (4, 4))
        feed(edges, "p2", 4, "back")
        edges.append(("back", "p1.li"))
    elif case == "tau":
        nodes["p0.li"].tau[0, 0, 0] *= 1.5
    elif case == "beta_meta":
        nodes["p0.li"].metadata["beta"] = 0.3
    elif case == "two_pops":
        edges.append(("p0.q1", "hc"))
    elif case == "no_meta":
        nodes["p2.li"].metadata = {}
    elif case == "input_to_li":
        edges.append(("input", "p0.li"))
    return nodes, edges


@pytest.mark.parametrize(
    ("case", "node", "words"),
    [
        ("cubalif", "extra", "unsupported NIR node type CubaLIF"),
        ("flatten", "extra", "unsupported NIR node type Flatten"),
        ("partial_q", "dw", "3 of the 4 Threshold nodes"),
        ("threshold", "p1.q2", "not k - 0.5"),
        ("no_reset", "p0.li", "reset Scale"),
        ("nan", "c1", "NaN"),
        ("shape", "c0", "output (4, 4, 4) != population (4, 8, 8)"),
        ("no_input", None, "exactly one Input"),
        ("cycle", "p1.li", "cycle through p1, p2"),
        ("tau", "p0.li", "varies across neurons"),
        ("beta_meta", "p0.li", "disagrees"),
        ("two_pops", "hc", "reads 2 populations"),
        ("no_meta", "p2.li", "spikedet.neuron"),
        ("input_to_li", "p0.li", "only convs and the reset"),
    ],
)
def test_malformed_graphs(case: str, node: str | None, words: str) -> None:
    with pytest.raises(SpikedetError) as err:
        from_nir(make_graph(*_malformed(case)), where="m.nir")
    text = err.value.one_line()
    assert words in text and "\n" not in text
    assert (f"node {node})" in text) if node else text.endswith("(m.nir)")


def _small_float_graph() -> FloatGraph:
    """input (1,1,2) -> a -> b (+ input shortcut) -> r, by hand."""
    return FloatGraph(
        input_shape=(2, 1, 1),
        input_scale=255,
        T=2,
        populations=[
            FPopulation("a", "ilif", (1, 1, 1), D=4, beta=0.25, alpha=0.5),
            FPopulation("b", "ilif", (2, 1, 1), D=2, beta=0.5, alpha=1.0),
            FPopulation("r", "readout", (1, 1, 1), alpha=1.0),
        ],
        synapses=[
            FSynapse("sa", "input", "a", np.array([0.5, -0.25]).reshape(1, 2, 1, 1), [0.3]),
            FSynapse("sb", "a", "b", np.array([0.7, -0.35]).reshape(2, 1, 1, 1), [0.1, 0.2]),
            FSynapse("sx", "input", "b", np.full((2, 2, 1, 1), 51.0), [0.05, -0.025]),
            FSynapse("sr", "b", "r", np.array([2.0, -1.0]).reshape(1, 2, 1, 1), [0.25]),
        ],
    )


def test_quantize_by_hand() -> None:
    qg = quantize(_small_float_graph())
    a, b, r = qg.populations
    # a: folded weights 0.5*0.5/255, -0.25*0.5/255; sigma = 127*510/0.5 = 129540 -> theta 129540
    # W_q = 0.25*508 = 127 and -0.125*508 = -63.5 -> -64 (half to even); b = 0.15*129540 = 19431
    assert a.theta == 129540 and qg.synapses[0].weight.ravel().tolist() == [127, -64]
    assert a.bias.tolist() == [19431] and (a.dv, a.D) == (3072, 4)
    # b: peak over sb (0.7) and sx (51/255 = 0.2): sigma = 127/0.7 = 181.43 -> theta 180;
    # W = 0.7*180 = 126, -0.35*180 = -63; shortcut 0.2*180 = 36; bias (0.1+0.05)*180 = 27,
    # (0.2-0.025)*180 = 31.5 -> 32 (half to even)
    assert b.theta == 180 and b.dv == 2048
    assert qg.synapses[1].weight.ravel().tolist() == [126, -63]
    assert qg.synapses[2].weight.ravel().tolist() == [36] * 4 and b.bias.tolist() == [27, 32]
    # readout: sigma = 127/2 = 63.5 -> theta 62; W = 124, -62; bias 0.25*62 = 15.5 -> 16
    assert (r.theta, r.dv, r.D, r.bias.tolist()) == (62, 0, 0, [16])
    assert qg.synapses[3].weight.ravel().tolist() == [124, -62]
    assert qg.message_bits == 3 and qg.T == 2 and qg.input.scale == 255
    assert [p.depth for p in qg.populations] == [1, 2, 3]
    assert [s.delay for s in qg.synapses] == [0, 0, 1, 0]
    assert a.metadata["beta"] == 0.25 and a.metadata["scale"] == 129540.0


def test_quantize_residual_depths_delays_and_limits(tmp_path: Path) -> None:
    fg = from_nir(make_graph(*residual_net()))
    qg = quantize(fg)
    depth = {p.name: p.depth for p in qg.populations}
    assert depth == {"p0": 1, "p1": 2, "p2": 3, "box": 4, "cls": 3}
    delay = {s.name: s.delay for s in qg.synapses}
    assert delay == {"c0->p0": 0, "c1->p1": 0, "c1->p2": 1, "dw->p2": 0, "hc->box": 0, "hk->cls": 0}
    assert qg.hw_steps == 4 + 2
    for p in qg.populations:  # theta > sigma - 2: each population's peak weight nearly fills 8 bits
        peak = max(int(np.abs(s.weight).max()) for s in qg.incoming(p.name))
        assert 120 <= peak <= 127, p.name
    with pytest.raises(SpikedetError, match="limit of 0") as err:
        quantize(fg, max_delay=0)
    assert "c1->p2" in str(err.value)
    with pytest.raises(SpikedetError, match="not supported"):
        quantize(fg, state_bits=16)
    with pytest.raises(SpikedetError, match="needs more than 24-bit state") as err:
        quantize(_small_float_graph(), weight_bits=16)  # theta of a would be 33,422,340
    assert "population a" in str(err.value)
    qg.save(tmp_path / "q.npz")
    again = QuantGraph.load(tmp_path / "q.npz")
    assert again.metadata["head"]["type"] == "dfl" and again.pop("p1").theta == qg.pop("p1").theta


def float_conv(x: np.ndarray, syn: FSynapse) -> np.ndarray:
    """Cross-correlation [N, Cin, H, W] -> [N, Cout, H', W'] by loops over kernel offsets."""
    n, _, h, w = x.shape
    cout, cin_g, kh, kw = syn.weight.shape
    (sh, sw), (ph, pw) = syn.stride, syn.padding
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    ho, wo = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
    out = np.zeros((n, cout, ho, wo))
    g_out = cout // syn.groups
    for co in range(cout):
        chans = slice((co // g_out) * cin_g, (co // g_out + 1) * cin_g)
        for i in range(kh):
            for j in range(kw):
                patch = xp[:, chans, i : i + sh * (ho - 1) + 1 : sh, j : j + sw * (wo - 1) + 1 : sw]
                out[:, co] += np.einsum("nchw,c->nhw", patch, syn.weight[co, :, i, j])
    return out + syn.bias[None, :, None, None]


def float_run(fg: FloatGraph, x: np.ndarray) -> tuple[dict, dict]:
    """§1.1 in float: u = beta*(u - s) + alpha*x, s = round_half_even(clip(u, 0, D))."""
    t_steps, batch = x.shape[:2]
    outs = {"input": x}
    spikes, readouts = {}, {}
    for p in fg.populations:
        cur = 0.0
        for s in fg.synapses:
            if s.dst == p.name:
                src = outs[s.src]
                cur = cur + float_conv(src.reshape(-1, *src.shape[2:]), s).reshape(
                    t_steps, batch, *p.shape
                )
        if p.kind == "readout":
            readouts[p.name] = (p.alpha * cur).sum(0) / t_steps
            continue
        u = s_prev = np.zeros((batch, *p.shape))
        out = np.zeros((t_steps, batch, *p.shape))
        for t in range(t_steps):
            u = p.beta * (u - s_prev) + p.alpha * cur[t]
            s_prev = out[t] = np.round(np.clip(u, 0, p.D))
        spikes[p.name] = outs[p.name] = out
    return spikes, readouts


def test_float_vs_integer_agreement() -> None:
    fg = from_nir(make_graph(*residual_net(seed=5, gain=1.5), T=3))
    qg = quantize(fg)
    rng = np.random.default_rng(7)
    x_int = rng.integers(0, 256, size=(3, 4, 2, 8, 8))
    got = FixedEngine().run(qg, x_int)
    spikes, readouts = float_run(fg, x_int / 255.0)
    equal = sum(int(np.count_nonzero(spikes[n] == got.spikes[n])) for n in spikes)
    total = sum(v.size for v in spikes.values())
    active = sum(int(np.count_nonzero(v)) for v in spikes.values()) / total
    print(f"float-vs-integer spike agreement {equal / total:.4f} (active {active:.2f})")
    assert 0.2 < active < 0.9  # a meaningful test: neither silent nor saturated
    assert equal / total >= 0.95
    for name, ref in readouts.items():
        q = got.readouts[name] / (qg.pop(name).theta * qg.T)
        assert np.abs(q - ref).mean() <= 0.05 * np.abs(ref).mean(), name


def test_reference_engine_matches_float_numpy_and_agreement(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    path = tmp_path / "net.nir"  # depthwise inside: exercises load_nir's type-check fallback
    nir.write(path, make_graph(*residual_net(seed=5, gain=1.5), T=3))
    fg = read_nir(path)
    qg = quantize(fg)
    x_int = np.random.default_rng(8).integers(0, 256, size=(3, 2, 2, 8, 8))
    ref = ReferenceEngine(path, device="cpu")
    assert ref.available() == (True, "cpu")
    spikes, readouts = ref.run_float(x_int / 255.0)
    one_by_one = ref.run_float(x_int / 255.0, batch=1)  # chunked over the batch: same numbers
    assert all(np.array_equal(one_by_one[0][n], v) for n, v in spikes.items())
    assert all(np.allclose(one_by_one[1][n], v, atol=1e-6) for n, v in readouts.items())
    want_spikes, want_readouts = float_run(fg, x_int / 255.0)
    for name, want in want_spikes.items():  # torch float32 vs numpy float64: ties aside, equal
        assert spikes[name].dtype == np.int8 and np.mean(spikes[name] == want) >= 0.99, name
    for name, want in want_readouts.items():
        assert readouts[name].dtype == np.float32
        assert np.allclose(readouts[name], want, atol=1e-3), name
    fixed = FixedEngine().run(qg, x_int)
    report = agreement(qg, spikes, fixed, readouts)
    assert report["missing"] == [] and set(report["readouts"]) == {"box", "cls"}
    assert report["overall"]["spike_equal_fraction"] >= 0.95
    for name, r in report["readouts"].items():  # measured: 1.6 % (cls) and 5.8 % (box)
        assert r["mean_abs_err"] <= 0.1 * r["ref_abs_mean"] and r["max_abs_err"] < 1.0, name
    as_engine = ref.run(qg, x_int)  # the Engine interface: readouts in integer units of qg
    assert as_engine.engine == "reference" and compare(as_engine, fixed)["total_mismatches"] > 0
    assert all(np.array_equal(as_engine.spikes[n], s) for n, s in spikes.items())
    for name, value in as_engine.readouts.items():
        scaled = readouts[name].astype(np.float64) * qg.pop(name).theta * qg.T
        assert value.dtype == np.int64 and np.allclose(value, scaled, rtol=1e-6, atol=1), name


def test_agreement_synthetic_numbers() -> None:
    qg = quantize(_small_float_graph())  # readout r: theta 62, T = 2
    s_a = np.array([0, 1, 2, 3]).reshape(2, 2, 1, 1, 1)
    s_b = np.zeros((2, 2, 2, 1, 1), dtype=np.int64)
    fixed = EngineResult(
        spikes={"a": s_a, "b": s_b},
        readouts={"r": np.array([620, -124]).reshape(2, 1, 1, 1)},  # floats 5.0 and -1.0
        wall_s=0.0,
        engine="fixed",
    )
    ref_a = s_a.copy()
    ref_a[1, 1] = 1  # one value of 12 differs, by 2
    ref_r = np.array([5.5, -1.0], dtype=np.float32).reshape(2, 1, 1, 1)
    report = agreement(qg, {"a": ref_a, "b": s_b}, fixed, {"r": ref_r})
    assert report["populations"]["a"] == {"equal_fraction": 0.75, "mean_abs_diff": 0.5, "values": 4}
    assert report["populations"]["b"]["equal_fraction"] == 1.0
    assert report["overall"]["spike_equal_fraction"] == pytest.approx(11 / 12)
    assert report["overall"]["spike_mean_abs_diff"] == pytest.approx(2 / 12)
    assert report["readouts"]["r"]["max_abs_err"] == pytest.approx(0.5)
    assert report["readouts"]["r"]["mean_abs_err"] == pytest.approx(0.25)
    assert agreement(qg, {"a": ref_a}, fixed, {})["missing"] == ["b", "r"]


def test_exported_spikeyolo_pico_parses_and_runs(tmp_path: Path) -> None:
    """The real exporter's output (grouped convs written full, float32 tau/r) end to end."""
    pytest.importorskip("torch")
    registry = pytest.importorskip("spikedet.train.models.registry")
    from spikedet.convert.nir_export import trace_model, write_nir

    graph, builder = trace_model(registry.build_model("spikeyolo-pico", T=2), 64)
    write_nir(graph, tmp_path / "pico.nir")
    fg = read_nir(tmp_path / "pico.nir")
    ilif = {p.name for p in fg.populations if p.kind == "ilif"}
    assert ilif == set(builder.populations) and {p.beta for p in fg.populations} >= {0.25}
    head = [r for pair in fg.head["outputs"] for r in pair]
    assert sorted(p.name for p in fg.populations if p.kind == "readout") == sorted(head)
    assert any(s.groups > 1 and s.weight.shape[1] == 1 for s in fg.synapses)  # regrouped
    qg = quantize(fg)
    assert max(s.delay for s in qg.synapses) > 0
    x = np.random.default_rng(0).integers(0, 256, size=(1, *qg.input.shape))
    result = FixedEngine().run(qg, x)
    assert set(result.spikes) == ilif and set(result.readouts) == set(head)
