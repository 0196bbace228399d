"""EMS-YOLO models: parameter table, shapes, time steps, neuron/BN settings, gradients, errors."""

from __future__ import annotations

import math

import pytest
import torch

from spikedet.errors import SpikedetError
from spikedet.train.models.ems import EMS_MODEL_NAMES, build_ems, ems_config
from spikedet.train.models.ems_blocks import BasicBlock, ConcatBlock, EMSConvBN
from spikedet.train.neurons import LIF


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# published (paper) M / analytic count of the reference code (detectors.md §3.5)
PARAM_TABLE = {
    "ems-res10": (6.20, 6_207_050),
    "ems-res18": (9.34, 9_343_370),
    "ems-res34": (14.40, 14_399_306),
    "ems-res34-coco": (25.449, 25_449_022),  # resnet34-cat, nc=80: 25.449M
    "ems-res34-cat": (25.449, 25_449_022),  # the same, with the official SiLU head layers
}


@pytest.mark.parametrize("name", list(PARAM_TABLE))
def test_parameter_table(name):
    published, analytic = PARAM_TABLE[name]
    count = n_params(build_ems(name))
    assert abs(count / 1e6 - published) / published < 0.01
    assert count == analytic


def test_model_names_and_defaults():
    assert set(EMS_MODEL_NAMES) == {
        "ems-res10",
        "ems-res18",
        "ems-res34",
        "ems-res34-coco",
        "ems-res34-cat",
        "ems-pico",
    }
    for name in ("ems-res10", "ems-res18", "ems-res34"):
        cfg = ems_config(name)
        assert (cfg["nc"], cfg["T"], cfg["family"]) == (2, 5, "ee")
    coco = ems_config("ems-res34-coco")
    assert (coco["nc"], coco["T"], coco["family"]) == (80, 4, "full")
    released = ems_config("ems-res34-cat")  # the released checkpoint: T = 5, SiLU head
    assert (released["T"], released["head"], coco.get("head", "lcb")) == (5, "silu", "lcb")
    assert n_params(build_ems("ems-pico")) < 500_000
    # nc=80 half-width counts from the reference table
    assert n_params(build_ems("ems-res10", nc=80)) == 6_387_230


@pytest.fixture(scope="module")
def pico():
    torch.manual_seed(0)
    return build_ems("ems-pico")


@pytest.mark.parametrize("size", [64, 96])
def test_output_shapes(pico, size):
    outs = pico(torch.rand(2, 3, size, size))
    assert len(outs) == 2 and pico.strides == [16, 32]
    for out, stride in zip(outs, pico.strides):
        assert out.shape == (2, 3 * (pico.nc + 5), size // stride, size // stride)


def test_static_image_is_repeated_T_times(pico):
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():  # train-mode BN (batch statistics): the untrained net does spike
        a = pico(x)
        b = pico(x.unsqueeze(0).repeat(pico.T, 1, 1, 1, 1))
        c = pico(x.unsqueeze(0).repeat(pico.T + 2, 1, 1, 1, 1))
    for ya, yb in zip(a, b):
        torch.testing.assert_close(ya, yb)
    # more time steps change the time average (membrane dynamics), so T is really used
    assert any(not torch.allclose(ya, yc) for ya, yc in zip(a, c))


def test_neurons_and_bn_init():
    model = build_ems("ems-res18")
    lifs = [m for m in model.modules() if isinstance(m, LIF)]
    assert lifs and all(m.beta == 0.25 and m.threshold == 0.5 for m in lifs)
    for block in model.modules():
        if isinstance(block, (BasicBlock, ConcatBlock)):
            assert torch.all(block.residual.a.cb.bn.weight == 0.5)
            assert torch.all(block.residual.b.cb.bn.weight == 0.1)
            assert block.residual.a.cb.bn.eps == 1e-5 and block.residual.a.cb.bn.momentum == 0.1
    # the encoding layer has no neuron in front of it
    assert isinstance(model.stem, EMSConvBN) and model.stem.conv.kernel_size == (3, 3)


def test_shortcut_styles():
    # half-width (-ee code): conv shortcut WITHOUT a LIF; full width: LIF -> conv
    half = BasicBlock(64, 128, 3, 2, half=True)
    full = BasicBlock(64, 128, 3, 2, half=False)
    assert not any(isinstance(m, LIF) for m in half.shortcut.modules())
    assert any(isinstance(m, LIF) for m in full.shortcut.modules())
    assert (
        half.residual.a.cb.conv.out_channels == 64 and full.residual.a.cb.conv.out_channels == 128
    )
    assert BasicBlock(64, 64, 3, 1).shortcut is None


def test_concat_block_keeps_input_channels():
    block = ConcatBlock(4, 8, 3, 2, half=True).eval()
    x = torch.randn(2, 1, 4, 8, 8)
    with torch.no_grad():
        y = block(x)
        short = y - block.residual(x)
        pooled_input = torch.nn.functional.max_pool2d(x.flatten(0, 1), 2).view(2, 1, 4, 4, 4)
    assert y.shape == (2, 1, 8, 4, 4)
    torch.testing.assert_close(short[:, :, 4:], pooled_input)


def test_detect_bias_prior():
    model = build_ems("ems-res10")
    no = model.nc + 5
    for conv, stride in zip(model.detect.convs, model.strides):
        b = conv.bias.view(3, no).detach()
        default_bound = 1 / math.sqrt(conv.in_channels)
        obj_shift = math.log(8 / (640 / stride) ** 2)
        assert torch.all((b[:, 4] - obj_shift).abs() <= default_bound + 1e-6)
        cls_shift = math.log(0.6 / (model.nc - 0.99))
        assert torch.all((b[:, 5:] - cls_shift).abs() <= default_bound + 1e-6)


def test_gradients_reach_first_layer_of_res34():
    torch.manual_seed(0)
    model = build_ems("ems-res34", T=2)
    outs = model(torch.rand(2, 3, 64, 64))
    sum(o.pow(2).mean() for o in outs).backward()
    first = model.stem.conv.weight.grad.norm().item()
    last = max(conv.weight.grad.norm().item() for conv in model.detect.convs)
    assert first > 0 and last > 0
    assert 0.01 < first / last < 100, (first, last)


def test_seeded_build_is_deterministic():
    torch.manual_seed(3)
    a = build_ems("ems-pico")
    torch.manual_seed(3)
    b = build_ems("ems-pico")
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)


def test_errors(pico):
    with pytest.raises(SpikedetError, match="unknown EMS model"):
        build_ems("ems-res99")
    with pytest.raises(SpikedetError, match="unknown or fixed"):
        build_ems("ems-pico", depth=3)
    with pytest.raises(SpikedetError, match="multiple of the max stride 32"):
        pico(torch.rand(1, 3, 48, 48))
    with pytest.raises(SpikedetError, match="input must be"):
        pico(torch.rand(1, 1, 64, 64))
    with pytest.raises(SpikedetError, match="imgsz"):
        build_ems("ems-pico", imgsz=70)
