"""The float reference's fast path (issue 18): compact convs and the step program
(``spikedet.convert.nir_torch_weights``, ``spikedet.convert.nir_torch_plan``) against a plain
execution of every node with the graph's full, expanded weights.

With dyadic weights and inputs every conv sum is exact in float32, so any summation order
gives the same numbers: the grouped, row-cut and deduplicated execution must then equal the
expanded one bit for bit, ties at the thresholds included.
"""

from __future__ import annotations

import copy
from pathlib import Path

import nir
import numpy as np
import pytest
import torch

from spikedet.convert import nir_torch_weights
from spikedet.convert.nir_export import export_model, write_nir
from spikedet.convert.nir_torch import NIRExecutor
from spikedet.convert.nir_torch_weights import LazyWeight, compact_param, load_lazy
from spikedet.errors import SpikedetError
from spikedet.train.models.registry import build_model
from tests.model_helpers import randomize

COMPACTING_KEYS = ("spikedet.groups", "spikedet.in_channels", "spikedet.out_offset")


def _dyadic(name: str, T: int) -> nir.NIRGraph:
    """``name`` at 64 px (RepConv chains fused) with every conv weight and bias rounded to a
    multiple of 1/64."""
    model = randomize(build_model(name, T=T), seed=11)
    if hasattr(model, "reparameterize"):
        model.reparameterize()
    graph = export_model(model, 64)
    for node in graph.nodes.values():
        if isinstance(node, nir.Conv2d):
            node.weight = (np.round(np.asarray(node.weight) * 64) / 64).astype(np.float32)
            node.bias = (np.round(np.asarray(node.bias) * 64) / 64).astype(np.float32)
    return graph


def _expanded(graph: nir.NIRGraph) -> nir.NIRGraph:
    """The same graph without the tags that let the executor group or cut a conv."""
    plain = copy.deepcopy(graph)
    for node in plain.nodes.values():
        if isinstance(node, nir.Conv2d):
            keys = (*COMPACTING_KEYS, "spikedet.out_channels")
            node.metadata = {k: v for k, v in node.metadata.items() if k not in keys}
    return plain


def _input(T: int) -> torch.Tensor:
    levels = torch.randint(0, 17, (T, 2, 3, 64, 64), generator=torch.Generator().manual_seed(4))
    return levels.float() / 16


def _assert_same(a, b) -> None:
    assert set(a.spikes) == set(b.spikes) and set(a.readouts) == set(b.readouts)
    for name in a.spikes:
        assert torch.equal(a.spikes[name].long(), b.spikes[name].long()), name
    for name in a.readouts:
        assert torch.equal(a.readouts[name], b.readouts[name]), name


@pytest.fixture(scope="module")
def pico() -> nir.NIRGraph:
    """spikeyolo-v8-pico, T = 1: depthwise convs, concatenations with one conv per
    destination, upsampling, SPPF sum pools."""
    return _dyadic("spikeyolo-v8-pico", T=1)


@pytest.mark.parametrize("name, T", [("spikeyolo-v8-pico", 1), ("spikeyolo-pico", 2)])
def test_compact_execution_equals_expanded_plain_execution(name: str, T: int) -> None:
    pico = _dyadic(name, T)  # spikeyolo-pico at T = 2: resets, states carried between steps
    x = _input(T)
    fast = NIRExecutor(pico, device="cpu")
    every_node = fast.run(x, record=True)  # plain order, every node, compact convs
    result = fast.run(x)
    _assert_same(result, every_node)
    expanded = NIRExecutor(_expanded(pico), device="cpu").run(x, record=True)
    _assert_same(result, expanded)
    assert {int(v) for s in result.spikes.values() for v in s.unique()} == {0, 1, 2, 3, 4}
    # exact ties v = k - 1/2 occur here, so the ceil form of the spike count is exercised there
    ties = sum(
        int(((out * 2) % 2 == 1).sum())
        for name, out in expanded.node_outputs.items()
        if fast.kinds[name] == "LI"
    )
    assert ties > 0
    narrow = fast.run(x, spike_dtype=fast.spike_dtype_for())
    assert fast.spike_dtype_for() == torch.int8
    assert all(narrow.spikes[p].dtype == torch.int8 for p in narrow.spikes)
    _assert_same(narrow, result)


