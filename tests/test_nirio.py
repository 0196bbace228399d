"""spikedet.nirio: nir.write's layout with constant arrays as unwritten fill-value datasets."""

from __future__ import annotations

from pathlib import Path

import h5py
import nir
import numpy as np
import pytest
import torch

from spikedet.convert.nir_export import export_model, write_nir
from spikedet.deploy.nir_read import read_nir
from spikedet.nirio import read_graph, write_graph
from spikedet.train.models.registry import build_model


def _same_graph(a: nir.NIRGraph, b: nir.NIRGraph) -> None:
    assert list(a.nodes) == list(b.nodes)
    assert [tuple(e) for e in a.edges] == [tuple(e) for e in b.edges]
    assert a.metadata == b.metadata
    for name in a.nodes:
        da, db = a.nodes[name].to_dict(), b.nodes[name].to_dict()
        assert da.keys() == db.keys(), name
        for key, value in da.items():
            if isinstance(value, np.ndarray):
                other = np.asarray(db[key])
                assert value.dtype == other.dtype and np.array_equal(value, other), (name, key)
            elif key != "metadata":
                assert value == db[key], (name, key)


@pytest.fixture(scope="module")
def v8_graph() -> nir.NIRGraph:
    torch.manual_seed(0)
    model = build_model("spikeyolo-v8-pico")
    model.reparameterize()
    return export_model(model.eval())


def test_same_graph_as_nir_write_and_nir_reads_it(v8_graph: nir.NIRGraph, tmp_path: Path):
    ours, theirs = tmp_path / "ours.nir", tmp_path / "theirs.nir"
    write_graph(ours, v8_graph)
    nir.write(theirs, v8_graph)
    reference = nir.read(theirs)
    _same_graph(reference, nir.read(ours))  # stock nir reads our file as the same graph
    _same_graph(reference, read_graph(ours))
    _same_graph(reference, read_graph(theirs))  # nir.write files: constants found by chunks


def test_constant_arrays_store_no_bytes(v8_graph: nir.NIRGraph, tmp_path: Path):
    path = tmp_path / "g.nir"
    write_graph(path, v8_graph)
    lis = [n for n, node in v8_graph.nodes.items() if isinstance(node, nir.LI)]
    li = max(lis, key=lambda n: np.asarray(v8_graph.nodes[n].tau).size)
    with h5py.File(path) as f:
        tau = f["node"]["nodes"][li]["tau"]
        assert tau.size >= 4096 and tau.id.get_storage_size() == 0
        assert np.all(tau[()] == np.asarray(v8_graph.nodes[li].tau))
    back = read_graph(path).nodes[li].tau
    assert all(s == 0 for s in back.strides) and not back.flags.writeable  # a broadcast view


def test_varying_array_is_written_plainly(tmp_path: Path):
    tau = np.full((4, 32, 32), 2e-4, np.float32)
    tau[1, 2, 3] = 3e-4  # one neuron differs: must survive exactly
    graph = nir.NIRGraph(
        nodes={
            "input": nir.Input(np.array([4, 32, 32])),
            "li": nir.LI(tau, np.ones_like(tau), np.zeros_like(tau)),
            "output": nir.Output(np.array([4, 32, 32])),
        },
        edges=[("input", "li"), ("li", "output")],
    )
    path = tmp_path / "g.nir"
    write_graph(path, graph)
    assert np.array_equal(nir.read(path).nodes["li"].tau, tau)
    assert np.array_equal(read_graph(path).nodes["li"].tau, tau)


def test_write_nir_file_deploys(v8_graph: nir.NIRGraph, tmp_path: Path):
    path = tmp_path / "m.nir"
    write_nir(v8_graph, path)
    fg = read_nir(path)
    assert {p.kind for p in fg.populations} >= {"ilif", "maxpool", "readout"}
    assert any(s.upsample == 2 for s in fg.synapses)
