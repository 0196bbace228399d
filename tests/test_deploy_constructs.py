"""The NIR format-2 constructs on the deploy side (docs/semantics.md §2.5-2.8, §3.2): EMS LIF
populations, max-pool populations, channel ranges (out_offset) and upsampled synapses, from a
hand-built NIR graph through the parser, the quantizer, the fixed engine (against an
independent float model of §1-§2) and the Lava engine (bit-exact with fixed); parser errors."""

from __future__ import annotations

import json
from pathlib import Path

import nir
import numpy as np
import pytest

from spikedet.deploy.nir_graph import FloatGraph
from spikedet.deploy.nir_read import from_nir, read_nir
from spikedet.deploy.quantize import lif_theta, quantize
from spikedet.errors import SpikedetError
from spikedet.sim.fixed import FixedEngine
from spikedet.sim.interface import compare
from spikedet.sim.qgraph import QuantGraph
from tests.test_nir_graph import DT, conv, feed, ilif

FULL = {"spikedet.format": 2, "dt": DT, "spikedet.input_scale": 255.0}


def lif(name: str, shape: tuple, beta: float = 0.25, vth: float = 0.5) -> dict:
    """§2.5: ``name.lif`` with tau = dt/(1 - beta), r = 1/(1 - beta) (so alpha = 1)."""
    full = lambda v: np.full(shape, v, dtype=np.float64)  # noqa: E731
    meta = {"spikedet.neuron": "lif", "beta": beta, "threshold": vth}
    node = nir.LIF(
        tau=full(DT / (1 - beta)),
        r=full(1 / (1 - beta)),
        v_leak=full(0.0),
        v_threshold=full(vth),
        v_reset=full(0.0),
        metadata=meta,
    )
    return {f"{name}.lif": node}


def maxpool(name: str, levels: list[str], out_shape: tuple, k: int, s: int, p: int):
    """§2.7b: per level k, levels[k-1] -> name.pool{k} (SumPool2d) -> name.q{k} (Threshold ½)."""
    nodes, edges = {}, []
    for bit, src in enumerate(levels, start=1):
        nodes[f"{name}.pool{bit}"] = nir.SumPool2d(
            kernel_size=np.array([k, k]), stride=np.array([s, s]), padding=np.array([p, p])
        )
        nodes[f"{name}.q{bit}"] = nir.Threshold(
            threshold=np.full(out_shape, 0.5),
            metadata={"spikedet.neuron": "maxpool", "spikedet.bit": bit},
        )
        edges += [(src, f"{name}.pool{bit}"), (f"{name}.pool{bit}", f"{name}.q{bit}")]
    return nodes, edges


