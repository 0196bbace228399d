"""ONNX export of the float reference models: onnxruntime must reproduce torch (1e-4)."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest
import torch
from torch import nn

from spikedet.convert.onnx_export import (
    INPUT_NAME,
    check_onnx,
    export_onnx,
    run_onnx,
    unrolled_neurons,
)
from spikedet.errors import SpikedetError
from spikedet.train.models.registry import build_model
from spikedet.train.models.yolo_blocks import reparameterize
from spikedet.train.neurons import ILIF, LIF, set_spike_mode
from tests.model_helpers import randomize


def images(n: int, size: int, seed: int = 1) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def neuron_outputs(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """Every neuron module's output during one forward pass, in call order."""
    seen: list[torch.Tensor] = []
    hooks = [
        m.register_forward_hook(lambda mod, a, out: seen.append(out))
        for m in model.modules()
        if isinstance(m, ILIF | LIF)
    ]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in hooks:
            h.remove()
    return seen


def export_and_check(model: nn.Module, path: Path, size: int) -> float:
    info = export_onnx(model, path, imgsz=size)
    assert info["path"] == str(path) and path.is_file()
    assert info["inputs"] == {INPUT_NAME: ["batch", 3, size, size]}
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto)
    assert [i.name for i in proto.graph.input] == [INPUT_NAME]
    assert [o.name for o in proto.graph.output] == list(info["outputs"])
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")], "temp file left"
    return check_onnx(model, path, images(3, size))  # batch 3 != the traced batch of 1


@pytest.mark.parametrize("T", [1, 2])
def test_spikeyolo_pico_matches_onnxruntime(tmp_path: Path, T: int) -> None:
    model = randomize(build_model("spikeyolo-pico", T=T), seed=11)
    spikes = neuron_outputs(model, images(3, 64))
    levels = {int(v) for s in spikes for v in s.unique()}
    assert levels == {0, 1, 2, 3, 4}, levels  # the comparison exercises every spike level
    diff = export_and_check(model, tmp_path / "pico.onnx", 64)
    assert diff <= 1e-4, diff
    proto = onnx.load(str(tmp_path / "pico.onnx"))
    ops = {n.op_type for n in proto.graph.node}
    assert {"Conv", "Round", "Clip"} <= ops, ops
    assert sum(n.op_type == "Round" for n in proto.graph.node) >= T * 10  # unrolled per step


def test_ems_pico_matches_onnxruntime(tmp_path: Path) -> None:
    model = randomize(build_model("ems-pico"), seed=5)
    assert model.T == 2
    rates = [float((s > 0).float().mean()) for s in neuron_outputs(model, images(3, 64))]
    assert min(rates) < 0.9 and sum(r > 0.01 for r in rates) >= len(rates) // 2, rates
    diff = export_and_check(model, tmp_path / "ems.onnx", 64)
    assert diff <= 1e-4, diff


def test_spikeyolo_n_small_input_matches_onnxruntime(tmp_path: Path) -> None:
    model = build_model("spikeyolo-n").eval()
    assert reparameterize(model) > 0
    randomize(model, seed=2)
    diff = export_and_check(model, tmp_path / "n.onnx", 64)
    assert diff <= 1e-4, diff


def test_unrolled_neurons_equal_fused_and_are_restored() -> None:
    model = randomize(build_model("spikeyolo-pico", T=3), seed=4)
    x = images(2, 64)
    fused = neuron_outputs(model, x)
    with unrolled_neurons(model) as count:
        assert count == sum(isinstance(m, ILIF) for m in model.modules())
        unrolled = neuron_outputs(model, x)
    assert all(torch.equal(a, b) for a, b in zip(fused, unrolled, strict=True))
    assert not any("forward" in vars(m) for m in model.modules() if isinstance(m, ILIF))
    # binary slots (spike-driven form) unroll too and give the same head outputs
    set_spike_mode(model, "binary")
    with torch.no_grad(), unrolled_neurons(model):
        binary = model(x)
    set_spike_mode(model, "integer")
    with torch.no_grad():
        integer = model(x)
    for (b_box, b_cls), (i_box, i_cls) in zip(binary, integer):
        assert torch.allclose(b_box, i_box, atol=1e-5) and torch.allclose(b_cls, i_cls, atol=1e-5)


def test_check_detects_a_different_model(tmp_path: Path) -> None:
    model = randomize(build_model("spikeyolo-pico"), seed=11)
    path = tmp_path / "pico.onnx"
    export_onnx(model, path)
    assert check_onnx(model, path, images(2, 64)) <= 1e-4
    with torch.no_grad():
        model.head[0].cls.pred.cb.conv.bias.add_(0.1)  # the last conv of one head output
    assert check_onnx(model, path, images(2, 64)) > 1e-2


def test_bad_inputs_raise(tmp_path: Path) -> None:
    model = build_model("spikeyolo-pico")
    with pytest.raises(SpikedetError, match="not a multiple|input"):
        export_onnx(model, tmp_path / "bad.onnx", imgsz=60)
    assert not list(tmp_path.iterdir()), "a failed export must leave no file"
    with pytest.raises(SpikedetError, match="not found"):
        run_onnx(tmp_path / "missing.onnx", images(1, 64))
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not an onnx model")
    with pytest.raises(SpikedetError, match="onnxruntime"):
        run_onnx(junk, images(1, 64))