def test_grouped_convs_run_grouped_cut_rows_and_duplicates_once(pico: nir.NIRGraph) -> None:
    ex = NIRExecutor(pico, device="cpu")
    convs = {n: v for n, v in pico.nodes.items() if isinstance(v, nir.Conv2d)}
    grouped = {n: v for n, v in convs.items() if int(v.metadata.get("spikedet.groups", 1)) > 1}
    cut = {n: v for n, v in convs.items() if "spikedet.out_offset" in v.metadata}
    assert grouped and cut
    for name, node in grouped.items():
        g = int(node.metadata["spikedet.groups"])
        cout, cin, kh, kw = node.weight.shape
        assert ex.static[name]["groups"] == g
        assert tuple(ex._p(name, "weight").shape) == (cout, cin // g, kh, kw), name
    for name, node in cut.items():
        rows = int(node.metadata["spikedet.out_channels"])
        assert ex._p(name, "weight").shape[0] == rows < node.weight.shape[0], name
    for first, last in ((True, False), (False, True)):
        ops = [op for op in ex.planner.plan(first, last).ops if op[0] == "conv"]
        assert len(ops) < len(convs)  # one conv per destination in the file, computed once
        assert len({op[1] for op in ops}) == len(ops)


def test_weights_outside_the_groups_or_rows_are_refused(pico: nir.NIRGraph) -> None:
    for key in ("spikedet.groups", "spikedet.out_offset"):
        bad = copy.deepcopy(pico)
        name, node = next((n, v) for n, v in bad.nodes.items() if key in v.metadata)
        weight = np.array(node.weight)
        if key == "spikedet.groups":  # row 0 (group 0), first column of group 1
            zero = (0, weight.shape[1] // int(node.metadata[key]), 0, 0)
        else:  # a row outside the written channels
            end = int(node.metadata[key]) + int(node.metadata["spikedet.out_channels"])
            zero = (end if end < weight.shape[0] else 0, 0, 0, 0)
        assert weight[zero] == 0
        weight[zero] = 0.5
        node.weight = weight
        with pytest.raises(SpikedetError) as err:
            NIRExecutor(bad, device="cpu")
        assert err.value.where == name or name in str(err.value)


def test_lazy_file_weights_give_the_same_run(
    pico: nir.NIRGraph, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "pico.nir"
    write_nir(pico, path)
    monkeypatch.setattr(nir_torch_weights, "LAZY_MIN_ELEMENTS", 1)
    lazy = load_lazy(path)
    weights = [v.weight for v in lazy.nodes.values() if isinstance(v, nir.Conv2d)]
    assert weights and all(isinstance(w, LazyWeight) for w in weights)
    assert all(w.strides == (0, 0, 0, 0) for w in weights)  # nothing read yet
    x = _input(1)
    _assert_same(NIRExecutor(lazy, device="cpu").run(x), NIRExecutor(pico, device="cpu").run(x))
    with pytest.raises(SpikedetError, match="not found"):
        load_lazy(tmp_path / "missing.nir")


def test_spike_count_of_one_threshold_at_ties() -> None:
    """A generic graph: each Threshold is a population; counts are [x > θ] exactly."""
    values = np.array(
        [0.5, np.nextafter(0.5, 1), np.nextafter(0.5, 0), 0.25, 0.2499999, 1e-30, -3.0, 7.0,
         np.inf, -np.inf, 1.5, 2.0],
        dtype=np.float32,
    )  # fmt: skip
    n = values.size
    graph = nir.NIRGraph(
        nodes={
            "in": nir.Input(np.array([n])),
            "half": nir.Threshold(np.full(n, 0.5, np.float32)),
            "odd": nir.Threshold(np.linspace(-1, 2, n).astype(np.float32)),
            "out": nir.Output(np.array([n])),
        },
        edges=[("in", "half"), ("in", "odd"), ("half", "out"), ("odd", "out")],
    )
    ex = NIRExecutor(graph, device="cpu")
    result = ex.run(torch.from_numpy(values)[None], T=1)
    want_half = torch.from_numpy(values > 0.5).long()
    want_odd = torch.from_numpy(values > np.linspace(-1, 2, n).astype(np.float32)).long()
    assert torch.equal(result.spikes["half"][0, 0], want_half)
    assert torch.equal(result.spikes["odd"][0, 0], want_odd)


def test_compact_param_keeps_the_values() -> None:
    constant = np.broadcast_to(np.float32(0.25), (4, 5, 6))
    assert compact_param(constant).shape == (1, 1, 1)
    per_channel = np.broadcast_to(np.arange(4, dtype=np.float32)[:, None, None], (4, 5, 6)).copy()
    assert compact_param(per_channel).shape == (4, 1, 1)
    rng = np.random.default_rng(0)
    for array in (constant, per_channel, rng.random((3, 2, 2)), np.float32(2.0)):
        small = compact_param(array)
        assert np.array_equal(np.broadcast_to(small, np.shape(array)), array)
