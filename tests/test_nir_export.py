"""BN folding, NIR export (docs/semantics.md §2) and the NIR->torch reference executor.

Round trip: model -> export_model -> write_nir -> load_nir (type check on) -> NIRExecutor; the
executor's readouts must equal the model's head outputs and every population's spikes must
equal the outputs of each I-LIF module it represents.
"""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import nir
import numpy as np
import pytest
import torch
from torch import nn

from spikedet.convert.fold import fold_conv_bn
from spikedet.convert.nir_export import (
    NIRBuilder,
    export_model,
    parameter_coverage,
    trace_model,
    write_nir,
)
from spikedet.convert.nir_torch import NIRExecutor, load_nir
from spikedet.errors import SpikedetError
from spikedet.train.models.blocks import (
    ConvBN,
    DetectBranch,
    MSAllConvBlock,
    MSDownSampling,
    time_mean,
)
from spikedet.train.neurons import ILIF, LIF
from tests.model_helpers import randomize

REGISTRY = Path(__file__).resolve().parents[1] / "spikedet/train/models/registry.py"


class TinyDetector(nn.Module):
    """stem(k3 s2, first) -> block -> down(k3 s2) -> block; box/cls branches at both strides."""

    def __init__(self, T: int = 1, c: int = 4, nc: int = 2, reg_max: int = 2, imgsz: int = 16):
        super().__init__()
        self.name, self.nc, self.names = "tiny", nc, [f"c{i}" for i in range(nc)]
        self.reg_max, self.strides, self.T, self.levels, self.imgsz = reg_max, [2, 4], T, 4, imgsz
        self.in_channels = 3
        self.stem = MSDownSampling(3, c, 3, 2, 1, first=True)
        self.block1 = MSAllConvBlock(c, ratio=2, k=3)
        self.down = MSDownSampling(c, 2 * c, 3, 2, 1)
        self.block2 = MSAllConvBlock(2 * c, ratio=2, k=3)
        self.heads = nn.ModuleList(
            nn.ModuleList([DetectBranch(w, 4, 4 * reg_max), DetectBranch(w, 4, nc)])
            for w in (c, 2 * c)
        )

    def forward(self, x: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        x = x.unsqueeze(0).expand(self.T, *x.shape).contiguous() if x.dim() == 4 else x
        f1 = self.block1(self.stem(x))
        f2 = self.block2(self.down(f1))
        return [(time_mean(b(f)), time_mean(c(f))) for (b, c), f in zip(self.heads, (f1, f2))]

    def trace(self, g: NIRBuilder) -> list[tuple[str, str]]:
        f1 = self.block1.trace(g, self.stem.trace(g, g.input))
        f2 = self.block2.trace(g, self.down.trace(g, f1))
        return [
            (b.trace(g, f, f"head.{k}.box"), c.trace(g, f, f"head.{k}.cls"))
            for k, ((b, c), f) in enumerate(zip(self.heads, (f1, f2)))
        ]


def neuron_io(model: nn.Module, x: torch.Tensor) -> tuple[list, dict, dict]:
    """Model outputs and every neuron's (I-LIF and EMS LIF) input and spikes, via hooks."""
    inputs: dict[str, torch.Tensor] = {}
    spikes: dict[str, torch.Tensor] = {}
    hooks = []
    for name, m in model.named_modules():
        if isinstance(m, ILIF | LIF):
            hooks.append(m.register_forward_pre_hook(
                lambda mod, a, name=name: inputs.__setitem__(name, a[0])))  # fmt: skip
            hooks.append(m.register_forward_hook(
                lambda mod, a, out, name=name: spikes.__setitem__(name, out)))  # fmt: skip
    try:
        with torch.no_grad():
            outputs = model(x)
    finally:
        for h in hooks:
            h.remove()
    return outputs, inputs, spikes


def threshold_margin(neuron: nn.Module, x: torch.Tensor) -> float:
    """Smallest distance of the torch membrane to a firing threshold over all neuron-steps: a
    float32 export can only flip a spike (different summation order) where this is ~1e-6."""
    u = s = None
    margin = float("inf")
    for x_t in x:
        if isinstance(neuron, ILIF):
            u = neuron.alpha * x_t if u is None else neuron.beta * (u - s) + neuron.alpha * x_t
            s = torch.round(torch.clamp(u, 0, neuron.levels))
            near = (u - torch.clamp(torch.floor(u), 0, neuron.levels - 1) - 0.5).abs()
        else:
            u = x_t if u is None else neuron.beta * u * (1 - s) + x_t
            s = (u > neuron.threshold).float()
            near = (u - neuron.threshold).abs()
        margin = min(margin, near.min().item())
    return margin


def head_pairs(head: dict, outputs: list) -> list[tuple[str, torch.Tensor]]:
    """(readout role, torch output) for a dfl head ([box, cls] pairs) or an anchor head."""
    if head["type"] == "dfl":
        return [
            (r, o) for roles, outs in zip(head["outputs"], outputs) for r, o in zip(roles, outs)
        ]
    return list(zip(head["outputs"], outputs))


def round_trip(
    model: nn.Module, x: torch.Tensor, path: Path | None, imgsz: int | None = None
) -> dict:
    """Export, write, read back and execute (``path`` None: execute the in-memory graph);
    compare every population that maps to torch neurons (split neurons: their parts
    concatenated) and every head output with the model; return measurements."""
    graph, builder = trace_model(model, imgsz)
    if path is not None:
        write_nir(graph, path)
        loaded = load_nir(path)
        assert set(loaded.nodes) == set(graph.nodes) and len(loaded.edges) == len(graph.edges)
        graph = loaded
    result = NIRExecutor(graph, device="cpu").run(x)
    outputs, inputs, captured = neuron_io(model, x)
    head = json.loads(graph.metadata["spikedet.head"])
    worst = max(
        (result.readouts[r] - ref).abs().max().item() for r, ref in head_pairs(head, outputs)
    )
    assert set(captured) == set(builder.population_of) | set(builder.split_of)
    assert set(result.spikes) == set(builder.populations)
    compared = {n: result.spikes[p] for n, p in builder.population_of.items()}
    compared |= {n: torch.cat([result.spikes[p] for p in parts], 2)
                 for n, parts in builder.split_of.items()}  # fmt: skip
    for name, spikes in compared.items():
        assert spikes.dtype == torch.int64 and spikes.shape == captured[name].shape, name
        mismatched = (spikes != captured[name]).sum().item()
        if mismatched:
            margin = threshold_margin(model.get_submodule(name), inputs[name])
            raise AssertionError(f"{name}: {mismatched} spikes differ (margin {margin:.2g})")
    assert worst <= 1e-5, worst
    coverage = parameter_coverage(model, graph)
    assert coverage["covered"] and coverage["folded_params"] == coverage["graph_params"], coverage
    fired = sum((s > 0).sum().item() for s in captured.values())
    total = sum(s.numel() for s in captured.values())
    levels = {int(v) for s in result.spikes.values() for v in s.unique()}
    return {"worst": worst, "levels": levels, "graph": graph, "coverage": coverage,
            "builder": builder, "fired": fired / total}  # fmt: skip


def test_fold_conv_bn_matches_eval_convbn():
    torch.manual_seed(0)
    for groups, bias, bn in (
        (1, True, True),
        (6, False, True),
        (1, True, False),
        (1, False, False),
    ):
        cb = randomize(ConvBN(6, 6, 3, 1, groups=groups, bias=bias, bn=bn), seed=groups)
        x = torch.randn(2, 3, 6, 9, 9)
        weight, b = fold_conv_bn(cb)
        assert weight.dtype == np.float32 and weight.shape == (6, 6 // groups, 3, 3)
        folded = nn.functional.conv2d(
            x.flatten(0, 1), torch.from_numpy(weight), torch.from_numpy(b), padding=1, groups=groups
        )
        with torch.no_grad():
            ref = cb(x).flatten(0, 1)
        assert (folded - ref).abs().max().item() <= 1e-5
    cb.conv.bias = None
    assert np.array_equal(fold_conv_bn(cb)[1], np.zeros(6, np.float32))


@pytest.mark.parametrize("T", [1, 3])
def test_round_trip_tiny_detector(tmp_path, T):
    model = randomize(TinyDetector(T=T), seed=T)
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(7))
    out = round_trip(model, x, tmp_path / "tiny.nir")
    assert out["levels"] == {0, 1, 2, 3, 4}  # every spike level is exercised, not just 0/1
    graph = out["graph"]
    md = graph.metadata
    assert md["spikedet.format"] == 2 and md["spikedet.model"] == "tiny"
    assert json.loads(md["spikedet.extensions"]) == []  # nothing beyond §2.1-2.4 is used
    assert md["spikedet.T"] == T and md["dt"] == pytest.approx(1e-4)
    assert md["spikedet.input_scale"] == 255
    head = json.loads(md["spikedet.head"])
    assert head == {
        "type": "dfl", "nc": 2, "reg_max": 2, "strides": [2, 4],
        "outputs": [["head.0.box", "head.0.cls"], ["head.1.box", "head.1.cls"]],
        "names": ["c0", "c1"], "imgsz": 16,
    }  # fmt: skip


def test_encoding_follows_semantics(tmp_path):
    model = randomize(TinyDetector(T=1), seed=3)
    graph, builder = trace_model(model)
    write_nir(graph, tmp_path / "g.nir")
    g = load_nir(tmp_path / "g.nir")
    edges = set(g.edges)
    # I-LIFs reading the same current are one population, named after the first one traced.
    assert builder.population_of["heads.0.0.c1.lif"] == "down.lif"
    assert builder.population_of["heads.0.1.c1.lif"] == "down.lif"
    assert builder.population_of["heads.1.1.c1.lif"] == "heads.1.0.c1.lif"
    assert "heads.1.1.c1.lif.li" not in g.nodes
    pop = "block1.sep.pw.lif"
    li = g.nodes[f"{pop}.li"]
    assert isinstance(li, nir.LI) and li.tau.shape == (4, 8, 8)
    assert li.metadata == {"spikedet.neuron": "ilif", "D": 4, "beta": 0.25, "alpha": 1.0}
    np.testing.assert_allclose(li.tau, 1e-4 / 0.75, rtol=1e-6)
    np.testing.assert_allclose(li.r, 1 / 0.75, rtol=1e-6)
    for k in range(1, 5):
        q = g.nodes[f"{pop}.q{k}"]
        assert isinstance(q, nir.Threshold) and np.all(q.threshold == k - 0.5)
        assert {(f"{pop}.li", f"{pop}.q{k}"), (f"{pop}.q{k}", f"{pop}.reset")} <= edges
        assert (f"{pop}.q{k}", "block1.sep.pw.cb") in edges
    assert np.all(g.nodes[f"{pop}.reset"].scale == -0.25) and (f"{pop}.reset", f"{pop}.li") in edges
    # Membrane shortcut: the stem conv feeds the block's first LI and the LI after the sum.
    assert ("input", "stem.cb") in edges and ("stem.cb", f"{pop}.li") in edges
    assert ("stem.cb", "block1.conv1.lif.li") in edges
    assert ("block1.sep.out.cb", "block1.conv1.lif.li") in edges
    # Depthwise conv: stored as the exact full conv, block-diagonal, with its grouping noted.
    dw = g.nodes["block1.sep.dw.cb"]
    assert dw.groups == 1 and dw.weight.shape == (8, 8, 3, 3) and tuple(dw.input_shape) == (8, 8)
    recipe = json.loads(dw.metadata.pop("spikedet.recipe"))  # what parameter_coverage checks
    assert recipe == {"source": "spikes", "channels": 8,
                      "steps": [["conv", "block1.sep.dw.cb", 0, 0, 1]]}  # fmt: skip
    assert dw.metadata == {"spikedet.groups": 8, "spikedet.in_channels": 8}
    off_diagonal = dw.weight * (1 - np.eye(8))[:, :, None, None]
    assert not off_diagonal.any() and np.all(np.diagonal(dw.weight, axis1=0, axis2=1) != 0)
    readout = g.nodes["head.1.cls"]
    assert isinstance(readout, nir.I) and readout.metadata == {"spikedet.readout": "mean"}
    np.testing.assert_allclose(readout.r, 1e4, rtol=1e-6)
    assert isinstance(g.nodes["head.1.cls.output"], nir.Output)
    assert tuple(g.nodes["input"].output_type["output"]) == (3, 16, 16)
    assert all(
        tuple(np.asarray(n.input_shape)) for n in g.nodes.values() if isinstance(n, nir.Conv2d)
    )


def test_parameter_coverage_detects_changes():
    model = randomize(TinyDetector(), seed=1)
    graph = export_model(model)
    cov = parameter_coverage(model, graph)
    expected = sum(
        m.conv.weight.numel() + m.conv.out_channels
        for m in model.modules()
        if isinstance(m, ConvBN)
    )
    assert cov["covered"] and cov["folded_params"] == cov["graph_params"] == expected
    assert cov["structural_zeros"] == (8 * 8 - 8) * 9 + (16 * 16 - 16) * 9  # two depthwise convs
    assert cov["nodes"] == {"direct": 24, "slice": 0, "embedded": 0, "composed": 0, "copies": 0}
    for node in graph.nodes.values():  # format 1 files: no recipes, nodes named after modules
        if isinstance(node, nir.Conv2d):
            del node.metadata["spikedet.recipe"]
    assert parameter_coverage(model, graph)["graph_params"] == expected
    with torch.no_grad():
        model.block2.conv1.cb.bn.bias[0] += 1.0
    assert not parameter_coverage(model, graph)["covered"]
    model.extra = nn.Linear(2, 2)
    cov = parameter_coverage(model, graph)
    assert not cov["covered"] and cov["folded_params"] == expected + 6


class _ReluBlock(nn.Module):
    def trace(self, g, x):  # noqa: ANN001 - a block that hands the builder a non-spiking neuron
        return g.conv(g.spikes(x, self.lif), self.cb)

    def __init__(self, c: int):
        super().__init__()
        self.lif, self.cb = nn.ReLU(), ConvBN(c, c, 3)


def test_unsupported_modules_raise():
    model = randomize(TinyDetector(), seed=2)
    model.block1.sep.dw = _ReluBlock(8)  # a ReLU where a spiking neuron belongs
    with pytest.raises(SpikedetError, match="unsupported neuron ReLU") as err:
        export_model(model)
    assert err.value.where == "block1.sep.dw.lif"
    model = randomize(TinyDetector(), seed=2)
    model.block2.sep = nn.MaxPool2d(3)  # no trace at all
    with pytest.raises(SpikedetError, match="MaxPool2d"):
        export_model(model)
    model = randomize(TinyDetector(), seed=2)
    model.unused = ConvBN(4, 4)  # parameters off the traced path would be dropped silently
    with pytest.raises(SpikedetError, match="not on the traced path") as err:
        export_model(model)
    assert err.value.where == "unused.conv"
    model = randomize(TinyDetector(), seed=2)
    model.stem.cb.conv.dilation = (2, 2)
    with pytest.raises(SpikedetError, match="dilation") as err:
        export_model(model)
    assert err.value.where == "stem.cb"


def test_bad_files_raise(tmp_path):
    with pytest.raises(SpikedetError, match="not found"):
        load_nir(tmp_path / "missing.nir")
    junk = tmp_path / "junk.nir"
    junk.write_bytes(b"\x89HDF\r\n\x1a\n not really")
    with pytest.raises(SpikedetError, match="not a readable NIR") as err:
        load_nir(junk)
    assert err.value.where == str(junk)
    good = tmp_path / "good.nir"
    write_nir(export_model(randomize(TinyDetector(), seed=5)), good)
    for mutate in ("drop_node", "bad_type"):
        bad = tmp_path / f"{mutate}.nir"
        bad.write_bytes(good.read_bytes())
        with h5py.File(bad, "r+") as f:
            if mutate == "drop_node":
                del f["node/nodes/block1.conv2.cb"]  # edges now name a missing node
            else:
                del f["node/nodes/stem.cb/type"]
                f["node/nodes/stem.cb"].create_dataset("type", data="Conv9d")
        with pytest.raises(SpikedetError) as err:
            load_nir(bad)
        assert err.value.where == str(bad)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["junk.nir", "good.nir", "drop_node.nir", "bad_type.nir"]
    )  # no temporary files left behind


