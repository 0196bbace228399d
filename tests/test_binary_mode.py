"""Spike-driven (binary) inference of I-LIF models: docs/semantics.md §1.1 and §3.4.

In binary mode every I-LIF sends its integer s as D thermometer-coded binary slots, and every
conv that reads spikes runs per slot without bias, sums the D slots of a logical step, then adds
bias and BN once. The detectors must give the same spikes and (to float rounding) outputs.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from spikedet.errors import SpikedetError
from spikedet.train.models.blocks import ConvBN, SpikeConv
from spikedet.train.models.registry import build_from_config, build_model
from spikedet.train.models.yolo_blocks import RepSpikeConv
from spikedet.train.neurons import ILIF, set_spike_mode, to_binary_slots
from tests.model_helpers import randomize_bn, run_with_spikes


def compare_modes(model: nn.Module, x: torch.Tensor) -> float:
    """Max |integer - binary| over the head outputs; asserts the spikes are exactly equal.
    Both modes accumulate exactly (binary's default, integer with ``exact=True``)."""
    assert set_spike_mode(model, "integer", exact=True) > 0
    ref, ref_spikes = run_with_spikes(model, x)
    set_spike_mode(model, "binary")
    try:
        out, spikes = run_with_spikes(model, x)
    finally:
        set_spike_mode(model, "integer")
    assert spikes.keys() == ref_spikes.keys()
    for name in spikes:
        assert torch.equal(spikes[name], ref_spikes[name]), name
    values = torch.cat([s.flatten() for s in ref_spikes.values()]).long().bincount()
    assert len(values) == 5 and (values > 0).all()  # every level 0..4 occurs: not a trivial net
    return max(float((a - b).abs().max()) for pa, pb in zip(ref, out) for a, b in zip(pa, pb))


def test_ilif_binary_slots_are_thermometer_code():
    lif = ILIF(4)
    x = torch.tensor([[-1.0, 0.4, 0.6, 1.5, 2.6, 3.4, 9.0]]).repeat(2, 1)  # T = 2
    ints = lif(x)
    set_spike_mode(lif, "binary")
    slots = lif(x)
    assert lif.slots == 4 and slots.shape == (8, 7)
    assert torch.equal(slots, to_binary_slots(ints, 4))
    # t = 0: virtual steps 0..3; slot d fires iff d < s
    assert slots[:4, 4].tolist() == [1.0, 1.0, 1.0, 0.0] and ints[0, 4] == 3
    assert torch.equal(slots.view(2, 4, 7).sum(1), ints)
    with pytest.raises(SpikedetError, match="spike mode"):
        set_spike_mode(lif, "ternary")


def test_conv_bias_and_bn_applied_once():
    torch.manual_seed(0)
    for bn in (True, False):
        layer = SpikeConv(3, 4, 3, s=2, bias=True, bn=bn)
        randomize_bn(layer)
        with torch.no_grad():
            layer.cb.conv.bias.uniform_(1.0, 2.0)  # a bias added D times would be far off
        layer.eval()
        x = 4 * torch.rand(2, 2, 3, 8, 8)
        with torch.no_grad():
            ref = layer(x)
            set_spike_mode(layer, "binary")
            out = layer(x)
            set_spike_mode(layer, "integer")
        assert out.shape == ref.shape == (2, 2, 4, 4, 4)
        assert (out - ref).abs().max() < 1e-5
    cb = ConvBN(3, 4, 1)
    with pytest.raises(ValueError, match="multiple"):
        cb.forward_slots(torch.rand(6, 1, 3, 4, 4), 4)


def test_pico_detector_integer_equals_binary():
    torch.manual_seed(0)
    model = build_model("spikeyolo-pico", T=2)  # T = 2 checks the time-major slot order
    randomize_bn(model)
    model.eval()
    diff = compare_modes(model, torch.rand(2, 3, 64, 64))
    assert diff == 0.0, diff


def test_spikeyolo_n_fused_integer_equals_binary():
    torch.manual_seed(0)
    model = build_model("spikeyolo-n", imgsz=64)
    randomize_bn(model)
    model.eval()
    assert model.reparameterize() == 26
    diff = compare_modes(model, torch.rand(1, 3, 64, 64))
    assert diff == 0.0, diff


def test_spikeyolo_s_binary_is_spike_identical_with_exact_sums():
    """spikeyolo-s at 64 px (the 640 px run: benchmarks/binary_exact.py): with exact slot sums
    binary and integer mode agree spike for spike and bit for bit; float32 sums need not."""
    torch.manual_seed(0)
    model = build_model("spikeyolo-s", imgsz=64)
    randomize_bn(model)
    model.eval().reparameterize()
    assert compare_modes(model, torch.rand(1, 3, 64, 64)) == 0.0


def test_exact_slot_conv_is_exact():
    """The limb split makes float64 sums exact: the slot sum equals the integer conv bit for
    bit even for weights spanning 2^-60..2^3 (one float64 conv would round)."""
    from spikedet.train.models.blocks import _weight_limbs, exact_slot_conv

    gen = torch.Generator().manual_seed(0)
    w = torch.randn(4, 64, 3, 3, generator=gen) * 2.0 ** torch.randint(-60, 3, (4, 64, 3, 3))
    limbs = _weight_limbs(w, 4, w[0].numel())
    assert len(limbs) >= 2 and torch.equal(sum(limbs), w.double())
    s = torch.randint(0, 5, (2, 1, 64, 8, 8), generator=gen).float()
    ints = exact_slot_conv(s, 1, w, 1, 1, levels=4)
    slots = exact_slot_conv(to_binary_slots(s, 4), 4, w, 1, 1, levels=4)
    assert torch.equal(ints, slots)


def test_unfused_chains_in_binary_mode():
    """An unfused RepConv chain runs its fused kernel per slot (bias once); float64 is exact."""
    torch.manual_seed(0)
    model = build_model("spikeyolo-n", nc=3, widths=[8, 16, 32, 64], repeats=[1, 1, 1, 1], imgsz=64)
    randomize_bn(model)
    model = model.double().eval()
    assert any(isinstance(m, RepSpikeConv) for m in model.modules())
    diff = compare_modes(model, torch.rand(1, 3, 64, 64, dtype=torch.float64))
    assert diff <= 1e-9, diff
    again = build_from_config(model.config)
    set_spike_mode(again, "binary")
    with pytest.raises(SpikedetError, match="needs eval mode"):
        again(torch.rand(1, 3, 64, 64))
