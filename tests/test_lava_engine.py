"""The Lava engine: Lava processes vs hand-computed values, an independent numpy model of §3,
the ``fixed`` engine, and the failure paths (no Lava environment, bad graphs, no torch).

Each Lava run spawns an interpreter and compiles a network (about 2-3 s here), so the graphs
are few and small; each run covers several samples at once.
"""

from __future__ import annotations

import subprocess

import numpy as np
import pytest

from spikedet.errors import SpikedetError
from spikedet.sim.lava_engine import LavaEngine, lava_python
from spikedet.sim.lava_worker import check_graph, to_lava_groups
from spikedet.sim.qgraph import QInput, QPopulation, QSynapse, QuantGraph

SETUP_MESSAGE = (
    "Lava environment not found (/nonexistent): install Python 3.10 (e.g. 'pyenv install "
    "3.10.13') and run 'make setup', or set SPIKEDET_LAVA_PYTHON"
)


# ---- an independent numpy model of docs/semantics.md §3, layer by layer ----------------------
def ref_conv(x: np.ndarray, w: np.ndarray, stride, padding, groups: int) -> np.ndarray:
    """torch-style cross-correlation of one sample x (C, H, W), exact int64, loops over taps."""
    c, h, wd = x.shape
    c_out, c_in_g, kh, kw = w.shape
    (sh, sw), (ph, pw) = stride, padding
    ho, wo = (h + 2 * ph - kh) // sh + 1, (wd + 2 * pw - kw) // sw + 1
    xp = np.zeros((c, h + 2 * ph, wd + 2 * pw), np.int64)
    xp[:, ph : ph + h, pw : pw + wd] = x
    out = np.zeros((c_out, ho, wo), np.int64)
    out_g = c_out // groups
    for g in range(groups):
        for i in range(kh):
            for j in range(kw):
                patch = xp[
                    g * c_in_g : (g + 1) * c_in_g, i : i + sh * ho : sh, j : j + sw * wo : sw
                ]
                taps = w[g * out_g : (g + 1) * out_g, :, i, j].astype(np.int64)
                out[g * out_g : (g + 1) * out_g] += np.einsum("oc,chw->ohw", taps, patch)
    return out