def test_write_nir_refuses_unreadable_graph(tmp_path):
    """A grouped Conv2d with a patched input type checks in memory but not after nir.read:
    the reason grouped convs are exported expanded. write_nir must not leave such a file."""
    dw = nir.Conv2d((4, 4), np.ones((3, 1, 3, 3), np.float32), 1, 1, 1, 3, np.zeros(3, np.float32))
    dw.input_type = {"input": np.array([3, 4, 4])}
    graph = nir.NIRGraph(
        {
            "input": nir.Input(np.array([3, 4, 4])),
            "dw": dw,
            "output": nir.Output(np.array([3, 4, 4])),
        },
        [("input", "dw"), ("dw", "output")],
    )
    with pytest.raises(SpikedetError, match="readable NIR") as err:
        write_nir(graph, tmp_path / "dw.nir")
    assert err.value.where == str(tmp_path / "dw.nir")
    assert list(tmp_path.iterdir()) == []


def test_duplicate_terms_raise():
    model = randomize(TinyDetector(), seed=2)
    builder = NIRBuilder(model, (3, 16, 16), T=1)
    stem = model.stem.trace(builder, builder.input)
    builder.spikes(stem, model.down.lif)
    with pytest.raises(SpikedetError, match="more than once"):
        builder.spikes(stem + stem, model.block1.sep.pw.lif)


