"""The papers' own energy accounting: FLOPs of the re-parameterised graph (model info) and the
SpikeYOLO / EMS-YOLO formulas on a deployed run's activity, checked by hand."""

from __future__ import annotations

import numpy as np
import pytest

from spikedet.deploy.energy_activity import Activity, PopulationActivity, SynapseActivity
from spikedet.deploy.paper_energy import paper_energy
from spikedet.train.models.registry import build_model
from spikedet.train.paper_flops import paper_flops


def test_pico_flops_by_hand():
    model = build_model("spikeyolo-pico")
    pf = paper_flops(model, 64)
    # the stem, 7x7/4 3->16 at 16x16 output, is the only conv on real values
    assert pf["mac_flops"] == 16 * 3 * 7 * 7 * 16 * 16
    assert [r["name"] for r in pf["layers"] if r["input"] == "real"] == ["stem.cb.conv"]
    # a depthwise 3x3 SpikeConv on 2C = 64 channels at 8x8: 64 * 1 * 9 * 64 FLOPs
    dw = next(r for r in pf["layers"] if r["name"] == "stages.1.1.sep.dw.cb.conv")
    assert dw["flops"] == 64 * 9 * 8 * 8
    assert pf["flops"] == pf["mac_flops"] + pf["ac_flops"] == sum(r["flops"] for r in pf["layers"])


def test_v8_flops_count_fused_chains_once():
    model = build_model("spikeyolo-v8-pico")
    pf = paper_flops(model, 64)
    names = {r["name"] for r in pf["layers"]}
    # l6's MS_ConvBlock conv1 (RepConv chain) is one fused 3x3 conv after re-parameterisation
    assert "l6.0.conv1.cb.conv" in names and not any(".rep." in n for n in names)
    assert "dfl.conv" not in names  # host-side decoder


def _pop(name: str, neurons: int, units: int, steps: int) -> PopulationActivity:
    z = np.zeros((1, 1, 1))
    return PopulationActivity(name, "ilif", neurons, 0, units, 0, 0, 0, 0, z, z, steps)


def test_formulas_by_hand():
    T, B = 2, 1
    pops = {"p1": _pop("p1", 100, 300, T * B)}  # fr = 300 / (100 * 2) = 1.5 (integer mean)
    syns = {
        "s0": SynapseActivity("s0", "input", "p1", True, 0, 0, 0, flops_padded=1000),
        "s1": SynapseActivity("s1", "p1", "out", False, 0, 0, 0, flops_padded=4000),
    }
    act = Activity(T, B, 4, _pop("input", 1, 0, 2), pops, syns)
    pe = paper_energy(act, T, e_mac_pj=4.6, e_ac_pj=0.9)
    assert pe["flops_per_step"] == 5000 and pe["sops"] == pytest.approx(2 * 1.5 * 4000)
    # SpikeYOLO: 4.6 * 1000 + 0.9 * 2 * 4000 * 1.5;  EMS Eq. 6: 2 * (1.5*0.9*4000 + 4.6*1000)
    assert pe["spikeyolo"]["energy_pj"] == pytest.approx(4600 + 10800)
    assert pe["ems_yolo"]["energy_pj"] == pytest.approx(2 * (5400 + 4600))
