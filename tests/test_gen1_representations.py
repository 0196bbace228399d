"""Gen1 input representations through every stage: `spikedet train --representation`, eval,
export (the graph says what its input is: ``spikedet.input`` and ``spikedet.input_scale``) and
deploy (which builds the same event bins and feeds them as integers)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from spikedet.cli.main import main
from spikedet.convert.nir_export import export_model
from spikedet.convert.nir_format import graph_input, input_encoding
from spikedet.data.synth_gen1 import write_synthetic_gen1
from spikedet.errors import SpikedetError
from spikedet.train.config import resolve_config
from spikedet.train.models.registry import build_model


@pytest.fixture(scope="module")
def gen1_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("gen1")
    write_synthetic_gen1(root, n_train=1, n_val=1, seconds=1.5, seed=3)
    return root


def test_histogram_run_from_train_to_deploy(gen1_root: Path, tmp_path: Path, capsys) -> None:
    run, nir_path, out = tmp_path / "run", tmp_path / "model.nir", tmp_path / "deploy"
    assert main([
        "train", "--quiet", "--model", "spikeyolo-pico", "--dataset", "gen1", "--data",
        str(gen1_root), "--imgsz", "64", "--time-steps", "2", "--representation", "histogram",
        "--bins", "2", "--epochs", "1", "--batch", "4", "--out", str(run),
    ]) == 0  # fmt: skip
    state = torch.load(run / "last.pt", weights_only=True)
    assert state["config"]["in_channels"] == 4  # 2 polarities x 2 sub-bins
    assert state["train_config"]["representation"] == "histogram"
    assert state["train_config"]["bins"] == 2
    capsys.readouterr()
    assert (
        main(["eval", "--weights", str(run / "last.pt"), "--data", str(gen1_root), "--json"]) == 0
    )
    assert json.loads(capsys.readouterr().out)["images"] > 0  # the eval set has 4 channels too
    assert main(["export", "--weights", str(run / "last.pt"), "--out", str(nir_path)]) == 0
    import nir

    meta = nir.read(str(nir_path)).metadata
    assert int(meta["spikedet.input_scale"]) == 1  # counts are integers already
    spec = graph_input(meta)
    assert (spec["dataset"], spec["representation"], spec["bins"]) == ("gen1", "histogram", 2)
    assert main([
        "deploy", str(nir_path), "--target", "loihi2-sim", "--engine", "fixed",
        "--dataset", "gen1", "--data", str(gen1_root), "--out", str(out),
    ]) == 0  # fmt: skip
    report = json.loads((out / "report.json").read_text())
    assert report["validation"]["images"] > 0 and report["totals"]["T"] == 2
    assert sum(layer["spikes_out_units"] for layer in report["layers"]) > 0


def test_ems_takes_count_channels() -> None:
    model = build_model("ems-pico", names=["car", "pedestrian"], T=2, in_channels=2).eval()
    first_conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    assert first_conv.in_channels == 2
    with torch.no_grad():
        outs = model(torch.rand(2, 1, 2, 64, 64))
    assert len(outs) == 2
    with pytest.raises(SpikedetError, match=r"\[B,2,S,S\]"):
        model(torch.rand(1, 3, 64, 64))
    graph = export_model(model, data={"dataset": "gen1", "representation": "counts2"})
    assert graph.metadata["spikedet.input_scale"] == 1
    assert graph_input(graph.metadata)["representation"] == "counts2"
    with pytest.raises(SpikedetError, match="in_channels"):
        build_model("ems-pico", in_channels=0)


def test_input_encoding_scales() -> None:
    assert input_encoding(None)["input_scale"] == 255  # images
    assert input_encoding({"dataset": "gen1"})["input_scale"] == 255  # polarity3: value/255
    for rep in ("counts2", "histogram"):
        assert input_encoding({"dataset": "gen1", "representation": rep})["input_scale"] == 1
    graph = export_model(build_model("spikeyolo-pico"))
    assert graph_input(graph.metadata) == input_encoding(None)


@pytest.mark.parametrize(
    "text", ["{", "[1]", '{"dataset": "mnist"}', '{"dataset": "gen1", "representation": "x"}',
             '{"dataset": "gen1", "bins": 0}'],
)  # fmt: skip
def test_bad_input_metadata_is_refused(text: str) -> None:
    with pytest.raises(SpikedetError) as err:
        graph_input({"spikedet.input": text})
    assert err.value.where == "spikedet.input"


def test_representation_config_checks() -> None:
    with pytest.raises(SpikedetError, match="gen1 data only"):
        resolve_config({}, {"data": "x", "representation": "counts2"})
    with pytest.raises(SpikedetError, match="representation must be one of"):
        resolve_config({"representation": "voxels"}, {"data": "x", "dataset": "gen1"})
    with pytest.raises(SpikedetError, match="bins"):
        resolve_config({"bins": 0}, {"data": "x", "dataset": "gen1"})
    cfg = resolve_config({}, {"data": "x", "dataset": "gen1", "representation": "counts2"})
    assert cfg.representation == "counts2" and cfg.bins == 10
