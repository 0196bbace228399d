"""NIR export of the full SpikeYOLOv8 (SPPF, upsampling, concatenation; docs/semantics.md §2.7-2.8).

Round trips compare the NIR executor with the torch model: every population's spikes exactly
(the SPPF neuron as its four parts concatenated) and the head outputs within 1e-5. The seeds are
fixed: float32 summation order can flip a spike whose membrane is within ~1e-6 of a threshold,
and the failure message prints that margin when it happens.
"""

from __future__ import annotations

import json

import nir
import numpy as np
import pytest
import torch

from spikedet.convert.nir_export import export_model, parameter_coverage, trace_model
from spikedet.errors import SpikedetError
from spikedet.train.models.registry import build_model
from spikedet.train.models.yolo_blocks import reparameterize
from tests.model_helpers import randomize
from tests.test_nir_export import round_trip


def fused(name: str, seed: int = 0, **overrides) -> torch.nn.Module:
    """A re-parameterised (exportable) model with random weights and BN statistics."""
    model = build_model(name, **overrides)
    reparameterize(model)
    return randomize(model, seed=seed)


def image(size: int, seed: int) -> torch.Tensor:
    return torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(seed))


def test_round_trip_v8_pico(tmp_path):
    model = fused("spikeyolo-v8-pico")
    out = round_trip(model, image(64, 3), tmp_path / "v8.nir")
    assert out["levels"] == {0, 1, 2, 3, 4} and 0.2 < out["fired"] < 0.8
    graph = out["graph"]
    assert graph.metadata["spikedet.format"] == 2
    assert json.loads(graph.metadata["spikedet.extensions"]) == ["upsample_nearest"]
    head = json.loads(graph.metadata["spikedet.head"])
    assert head["type"] == "dfl" and head["strides"] == [8, 16, 32] and head["reg_max"] == 8
    cov = out["coverage"]
    assert cov["nodes"]["slice"] == 4 and cov["nodes"]["embedded"] > 0
    assert cov["host_params"] == 8  # the DFL decoder runs on the host, not in the graph


def test_round_trip_spikeyolo_n():
    """The real SpikeYOLO-n architecture at 64 px, T = 1; executed in memory (its 157 MiB file
    takes ~40 s to write and check on this machine; the smaller models test the file path)."""
    model = fused("spikeyolo-n", imgsz=64)
    out = round_trip(model, image(64, 6), None, imgsz=64)
    assert out["levels"] == {0, 1, 2, 3, 4} and 0.2 < out["fired"] < 0.8
    assert out["coverage"]["folded_params"] == 34_490_544


