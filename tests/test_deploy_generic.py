"""`spikedet deploy --input` (docs/semantics.md §4.6): our own graphs, NIR data inputs, labels."""

from __future__ import annotations

import json
from pathlib import Path

import nir
import numpy as np

from spikedet.cli.main import main
from spikedet.deploy.pipeline import DeployOptions, run_deploy
from tests.test_deploy_constructs import construct_net, make_graph


def _classifier() -> nir.NIRGraph:
    """Input (3,) -> Linear -> LIF (3): the neuron fed most by its input channel fires most."""
    n = 3
    nodes = {
        "input": nir.Input(input_type=np.array([n])),
        "fc": nir.Linear(weight=np.eye(n, dtype=np.float32) * 0.5),
        "lif": nir.LIF(tau=np.full(n, 2.0, np.float32), r=np.full(n, 2.0, np.float32),
                       v_leak=np.zeros(n, np.float32), v_threshold=np.full(n, 0.6, np.float32),
                       v_reset=np.zeros(n, np.float32)),
        "output": nir.Output(output_type=np.array([n])),
    }  # fmt: skip
    edges = [("input", "fc"), ("fc", "lif"), ("lif", "output")]
    return nir.NIRGraph(nodes=nodes, edges=edges, type_check=False)


def _samples() -> tuple[np.ndarray, np.ndarray]:
    """[T, B, 3] spikes: sample b drives channel b % 3 every step, the others every 4th."""
    x = np.zeros((12, 6, 3), np.uint8)
    x[::4] = 1
    labels = np.arange(6) % 3
    x[:, np.arange(6), labels] = 1
    return x, labels


def test_our_own_graph_deploys_on_an_input_array(tmp_path: Path, capsys) -> None:
    """A §2 graph (I-LIF, LIF, max-pool, concat, upsample, readouts) without a dataset: its own
    dt, input scale and T are used, nothing is assumed (no warning)."""
    nodes, edges = construct_net()
    path = tmp_path / "own.nir"
    nir.write(path, make_graph(nodes, edges, T=3))
    x = np.random.default_rng(0).integers(0, 256, (3, 2, 2, 8, 8)) / 255.0
    np.save(tmp_path / "x.npy", x)
    opts = DeployOptions(nir_path=path, out=tmp_path / "rep", input=tmp_path / "x.npy")
    v = run_deploy(opts, log=lambda _: None)["validation"]
    assert capsys.readouterr().err == ""
    assert v["conventions"]["assumed"] == [] and v["conventions"]["input_scale"] == 255
    assert v["reference_vs_fixed"]["overall_spike_agreement"] > 0.95
    assert set(v["reference_vs_fixed"]["populations"]) >= {"a", "b", "cat", "d", "m"}


def test_nir_data_input_and_labels(tmp_path: Path) -> None:
    """NIR's own data format as input (its dt is used when nothing else gives one) and
    --labels: accuracy from the output layer's spike counts, equal for every engine."""
    x, labels = _samples()
    path = tmp_path / "clf.nir"
    nir.write(path, _classifier())
    data = nir.NIRGraphData(
        {"input": nir.NIRNodeData({"spikes": nir.TimeGriddedData(x.transpose(1, 0, 2), 1.0)})}
    )
    nir.write_data(str(tmp_path / "x.nird"), data)
    np.save(tmp_path / "y.npy", labels)
    opts = DeployOptions(
        nir_path=path, out=tmp_path / "rep", input=tmp_path / "x.nird",
        labels=tmp_path / "y.npy", reset="zero",
    )  # fmt: skip
    v = run_deploy(opts, log=lambda _: None)["validation"]
    assert v["conventions"]["dt_s"] == 1.0
    assert v["accuracy"] == {"fixed": 1.0, "reference": 1.0}


def test_cli_deploy_input(tmp_path: Path, capsys) -> None:
    x, labels = _samples()
    path = tmp_path / "clf.nir"
    nir.write(path, _classifier())
    np.savez(tmp_path / "x.npz", input=x, labels=labels)
    out = tmp_path / "rep"
    argv = ["deploy", str(path), "--input", str(tmp_path / "x.npz"), "--dt", "1", "--out", str(out)]
    assert main(argv) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["spikedet: warning: assumed reset = zero, to v_reset (the file cannot tell; "
                   "pass --reset); input scale = 1: input values are integer counts/spikes"]  # fmt: skip
    report = json.loads((out / "report.json").read_text())
    assert report["validation"]["accuracy"]["fixed"] == 1.0
    assert (out / "report.md").is_file()


def test_output_after_a_linear_layer_is_integrated(tmp_path: Path) -> None:
    """Input -> Linear -> LIF -> Affine -> Output: the Output's value summed over T is an
    integrator readout; float and integer agree exactly (weights 1/2) and give the labels."""
    graph = _classifier()
    graph.nodes["head"] = nir.Affine(weight=np.eye(3, dtype=np.float32) * 0.5,
                                     bias=np.full(3, 0.5, np.float32))  # fmt: skip
    graph.edges = [("input", "fc"), ("fc", "lif"), ("lif", "head"), ("head", "output")]
    path = tmp_path / "head.nir"
    nir.write(path, graph)
    x, labels = _samples()
    np.savez(tmp_path / "x.npz", input=x, labels=labels)
    opts = DeployOptions(
        nir_path=path, out=tmp_path / "rep", input=tmp_path / "x.npz", dt=1.0, reset="zero",
        engine="lava" if _lava_ready() else "fixed", samples=2,
    )  # fmt: skip
    v = run_deploy(opts, log=lambda _: None)["validation"]
    assert v["outputs"] == ["output.sum"]
    assert v["output_max_abs_err"] == 0.0 and v["output_total"]["reference"] > 6 * 0.5 * 12
    assert v["accuracy"] == {"fixed": 1.0, "reference": 1.0}
    if "lava_vs_fixed" in v:
        assert v["lava_vs_fixed"]["total_mismatches"] == 0


def _lava_ready() -> bool:
    from spikedet.sim.registry import get_engine

    return bool(get_engine("lava").available()[0])