def test_executor_generic_primitives():
    """LIF (hard reset), IF, Affine, Flatten and a recurrent Linear, checked by hand in numpy."""
    dt, n = 1e-4, 3
    w_in = np.array([[0.5, -0.2], [0.3, 0.8], [1.0, 0.1]], np.float32)
    w_rec = np.array([[0.0, 0.5, 0.0], [0.0, 0.0, 0.5], [0.5, 0.0, 0.0]], np.float32)
    tau, thr = np.full(n, 5e-4, np.float32), np.full(n, 1.0, np.float32)
    nodes = {
        "in": nir.Input(np.array([2])),
        "aff": nir.Affine(w_in, np.array([0.1, 0.0, -0.1], np.float32)),
        "lif": nir.LIF(tau, tau / dt, np.zeros(n, np.float32), thr, np.full(n, -0.2, np.float32)),
        "rec": nir.Linear(w_rec),
        "if": nir.IF(
            np.full(n, 1 / dt, np.float32), np.full(n, 1.5, np.float32), np.zeros(n, np.float32)
        ),
        "out": nir.Output(np.array([n])),
    }
    edges = [
        ("in", "aff"),
        ("aff", "lif"),
        ("lif", "rec"),
        ("rec", "lif"),
        ("lif", "if"),
        ("if", "out"),
    ]
    graph = nir.NIRGraph(nodes, edges, metadata={"dt": dt})
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 3, (6, 1, 2)).astype(np.float32)
    res = NIRExecutor(graph, device="cpu", dtype=torch.float64).run(
        torch.from_numpy(x), record=True
    )
    v, z_prev, u, fired_if = np.zeros(n), np.zeros(n), np.zeros(n), []
    lif_spikes = []
    for t in range(6):
        current = w_in @ x[t, 0] + np.array([0.1, 0.0, -0.1]) + w_rec @ z_prev
        v = v + (dt / 5e-4) * (-v + (5e-4 / dt) * current)
        z = (v > 1.0).astype(float)
        v = np.where(z > 0, -0.2, v)
        u = u + z
        f = (u > 1.5).astype(float)
        u = np.where(f > 0, 0.0, u)
        lif_spikes.append(z), fired_if.append(f)
        z_prev = z
    np.testing.assert_allclose(res.node_outputs["lif"][:, 0].numpy(), np.array(lif_spikes), atol=0)
    np.testing.assert_allclose(res.node_outputs["out"][:, 0].numpy(), np.array(fired_if), atol=0)
    assert 0 < np.array(lif_spikes).sum() < 18  # the reset and recurrence actually matter
    flat = nir.NIRGraph(
        {"in": nir.Input(np.array([2, 3, 4])), "fl": nir.Flatten(np.array([2, 3, 4]), 0),
         "out": nir.Output(np.array([24]))},
        [("in", "fl"), ("fl", "out")],
    )  # fmt: skip
    xs = torch.randn(5, 2, 3, 4)
    res = NIRExecutor(flat, device="cpu").run(xs, T=2, record=True)
    assert torch.equal(res.node_outputs["out"][1], xs.flatten(1))
    NIRExecutor(_cuba_graph())  # CubaLIF runs since issue 16 (docs/semantics.md §4.3)
    odd = nir.NIRGraph(
        {"in": nir.Input(np.array([2])), "x": _OddNode(), "out": nir.Output(np.array([2]))},
        [("in", "x"), ("x", "out")],
        type_check=False,
    )
    with pytest.raises(SpikedetError, match="unsupported NIR node type"):
        NIRExecutor(odd)


class _OddNode(nir.NIRNode):
    """A node type no executor knows."""

    def __init__(self) -> None:
        self.input_type = {"input": np.array([2])}
        self.output_type = {"output": np.array([2])}
        self.metadata = {}


def _cuba_graph() -> nir.NIRGraph:
    one = np.ones(2, np.float32)
    return nir.NIRGraph.from_list(nir.CubaLIF(one, one, one, 0 * one, one))


@pytest.mark.skipif(not REGISTRY.exists(), reason="model registry not written yet")
@pytest.mark.parametrize("T", [1, 2])
def test_round_trip_spikeyolo_pico(tmp_path, T):
    from spikedet.train.models.registry import build_model

    model = randomize(build_model("spikeyolo-pico", T=T), seed=11)
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    out = round_trip(model, x, tmp_path / "pico.nir", imgsz=64)
    assert out["levels"] == {0, 1, 2, 3, 4}
    assert json.loads(out["graph"].metadata["spikedet.head"])["strides"] == model.strides
