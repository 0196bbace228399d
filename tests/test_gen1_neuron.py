"""SpikeYOLO's Gen1 neuron end to end: the official charge order in torch, the trainer choosing
it for Gen1 data, NIR export (beta = alpha = 0.5), the integer model (the ilif kind with alpha
folded into the weights and dv = 2048) and deploy."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from spikedet.cli.main import main
from spikedet.convert.nir_export import export_model, write_nir
from spikedet.data.synth_gen1 import write_synthetic_gen1
from spikedet.deploy.nir_read import read_nir
from spikedet.deploy.quantize import quantize
from spikedet.train.config import TrainConfig
from spikedet.train.models.registry import build_model
from spikedet.train.neurons import ilif_gen1, ilif_step
from spikedet.train.trainer import _model_overrides


def test_gen1_neuron_follows_the_official_float_order():
    """spikingjelly: v = v + (x - v) / tau, s = Q_4(v), v -= s, bit for bit over many steps;
    the algebraically equal 0.5 * (v - s) + 0.5 * x rounds differently."""
    x = torch.randn(8, 20000, generator=torch.Generator().manual_seed(0)) * 3
    v, ref = torch.zeros(20000), []
    for xt in x:
        v = v + (xt - v) / 2.0
        s = torch.round(torch.clamp(v, 0, 4))
        v = v - s
        ref.append(s)
    assert torch.equal(ilif_gen1(4)(x), torch.stack(ref))
    # the membranes of the two orders differ in the last bit (rarely enough to flip a spike)
    a = b = None
    for xt in x:
        _, a = ilif_step(xt, a, 4, tau=2.0)
        _, b = ilif_step(xt, b, 4, beta=0.5, alpha=0.5)
    assert not torch.equal(a.u, b.u) and torch.allclose(a.u, b.u, atol=1e-5)


def test_trainer_picks_the_gen1_neuron_for_gen1_data():
    cfg = TrainConfig(model="spikeyolo-pico", dataset="gen1")
    assert _model_overrides(cfg)["neuron"] == "gen1"
    assert "neuron" not in _model_overrides(TrainConfig(model="spikeyolo-pico"))
    assert "neuron" not in _model_overrides(TrainConfig(model="ems-pico", dataset="gen1"))


def test_gen1_neuron_exports_quantizes_and_deploys(tmp_path: Path):
    torch.manual_seed(0)
    model = build_model("spikeyolo-pico", names=["car", "pedestrian"], T=2, neuron="gen1")
    with torch.no_grad():  # random BN scales so every layer spikes
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 2.0)
                m.bias.uniform_(0.0, 1.0)
    model.eval()
    nir_path = tmp_path / "model.nir"
    write_nir(export_model(model), nir_path)
    fg = read_nir(nir_path)
    qg = quantize(fg)
    ilif = [p for p in qg.populations if p.kind == "ilif"]
    assert ilif and all(p.dv == 2048 for p in ilif)  # 4096 * (1 - 0.5): the existing kind
    assert all(p.metadata["alpha"] == 0.5 for p in ilif)
    data = tmp_path / "gen1"
    write_synthetic_gen1(data, n_train=1, n_val=1, seconds=1.5, seed=3)
    out = tmp_path / "deploy"
    code = main([
        "deploy", str(nir_path), "--target", "loihi2-sim", "--engine", "fixed",
        "--dataset", "gen1", "--data", str(data), "--out", str(out),
    ])  # fmt: skip
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    assert 0.5 < report["validation"]["reference_vs_fixed"]["overall_spike_agreement"] <= 1.0
    assert report["cmos45nm"]["papers"]["sops"] > 0
