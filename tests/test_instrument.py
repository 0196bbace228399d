"""Instrumentation: real-connection MACs, firing rates, energy formula, and `spikedet model info`."""

from __future__ import annotations

import argparse
import json

import pytest
import torch
from torch import nn

from spikedet.cli import model_cmd
from spikedet.errors import SpikedetError
from spikedet.train.instrument import profile_model, real_connections
from spikedet.train.models.ems import build_ems
from spikedet.train.models.registry import build_model
from spikedet.train.neurons import ILIF, LIF


def brute_force_macs(conv: nn.Conv2d, hw: tuple[int, int]) -> int:
    """All-ones input through the conv with all-ones weights, no bias: Σ output = connections."""
    ones = nn.Conv2d(
        conv.in_channels,
        conv.out_channels,
        conv.kernel_size,
        conv.stride,
        conv.padding,
        groups=conv.groups,
        bias=False,
    )
    nn.init.ones_(ones.weight)
    with torch.no_grad():
        return int(ones(torch.ones(1, conv.in_channels, *hw)).sum().item())


@pytest.mark.parametrize(
    "cin,cout,k,s,p,g,hw",
    [(4, 6, 3, 1, 1, 1, (5, 7)), (8, 8, 7, 1, 3, 8, (9, 9)), (3, 5, 7, 4, 2, 1, (16, 12)),
     (6, 4, 1, 1, 0, 1, (3, 3)), (4, 8, 3, 2, 1, 2, (8, 8))],
)  # fmt: skip
def test_real_connections_match_brute_force(cin, cout, k, s, p, g, hw):
    conv = nn.Conv2d(cin, cout, k, s, p, groups=g)
    assert real_connections(conv, hw) == brute_force_macs(conv, hw)


def test_padding_is_excluded():
    # 3x3 pad 1 on 4x4: corner outputs see 4 taps, edges 6, inner 9 -> 100 per channel pair
    conv = nn.Conv2d(2, 3, 3, 1, 1, bias=False)
    assert real_connections(conv, (4, 4)) == 100 * 2 * 3
    assert real_connections(conv, (4, 4)) < 4 * 4 * 9 * 2 * 3


class TinySNN(nn.Module):
    """stem conv (real input) -> LIF -> conv -> I-LIF -> max-pool -> conv, on [T, B, C, H, W]."""

    def __init__(self):
        super().__init__()
        self.T, self.in_channels = 3, 3
        self.stem = nn.Conv2d(3, 4, 3, 1, 1)
        self.lif = LIF()
        self.c1 = nn.Conv2d(4, 5, 3, 1, 1)
        self.ilif = ILIF(levels=4)
        self.pool = nn.MaxPool2d(2)
        self.c2 = nn.Conv2d(5, 2, 1)

    def forward(self, x):
        t, b = x.shape[:2]

        def step(m, v):
            y = m(v.flatten(0, 1))
            return y.view(t, b, *y.shape[1:])

        return step(
            self.c2, step(self.pool, self.ilif(step(self.c1, self.lif(step(self.stem, x)))))
        )


def test_rates_and_energy_by_hand():
    torch.manual_seed(0)
    model = TinySNN()
    x = torch.rand(3, 2, 3, 8, 8) * 4
    prof = profile_model(model, 8, x=x, e_mac_pj=4.6, e_ac_pj=0.9)
    rows = {r.name: r for r in prof.rows}
    # independent recomputation of the spike tensors
    with torch.no_grad():
        cur = model.stem(x.flatten(0, 1)).view(3, 2, 4, 8, 8)
        s1 = model.lif(cur)
        s2 = model.ilif(model.c1(s1.flatten(0, 1)).view(3, 2, 5, 8, 8))
        pooled = model.pool(s2.flatten(0, 1))
    assert rows["lif"].rate == pytest.approx(s1.mean().item())
    assert rows["ilif"].rate == pytest.approx(s2.mean().item())
    assert rows["ilif"].spikes == pytest.approx(s2.sum().item() / 2)  # per image
    assert 0 < rows["lif"].rate < 1 and 0 < rows["ilif"].rate <= 4
    assert not rows["stem"].spiking_input and rows["stem"].rate is None
    assert rows["c1"].spiking_input and rows["c1"].rate == pytest.approx(s1.mean().item())
    # a max-pool of spikes is still spikes
    assert rows["c2"].spiking_input and rows["c2"].rate == pytest.approx(pooled.mean().item())
    macs = {n: real_connections(getattr(model, n), hw) for n, hw in
            (("stem", (8, 8)), ("c1", (8, 8)), ("c2", (4, 4)))}  # fmt: skip
    assert prof.macs == sum(macs.values()) and prof.mac_macs == macs["stem"]
    expected = 3 * (
        4.6 * macs["stem"]
        + 0.9 * (macs["c1"] * s1.mean().item() + macs["c2"] * pooled.mean().item())
    )
    assert prof.T == 3
    assert prof.snn_energy_pj == pytest.approx(expected)
    assert prof.ann_energy_pj == pytest.approx(4.6 * prof.macs)
    assert (
        prof.params
        == sum(p.numel() for p in model.parameters())
        == sum(r.params for r in prof.rows)
    )


