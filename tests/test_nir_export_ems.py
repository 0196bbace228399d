"""NIR export of EMS-YOLO (EMS LIF §2.5, composed shortcut maps §2.6, concatenation §2.7,
max_pool / upsample extension ops §2.8-2.9, anchor head §2.4) and its ``-avg`` variant.

Round trips compare the NIR executor with the torch model: every LIF population's spikes
exactly and the head outputs within 1e-5 (fixed seeds, see tests/test_nir_export_spikeyolo.py).
Also here: the executor's pooling / extension ops, the composition of maps against the maps
applied one by one, and the builder's refusals of maps without an exact form.
"""

from __future__ import annotations

import json

import nir
import numpy as np
import pytest
import torch
from torch import nn

from spikedet.convert import nir_compose as nc
from spikedet.convert import nir_terms as nt
from spikedet.convert.nir_export import (
    NIRBuilder,
    export_model,
    parameter_coverage,
    trace_model,
    write_nir,
)
from spikedet.convert.nir_torch import NIRExecutor, load_nir
from spikedet.errors import SpikedetError
from spikedet.train.models.blocks import ConvBN
from spikedet.train.models.ems import ems_config
from spikedet.train.models.registry import MODEL_NAMES, build_from_config, build_model
from spikedet.train.models.yolo_blocks import Upsample2x
from tests.model_helpers import randomize
from tests.test_nir_export import round_trip


def image(size: int, seed: int = 3) -> torch.Tensor:
    return torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize(
    ("name", "extensions"),
    [
        ("ems-pico", ["max_pool", "upsample_nearest"]),
        ("ems-pico-avg", ["upsample_nearest"]),
        ("ems-res10", ["max_pool", "upsample_nearest"]),
    ],
)
def test_round_trip(tmp_path, name, extensions):
    model = randomize(build_model(name, T=2, imgsz=64), seed=0)
    out = round_trip(model, image(64), tmp_path / f"{name}.nir")
    assert out["levels"] == {0, 1} and 0.2 < out["fired"] < 0.8  # binary spikes, both values
    graph = out["graph"]
    assert json.loads(graph.metadata["spikedet.extensions"]) == extensions
    assert graph.metadata["spikedet.T"] == 2 and graph.metadata["spikedet.input_scale"] == 255
    assert out["coverage"]["nodes"]["composed"] > 0  # shortcut and head convs composed away


def test_anchor_head_metadata():
    model = build_model("ems-pico")
    head = json.loads(export_model(model).metadata["spikedet.head"])
    anchors = ems_config("ems-pico")["anchors"]
    assert head == {
        "type": "anchor", "nc": 2, "strides": [16, 32],
        # the float32 values the model computes with (8.1 is 8.100000381... there)
        "anchors": np.float32(anchors).astype(float).tolist(),
        "outputs": ["detect.0", "detect.1"], "names": ["class0", "class1"], "imgsz": 64,
    }  # fmt: skip