def test_sppf_and_neck_encoding():
    model = fused("spikeyolo-v8-pico")
    graph, builder = trace_model(model)
    nodes, edges = graph.nodes, set(graph.edges)
    parts = [f"l9_sppf.cv2.lif#{k}" for k in range(4)]
    assert builder.split_of == {"l9_sppf.cv2.lif": parts}
    assert "l9_sppf.cv2.lif" not in builder.population_of
    # S = I-LIF of cv1's current; #1..#3 = chained max-pooled spikes, per level k (§2.7b).
    assert (
        isinstance(nodes[f"{parts[0]}.li"], nir.LI)
        and ("l9_sppf.cv1.cb", f"{parts[0]}.li") in edges
    )
    for k in range(1, 5):
        for src, pop in zip(parts, parts[1:]):
            pool, q = nodes[f"{pop}.pool{k}"], nodes[f"{pop}.q{k}"]
            assert isinstance(pool, nir.SumPool2d) and not pool.metadata
            assert list(pool.kernel_size) == [5, 5] and list(pool.padding) == [2, 2]
            assert q.metadata == {"spikedet.neuron": "maxpool", "spikedet.bit": k}
            assert np.all(q.threshold == 0.5)
            assert {
                (f"{src}.q{k}", f"{pop}.pool{k}"),
                (f"{pop}.pool{k}", q and f"{pop}.q{k}"),
            } <= edges
    # cv2's conv split by input channels, the bias on #0 only.
    weight, bias = (np.asarray(a) for a in _fold(model.l9_sppf.cv2.cb))
    hidden = weight.shape[1] // 4
    for k, pop in enumerate(parts):
        conv = nodes[f"l9_sppf.cv2.cb#{k}"]
        np.testing.assert_array_equal(conv.weight, weight[:, k * hidden : (k + 1) * hidden])
        np.testing.assert_array_equal(conv.bias, bias if k == 0 else np.zeros_like(bias))
        assert (f"{pop}.q1", f"l9_sppf.cv2.cb#{k}") in edges
    # Upsampling: conv -> <conv>.up2 (§2.8); fed by exactly one conv, read by neurons.
    ups = [n for n, node in nodes.items() if node.metadata.get("spikedet.op") == "upsample_nearest"]
    assert ups and all(n.endswith(".up2") for n in ups)
    for name in ups:
        node = nodes[name]
        feeds = [s for s, d in graph.edges if d == name]
        assert feeds == [name[: -len(".up2")]] and isinstance(nodes[feeds[0]], nir.Conv2d)
        c, h, w = (int(v) for v in nodes[feeds[0]].output_type["output"])
        assert list(node.padding) == [h // 2, w // 2] and list(node.kernel_size) == [1, 1]
        assert node.metadata["spikedet.scale"] == 2
        assert list(node.output_type["output"]) == [c, 2 * h, 2 * w]
    # Concatenation l13_cat = [up(l12), p4]: l10's conv upsampled AND embedded at offset 0.
    embedded = nodes["l10.cb@l13_cat"]
    c4 = model.l10.cb.conv.out_channels
    assert embedded.metadata["spikedet.out_offset"] == 0
    assert embedded.metadata["spikedet.out_channels"] == c4
    assert embedded.weight.shape[0] == 2 * c4 and not embedded.weight[c4:].any()
    np.testing.assert_array_equal(embedded.weight[:c4], nodes["l10.cb"].weight)
    assert ("l10.cb@l13_cat.up2", "l14.lif.li") in edges
    p4 = nodes["l5.cb@l13_cat"]  # the backbone P4 at offset c4
    assert p4.metadata["spikedet.out_offset"] == c4 and not p4.weight[:c4].any()


def _fold(cb):
    from spikedet.convert.fold import fold_conv_bn

    return fold_conv_bn(cb)


def test_refusals_name_the_module():
    with pytest.raises(SpikedetError, match="max pooling.*only at T = 1") as err:
        export_model(fused("spikeyolo-v8-pico", T=2))
    assert err.value.where == "l9_sppf"
    with pytest.raises(SpikedetError, match="3x3 map") as err:  # stride 32 of 96 px is odd
        export_model(fused("spikeyolo-v8-pico", imgsz=96))
    assert err.value.where == "l11_up"
    model = build_model("spikeyolo-v8-pico")  # not re-parameterised
    with pytest.raises(SpikedetError, match="re-parameterisable chain") as err:
        export_model(model)
    assert err.value.where == "l2.0.sep.out"


def test_coverage_catches_split_embedded_and_foreign_nodes():
    model = fused("spikeyolo-v8-pico")
    graph = export_model(model)
    cov = parameter_coverage(model, graph)
    assert cov["covered"] and cov["graph_params"] == cov["folded_params"] == 833_913
    with torch.no_grad():
        model.l9_sppf.cv2.cb.conv.weight[0, -1] += 0.5  # only the slice in node #3 changes
    cov = parameter_coverage(model, graph)
    assert not cov["covered"] and any("l9_sppf.cv2.cb#3" in p for p in cov["problems"])
    model = fused("spikeyolo-v8-pico")
    with torch.no_grad():
        model.l5.cb.bn.running_mean[-1] += 0.5  # l5.cb and its copy l5.cb@l13_cat
    problems = parameter_coverage(model, graph)["problems"]
    assert {p.split(":")[0] for p in problems} == {"l5.cb", "l5.cb@l13_cat"}
    model = fused("spikeyolo-v8-pico")
    del graph.nodes["l9_sppf.cv2.cb#2"].metadata["spikedet.recipe"]  # a conv from nowhere
    cov = parameter_coverage(model, graph)
    assert not cov["covered"] and cov["graph_params"] < cov["folded_params"]