def test_spikeyolo_pico_profile():
    torch.manual_seed(0)
    model = build_model("spikeyolo-pico")
    prof = profile_model(model, 64)
    convs = [r for r in prof.rows if r.type == "Conv2d"]
    # SpikeYOLO: only the encoding conv reads real values
    assert [r.spiking_input for r in convs].count(False) == 1 and not convs[0].spiking_input
    n_ilif = sum(isinstance(m, ILIF) for m in model.modules())
    assert len(prof.neuron_rows) == n_ilif
    assert all(0 <= r.rate <= model.levels for r in prof.neuron_rows)
    assert prof.params == sum(p.numel() for p in model.parameters())
    assert prof.sops == pytest.approx(sum(r.macs * r.rate * prof.T for r in convs[1:]))
    assert prof.macs == profile_model(model, 64, time_steps=3).macs  # MACs are per step
    assert model.training  # profile_model ran in eval mode and restored train mode
    ilifs = [m for m in model.modules() if isinstance(m, ILIF)]
    if hasattr(ilifs[0], "spike_mode"):  # binary thermometer mode: same rates, mode restored
        for m in ilifs:
            m.spike_mode = "binary"
        binary = profile_model(model, 64)
        assert [r.rate for r in binary.rows] == [r.rate for r in prof.rows]
        assert all(m.spike_mode == "binary" for m in ilifs)


def test_ems_profile_marks_real_valued_convs():
    model = build_ems("ems-pico")
    prof = profile_model(model, 64, time_steps=1)
    real = {r.name for r in prof.rows if r.type == "Conv2d" and not r.spiking_input}
    # stem, the -ee BasicBlock_ms shortcut convs (no LIF) and the detect convs read currents
    assert "stem.conv" in real and "detect.convs.0" in real and "h1.shortcut.0.conv" in real
    assert all(".residual." not in n and ".extra." not in n for n in real)


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="spikedet")
    model_cmd.register(parser.add_subparsers(dest="command"))
    return parser


def test_model_info_json(capsys):
    args = make_parser().parse_args(["model", "info", "ems-pico", "--json"])
    assert args.func(args) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["params"] == sum(p.numel() for p in build_ems("ems-pico").parameters())
    assert info["macs"] == sum(layer["macs"] for layer in info["layers"]) > 0
    assert info["imgsz"] == 64 and info["T"] == 2
    assert info["layers"][0] == {
        "name": "stem.conv",
        "type": "Conv2d",
        "out_shape": [8, 32, 32],
        "params": 3 * 8 * 9,
        "macs": real_connections(nn.Conv2d(3, 8, 3, 2, 1), (64, 64)),
    }


def test_model_info_table_and_registry_models(capsys):
    args = make_parser().parse_args(["model", "info", "spikeyolo-pico", "--imgsz", "96"])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "stem.cb.conv" in out and "spikeyolo-pico at 96x96" in out
    params = sum(p.numel() for p in build_model("spikeyolo-pico").parameters())
    assert f"params {params:,}" in out


def test_model_info_unknown_model():
    args = make_parser().parse_args(["model", "info", "resnet-nope"])
    with pytest.raises(SpikedetError, match="spikeyolo-pico.*ems-res10"):
        args.func(args)