def test_lif_and_max_pool_encoding():
    model = randomize(build_model("ems-pico"), seed=0)
    graph, builder = trace_model(model)
    nodes, edges = graph.nodes, set(graph.edges)
    # EMS LIF (§2.5): one LIF node, hard reset to 0; the block's two LIFs on x are one population.
    assert builder.population_of["stages.1.0.residual.a.lif"] == "stages.1.0.extra.lif"
    lif = nodes["stages.1.0.extra.lif.lif"]
    assert lif.metadata == {"spikedet.neuron": "lif", "beta": 0.25, "threshold": 0.5}
    np.testing.assert_allclose(lif.tau, 1e-4 / 0.75, rtol=1e-6)
    np.testing.assert_allclose(lif.r, 1 / 0.75, rtol=1e-6)
    assert np.all(lif.v_threshold == 0.5) and np.all(lif.v_reset == 0) and np.all(lif.v_leak == 0)
    assert not any(d == "stages.1.0.extra.lif.lif" and s.endswith("reset") for s, d in edges)
    assert ("stages.1.0.extra.lif.lif", "stages.1.0.extra.cb@stages.1.0.cat") in edges
    # max_pool of the shortcut current cat[extra(x), x]: fed by the embedded parts; the
    # previous stage's max_pool term is embedded by a copy of its node (§2.7, §2.8).
    pool = nodes["stages.1.0.pool.pool"]
    assert isinstance(pool, nir.SumPool2d) and list(pool.kernel_size) == [2, 2]
    assert pool.metadata == {"spikedet.op": "max_pool", "spikedet.kernel": [2, 2],
                             "spikedet.stride": [2, 2], "spikedet.padding": [0, 0]}  # fmt: skip
    feeds = {s for s, d in edges if d == "stages.1.0.pool.pool"}
    assert feeds == {"stages.1.0.extra.cb@stages.1.0.cat",
                     "stages.0.0.residual.b.cb@stages.1.0.cat",
                     "stages.0.0.pool.pool@stages.1.0.cat"}  # fmt: skip
    copy = {s for s, d in edges if d == "stages.0.0.pool.pool@stages.1.0.cat"}
    assert copy == {"stages.0.0.extra.cb@stages.0.0.cat@stages.1.0.cat",
                    "stem@stages.0.0.cat@stages.1.0.cat"}  # fmt: skip
    stem = nodes["stem@stages.0.0.cat@stages.1.0.cat"]  # stem's 8 channels at 16 + 8 of 32
    assert stem.metadata["spikedet.out_offset"] == 24 and stem.weight.shape[0] == 32
    # §2.9: the head's 1x1 shortcut conv reads the last max_pool node directly.
    conv = "stages.3.0.pool.pool@h1.shortcut.0"
    assert ("stages.3.0.pool.pool", conv) in edges and isinstance(nodes[conv], nir.Conv2d)
    assert ("stages.3.0.pool.pool", "h1.residual.a.lif.lif") in edges  # and the next LIF


def test_avg_variant_reads_only_spikes_and_input():
    """ems-pico-avg: no extension op; every conv reads the input or spikes, pooling composed in
    (the stem after four 2x2 average pools: kernel 3 + 2 + 4 + 8 + 16 = 33, stride 32)."""
    model = randomize(build_model("ems-pico-avg"), seed=0)
    graph = export_model(model)
    assert not any(isinstance(n, nir.SumPool2d) and n.metadata.get("spikedet.op") == "max_pool"
                   for n in graph.nodes.values())  # fmt: skip
    for name, node in graph.nodes.items():
        if isinstance(node, nir.Conv2d):
            for src, dst in graph.edges:
                if dst == name:
                    assert isinstance(graph.nodes[src], nir.Input | nir.LIF), (src, name)
    deepest = [n for n, node in graph.nodes.items()
               if isinstance(node, nir.Conv2d) and node.weight.shape[-1] == 33]  # fmt: skip
    assert deepest and all(n.startswith("stem@") for n in deepest)
    assert tuple(graph.nodes[deepest[0]].stride) == (32, 32)


def test_coverage_catches_changes_in_composed_factors():
    model = randomize(build_model("ems-pico"), seed=0)
    graph = export_model(model)
    cov = parameter_coverage(model, graph)
    assert cov["covered"] and cov["graph_params"] == cov["folded_params"]
    with torch.no_grad():  # the detect convs exist only as factors of composed nodes
        model.detect.convs[1].bias[0] += 0.5
    cov = parameter_coverage(model, graph)
    differs = [p.split(":")[0] for p in cov["problems"] if "differs" in p]
    assert not cov["covered"] and differs == ["p5_out.residual.b.cb@detect.convs.1"]  # the bias
    # term; its node no longer verifies, so the parameters only it holds are unaccounted.
    b_conv = model.p5_out.residual.b.cb.conv  # W' and b' of the only factor of that node
    lost = model.detect.convs[1].bias.numel() + b_conv.weight.numel() + b_conv.out_channels
    assert cov["folded_params"] - cov["graph_params"] == lost
    model = randomize(build_model("ems-pico"), seed=0)
    first = next(n for n in graph.nodes if n.startswith("p5_out.extra.cb@"))
    del graph.nodes[first]  # the only node holding p5_out.extra's weights
    cov = parameter_coverage(model, graph)
    assert not cov["covered"]
    assert (
        cov["folded_params"] - cov["graph_params"]
        == sum(p.numel() for p in model.p5_out.extra.cb.parameters())
        - model.p5_out.extra.cb.bn.weight.numel()
    )  # folded: W' and b' (γ, β are folded away)


