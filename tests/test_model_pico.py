"""spikeyolo-pico: shapes, size, gradients, time steps, and the symbolic trace used for export."""

from __future__ import annotations

import json

import pytest
import torch

from spikedet.errors import SpikedetError
from spikedet.train.models.blocks import ConvBN, Current
from spikedet.train.models.registry import MODEL_NAMES, build_from_config, build_model
from spikedet.train.models.spikeyolo import count_neurons
from spikedet.train.neurons import ILIF


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model("spikeyolo-pico", names=["a", "b", "c"])


@pytest.mark.parametrize("size", [64, 96])
def test_output_shapes(model, size):
    outs = model(torch.rand(2, 3, size, size))
    assert model.strides == [8, 16]
    assert len(outs) == 2
    for (box, cls), stride in zip(outs, model.strides):
        assert box.shape == (2, 4 * model.reg_max, size // stride, size // stride)
        assert cls.shape == (2, 3, size // stride, size // stride)
        assert torch.isfinite(box).all() and torch.isfinite(cls).all()


def test_bad_input_shape_raises(model):
    with pytest.raises(SpikedetError, match="multiple of the max stride"):
        model(torch.rand(1, 3, 60, 60))
    with pytest.raises(SpikedetError, match="input must be"):
        model(torch.rand(1, 1, 64, 64))


def test_size_and_neuron_budget(model):
    n_params = sum(p.numel() for p in model.parameters())
    assert 300_000 < n_params < 500_000, n_params  # 410,694 at nc=3
    neurons = count_neurons(model, 64)
    assert 20_000 < neurons < 60_000, neurons  # 41,984 at 64x64


def test_gradient_reaches_stem(model):
    model.zero_grad()
    outs = model(torch.rand(2, 3, 64, 64))
    sum(b.square().mean() + c.square().mean() for b, c in outs).backward()
    grad = model.stem.cb.conv.weight.grad
    assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_head_bias_init():
    m = build_model("spikeyolo-pico", nc=5, imgsz=64)
    for head, stride in zip(m.head, m.strides):
        assert torch.allclose(head.box.pred.cb.conv.bias, torch.ones(4 * m.reg_max))
        expected = torch.log(torch.tensor(5.0 / 5 / (64 / stride) ** 2))
        assert torch.allclose(head.cls.pred.cb.conv.bias, expected.expand(5))


def test_two_time_steps():
    torch.manual_seed(1)
    m = build_model("spikeyolo-pico", T=2)
    assert m.T == 2 and m.config["T"] == 2
    x = torch.rand(2, 3, 64, 64)
    outs = m(x)
    assert [tuple(b.shape) for b, _ in outs] == [(2, 32, 8, 8), (2, 32, 4, 4)]
    # A time-first input is used as is; equal to the repeated image.
    outs5 = m(x.unsqueeze(0).repeat(2, 1, 1, 1, 1))
    for (b, c), (b5, c5) in zip(outs, outs5):
        assert torch.equal(b, b5) and torch.equal(c, c5)


def test_config_roundtrip(model):
    cfg = json.loads(json.dumps(model.config))
    again = build_from_config(cfg)
    again.load_state_dict(model.state_dict())
    x = torch.rand(1, 3, 64, 64)
    model.eval()
    again.eval()
    for (b1, c1), (b2, c2) in zip(model(x), again(x)):
        assert torch.equal(b1, b2) and torch.equal(c1, c2)
    model.train()
    assert again.names == ["a", "b", "c"] and again.nc == 3


def test_unknown_model_and_bad_overrides():
    with pytest.raises(SpikedetError, match="spikeyolo-pico"):
        build_model("yolo-giant")
    with pytest.raises(SpikedetError):
        build_model("spikeyolo-pico", depth=3)
    with pytest.raises(SpikedetError):
        build_model("spikeyolo-pico", nc=2, names=["a", "b", "c"])
    with pytest.raises(SpikedetError, match="multiple"):
        build_model("spikeyolo-pico", imgsz=40)
    assert "spikeyolo-pico" in MODEL_NAMES


class RecordingBuilder:
    """A fake export builder recording every call (populations keyed by their input current)."""

    input = "INPUT"

    def __init__(self, model):
        self.module_names = {id(m): n for n, m in model.named_modules()}
        self.convs: list[tuple[str, object]] = []
        self.populations: dict[tuple[str, ...], ILIF] = {}
        self.readouts: list[tuple[str, Current]] = []

    def spikes(self, current, neuron):
        assert isinstance(current, Current) and isinstance(neuron, ILIF)
        self.populations.setdefault(current.terms, neuron)
        return ("pop", current.terms)

    def conv(self, src, conv_bn):
        name = self.module_names[id(conv_bn)]
        self.convs.append((name, src))
        return Current((name,))

    def readout(self, current, role):
        self.readouts.append((role, current))
        return f"readout:{role}"


def test_trace_visits_every_conv_once(model):
    g = RecordingBuilder(model)
    pairs = model.trace(g)
    assert pairs == [
        ("readout:head.0.box", "readout:head.0.cls"),
        ("readout:head.1.box", "readout:head.1.cls"),
    ]
    conv_names = [name for name, _ in g.convs]
    all_convs = sorted(n for n, m in model.named_modules() if isinstance(m, ConvBN))
    assert sorted(conv_names) == all_convs  # each conv exactly once, none missing
    assert len(set(conv_names)) == len(conv_names)
    # Only the stem reads the raw input; every other conv reads a spiking population.
    assert [n for n, src in g.convs if src == "INPUT"] == ["stem.cb"]
    # Each readout ends in a head prediction conv.
    assert [r for r, _ in g.readouts] == ["head.0.box", "head.0.cls", "head.1.box", "head.1.cls"]
    assert all(cur.terms[-1].endswith(".pred.cb") for _, cur in g.readouts)
    # Populations: one per distinct input current, matching the forward pass's distinct inputs.
    n_ilif_modules = sum(isinstance(m, ILIF) for m in model.modules())
    assert len(g.populations) < n_ilif_modules  # head branches share the stage population
    shared = [n for n, src in g.convs if n.startswith("head.0.") and n.endswith(".c1.cb")]
    assert len(shared) == 2
    assert g.convs[conv_names.index(shared[0])][1] == g.convs[conv_names.index(shared[1])][1]
