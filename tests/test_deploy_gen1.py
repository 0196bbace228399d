"""`spikedet deploy --dataset gen1`: event bins [T, N, C, H, W] through quantization, the fixed
engine, the float reference and the Gen1 evaluation protocol."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from spikedet.cli.main import main
from spikedet.convert.nir_export import export_model, write_nir
from spikedet.data.synth_gen1 import write_synthetic_gen1
from spikedet.train.models.registry import build_model


def test_deploy_gen1_fixed_and_reference(tmp_path: Path) -> None:
    data = tmp_path / "gen1"
    write_synthetic_gen1(data, n_train=1, n_val=1, seconds=1.5, seed=3)
    torch.manual_seed(0)
    model = build_model("spikeyolo-pico", names=["car", "pedestrian"], T=2).eval()
    with torch.no_grad():  # wake the network up: random BN scales so every layer spikes
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 2.0)
                m.bias.uniform_(0.0, 1.0)
    nir_path = tmp_path / "model.nir"
    write_nir(export_model(model), nir_path)
    out = tmp_path / "deploy"
    code = main([
        "deploy", str(nir_path), "--target", "loihi2-sim", "--engine", "fixed",
        "--dataset", "gen1", "--data", str(data), "--out", str(out),
    ])  # fmt: skip
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    val = report["validation"]
    assert val["images"] > 0
    assert set(val["map"]["deployed_fixed"]) >= {"map", "map50"}
    assert set(val["map"]["reference_float"]) >= {"map", "map50"}
    agreement = val["reference_vs_fixed"]["overall_spike_agreement"]
    assert 0.5 < agreement <= 1.0
    # two logical steps of event bins reached the hardware model and spikes were counted
    assert report["totals"]["T"] == 2
    assert sum(layer["spikes_out_units"] for layer in report["layers"]) > 0