def test_names_and_pool_config():
    assert {f"{n}-avg" for n in ("ems-pico", "ems-res10", "ems-res34-coco")} <= set(MODEL_NAMES)
    avg = build_model("ems-res10-avg", T=2)
    assert avg.name == "ems-res10-avg" and avg.config["pool"] == "avg"
    pools = [m for m in avg.modules() if isinstance(m, nn.AvgPool2d | nn.MaxPool2d)]
    assert pools and all(isinstance(p, nn.AvgPool2d) for p in pools)
    config = dict(build_model("ems-pico").config)
    assert config.pop("pool") == "max"  # a checkpoint config from before the key existed
    assert all(isinstance(m, nn.MaxPool2d) for m in build_from_config(config).modules()
               if isinstance(m, nn.AvgPool2d | nn.MaxPool2d))  # fmt: skip
    with pytest.raises(SpikedetError, match="pool must be one of"):
        build_from_config({**config, "pool": "lp"})
    with pytest.raises(SpikedetError, match="unknown model"):
        build_model("ems-res99-avg")


def _pool_graph(op: str | None, ext: list[str] | None, fmt: int | None = 2) -> nir.NIRGraph:
    """Input (2, 4, 4) -> one SumPool2d (plain or a §2.8 op) -> Output."""
    if op == "upsample_nearest":
        node = nir.SumPool2d(np.array([1, 1]), np.array([1, 1]), np.array([2, 2]),
                             metadata={"spikedet.op": op, "spikedet.scale": 2})  # fmt: skip
    else:
        meta = {} if op is None else {"spikedet.op": op, "spikedet.kernel": [3, 3],
                                      "spikedet.stride": [1, 1]}  # fmt: skip
        node = nir.SumPool2d(np.array([3, 3]), np.array([1, 1]), np.array([1, 1]), metadata=meta)
    metadata: dict = {"dt": 1e-4}
    if fmt is not None:
        metadata["spikedet.format"] = fmt
    if ext is not None:
        metadata["spikedet.extensions"] = json.dumps(ext)
    out_shape = [2, 8, 8] if op == "upsample_nearest" else [2, 4, 4]
    nodes = {"input": nir.Input(np.array([2, 4, 4])), "pool": node,
             "out": nir.Output(np.array(out_shape))}  # fmt: skip
    return nir.NIRGraph(nodes, [("input", "pool"), ("pool", "out")], metadata=metadata)


def test_executor_pooling_and_extension_ops(tmp_path):
    """SumPool2d (zero padding), upsample_nearest and max_pool (padding −∞) against torch, after
    a write/read; unknown or unlisted ops, unknown extensions and formats are refused."""
    x = torch.randn(3, 1, 2, 4, 4, generator=torch.Generator().manual_seed(0))
    expected = {
        None: [nn.functional.avg_pool2d(f, 3, 1, 1, count_include_pad=True) * 9 for f in x],
        "upsample_nearest": [nn.functional.interpolate(f, scale_factor=2.0) for f in x],
        "max_pool": [nn.functional.max_pool2d(f, 3, 1, 1) for f in x],
    }
    for op, ref in expected.items():
        path = tmp_path / f"{op}.nir"
        write_nir(_pool_graph(op, [] if op is None else [op]), path)
        out = NIRExecutor(load_nir(path), device="cpu").run(x, record=True).node_outputs["out"]
        torch.testing.assert_close(out[:, 0], torch.stack(ref)[:, 0], atol=1e-6, rtol=0)
    assert (x < 0).any()  # max_pool really had negative currents, so padding −∞ mattered
    bad = [
        (_pool_graph("max_pool", []), "not listed in spikedet.extensions"),
        (_pool_graph("upsample_nearest", ["upsample_nearest", "conv3d"]), "unknown extensions"),
        (_pool_graph("max_pool", ["max_pool"], fmt=1), "format 1"),
        (_pool_graph(None, [], fmt=3), "unknown spikedet.format 3"),
    ]
    strange = _pool_graph("max_pool", ["max_pool"])
    strange.nodes["pool"].metadata["spikedet.op"] = "min_pool"
    bad.append((strange, "unknown extension op 'min_pool'"))
    for graph, message in bad:
        with pytest.raises(SpikedetError, match=message):
            NIRExecutor(graph, device="cpu")
    odd = _pool_graph("max_pool", ["max_pool"])
    odd.nodes["pool"].metadata["spikedet.kernel"] = [2, 2]  # disagrees with the node's own
    with pytest.raises(SpikedetError, match="differ from the node") as err:
        NIRExecutor(odd, device="cpu")
    assert err.value.where == "pool"


