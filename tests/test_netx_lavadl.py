"""lava-dl's own netx (``netx.hdf5.Network``) in ``.venv-lava`` through the torch-free shim.

1. Intel's conformance nets (lava-nc/lava-dl at d825ac506eb9bb91ea2b945116fb45a40e775451,
   ``tests/lava/lib/dl/netx/``, copied to ``../shared/conformance/lava-dl-netx``) run as upstream's
   tests run them: tinynet's output equals ``output.npy``; pilotnet_lif's u of every recorded
   layer at Lava step 15 equals the recording (upstream checks one layer, idx 8).
2. The other direction: graphs written by ``spikedet.convert.netx_write`` load in netx and run
   in Lava with spikes equal to our ``fixed`` engine, every layer and step (0 differences).
3. Graphs netx cannot build (shortcuts, concatenation, I-LIF, ...) are refused naming the node.
Every netx run is a subprocess of ``spikedet.sim.netx_run`` in the Lava environment.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

from spikedet.convert.netx import read_netx
from spikedet.convert.netx_nir import to_quant_graph
from spikedet.convert.netx_write import write_netx
from spikedet.deploy.quantize import assign_depths
from spikedet.errors import SpikedetError
from spikedet.sim.fixed import FixedEngine
from spikedet.sim.qgraph import QInput, QPopulation, QSynapse, QuantGraph
from spikedet.sim.randgraph import random_qgraph
from tests.netx_files import small_net_layers, write_net

REPO = Path(__file__).resolve().parents[1]
NETX = REPO.parent / "shared" / "conformance" / "lava-dl-netx"
needs_data = pytest.mark.skipif(not NETX.is_dir(), reason=f"conformance data absent ({NETX})")


@pytest.fixture(scope="module")
def netx_python(lava_python: Path) -> Path:
    """The Lava interpreter, when lava-dl imports there through the shim (else skip, saying why)."""
    probe = subprocess.run(
        [str(lava_python), "-c", "import spikedet.sim.netx_shim as s; s.load_netx()"],
        capture_output=True, text=True, env=_env(), cwd=REPO,
    )  # fmt: skip
    if probe.returncode:
        pytest.skip(f"lava-dl not usable in .venv-lava (make setup-lava-dl): {probe.stderr[-300:]}")
    return lava_python


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


def run_netx(python: Path, net: Path, steps: int, out: Path, *extra: str) -> dict:
    cmd = [str(python), "-m", "spikedet.sim.netx_run", "--net", str(net), "--steps", str(steps),
           "--out", str(out), *extra]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    with np.load(out) as z:
        result = {k: z[k] for k in z.files}
    result["info"] = json.loads(str(result["info"]))
    assert result["info"]["torch_imported"] is False
    return result


def as_tchw(spikes: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """netx spikes (N, X, Y, C) or (N, n) -> [N, C, H, W]."""
    if spikes.ndim == 4:
        return spikes.transpose(0, 3, 2, 1)
    return spikes.reshape(spikes.shape[0], *shape)


# ---- 1. Intel's nets through the shim, as upstream runs them ---------------------------------
@needs_data
def test_tinynet_as_upstream(netx_python: Path, tmp_path: Path) -> None:
    """upstream test_hdf5.py::test_tinynet: 17 + 3 steps, Reset(17, offset i - 1) on u and v."""
    bias = str(NETX / "tinynet" / "input_bias.npy")
    res = run_netx(netx_python, NETX / "tinynet" / "tiny.net", 20, tmp_path / "o.npz",
                   "--upstream-reset", "17", "--bias", bias)  # fmt: skip
    out = res["spike__2"].transpose(1, 2, 3, 0)  # (X, Y, C, N) as upstream's sink
    gt = np.load(NETX / "tinynet" / "output.npy")[0].transpose([2, 1, 0, 3])[..., 1:]
    errors = int(np.abs(out[..., 2:17] - gt).sum())
    print(f"\ntinynet via netx: {errors} differences, {int(gt.sum())} spikes, "
          f"{1e3 * res['info']['step_s']:.1f} ms/step")  # fmt: skip
    assert errors == 0 and gt.sum() > 50


@needs_data
def test_pilotnet_lif_u_at_step_15_as_upstream(netx_python: Path, tmp_path: Path) -> None:
    """upstream test_hdf5_nx.py::test_pilotnet_lif (reset_interval 16, input bias = image, 15
    steps): u of netx layer idx equals conv-{idx-1}-u / fc-{idx-6}-u at index 14, for every
    layer with a recording (upstream checks idx 8 only; conv-0's u is not in the data)."""
    pilot = NETX / "pilotnet_lif"
    args = ["--reset-interval", "16", "--bias", str(pilot / "image.npy"), "--states"]
    res = run_netx(netx_python, pilot / "network.net", 15, tmp_path / "o.npz", *args)
    names = [None, *(f"conv-{k}" for k in range(5)), *(f"fc-{k}" for k in range(4))]
    checked = 0
    for idx in range(2, 10):
        truth = np.load(pilot / f"{names[idx]}-u.npy")[..., 14]
        assert np.array_equal(res[f"u__{idx}"], truth), f"layer {idx} ({names[idx]})"
        checked += truth.size
    print(f"\npilotnet via netx: u of 8 layers ({checked} values) equal at step 15, "
          f"{1e3 * res['info']['step_s']:.0f} ms/step")  # fmt: skip
    assert checked > 40_000


# ---- 2. our writer -> netx -> Lava == our fixed engine ---------------------------------------
def cuba_chain(seed: int, T: int, reset_interval: int, per_neuron: bool = False) -> QuantGraph:
    """input -> strided conv (current decay du < 4095) -> grouped conv -> dense, all cuba;
    ``per_neuron``: the first population has one bias per neuron (netx: an (X, Y, C) bias)."""
    rng = np.random.default_rng(seed)

    def pop(name: str, shape: tuple, **kw) -> QPopulation:
        return QPopulation(name, "cuba", shape, theta=64, D=1, bias_exp=6, bias=rng.integers(
            -40, 41, shape[0]), reset_interval=reset_interval, **kw)  # fmt: skip

    pops = [pop("a", (4, 5, 4), du=1023, dv=512, vth=1500),
            pop("b", (6, 3, 2), du=4095, dv=1024, vth=30),
            pop("c", (5, 1, 1), du=2047, dv=0, vth=40)]  # fmt: skip
    syns = [QSynapse("a.conv", "input", "a", rng.integers(-3, 4, (4, 2, 3, 3)), stride=(2, 2),
                     padding=(1, 1)),
            QSynapse("b.conv", "a", "b", rng.integers(-20, 21, (6, 2, 3, 3)), stride=(2, 2),
                     padding=(1, 1), groups=2),
            QSynapse("c.dense", "b", "c", rng.integers(-12, 13, (5, 6, 3, 2)) * 2)]  # fmt: skip
    if per_neuron:
        pops[0].bias = rng.integers(-40, 41, pops[0].size)
    assign_depths(pops, syns)
    return QuantGraph(T, QInput((2, 9, 8), 1, 8), pops, syns, 1)


def written_vs_fixed(python: Path, qg: QuantGraph, x: np.ndarray, tmp: Path) -> tuple[int, int]:
    """(differences, spikes) between netx running our file and the fixed engine."""
    plan = write_netx(qg, tmp / "w.net")
    if all(p.bias.size == p.shape[0] for p in qg.populations):
        assert read_netx(tmp / "w.net").layers  # our reader (per-channel biases) reads it too
    fixed = FixedEngine().run(qg, x)
    args = ["--reset-interval", str(plan.reset_interval), "--reset-offset", str(plan.reset_offset)]
    if plan.input == "bias":
        np.save(tmp / "x.npy", x[0].transpose(2, 1, 0))
        args += ["--bias", str(tmp / "x.npy")]
    else:  # (X, Y, C, steps): x_t at Lava step t + 1, then nothing
        frames = np.zeros((*x.shape[2:][::-1], plan.steps), np.int64)
        frames[..., : qg.T] = x[:, 0].transpose(3, 2, 1, 0)
        np.save(tmp / "x.npy", frames)
        args += ["--input", str(tmp / "x.npy"), "--input-bits", str(plan.input_bits)]
    res = run_netx(python, tmp / "w.net", plan.steps, tmp / "o.npz", *args)
    diffs = spikes = 0
    for i, name in enumerate(plan.populations):  # netx block i (the input layer is block 0)
        ours = fixed.spikes[name][:, 0]
        theirs = as_tchw(res[f"spike__{i}"], qg.pop(name).shape)
        theirs = theirs[i + plan.shift : i + plan.shift + qg.T]
        assert ours.any(), f"{name} is silent: the comparison would test nothing"
        diffs += int((ours != theirs).sum())
        spikes += int(ours.sum())
    return diffs, spikes


def test_written_intel_style_net_runs_in_netx_like_fixed(netx_python: Path, tmp_path: Path):
    """A .net read by our reader (input layer, dilated grouped conv, flatten, dense) -> our
    QuantGraph -> written back -> netx: spikes of every layer equal the fixed engine's."""
    net = read_netx(write_net(tmp_path / "n.net", small_net_layers()))
    qg = to_quant_graph(net, T=8, reset_interval=5)
    qg.populations[-1].vth = 1  # the last layer fires (an integrator in the original)
    x = np.random.default_rng(0).integers(0, 60, (1, *qg.input.shape))
    diffs, spikes = written_vs_fixed(netx_python, qg, x, tmp_path)
    print(f"\nwritten small net in netx: {diffs} differences over {spikes} spikes")
    assert diffs == 0


@pytest.mark.parametrize("reset_interval", [0, 6])
def test_written_graded_chain_runs_in_netx_like_fixed(netx_python, tmp_path, reset_interval):
    """Graded input into a conv, current decay, biases (per neuron with the reset), dense."""
    qg = cuba_chain(0, 10, reset_interval, per_neuron=bool(reset_interval))
    x = np.random.default_rng(1).integers(0, 256, (10, 1, *qg.input.shape))
    diffs, spikes = written_vs_fixed(netx_python, qg, x, tmp_path)
    print(f"\nwritten chain (reset {reset_interval}) in netx: {diffs} differences, {spikes} spikes")
    assert diffs == 0


def test_written_ems_lif_chain_runs_in_netx_like_fixed(netx_python, tmp_path) -> None:
    """EMS LIF populations without a leak (dv = 0, §3.8) are Lava's LIF: written and run by
    netx, equal to the fixed engine's EMS LIF (§3.2)."""
    rng = np.random.default_rng(2)
    pops = [QPopulation("l1", "lif", (3, 5, 4), theta=8, bias=rng.integers(-3, 4, 3), D=1,
                        dv=0, vth=4),
            QPopulation("l2", "lif", (4, 3, 2), theta=8, bias=rng.integers(-3, 4, 4), D=1,
                        dv=0, vth=6)]  # fmt: skip
    syns = [QSynapse("c1", "input", "l1", rng.integers(-2, 3, (3, 1, 3, 3)), padding=(1, 1)),
            QSynapse("c2", "l1", "l2", rng.integers(-3, 4, (4, 3, 3, 3)), stride=(2, 2),
                     padding=(1, 1))]  # fmt: skip
    assign_depths(pops, syns)
    qg = QuantGraph(5, QInput((1, 5, 4), 255), pops, syns, 1)
    x = rng.integers(0, 256, (5, 1, 1, 5, 4))
    diffs, spikes = written_vs_fixed(netx_python, qg, x, tmp_path)
    print(f"\nwritten EMS LIF chain (dv = 0) in netx: {diffs} differences, {spikes} spikes")
    assert diffs == 0


# ---- 3. refusals (no Lava needed) ------------------------------------------------------------
def test_writer_refuses_detector_graphs_naming_the_node(tmp_path: Path) -> None:
    qg = random_qgraph(np.random.default_rng(1), n_pops=2, T=2, size=8, channels=(2, 3, 4),
                       constructs=True)  # fmt: skip
    first = qg.populations[0]
    with pytest.raises(SpikedetError) as err:
        write_netx(qg, tmp_path / "d.net")
    assert err.value.where == f"population {first.name}" and "netx" in err.value.what
    assert not (tmp_path / "d.net").exists() and not list(tmp_path.iterdir())
    # a shortcut: a second synapse into the last population
    chain = cuba_chain(0, 4, 0)
    extra = QSynapse("skip", "a", "c", np.ones((5, 4, 5, 4), np.int64) * 2, delay=1)
    shortcut = QuantGraph(4, chain.input, chain.populations, [*chain.synapses, extra], 1)
    with pytest.raises(SpikedetError, match="2 incoming synapses") as err:
        write_netx(shortcut, tmp_path / "s.net")
    assert err.value.where == "population c"
    # an EMS LIF chain: written (as CUBA, du = 4095, bias_exp 6) only without a leak (§3.8)
    lif = QPopulation("p", "lif", (2, 3, 3), theta=4, bias=[1, -1], D=1, dv=3072, vth=2)
    ems = QuantGraph(3, QInput((1, 3, 3), 255), [lif],
                     [QSynapse("c", "input", "p", np.ones((2, 1, 1, 1)))])  # fmt: skip
    ems.populations[0].depth = 1
    with pytest.raises(SpikedetError, match="dv=3072") as err:
        write_netx(ems, tmp_path / "e.net")
    assert err.value.where == "population p"
    lif.dv = 0
    plan = write_netx(ems, tmp_path / "e.net")
    assert plan.input == "graded" and plan.populations == ("p",)


def test_netx_run_errors_are_one_line(netx_python: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.net"
    bad.write_bytes(b"not hdf5")
    for net in (tmp_path / "missing.net", bad):
        cmd = [str(netx_python), "-m", "spikedet.sim.netx_run", "--net", str(net), "--steps", "2",
               "--out", str(tmp_path / "o.npz")]  # fmt: skip
        proc = subprocess.run(cmd, capture_output=True, text=True, env=_env())
        assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
        assert proc.stderr.startswith("spikedet-netx: error: ") and str(net) in proc.stderr
    assert not (tmp_path / "o.npz").exists()
