"""Deploying the pico models of both families with the format-2 constructs: EMS-YOLO ``-avg``
(LIF, composed convs, concatenations, upsampling, anchor head) and SpikeYOLOv8 (SPPF max-pool
populations, upsampling, concatenations); the ``max_pool`` EMS variant is refused.

The models are exported here from randomly woken-up weights (``tests.model_helpers.randomize``),
so every layer spikes. The Lava runs of whole pico models take minutes (Lava runs every Conv in
every hardware step, one OS process per Lava process), so those tests carry the ``slow`` mark.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")

from spikedet.cli.main import main  # noqa: E402
from spikedet.deploy.nir_graph import FloatGraph  # noqa: E402
from spikedet.deploy.nir_read import check_head, read_nir
from spikedet.deploy.pipeline import decode_head  # noqa: E402
from spikedet.deploy.quantize import quantize  # noqa: E402
from spikedet.errors import SpikedetError  # noqa: E402
from spikedet.sim.fixed import FixedEngine  # noqa: E402
from spikedet.sim.interface import compare, readout_floats  # noqa: E402
from spikedet.sim.reference import ReferenceEngine, agreement  # noqa: E402


def _export(name: str, path: Path) -> Path:
    from spikedet.convert.nir_export import export_model, write_nir
    from spikedet.train.models.registry import build_model
    from tests.model_helpers import randomize

    model = randomize(build_model(name))
    if hasattr(model, "reparameterize"):
        model.reparameterize()  # SpikeYOLOv8: fold the re-parameterisable conv chains
    write_nir(export_model(model), path)
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("models")
    names = ("ems-pico-avg", "ems-pico", "spikeyolo-v8-pico")
    return {name: _export(name, folder / f"{name}.nir") for name in names}


@pytest.fixture(scope="module")
def coco(tmp_path_factory) -> Path:
    from spikedet.data.synth_coco import write_synthetic_coco

    root = tmp_path_factory.mktemp("coco")
    write_synthetic_coco(root, n_train=0, n_val=2, imgsz=64, seed=3)
    return root


def test_ems_avg_parses_quantizes_and_runs(models) -> None:
    path = models["ems-pico-avg"]
    fg = read_nir(path)
    check_head(fg, str(path))  # an anchor head: 2 strides, 3 anchors, na*(nc+5) channels
    assert fg.head["type"] == "anchor" and fg.T == 2
    kinds = Counter(p.kind for p in fg.populations)
    assert set(kinds) == {"lif", "readout"} and kinds["readout"] == 2
    assert any(s.out_offset > 0 for s in fg.synapses)  # concatenations (§2.7)
    assert any(s.upsample == 2 for s in fg.synapses)  # upsampling (§2.8)
    qg = quantize(fg)
    for p in qg.populations:
        if p.kind == "lif":  # V_th = 0.5: an even theta, vth = theta / 2
            assert p.D == 1 and p.theta % 2 == 0 and p.vth * 2 == p.theta
    x = np.random.default_rng(0).integers(0, 256, (2, *qg.input.shape))
    fixed = FixedEngine().run(qg, x)
    assert all(v.any() for v in fixed.spikes.values())
    ref = ReferenceEngine(path, device="cpu")
    ref_spikes, ref_readouts = ref.run_float(x / 255.0)
    report = agreement(qg, ref_spikes, fixed, ref_readouts)
    print("ems-pico-avg float vs integer:", report["overall"])
    assert report["missing"] == [] and report["overall"]["spike_equal_fraction"] > 0.9
    dets = decode_head(fg.head, readout_floats(qg, fixed), 0.001, None)
    assert len(dets) == 2 and all(d.shape[1:] == (6,) for d in dets)
    assert sum(len(d) for d in dets) > 0  # random logits pass conf 0.001


def test_spikeyolo_v8_pico_parses_with_sppf_maxpools(models) -> None:
    fg = read_nir(models["spikeyolo-v8-pico"])
    pools = [p for p in fg.populations if p.kind == "maxpool"]
    assert len(pools) == 3 and [p.pool_kernel for p in pools] == [(5, 5)] * 3
    assert pools[1].src == pools[0].name and pools[2].src == pools[1].name  # SPPF chain
    assert any(s.out_offset > 0 for s in fg.synapses) and any(s.upsample == 2 for s in fg.synapses)
    qg = quantize(fg)
    for p in qg.populations:
        if p.kind == "maxpool":
            assert p.depth == qg.pop(p.src).depth + 1 and p.D == qg.pop(p.src).D == 4
    x = np.random.default_rng(1).integers(0, 256, (1, *qg.input.shape))
    spikes = FixedEngine().run(qg, x).spikes
    for p in pools:  # a max-pool never exceeds its source and is 0 only where it is
        assert spikes[p.name].max() <= spikes[p.src].max() and spikes[p.name].mean() > 0


def test_max_pool_variant_is_refused(models, coco, tmp_path, capsys) -> None:
    out = tmp_path / "refused"
    args = ["deploy", str(models["ems-pico"]), "--engine", "both", "--data", str(coco)]
    assert main([*args, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("spikedet: error: extension op max_pool")
    assert "-avg" in err[0] and "node " in err[0] and str(models["ems-pico"]) in err[0]
    assert not out.exists()


def _deploy_both(nir_path: Path, coco: Path, out: Path) -> dict:
    args = ["deploy", str(nir_path), "--target", "loihi2-sim", "--engine", "both"]
    args += ["--data", str(coco), "--dataset", "coco", "--samples", "1", "--out", str(out)]
    assert main(args) == 0
    return json.loads((out / "report.json").read_text())


@pytest.mark.slow
def test_ems_avg_deploy_both_is_bit_exact(models, coco, tmp_path) -> None:
    """The CLI path end to end; Lava takes ~1.5 min for one image (17 hardware steps)."""
    report = _deploy_both(models["ems-pico-avg"], coco, tmp_path / "ems")
    val = report["validation"]
    lava = val["lava_vs_fixed"]
    values = sum(v["values"] for v in lava["populations"].values())
    print(f"ems-pico-avg lava vs fixed: {lava['total_mismatches']} mismatches of {values}")
    print("timing", val["timing_s"])
    assert lava["total_mismatches"] == 0, lava["first_mismatch"]
    assert lava["samples"] == 1 and values > 0 and set(lava["readouts"]) == {"detect.0", "detect.1"}
    assert {"map", "map50"} <= set(val["map"]["deployed_fixed"])
    assert {"map", "map50"} <= set(val["map"]["reference_float"])


@pytest.mark.slow
def test_spikeyolo_v8_pico_lava_is_bit_exact(models, lava_python) -> None:
    """One image through 63 hardware steps (~3-4 min: 335 Lava processes on 2 cores)."""
    from spikedet.sim.lava_engine import LavaEngine

    qg = quantize(read_nir(models["spikeyolo-v8-pico"]))
    x = np.random.default_rng(2).integers(0, 256, (1, *qg.input.shape))
    fixed = FixedEngine().run(qg, x)
    lava = LavaEngine(python=str(lava_python)).run(qg, x)
    report = compare(fixed, lava)
    values = sum(v["values"] for v in report["populations"].values())
    print(f"spikeyolo-v8-pico: {report['total_mismatches']} mismatches of {values} spike values")
    print({k: lava.info[k] for k in ("processes", "compile_s", "step_s")})
    assert report["total_mismatches"] == 0, report["first_mismatch"]
    assert {p.name for p in qg.populations if p.kind == "maxpool"} <= set(lava.spikes)


# ---- the anchor head JSON (§2.4) -------------------------------------------------------------------------
def _anchor_graph(head: dict, channels: int = 18) -> FloatGraph:
    from spikedet.deploy.nir_graph import FPopulation, FSynapse

    pops = [
        FPopulation("h16", "readout", (channels, 4, 4)),
        FPopulation("h32", "readout", (channels, 2, 2)),
    ]
    syns = [
        FSynapse("a", "input", "h16", np.ones((channels, 3, 16, 16)), np.zeros(channels), (16, 16)),
        FSynapse("b", "input", "h32", np.ones((channels, 3, 32, 32)), np.zeros(channels), (32, 32)),
    ]
    return FloatGraph((3, 64, 64), 255, 2, pops, syns, head=head)


def test_check_head_anchor() -> None:
    anchors = [[[2, 2], [3, 3], [4, 6]], [[8, 8], [14, 17], [22, 27.5]]]
    head = {"type": "anchor", "nc": 1, "strides": [16, 32], "anchors": anchors}
    head.update({"outputs": ["h16", "h32"], "names": ["a"], "imgsz": 64})
    check_head(_anchor_graph(head), "m.nir")
    bad = [
        ({"strides": [8, 16, 32]}, "lists outputs and strides of one length"),
        ({"anchors": anchors[:1]}, "2 strides, 2 outputs and 2 anchor sets"),
        ({"anchors": [anchors[0], anchors[1][:2]]}, "are not 3 positive (w, h) pairs"),
        ({"anchors": [anchors[0], [[8, 8], [14, -1], [2, 2]]]}, "are not 3 positive"),
        ({"outputs": ["h16", "nope"]}, "output 'nope' is not a readout population"),
        ({"nc": 2}, "has 18 channels, not na*(nc+5) = 21"),
        ({"type": "yolox"}, "type 'yolox'"),
        ({"imgsz": 32}, "imgsz=32 but the input is (64, 64)"),
    ]
    for change, words in bad:
        with pytest.raises(SpikedetError) as err:
            check_head(_anchor_graph({**head, **change}), "m.nir")
        assert words in err.value.what and err.value.where == "m.nir", err.value.what