class _Chain(nn.Module):
    """conv3x3/2 + BN -> avg pool 2 -> conv1x1 + BN (a map on a current), for composition."""

    def __init__(self):
        super().__init__()
        self.a = ConvBN(3, 4, 3, 2, bias=True)
        self.pool = nn.AvgPool2d(2, 2)
        self.b = ConvBN(6, 5, 1)
        self.c = ConvBN(4, 4, 3)  # padding 1: cannot compose with a conv before it

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.pool(self.a.bn(self.a.conv(x)))
        y = torch.cat([torch.zeros_like(y[:, :2]), y], 1)  # the term sits at channels 2..5
        return self.b.bn(self.b.conv(y))


def test_composition_matches_sequential_maps():
    """§2.6/2.7: conv ∘ avg pool ∘ embed ∘ conv folds into ONE conv (kernel 3 + 2·1 = 5,
    stride 4, padding 1) equal to the maps applied one after the other; an embedding alone
    writes zero rows outside its channels."""
    model = randomize(_Chain(), seed=4)
    lookup = nt.ModuleLookup(model)
    embed = nt.EmbedStep("cat", 2, 6)
    steps = (nt.ConvStep("a"), nt.PoolStep("pool"), embed, nt.ConvStep("b"))
    arrays = nc.node_arrays(nc.realize(3, steps, lookup))
    assert arrays.weight.shape == (5, 3, 5, 5) and arrays.stride == (4, 4)
    assert arrays.padding == (1, 1) and arrays.metadata == {}
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    composed = nn.functional.conv2d(
        x, torch.from_numpy(arrays.weight), torch.from_numpy(arrays.bias), 4, 1
    )
    with torch.no_grad():
        ref = model(x)
    assert ref.shape == composed.shape and (composed - ref).abs().max().item() <= 1e-5
    embedded = nc.node_arrays(nc.realize(3, (nt.ConvStep("a"), nt.PoolStep("pool"), embed), lookup))
    assert embedded.metadata == {"spikedet.out_offset": 2, "spikedet.out_channels": 4}
    assert not embedded.weight[:2].any() and not embedded.bias[:2].any()
    assert embedded.weight[2:].all() and embedded.structural_zeros == 2 * 3 * 5 * 5 + 2
    with pytest.raises(SpikedetError, match="padding-0 conv") as err:
        nc.realize(3, (nt.ConvStep("a"), nt.ConvStep("c")), lookup)
    assert err.value.where == "c"


class _Maps(nn.Module):
    """Modules for the builder's refusals (no forward: traced by hand)."""

    def __init__(self):
        super().__init__()
        self.stem = ConvBN(3, 4, 3, 2)
        self.pad = ConvBN(4, 4, 3)  # padding 1
        self.k3 = ConvBN(4, 4, 3, p=0)  # padding 0, but 3x3
        self.up, self.avg, self.mp = Upsample2x(), nn.AvgPool2d(2, 2), nn.MaxPool2d(2, 2)


def test_builder_refuses_maps_without_exact_form():
    """§2.6/2.8: each combination the spec refuses raises SpikedetError naming the module."""
    model = randomize(_Maps(), seed=1)
    g = NIRBuilder(model, (3, 16, 16), T=1)
    x = g.conv(g.input, model.stem)
    assert g.linear(x, model.k3).terms[0].shape == (4, 6, 6)  # composes: 3 + 2·2 = 7, stride 2
    up = g.upsample(x, model.up)
    max_pooled = g.max_pool(x, model.mp)
    refusals = [
        (lambda: g.linear(x, model.pad), "needs padding 0", "pad"),
        (lambda: g.linear(up, model.k3), "only a 1x1 stride-1 conv", "k3"),
        (lambda: g.linear(up, model.avg), "does not commute with upsampling", "avg"),
        (lambda: g.upsample(up, model.up), "not upsampled yet", "up"),
        (lambda: g.upsample(max_pooled, model.up), "max-pooled", "up"),
        (lambda: g.spikes(x + x, model.up), "more than once", "up"),
    ]
    for call, message, where in refusals:
        with pytest.raises(SpikedetError, match=message) as err:
            call()
        assert err.value.where == where