def ref_run(qg: QuantGraph, x: np.ndarray) -> tuple[dict, dict]:
    """Every population in topological order, every sample and logical step in turn."""
    x = np.asarray(x, np.int64)
    if x.ndim == 4:
        x = np.broadcast_to(x[None], (qg.T, *x.shape))
    limit = (1 << 23) - 1
    outputs, spikes, readouts = {"input": x}, {}, {}
    for p in qg.populations:
        batch = x.shape[1]
        s_all = np.zeros((qg.T, batch, *p.shape), np.int64)
        v_last = np.zeros((batch, *p.shape), np.int64)
        for b in range(batch):
            u = np.zeros(p.shape, np.int64)
            s = np.zeros(p.shape, np.int64)
            for t in range(qg.T):
                a = np.zeros(p.shape, np.int64)
                for e in qg.incoming(p.name):
                    raw = ref_conv(outputs[e.src][t, b], e.weight, e.stride, e.padding, e.groups)
                    a += ((raw + (1 << 23)) % (1 << 24)) - (1 << 23)
                bias = p.bias[:, None, None]
                if p.kind == "readout":
                    u = np.clip(u + a + bias, -limit, limit)
                    continue
                r = u - p.theta * s
                decayed = np.sign(r) * ((np.abs(r) * (4096 - p.dv)) >> 12)
                u = np.clip(decayed + a + bias, -limit, limit)
                s = np.clip((u + p.theta // 2 - 1) // p.theta, 0, p.D)
                s_all[t, b] = s
            v_last[b] = u
        if p.kind == "readout":
            readouts[p.name] = v_last
        else:
            spikes[p.name] = outputs[p.name] = s_all
    return spikes, readouts


def assert_same(result, spikes: dict, readouts: dict) -> None:
    assert sorted(result.spikes) == sorted(spikes)
    assert sorted(result.readouts) == sorted(readouts)
    for name, want in spikes.items():
        np.testing.assert_array_equal(result.spikes[name], want, err_msg=f"spikes of {name}")
    for name, want in readouts.items():
        np.testing.assert_array_equal(result.readouts[name], want, err_msg=f"readout {name}")


# ---- graphs ----------------------------------------------------------------------------------
def hand_graph() -> QuantGraph:
    """input (1,1,2) -1x1 conv-> I-LIF "pop" (2,1,2) -1x1 conv-> readout "head.out" (1,1,2)."""
    pop = QPopulation("pop", "ilif", (2, 1, 2), theta=4, bias=[1, 1], depth=1, D=3, dv=2048)
    head = QPopulation("head.out", "readout", (1, 1, 2), theta=2, bias=[2], depth=2)
    syns = [
        QSynapse("in.conv", "input", "pop", np.array([1, -3]).reshape(2, 1, 1, 1)),
        QSynapse("head.conv", "pop", "head.out", np.array([3, 5]).reshape(1, 2, 1, 1)),
    ]
    return QuantGraph(
        T=3, input=QInput((1, 1, 2), scale=255), populations=[pop, head], synapses=syns
    )


def residual_graph(rng: np.random.Generator) -> QuantGraph:
    """Depthwise stride-2 conv, a grouped 1x1 conv, a residual population fed by a shallower
    source through a strided conv with padding (0, 1) and delay 2, and a readout with a delayed
    (stride (2, 1), kernel 1x4) skip: every H/W asymmetry Lava's (X, Y) order could confuse."""
    pops = [
        QPopulation(
            "stem.lif",
            "ilif",
            (4, 9, 7),
            theta=16,
            bias=rng.integers(-5, 6, 4),
            depth=1,
            D=4,
            dv=2048,
        ),
        QPopulation(
            "dw.lif", "ilif", (4, 5, 4), theta=8, bias=rng.integers(-3, 4, 4), depth=2, D=3, dv=1024
        ),
        QPopulation(
            "sum.lif", "ilif", (6, 5, 4), theta=10, bias=rng.integers(-3, 4, 6), depth=3, D=4, dv=0
        ),
        QPopulation("head", "readout", (2, 5, 4), theta=4, bias=rng.integers(-3, 4, 2), depth=4),
    ]
    syns = [
        QSynapse("stem", "input", "stem.lif", rng.integers(-20, 21, (4, 3, 3, 3)), padding=(1, 1)),
        QSynapse(
            "dw",
            "stem.lif",
            "dw.lif",
            rng.integers(-9, 10, (4, 1, 3, 3)),
            stride=(2, 2),
            padding=(1, 1),
            groups=4,
        ),
        QSynapse("pw", "dw.lif", "sum.lif", rng.integers(-9, 10, (6, 2, 1, 1)), groups=2),
        QSynapse(
            "skip",
            "input",
            "sum.lif",
            rng.integers(-9, 10, (6, 3, 1, 3)),
            stride=(2, 2),
            padding=(0, 1),
            delay=2,
        ),
        QSynapse("head", "sum.lif", "head", rng.integers(-9, 10, (2, 6, 3, 3)), padding=(1, 1)),
        QSynapse(
            "head.skip",
            "stem.lif",
            "head",
            rng.integers(-9, 10, (2, 4, 1, 4)),
            stride=(2, 1),
            delay=2,
        ),
    ]
    return QuantGraph(T=3, input=QInput((3, 9, 7), scale=255), populations=pops, synapses=syns)


# ---- tests -----------------------------------------------------------------------------------
def test_hand_computed_ilif_and_readout(lava_python):
    # x per pixel and step: pixel 0 = 1, 5, 6; pixel 1 = 14, 3, 4.  theta=4, D=3, beta=0.5.
    x = np.array([[1, 14], [5, 3], [6, 4]]).reshape(3, 1, 1, 1, 2)
    # channel 0 (w=1, b=1):  pixel 0: u=2 -> s=0 (the tie u = theta/2 rounds down);
    #   u = (2>>1)+6 = 7 -> 2;  u = decay(7-8 = -1) + 7 = 0 + 7 = 7 -> 2 (decay truncates to 0).
    #   pixel 1: u = 15 -> 4 clipped to D=3;  u = (3>>1)+4 = 5 -> 1;  u = (1>>1)+5 = 5 -> 1.
    # channel 1 (w=-3, b=1): u stays negative (-2, -15, -24 / -41, -28, -25): no spikes.
    want_spikes = np.array([[[0, 3], [0, 0]], [[2, 1], [0, 0]], [[2, 1], [0, 0]]])
    # readout v_t = v + 3*s0 + 5*s1 + 2: pixel 0: 2, 10, 18; pixel 1: 11, 16, 21.
    want_readout = np.array([18, 21]).reshape(1, 1, 1, 2)
    qg = hand_graph()
    res = LavaEngine(python=str(lava_python)).run(qg, x)
    assert res.engine == "lava"
    np.testing.assert_array_equal(res.spikes["pop"], want_spikes.reshape(3, 1, 2, 1, 2))
    np.testing.assert_array_equal(res.readouts["head.out"], want_readout)
    assert_same(res, *ref_run(qg, x))  # the numpy model agrees with the hand values too
    assert res.info["torch_imported"] is False
    assert res.info["steps"] == qg.hw_steps == 5 and res.info["samples"] == 1
    assert res.info["compile_s"] > 0 and res.info["step_s"] > 0


def test_residual_graph_matches_numpy_and_fixed(lava_python):
    from spikedet.sim.fixed import FixedEngine

    rng = np.random.default_rng(11)
    qg = residual_graph(rng)
    x = rng.integers(0, 256, (qg.T, 3, *qg.input.shape))  # 3 samples share one network
    res = LavaEngine(python=str(lava_python)).run(qg, x)
    spikes, readouts = ref_run(qg, x)
    assert all(v.any() for v in spikes.values()), "a silent population would test nothing"
    assert_same(res, spikes, readouts)
    assert_same(FixedEngine().run(qg, x), spikes, readouts)


@pytest.mark.parametrize("seed", [3, 8])
def test_random_graphs_match_fixed(lava_python, seed):
    from spikedet.sim.fixed import FixedEngine
    from spikedet.sim.interface import compare
    from spikedet.sim.randgraph import random_input, random_qgraph

    rng = np.random.default_rng(seed)
    # weight_max 2000 makes synapse sums wrap at 24 bits and membranes clip.
    qg = random_qgraph(rng, n_pops=3, T=3, weight_max=2000 if seed == 8 else 127)
    x = random_input(rng, qg, batch=2, static=seed == 3)
    fixed = FixedEngine().run(qg, x)
    lava = LavaEngine(python=str(lava_python)).run(qg, x)
    report = compare(fixed, lava)
    assert report["total_mismatches"] == 0, report["first_mismatch"]
    assert sum(int(v.sum()) for v in fixed.spikes.values()) > 0


@pytest.mark.parametrize("seed", [1, 2, 5, 8])
def test_random_construct_graphs_match_fixed(lava_python, seed: int) -> None:
    """LIF, maxpool (chained), out_offset and upsample synapses (randgraph constructs=True)."""
    from spikedet.sim.fixed import FixedEngine
    from spikedet.sim.interface import compare
    from spikedet.sim.randgraph import random_input, random_qgraph

    rng = np.random.default_rng(seed)
    qg = random_qgraph(
        rng, n_pops=2 + seed % 2, T=2 + seed % 2, size=8, channels=(2, 3, 4),
        weight_max=2000 if seed % 2 else 127, constructs=True,
    )  # fmt: skip
    kinds = {p.kind for p in qg.populations}
    assert {"lif", "maxpool"} <= kinds and any(s.upsample > 1 for s in qg.synapses)
    x = random_input(rng, qg, batch=2, static=seed == 2)
    fixed = FixedEngine().run(qg, x)
    lava = LavaEngine(python=str(lava_python)).run(qg, x)
    report = compare(fixed, lava)
    values = sum(v["values"] for v in report["populations"].values())
    print(f"seed {seed}: {report['total_mismatches']} mismatches of {values} spike values")
    assert report["total_mismatches"] == 0, report["first_mismatch"]
    assert sum(int(v.sum()) for v in fixed.spikes.values()) > 0


def test_depthwise_beyond_int8_groups(lava_python):
    """Lava's Conv keeps ``groups`` in int8 (256 wraps to 0); the worker regroups exactly."""
    from spikedet.sim.fixed import FixedEngine

    rng = np.random.default_rng(5)
    c = 256
    pops = [
        QPopulation("a", "ilif", (c, 2, 2), theta=8, bias=np.zeros(c), depth=1, D=2, dv=0),
        QPopulation("b", "readout", (c, 2, 2), theta=8, bias=np.zeros(c), depth=2),
    ]
    syns = [
        QSynapse("in", "input", "a", rng.integers(-9, 10, (c, 1, 1, 1)), groups=c),
        QSynapse("dw", "a", "b", rng.integers(-9, 10, (c, 1, 3, 3)), padding=(1, 1), groups=c),
    ]
    qg = QuantGraph(T=2, input=QInput((c, 2, 2), scale=1), populations=pops, synapses=syns)
    x = rng.integers(0, 20, (1, c, 2, 2))
    res = LavaEngine(python=str(lava_python)).run(qg, x)
    want = FixedEngine().run(qg, x)
    assert np.abs(want.readouts["b"]).sum() > 0
    assert_same(res, want.spikes, want.readouts)


def test_regrouping_is_exact():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 5, (256, 3, 3))
    w = rng.integers(-9, 10, (512, 1, 3, 3))  # two outputs per input channel
    merged, groups = to_lava_groups(w, 256)
    assert groups == 64 and merged.shape == (512, 4, 3, 3)
    np.testing.assert_array_equal(
        ref_conv(x, merged, (1, 1), (1, 1), groups), ref_conv(x, w, (1, 1), (1, 1), 256)
    )
    w200 = rng.integers(-9, 10, (200, 1, 1, 1))
    merged, groups = to_lava_groups(w200, 200)  # 100 groups of two depthwise channels
    assert groups == 100 and merged.shape == (200, 2, 1, 1)
    np.testing.assert_array_equal(
        ref_conv(x[:200], merged, (1, 1), (0, 0), groups),
        ref_conv(x[:200], w200, (1, 1), (0, 0), 200),
    )
    small = w[:8]
    out, g = to_lava_groups(small, 4)  # within int8: untouched
    assert out is small and g == 4


def test_graph_checks():
    check_graph(hand_graph())  # valid
    big = hand_graph()
    big.synapses[0].weight = np.array([1 << 24, 1]).reshape(2, 1, 1, 1)  # 2^24 x 255 >= 2^31
    with pytest.raises(SpikedetError, match="2\\^31") as err:
        check_graph(big)
    assert err.value.where == "synapse in.conv"
    wrong = hand_graph()
    wrong.synapses[1].weight = np.ones((1, 2, 3, 3), np.int64)  # 1x2 map -> no 3x3 output
    with pytest.raises(SpikedetError, match="does not match head.out"):
        check_graph(wrong)


def test_worker_does_not_import_torch(lava_python, core_python, repo_root):
    # In the Lava environment the worker's modules load without torch ...
    code = (
        "import sys, spikedet.sim.lava_worker, spikedet.sim.lava_procs; "
        "print('torch' in sys.modules)"
    )
    out = subprocess.run(
        [str(lava_python), "-c", code], capture_output=True, text=True, cwd=repo_root, check=True
    )
    assert out.stdout.strip() == "False"
    # ... and on the core side, where torch is installed, none of our modules pulls it in.
    code = (
        "import sys, spikedet.sim.lava_engine, spikedet.sim.lava_worker; print(sorted(sys.modules))"
    )
    out = subprocess.run(
        [str(core_python), "-c", code], capture_output=True, text=True, cwd=repo_root, check=True
    )
    assert "'torch'" not in out.stdout and "'lava'" not in out.stdout


def test_worker_errors_are_one_line(lava_python, tmp_path):
    qg = hand_graph()
    qg.populations[1].depth = 3  # inconsistent with its synapse (delay 0)
    qg.save(tmp_path / "g.npz")
    np.save(tmp_path / "x.npy", np.zeros((1, 1, 1, 2), np.int64))
    cmd = [
        str(lava_python),
        "-m",
        "spikedet.sim.lava_worker",
        "--graph",
        str(tmp_path / "g.npz"),
        "--input",
        str(tmp_path / "x.npy"),
        "--out",
        str(tmp_path / "o.npz"),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "spikedet-lava: error: depth(head.out)=3 != depth(pop)=1 + 1 + delay 0 (synapse head.conv)"
    ]
    assert not (tmp_path / "o.npz").exists()
    with pytest.raises(SpikedetError) as err:
        LavaEngine(python=str(lava_python)).run(qg, np.zeros((1, 1, 1, 2), np.int64))
    assert err.value.where == "synapse head.conv" and "depth(head.out)=3" in err.value.what


def test_bad_input_is_rejected_before_lava(lava_python):
    with pytest.raises(SpikedetError, match="8-bit"):
        LavaEngine(python=str(lava_python)).run(hand_graph(), np.full((1, 1, 1, 2), 256))


def test_unavailable_lava(monkeypatch):
    monkeypatch.setenv("SPIKEDET_LAVA_PYTHON", "/nonexistent")
    assert lava_python() is None
    engine = LavaEngine()
    assert engine.available() == (False, SETUP_MESSAGE)
    with pytest.raises(SpikedetError) as err:
        engine.run(hand_graph(), np.zeros((1, 1, 1, 2), np.int64))
    assert err.value.what == SETUP_MESSAGE
    assert LavaEngine(python="/nonexistent").available()[0] is False


def test_lava_graph_checks_for_constructs() -> None:
    from spikedet.deploy.nir_read import from_nir
    from spikedet.deploy.quantize import quantize
    from tests.test_deploy_constructs import construct_net, make_graph

    qg = quantize(from_nir(make_graph(*construct_net())))
    check_graph(qg)  # valid
    qg.pop("m2").depth += 1  # a maxpool is handled exactly one step after its source
    with pytest.raises(SpikedetError, match=r"depth\(m2\)=4 != depth\(m\)=2 \+ 1"):
        check_graph(qg)
    qg = quantize(from_nir(make_graph(*construct_net())))
    (cb,) = [s for s in qg.synapses if s.name == "cb.up2->cat"]
    cb.upsample = 1  # a 4x4 map into an 8x8 population
    with pytest.raises(SpikedetError, match="conv output does not match cat") as err:
        check_graph(qg)
    assert err.value.where == "synapse cb.up2->cat"
    with pytest.raises(SpikedetError, match="writes channels 5..6 of cat, which has 6"):
        QuantGraph(qg.T, qg.input, qg.populations, [*qg.synapses[:-1], _shifted(cb, 5)])


def _shifted(syn, offset: int):
    from spikedet.sim.qgraph import QSynapse

    return QSynapse(syn.name, syn.src, syn.dst, syn.weight, syn.stride, syn.padding, 1, 0, offset)