def upsample(hw: tuple, scale: int = 2) -> nir.SumPool2d:
    """§2.8: kernel 1, stride 1, padding (f-1)*(H, W)/2 so the type is (C, fH, fW)."""
    pad = np.array([(scale - 1) * hw[0] // 2, (scale - 1) * hw[1] // 2])
    return nir.SumPool2d(
        kernel_size=np.array([1, 1]),
        stride=np.array([1, 1]),
        padding=pad,
        metadata={"spikedet.op": "upsample_nearest", "spikedet.scale": scale},
    )


def ranged(weight: np.ndarray, bias: np.ndarray, offset: int, rows: int, hw, **kw) -> nir.Conv2d:
    """§2.7: the compact conv embedded in ``rows`` output rows at ``offset`` (zeros elsewhere)."""
    full_w = np.zeros((rows, *weight.shape[1:]))
    full_w[offset : offset + weight.shape[0]] = weight
    full_b = np.zeros(rows)
    full_b[offset : offset + weight.shape[0]] = bias
    node = conv(full_w, hw, bias=full_b, **kw)
    node.metadata = {"spikedet.out_offset": offset, "spikedet.out_channels": weight.shape[0]}
    return node


def construct_net(seed: int = 0):
    """input (2,8,8) -c0-> a (I-LIF D=2, 4x8x8) -c1 s2-> b (LIF 4x4x4); m = maxpool3/1/1(a),
    m2 = maxpool2/2(m), n = maxpool2/2(b); cat (I-LIF D=3, 6x8x8) = [ca(m) (4 ch), up2(cb(b))
    (2 ch)]; d (LIF 4x4x4) = cd(m2) + up2(cn(n)); readouts box <- cat, cls <- d."""
    rng = np.random.default_rng(seed)
    w = lambda *s: rng.normal(0, 1.6 / np.sqrt(np.prod(s[1:])), size=s)  # noqa: E731
    b = lambda n: rng.normal(0.2, 0.2, n)  # noqa: E731
    nodes = {"input": nir.Input(input_type=np.array([2, 8, 8]))}
    edges = [("input", "c0"), ("c0", "a.li"), ("c1", "b.lif"), ("ca", "cat.li")]
    edges += [("cb", "cb.up2"), ("cb.up2", "cat.li"), ("cd", "d.lif"), ("cn", "cn.up2")]
    edges += [("cn.up2", "d.lif"), ("hb", "box"), ("hc", "cls")]
    for name, shape, D in (("a", (4, 8, 8), 2), ("cat", (6, 8, 8), 3)):
        n, e = ilif(name, shape, D=D)
        nodes.update(n)
        edges += e
    nodes.update(lif("b", (4, 4, 4)))
    nodes.update(lif("d", (4, 4, 4), beta=0.5, vth=0.75))
    for name, levels, shape, k, s, p in (
        ("m", ["a.q1", "a.q2"], (4, 8, 8), 3, 1, 1),
        ("m2", ["m.q1", "m.q2"], (4, 4, 4), 2, 2, 0),
        ("n", ["b.lif"], (4, 2, 2), 2, 2, 0),
    ):
        n, e = maxpool(name, levels, shape, k, s, p)
        nodes.update(n)
        edges += e
    nodes["c0"] = conv(w(4, 2, 3, 3) * 60, (8, 8), padding=1, bias=b(4))
    nodes["c1"] = conv(w(4, 4, 3, 3), (8, 8), stride=2, padding=1, bias=b(4))
    nodes["ca"] = ranged(w(4, 4, 1, 1), b(4), 0, 6, (8, 8))
    nodes["cb"] = ranged(w(2, 4, 3, 3), b(2), 4, 6, (4, 4), padding=1)
    nodes["cb.up2"] = upsample((4, 4))
    nodes["cd"] = conv(w(4, 4, 3, 3), (4, 4), padding=1, bias=b(4))
    nodes["cn"] = conv(w(4, 4, 1, 1), (2, 2), bias=b(4))
    nodes["cn.up2"] = upsample((2, 2))
    nodes["hb"] = conv(w(3, 6, 1, 1), (8, 8))
    nodes["hc"] = conv(w(2, 4, 1, 1), (4, 4))
    feed(edges, "m", 2, "ca")
    feed(edges, "m2", 2, "cd")
    feed(edges, "cat", 3, "hb")
    feed(edges, "a", 2, "c1")
    edges += [("b.lif", "cb"), ("n.q1", "cn"), ("d.lif", "hc")]
    for name, shape in (("box", (3, 8, 8)), ("cls", (2, 4, 4))):
        nodes[name] = nir.I(r=np.full(shape, 1 / DT), metadata={"spikedet.readout": "mean"})
        nodes[f"out_{name}"] = nir.Output(output_type=np.array(shape))
        edges.append((name, f"out_{name}"))
    return nodes, edges


def make_graph(nodes: dict, edges: list, T: int = 3, **meta) -> nir.NIRGraph:
    head = {"type": "dfl", "nc": 2, "reg_max": 1, "imgsz": 8, "strides": [1, 2]}
    head["outputs"] = [["box", "box"], ["cls", "cls"]]
    metadata = {**FULL, "spikedet.T": T, "spikedet.head": json.dumps(head)}
    metadata["spikedet.extensions"] = json.dumps(["upsample_nearest"])
    metadata.update(meta)
    return nir.NIRGraph(nodes=nodes, edges=edges, metadata=metadata, type_check=False)


# ---- an independent float model of §1-§2 (numpy, loops over kernel offsets) -----------------
def float_conv(x: np.ndarray, weight: np.ndarray, stride, padding) -> np.ndarray:
    n, _, h, w = x.shape
    cout, _, kh, kw = weight.shape
    (sh, sw), (ph, pw) = stride, padding
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    ho, wo = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
    out = np.zeros((n, cout, ho, wo))
    for i in range(kh):
        for j in range(kw):
            patch = xp[:, :, i : i + sh * (ho - 1) + 1 : sh, j : j + sw * (wo - 1) + 1 : sw]
            out += np.einsum("nchw,oc->nohw", patch, weight[:, :, i, j])
    return out


def float_run(fg: FloatGraph, x: np.ndarray) -> tuple[dict, dict]:
    """I-LIF u = β(u − s) + αx, s = round(clip(u, 0, D)); LIF u = β·u·(1 − s) + αx, s = [u > V_th];
    maxpool of the source's spikes at the same step; readouts time-averaged (§1, §2)."""
    t_steps, batch = x.shape[:2]
    outs, spikes, readouts = {"input": x}, {}, {}
    for p in fg.populations:
        if p.kind == "maxpool":
            src = outs[p.src]
            (k, _), (s, _), (pad, _) = p.pool_kernel, p.pool_stride, p.pool_padding
            xp = np.pad(src, ((0, 0), (0, 0), (0, 0), (pad, pad), (pad, pad)))
            out = np.zeros((t_steps, batch, *p.shape))
            for i in range(p.shape[1]):
                for j in range(p.shape[2]):
                    window = xp[..., i * s : i * s + k, j * s : j * s + k]
                    out[..., i, j] = window.max(axis=(-2, -1))
            spikes[p.name] = outs[p.name] = out
            continue
        cur = np.zeros((t_steps, batch, *p.shape))
        for syn in (s for s in fg.synapses if s.dst == p.name):
            src = outs[syn.src]
            part = float_conv(src.reshape(-1, *src.shape[2:]), syn.weight, syn.stride, syn.padding)
            part = part + syn.bias[None, :, None, None]
            part = np.repeat(np.repeat(part, syn.upsample, axis=2), syn.upsample, axis=3)
            o = syn.out_offset
            cur[:, :, o : o + part.shape[1]] += part.reshape(t_steps, batch, *part.shape[1:])
        if p.kind == "readout":
            readouts[p.name] = p.alpha * cur.sum(0) / t_steps
            continue
        u = s_prev = np.zeros((batch, *p.shape))
        out = np.zeros((t_steps, batch, *p.shape))
        for t in range(t_steps):
            if p.kind == "lif":
                u = p.beta * u * (1 - s_prev) + p.alpha * cur[t]
                s_prev = out[t] = (u > p.threshold).astype(np.float64)
            else:
                u = p.beta * (u - s_prev) + p.alpha * cur[t]
                s_prev = out[t] = np.round(np.clip(u, 0, p.D))
        spikes[p.name] = outs[p.name] = out
    return spikes, readouts


# ---- parsing ---------------------------------------------------------------------------------
def test_parse_constructs(tmp_path: Path) -> None:
    path = tmp_path / "constructs.nir"
    nir.write(path, make_graph(*construct_net()))
    fg = read_nir(path)  # the file type-checks (SumPool2d types, LIF shapes)
    kinds = {p.name: (p.kind, p.shape, p.D) for p in fg.populations}
    assert kinds == {
        "a": ("ilif", (4, 8, 8), 2),
        "b": ("lif", (4, 4, 4), 1),
        "m": ("maxpool", (4, 8, 8), 2),
        "m2": ("maxpool", (4, 4, 4), 2),
        "n": ("maxpool", (4, 2, 2), 1),
        "cat": ("ilif", (6, 8, 8), 3),
        "d": ("lif", (4, 4, 4), 1),
        "box": ("readout", (3, 8, 8), 0),
        "cls": ("readout", (2, 4, 4), 0),
    }
    order = [p.name for p in fg.populations]
    assert order.index("m") < order.index("m2") < order.index("d")
    m2, n, d = fg.pop("m2"), fg.pop("n"), fg.pop("d")
    assert (m2.src, m2.pool_kernel, m2.pool_stride, m2.pool_padding) == (
        "m",
        (2, 2),
        (2, 2),
        (0, 0),
    )
    assert (n.src, fg.pop("m").pool_padding) == ("b", (1, 1))
    assert (d.beta, d.threshold, d.alpha) == (0.5, 0.75, pytest.approx(1.0))
    syn = {s.name: (s.src, s.dst, s.out_offset, s.upsample, s.weight.shape) for s in fg.synapses}
    assert syn["ca->cat"] == ("m", "cat", 0, 1, (4, 4, 1, 1))
    assert syn["cb.up2->cat"] == ("b", "cat", 4, 2, (2, 4, 3, 3))
    assert syn["cn.up2->d"] == ("n", "d", 0, 2, (4, 4, 1, 1))
    nodes, _ = construct_net()
    (cb,) = [s for s in fg.synapses if s.name == "cb.up2->cat"]
    assert np.array_equal(cb.weight, nodes["cb"].weight[4:6]) and cb.bias.shape == (2,)


def test_quantize_constructs_and_save_load(tmp_path: Path) -> None:
    qg = quantize(from_nir(make_graph(*construct_net())))
    depth = {p.name: p.depth for p in qg.populations}
    # a 1, b 2, m = a + 1, m2 = m + 1, n = b + 1; cat reads m (3) and b (2) -> 4; d reads m2
    # (4) and n (3) -> 5; box 5, cls 6
    assert depth == {"a": 1, "b": 2, "m": 2, "m2": 3, "n": 3, "cat": 3, "d": 4, "box": 4, "cls": 5}
    delay = {s.name: s.delay for s in qg.synapses}
    assert delay["cb.up2->cat"] == 0 and delay["cn.up2->d"] == 0 and delay["ca->cat"] == 0
    b, d, m = qg.pop("b"), qg.pop("d"), qg.pop("m")
    assert b.theta % 2 == 0 and b.vth == b.theta // 2 and b.D == 1 and b.dv == 3072
    assert d.theta % 4 == 0 and d.vth * 4 == 3 * d.theta  # V_th = 3/4: theta multiple of 4
    assert (m.theta, m.D, m.src, m.bias.tolist()) == (0, 2, "a", [0] * 4)
    cat = qg.pop("cat")  # the biases of ca (channels 0..3) and cb (4, 5) land in their range
    fg = from_nir(make_graph(*construct_net()))
    want = np.zeros(6)
    for s in fg.synapses:
        if s.dst == "cat":
            want[s.out_offset : s.out_offset + s.bias.size] += s.bias
    assert cat.bias.tolist() == np.rint(want * cat.theta).astype(int).tolist()
    assert qg.message_bits == 2  # max D = 3
    qg.save(tmp_path / "q.npz")
    again = QuantGraph.load(tmp_path / "q.npz")
    for p, q in zip(qg.populations, again.populations):
        assert (p.kind, p.vth, p.src, p.pool_kernel, p.pool_padding, p.depth) == (
            q.kind, q.vth, q.src, q.pool_kernel, q.pool_padding, q.depth,
        )  # fmt: skip
    for s, t in zip(qg.synapses, again.synapses):
        assert (s.out_offset, s.upsample, s.delay) == (t.out_offset, t.upsample, t.delay)
    x = np.random.default_rng(0).integers(0, 256, (2, 2, 8, 8))
    assert compare(FixedEngine().run(qg, x), FixedEngine().run(again, x))["total_mismatches"] == 0


def test_lif_theta_rule() -> None:
    assert lif_theta(181.4, 0.5, "p") == (180, 90)  # the I-LIF rule: 2 floor(sigma / 2)
    assert lif_theta(181.4, 0.3, "p") == (180, 54)  # 3/10: multiples of lcm(2, 10) = 10
    assert lif_theta(181.4, 1 / 3, "p") == (180, 60)  # 1/3: multiples of 6
    assert lif_theta(181.4, np.float32(0.7), "p") == (180, 126)  # float32 noise tolerated
    assert lif_theta(100.0, 0.25, "p") == (100, 25)
    with pytest.raises(SpikedetError, match="not a fraction") as err:
        lif_theta(181.4, 2**0.5 - 1, "population p")  # best q <= 256: 70/169, 1.3e-5 off
    assert err.value.where == "population p"
    with pytest.raises(SpikedetError, match="multiple of 510"):
        lif_theta(181.4, 1 / 255, "population p")


def test_fixed_engine_follows_the_float_model() -> None:
    fg = from_nir(make_graph(*construct_net(seed=3)))
    qg = quantize(fg)
    x_int = np.random.default_rng(5).integers(0, 256, size=(3, 4, 2, 8, 8))
    got = FixedEngine().run(qg, x_int)
    spikes, readouts = float_run(fg, x_int / 255.0)
    assert set(got.spikes) == set(spikes) and set(got.readouts) == set(readouts)
    for name, ref in spikes.items():
        equal = float(np.mean(ref == got.spikes[name]))
        active = float(np.mean(got.spikes[name] > 0))
        print(f"{name}: equal {equal:.3f}, active {active:.2f}")
        assert 0.05 < active < 0.95, name  # neither silent nor saturated
        assert equal >= 0.93, name
    for name, ref in readouts.items():
        q = got.readouts[name] / (qg.pop(name).theta * qg.T)
        assert np.abs(q - ref).mean() <= 0.06 * np.abs(ref).mean(), name


def test_lif_hard_reset_by_hand() -> None:
    """theta 4, vth 2 (V_th ½), dv 2048 (β ½): u = decay(u·(1 − s)) + a + b."""
    from spikedet.sim.qgraph import QInput, QPopulation, QSynapse

    pop = QPopulation("n", "lif", (1, 1, 1), 4, [0], depth=1, D=1, dv=2048, vth=2)
    syn = QSynapse("s", "input", "n", np.ones((1, 1, 1, 1)))
    qg = QuantGraph(T=5, input=QInput((1, 1, 1), 1), populations=[pop], synapses=[syn])
    # u: 2 (not > 2) -> 0; 1 + 3 = 4 -> 1; reset: 0 + 2 = 2 -> 0; 1 + 0 = 1 -> 0; 0 + 7 -> 1
    x = np.array([2, 3, 2, 0, 7]).reshape(5, 1, 1, 1, 1)
    assert FixedEngine().run(qg, x).spikes["n"].ravel().tolist() == [0, 1, 0, 0, 1]


# ---- malformed graphs ------------------------------------------------------------------------
def _malformed(case: str):
    nodes, edges = construct_net()
    meta: dict = {}
    if case == "loose_sumpool":
        nodes["x"] = nir.SumPool2d(np.array([1, 1]), np.array([1, 1]), np.array([0, 0]))
        edges = [e for e in edges if e != ("cd", "d.lif")] + [("cd", "x"), ("x", "d.lif")]
    elif case == "upsample_two_convs":
        nodes["ce"] = conv(np.ones((6, 4, 3, 3)), (4, 4), padding=1)
        edges += [("b.lif", "ce"), ("ce", "cb.up2")]
    elif case == "offset_rows":
        nodes["ca"].weight[5, 0, 0, 0] = 0.1
    elif case == "offset_bias":
        nodes["cb"].bias[0] = 0.1
    elif case == "lif_reset":
        nodes["b.lif"].v_reset[:] = 0.1
    elif case == "lif_tau":
        nodes["d.lif"].tau[0, 0, 0] *= 1.5
    elif case == "lif_threshold_meta":
        nodes["b.lif"].metadata["threshold"] = 0.6
    elif case == "max_pool":
        nodes["n.pool1"].metadata = {"spikedet.op": "max_pool", "spikedet.kernel": 2}
        meta["spikedet.extensions"] = json.dumps(["upsample_nearest", "max_pool"])
    elif case == "unlisted":
        meta["spikedet.extensions"] = "[]"
    elif case == "unknown_op":
        nodes["cn.up2"].metadata["spikedet.op"] = "resize_bilinear"
    elif case == "format1":
        meta["spikedet.format"] = 1
    elif case == "maxpool_threshold":
        nodes["m.q2"].threshold[:] = 1.5
    elif case == "maxpool_levels":
        del nodes["m.q2"], nodes["m.pool2"], nodes["m2.q2"], nodes["m2.pool2"]
        edges = [e for e in edges if not {"m.q2", "m.pool2", "m2.q2", "m2.pool2"} & set(e)]
    elif case == "partial_read":
        edges.remove(("m.q2", "ca"))
    elif case == "upsample_padding":
        nodes["cb.up2"].padding = np.array([1, 1])
    elif case == "two_pops":
        edges.append(("b.lif", "ca"))
    elif case == "lif_meta":
        nodes["d.lif"].metadata = {}
    return nodes, edges, meta


@pytest.mark.parametrize(
    ("case", "node", "words"),
    [
        ("loose_sumpool", "x", "not part of a maxpool population"),
        ("upsample_two_convs", "cb.up2", "fed by exactly one Conv2d, this one by 2 node(s)"),
        ("offset_rows", "ca", "rows outside channels 0..3 (out_offset) are not zero"),
        ("offset_bias", "cb", "rows outside channels 4..5 (out_offset) are not zero"),
        ("lif_reset", "b.lif", "v_reset=0.1; a LIF population resets to 0"),
        ("lif_tau", "d.lif", "tau varies across neurons"),
        ("lif_threshold_meta", "b.lif", "metadata threshold=0.6 disagrees"),
        ("max_pool", "n.pool1", "deploy the EMS '-avg' variant"),
        ("unlisted", "cb.up2", "spikedet.extensions does not list"),
        ("unknown_op", "cn.up2", "unknown extension op spikedet.op='resize_bilinear'"),
        ("format1", "b.lif", "spikedet.format=1 graph holds no LIF node"),
        ("maxpool_threshold", "m.q2", "maxpool threshold 1.5 is not 0.5"),
        ("maxpool_levels", "m.q1", "levels [1] of max-pool m do not match the 2"),
        ("partial_read", "ca", "fed by 1 of the 2 Threshold nodes of m"),
        ("upsample_padding", "cb.up2", "needs padding"),
        ("two_pops", "ca", "reads 2 populations (b, m)"),
        ("lif_meta", "d.lif", "LIF without spikedet.neuron='lif'"),
    ],
)
def test_malformed_constructs(case: str, node: str, words: str) -> None:
    nodes, edges, meta = _malformed(case)
    with pytest.raises(SpikedetError) as err:
        from_nir(make_graph(nodes, edges, **meta), where="m.nir")
    text = err.value.one_line()
    assert words in text and "\n" not in text, text
    assert text.endswith(f"(m.nir: node {node})"), text


# ---- Lava: bit-exact with fixed --------------------------------------------------------------
def test_lava_matches_fixed_on_constructs(lava_python) -> None:
    from spikedet.sim.lava_engine import LavaEngine

    qg = quantize(from_nir(make_graph(*construct_net(seed=3))))
    x = np.random.default_rng(6).integers(0, 256, size=(qg.T, 2, 2, 8, 8))
    fixed = FixedEngine().run(qg, x)
    lava = LavaEngine(python=str(lava_python)).run(qg, x)
    report = compare(fixed, lava)
    print(f"constructs net: {report['total_mismatches']} mismatches, lava {lava.wall_s:.1f} s")
    assert report["total_mismatches"] == 0, report["first_mismatch"]
    assert set(lava.spikes) == {p.name for p in qg.populations if p.kind != "readout"}
    assert all(v.any() for v in fixed.spikes.values())
