"""The netx ``.net`` reader (``spikedet.convert.netx``), its NIR form and ``spikedet import netx``.

Synthetic files (``tests/netx_files.py``) cover every supported block and one refusal per kind of
unsupported or corrupt layer; Intel's two shipped nets check the fields netx reads.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import nir
import numpy as np
import pytest

from spikedet.cli.main import main
from spikedet.convert.netx import read_netx
from spikedet.convert.netx_dense import lava_dense_weight
from spikedet.convert.netx_nir import to_nir, to_quant_graph
from spikedet.errors import SpikedetError
from spikedet.sim.fixed import FixedEngine
from tests.netx_files import neuron, small_net_layers, write_net

REPO = Path(__file__).resolve().parents[1]
NETX = REPO.parent / "shared" / "conformance" / "lava-dl-netx"


def test_small_net_structure(tmp_path: Path) -> None:
    net = read_netx(write_net(tmp_path / "n.net", small_net_layers()))
    kinds = [(layer.index, layer.kind, layer.shape) for layer in net.layers]
    assert kinds == [(0, "input", (4, 9, 10)), (1, "conv", (6, 5, 4)), (2, "conv", (4, 3, 2)),
                     (4, "dense", (7, 1, 1)), (5, "dense", (2, 1, 1))]  # fmt: skip
    conv2 = net.layers[2]
    assert (conv2.stride, conv2.padding, conv2.dilation, conv2.groups) == ((1, 1), (1, 1),
                                                                          (2, 2), 2)  # fmt: skip
    assert conv2.neuron.dv == 512 and net.layers[3].weight.shape == (7, 4, 3, 2)
    assert net.input_transform == {"weight": 40, "bias": 36}
    # the flattened dense weight, read back in (C, H, W) order, is the file's (out, in) matrix
    raw = small_net_layers()[4]["weight"].astype(np.int64)
    assert np.array_equal(net.layers[3].weight.reshape(7, -1), raw)


def test_nir_form_reads_back_and_carries_the_integers(tmp_path: Path) -> None:
    path = write_net(tmp_path / "n.net", small_net_layers())
    out = tmp_path / "n.nir"
    assert main(["import", "netx", str(path), "--out", str(out), "--reset-interval", "5"]) == 0
    graph = nir.read(str(out))  # nir's own reader, type checking on
    kinds = {n: type(v).__name__ for n, v in graph.nodes.items()}
    assert (
        kinds["layer0"] == "LIF" and kinds["layer5"] == "IF" and kinds["layer4.dense"] == "Affine"
    )
    assert kinds["layer4.flatten"] == "Flatten" and "layer5.flatten" not in kinds
    lif = graph.nodes["layer1"]
    assert np.allclose(lif.tau, 4096 / 1024) and np.allclose(lif.v_threshold, 25)
    loihi = lif.metadata["loihi"]
    assert (int(loihi["du"]), int(loihi["dv"]), int(loihi["vth"])) == (4095, 1024, 25)
    assert int(loihi["reset_interval"]) == 5 and int(loihi["bias_exp"]) == 6
    conv = graph.nodes["layer1.conv"]
    assert np.array_equal(conv.bias, small_net_layers()[1]["bias"])  # bias_exp 6: weight units
    grouped = graph.nodes["layer2.conv"]
    assert grouped.weight.shape == (4, 6, 3, 3) and grouped.metadata["spikedet.groups"] == 2
    assert float(graph.metadata["dt"]) == 1.0


def test_small_net_runs_in_the_fixed_engine(tmp_path: Path) -> None:
    net = read_netx(write_net(tmp_path / "n.net", small_net_layers()))
    qg = to_quant_graph(net, T=6, reset_interval=4)
    assert [p.depth for p in qg.populations] == [1, 2, 3, 4, 5]
    x = np.random.default_rng(0).integers(0, 60, (2, *qg.input.shape))
    res = FixedEngine().run(qg, x)
    assert res.spikes["layer0"].any() and res.spikes["layer1"].any()


def test_spike_input_without_input_neuron(tmp_path: Path) -> None:
    """An input layer without ``neuron`` only declares the shape: the first conv reads the
    graph input (spikes) directly, as netx connects it."""
    layers = small_net_layers()
    layers[0] = {"type": b"input", "shape": [4, 9, 10]}
    net = read_netx(write_net(tmp_path / "n.net", layers))
    assert net.input_layer is None and net.layers[0].kind == "conv"
    qg = to_quant_graph(net, T=3)
    assert qg.synapses[0].src == "input" and qg.synapses[0].dst == "layer1"
    x = (np.random.default_rng(1).random((3, 1, 4, 9, 10)) < 0.5).astype(np.int64)
    assert FixedEngine().run(qg, x).spikes["layer1"].shape == (3, 1, 6, 5, 4)


def bad(layers: list[dict], index: int, key: str, value=None, drop: bool = False) -> list[dict]:
    layers[index] = dict(layers[index])
    if drop:
        layers[index].pop(key)
    else:
        layers[index][key] = value
    return layers


CASES = [
    ("missing-weight", lambda ls: bad(ls, 1, "weight", drop=True), 1, "missing dataset 'weight'"),
    ("nan-weight", lambda ls: bad(ls, 4, "weight", np.full((7, 24), np.nan)), 4, "NaN"),
    ("fractional-weight", lambda ls: bad(ls, 1, "weight", np.full((6, 4, 3, 3), 0.5)), 1,
     "non-integer"),
    ("shape-does-not-chain", lambda ls: bad(ls, 2, "shape", [4, 3, 3]), 2, "declared shape"),
    ("dense-in-mismatch", lambda ls: bad(ls, 5, "weight", np.ones((2, 6))), 5, "does not map"),
    ("pool", lambda ls: bad(ls, 2, "type", b"pool"), 2, "NotImplementedError"),
    ("concat", lambda ls: bad(ls, 2, "type", b"concat"), 2, "NotImplementedError"),
    ("dense-rec", lambda ls: bad(ls, 5, "type", b"dense_rec"), 5, "recurrent"),
    ("unknown-type", lambda ls: bad(ls, 1, "type", b"spiral"), 1, "unknown layer type"),
    ("second-input", lambda ls: bad(ls, 2, "type", b"input"), 2, "first layer"),
    ("sdnn-neuron", lambda ls: bad(ls, 1, "neuron", neuron(type=b"SDNN")), 1, "SDNN"),
    ("rf-neuron", lambda ls: bad(ls, 4, "neuron", neuron(type=b"RF_IZ")), 4, "RF_IZ"),
    ("graded-spikes", lambda ls: bad(ls, 1, "neuron", neuron(messageBits=3)), 1, "graded"),
    ("input-current-decay", lambda ls: bad(ls, 0, "neuron", neuron(iDecay=1024)), 0, "iDecay"),
    ("decay-out-of-range", lambda ls: bad(ls, 2, "neuron", neuron(vDecay=5000)), 2, "12-bit"),
    ("threshold-17-bit", lambda ls: bad(ls, 1, "neuron", neuron(vThMant=1 << 17)), 1, "17-bit"),
    ("no-flatten", lambda ls: ls[:3] + ls[4:], 3, "flatten"),
    ("delay", lambda ls: bad(ls, 4, "delay", np.ones(7)), 4, "delays"),
    ("bias-size", lambda ls: bad(ls, 1, "bias", np.ones(5)), 1, "bias has 5"),
    ("dense-no-neuron", lambda ls: bad(ls, 5, "neuron", drop=True), 5, "no 'neuron'"),
    ("groups-mismatch", lambda ls: bad(ls, 2, "groups", 3), 2, "groups=3"),
    ("dense-weights-too-big", lambda ls: bad(ls, 5, "weight", np.full(14, 300.0)), 5, "range"),
]  # fmt: skip


@pytest.mark.parametrize("edit, index, text", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_refusals_name_the_layer(tmp_path: Path, edit, index: int, text: str) -> None:
    path = write_net(tmp_path / "bad.net", edit(small_net_layers()))
    with pytest.raises(SpikedetError) as err:
        read_netx(path)
    assert text in err.value.what and f"layer {index}" in err.value.where, err.value.one_line()
    assert str(path) in err.value.where


def test_lava_dense_weight_follows_lavas_clip_and_truncation() -> None:
    w = np.array([[-256, -3, -8]])  # inhibitory: Lava clips |w| to 255
    eff, exp = lava_dense_weight(w)
    assert eff.tolist() == [[-255, -3, -8]] and exp == 0
    w = np.array([[0, -3], [-1, -2]])  # max 0: netx calls it mixed, Lava inhibitory; still exact
    eff, exp = lava_dense_weight(w)
    assert eff.tolist() == w.tolist() and exp == -6


@pytest.mark.skipif(not NETX.is_dir(), reason=f"conformance data absent ({NETX})")
def test_intel_nets_fields() -> None:
    tiny = read_netx(NETX / "tinynet" / "tiny.net")
    assert [(layer.kind, layer.shape) for layer in tiny.layers] == [
        ("input", (3, 16, 16)), ("conv", (24, 6, 6)), ("conv", (36, 1, 1))]  # fmt: skip
    assert tiny.input_transform == {"weight": 36, "bias": 34}  # upstream test_input_transform
    pilot = read_netx(NETX / "pilotnet_lif" / "network.net")
    assert [layer.index for layer in pilot.layers] == [0, 1, 2, 3, 4, 5, 7, 8, 9, 10]
    assert pilot.layers[4].stride == (2, 1) and pilot.layers[4].padding == (1, 0)
    last = pilot.layers[-1].neuron
    assert (last.du, last.dv, last.vth) == (4095, 0, 131071)
    # Intel's dense weights pass Lava's weight-exponent path unchanged
    assert [layer.weight_exp for layer in pilot.layers[6:]] == [-5, -4, -3, -2]


def test_cli_refusal_is_one_line_and_writes_nothing(tmp_path: Path) -> None:
    path = write_net(tmp_path / "bad.net", bad(small_net_layers(), 2, "type", b"pool"))
    out = tmp_path / "o.nir"
    proc = subprocess.run([sys.executable, "-m", "spikedet.cli.main", "import", "netx",
                           str(path), "--out", str(out)], capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    assert proc.stderr.startswith("spikedet: error: ") and "layer 2 (pool)" in proc.stderr
    assert not out.exists() and list(tmp_path.iterdir()) == [path]


def loihi_case(**changes):
    from spikedet.deploy.nir_graph import FPopulation, FSynapse

    loihi = {"kind": "cuba", "du": 4095, "dv": 1024, "vth": 25, "bias_exp": 6,
             "bias": np.array([3, -2]), "reset_interval": 0, "reset_offset": 0, "theta": 64}  # fmt: skip
    loihi.update(changes.pop("loihi", {}))
    pop = FPopulation("p", "cuba", (2, 3, 3), D=1, loihi=loihi)
    weight = changes.pop("weight", np.ones((2, 1, 1, 1)))
    bias = changes.pop("bias", np.array([3.0, -2.0]))
    syn = FSynapse("s", "input", "p", weight, bias)
    return pop, [syn], changes.pop("input_scale", 1.0)


def test_quantize_takes_loihi_integers_verbatim_and_checks_them() -> None:
    from spikedet.deploy.quantize_cuba import loihi_population

    qpop, syns = loihi_population(*loihi_case())
    assert (qpop.kind, qpop.du, qpop.dv, qpop.vth, qpop.bias_exp) == ("cuba", 4095, 1024, 25, 6)
    assert qpop.bias.tolist() == [3, -2] and syns[0].weight.dtype == np.int64
    bad = [
        ({"weight": np.full((2, 1, 1, 1), 1.5)}, "exact integers"),
        ({"bias": np.array([3.0, -1.0])}, "disagrees"),
        ({"input_scale": 255.0}, "unscaled"),
        ({"loihi": {"vth": 2.5}}, "integers"),
    ]
    for changes, text in bad:
        with pytest.raises(SpikedetError, match=text):
            loihi_population(*loihi_case(**changes))
    pop, syns, scale = loihi_case()
    pop.loihi.pop("dv")
    with pytest.raises(SpikedetError, match="lacks dv"):
        loihi_population(pop, syns, scale)


def test_cli_rejects_a_negative_reset_interval(tmp_path: Path, capsys) -> None:
    path = write_net(tmp_path / "n.net", small_net_layers())
    out = tmp_path / "n.nir"
    assert main(["import", "netx", str(path), "--out", str(out), "--reset-interval", "-1"]) == 2
    assert "--reset-interval" in capsys.readouterr().err and not out.exists()


def test_current_decay_becomes_a_cubalif_with_its_bias_in_v_leak(tmp_path: Path) -> None:
    from spikedet.deploy.nir_generic import Conventions, parse_generic
    from spikedet.deploy.quantize import quantize

    layers = small_net_layers()
    layers[1] = {**layers[1], "neuron": neuron(iDecay=1024, vDecay=512)}
    path, out = write_net(tmp_path / "n.net", layers), tmp_path / "n.nir"
    assert main(["import", "netx", str(path), "--out", str(out)]) == 0
    node = nir.read(str(out)).nodes["layer1"]
    assert type(node).__name__ == "CubaLIF"
    bias = layers[1]["bias"].reshape(-1, 1, 1)  # bias_exp 6: the mantissa in weight units
    assert np.allclose(node.tau_syn, 4) and np.allclose(node.w_in, 4) and np.allclose(node.r, 8)
    assert np.allclose(node.v_leak, bias * 8)  # (dt / tau_mem) * v_leak = b per step
    assert not nir.read(str(out)).nodes["layer1.conv"].bias.any()
    fg, _ = parse_generic(nir.read(str(out)), 4, Conventions())
    got = quantize(fg, max_delay=None).populations[1]
    want = to_quant_graph(read_netx(path), 4).populations[1]
    assert (got.du, got.dv, got.bias.tolist()) == (want.du, want.dv, want.bias.tolist()) == (
        1023, 512, layers[1]["bias"].astype(int).tolist())  # fmt: skip
    layers[1] = {**layers[1], "neuron": neuron(iDecay=1024, vDecay=0)}
    with pytest.raises(SpikedetError, match="no NIR"):
        to_nir(read_netx(write_net(tmp_path / "m.net", layers)))
