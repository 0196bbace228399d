"""`spikedet train` / `spikedet eval`: config resolution, COCO and Gen1 runs, eval output, errors."""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import pytest
import torch
import yaml

from spikedet.cli import train_cmd
from spikedet.errors import SpikedetError
from spikedet.train.config import TrainConfig, load_yaml_config, resolve_config


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="spikedet")
    train_cmd.register(parser.add_subparsers(dest="command", required=True))
    return parser


def _run(*argv: str) -> int:
    args = _parser().parse_args(list(argv))
    return args.func(args)


@pytest.fixture(scope="module")
def coco_root(tmp_path_factory) -> Path:
    from spikedet.data.synth_coco import write_synthetic_coco

    root = tmp_path_factory.mktemp("coco")
    write_synthetic_coco(root, n_train=16, n_val=8, imgsz=64, seed=3)
    return root


@pytest.fixture(scope="module")
def coco_run(coco_root, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("run")
    cfg = out.parent / "cfg.yaml"
    cfg.write_text("epochs: 5\nbatch: 8\nlr: 0.003\nema_tau: 5.0\noptimizer: sgd\n")
    code = _run(
        "train", "--quiet", "--model", "spikeyolo-pico", "--data", str(coco_root), "--epochs",
        "1", "--out", str(out), "--config", str(cfg), "--optimizer", "adamw",
    )  # fmt: skip
    assert code == 0
    return out


def test_train_writes_outputs_and_resolved_config(coco_run, capsys):
    saved = yaml.safe_load((coco_run / "config.yaml").read_text())
    assert saved["epochs"] == 1 and saved["optimizer"] == "adamw"  # CLI beats YAML
    assert saved["batch"] == 8 and saved["lr"] == 0.003  # YAML beats defaults
    assert saved["weight_decay"] == TrainConfig().weight_decay  # defaults fill the rest
    assert resolve_config(load_yaml_config(coco_run / "config.yaml"), {}) == TrainConfig(**saved)
    for name in ("last.pt", "best.pt", "results.csv"):
        assert (coco_run / name).is_file()
    rows = list(csv.DictReader(open(coco_run / "results.csv", newline="")))
    assert len(rows) == 1 and list(rows[0]) == ["epoch", "box", "cls", "dfl", "lr", "map50", "map"]
    state = torch.load(coco_run / "best.pt", weights_only=True)
    assert state["train_config"]["optimizer"] == "adamw" and state["epoch"] == 1
    assert "exp_avg" in next(iter(state["optimizer"]["state"].values()))  # AdamW state


def test_tensorboard_events(coco_run):
    pytest.importorskip("tensorboard", reason="tensorboard not installed: no event files written")
    events = list((coco_run / "tb").glob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(coco_run / "tb"))
    acc.Reload()
    tags = acc.Tags()["scalars"]
    assert {"train/loss", "train/lr", "epoch/map50", "epoch/map"} <= set(tags)
    assert [e.step for e in acc.Scalars("train/loss")] == [1, 2]


def test_eval_json_matches_training(coco_run, coco_root, capsys):
    capsys.readouterr()
    assert _run("eval", "--weights", str(coco_run / "best.pt"), "--data", str(coco_root),
                "--batch", "4", "--json") == 0  # fmt: skip
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1
    result = json.loads(lines[0])
    row = next(csv.DictReader(open(coco_run / "results.csv", newline="")))
    assert result["images"] == 8 and result["dataset"] == "coco"
    assert result["map50"] == pytest.approx(float(row["map50"]), rel=1e-5, abs=1e-9)
    assert result["map"] == pytest.approx(float(row["map"]), rel=1e-5, abs=1e-9)
    assert _run("eval", "--weights", str(coco_run / "best.pt"), "--data", str(coco_root)) == 0
    text = capsys.readouterr().out.strip()
    assert text.startswith("spikeyolo-pico on coco val (8 images): mAP@50 ")


def test_eval_bad_weights_is_one_line_error(coco_run, coco_root, tmp_path, capsys):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint at all" * 4)
    with pytest.raises(SpikedetError, match="bad.pt"):
        _run("eval", "--weights", str(bad), "--data", str(coco_root))
    code = train_cmd.main(["eval", "--weights", str(bad), "--data", str(coco_root)])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("spikedet: error: ") and len(err.splitlines()) == 1
    assert "bad.pt" in err


def test_config_errors(tmp_path, coco_root):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("epochs: 2\nlearning_rate: 0.1\n")
    with pytest.raises(SpikedetError, match="learning_rate") as err:
        load_yaml_config(cfg)
    assert "cfg.yaml" in str(err.value)
    cfg.write_text("epochs: two\n")
    with pytest.raises(SpikedetError, match="epochs"):
        load_yaml_config(cfg)
    cfg.write_text("epochs: [1\n")
    with pytest.raises(SpikedetError, match="malformed YAML"):
        load_yaml_config(cfg)
    with pytest.raises(SpikedetError, match="config file not found"):
        load_yaml_config(tmp_path / "none.yaml")
    with pytest.raises(SpikedetError, match="batch"):
        resolve_config({}, {"data": str(coco_root), "batch": 0})
    assert resolve_config({}, {"data": "x", "dataset": "gen1"}).imgsz == 320
    assert resolve_config({"imgsz": 96}, {"data": "x", "dataset": "gen1"}).imgsz == 96
    if not torch.cuda.is_available():
        with pytest.raises(SpikedetError, match="CUDA is not available"):
            _run("train", "--quiet", "--data", str(coco_root), "--out", str(tmp_path / "c"),
                 "--epochs", "1", "--device", "cuda")  # fmt: skip


def test_gen1_train_and_eval(tmp_path, capsys):
    from spikedet.data.synth_gen1 import write_synthetic_gen1

    data, out = tmp_path / "gen1", tmp_path / "run"
    write_synthetic_gen1(data, n_train=1, n_val=1, seconds=1.5)
    assert _run("train", "--quiet", "--model", "spikeyolo-pico", "--dataset", "gen1", "--data",
                str(data), "--imgsz", "64", "--time-steps", "2", "--epochs", "1", "--batch", "4",
                "--optimizer", "sgd", "--lr", "0.01", "--out", str(out)) == 0  # fmt: skip
    state = torch.load(out / "last.pt", weights_only=True)
    assert state["config"]["T"] == 2 and state["config"]["names"] == ["car", "pedestrian"]
    assert state["train_config"]["dataset"] == "gen1" and state["train_config"]["imgsz"] == 64
    assert "momentum_buffer" in next(iter(state["optimizer"]["state"].values()))  # SGD state
    row = next(csv.DictReader(open(out / "results.csv", newline="")))
    assert all(float(row[k]) >= 0 for k in ("box", "cls", "dfl", "map50", "map"))
    capsys.readouterr()
    assert _run("eval", "--weights", str(out / "last.pt"), "--data", str(data), "--json") == 0
    result = json.loads(capsys.readouterr().out)
    assert result["dataset"] == "gen1" and result["images"] > 0 and result["detections"] > 0
    assert result["map50"] == pytest.approx(float(row["map50"]), abs=1e-6)
    assert result["map"] == pytest.approx(float(row["map"]), abs=1e-6)


def test_ems_trains_with_the_anchor_loss(coco_root, tmp_path):
    out = tmp_path / "ems"
    assert _run("train", "--quiet", "--model", "ems-res10", "--data", str(coco_root), "--epochs",
                "1", "--batch", "8", "--out", str(out)) == 0  # fmt: skip
    row = next(csv.DictReader(open(out / "results.csv", newline="")))
    assert list(row) == ["epoch", "box", "obj", "cls", "lr", "map50", "map"]
    assert torch.load(out / "last.pt", weights_only=True)["config"]["name"] == "ems-res10"
