"""Trainer: outputs, checkpoint round trip, determinism, and checkpoint failure modes."""

from __future__ import annotations

import csv
import math
import pickle
from pathlib import Path

import pytest
import torch

from spikedet.errors import SpikedetError
from spikedet.train.checkpoint import load_checkpoint, load_model, save_checkpoint
from spikedet.train.models.registry import build_from_config
from spikedet.train.trainer import TrainConfig, evaluate_model, lr_at, train


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    from spikedet.data.synth_coco import write_synthetic_coco

    root = tmp_path_factory.mktemp("synth")
    write_synthetic_coco(root, n_train=16, n_val=8, imgsz=64, seed=3)
    return root


def tiny_config(data_root: Path, out: Path) -> TrainConfig:
    return TrainConfig(
        data=str(data_root), out=str(out), epochs=2, batch=8, lr=3e-3, ema_tau=5.0, seed=7
    )


@pytest.fixture(scope="module")
def run(data_root, tmp_path_factory) -> tuple[dict, Path]:
    out = tmp_path_factory.mktemp("run_a")
    return train(tiny_config(data_root, out), progress=False), out


def test_outputs_written(run):
    result, out = run
    assert (out / "last.pt").is_file() and (out / "best.pt").is_file()
    assert result["last"] == str(out / "last.pt") and result["best"] == str(out / "best.pt")
    with open(out / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert list(rows[0]) == ["epoch", "box", "cls", "dfl", "lr", "map50", "map"]
    for r in rows:
        assert all(math.isfinite(float(r[k])) for k in ("box", "cls", "dfl", "lr", "map50", "map"))
    assert len(result["history"]) == 2 and result["seconds"] > 0
    assert result["best_map"] == max(h["map"] for h in result["history"])
    assert not list(out.glob(".*tmp-*"))  # no stray temporary files


def test_checkpoint_is_plain_and_rebuilds(run, data_root):
    from spikedet.data.coco import CocoDetectionSet

    result, out = run
    state = torch.load(out / "best.pt", weights_only=True)
    for key in ("config", "model", "ema", "optimizer", "epoch", "best_fitness", "rng"):
        assert key in state
    assert isinstance(state["rng"]["torch"], torch.Tensor)
    model = load_model(out / "best.pt")
    assert not model.training
    manual = build_from_config(state["config"])
    manual.load_state_dict(state["ema"])
    manual.eval()
    x = torch.rand(2, 3, 64, 64)
    for (b1, c1), (b2, c2) in zip(model(x), manual(x)):
        assert torch.equal(b1, b2) and torch.equal(c1, c2)
    # The rebuilt model reproduces the validation metrics measured during training.
    val = CocoDetectionSet.from_root(data_root, "val", 64)
    metrics, dets = evaluate_model(model, val, batch=8)
    best_row = next(h for h in result["history"] if h["epoch"] == state["epoch"])
    assert metrics["map"] == pytest.approx(best_row["map"], abs=1e-12)
    assert metrics["map50"] == pytest.approx(best_row["map50"], abs=1e-12)
    assert len(dets) == len(val) and all(d.shape[1] == 6 for d in dets)


def test_two_runs_bit_identical(run, data_root, tmp_path):
    _, out_a = run
    train(tiny_config(data_root, tmp_path), progress=False)
    a = torch.load(out_a / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "last.pt", weights_only=True)
    for key in ("model", "ema"):
        assert a[key].keys() == b[key].keys()
        assert all(torch.equal(a[key][k], b[key][k]) for k in a[key])
    assert (out_a / "results.csv").read_text() == (tmp_path / "results.csv").read_text()


class _Payload:
    def __reduce__(self):
        return (print, ("code from a checkpoint ran",))


def test_bad_checkpoints_raise(run, tmp_path):
    _, out = run
    with pytest.raises(SpikedetError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"this is not a checkpoint" * 10)
    with pytest.raises(SpikedetError, match="garbage.pt"):
        load_checkpoint(garbage)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes((out / "last.pt").read_bytes()[:5000])
    with pytest.raises(SpikedetError, match="truncated.pt"):
        load_model(truncated)
    code = tmp_path / "code.pt"
    torch.save({"format": "spikedet-checkpoint", "payload": _Payload()}, code)
    with pytest.raises(SpikedetError, match="weights_only"):
        load_checkpoint(code)
    raw_pickle = tmp_path / "raw.pkl"
    raw_pickle.write_bytes(pickle.dumps(_Payload()))
    with pytest.raises(SpikedetError, match="raw.pkl"):
        load_checkpoint(raw_pickle)
    not_ours = tmp_path / "tensor.pt"
    torch.save({"weights": torch.zeros(3)}, not_ours)
    with pytest.raises(SpikedetError, match="not a spikedet checkpoint"):
        load_checkpoint(not_ours)


def test_mismatched_weights_and_plain_data_only(run, tmp_path):
    _, out = run
    state = torch.load(out / "last.pt", weights_only=True)
    state["config"] = {**state["config"], "widths": [16, 32, 48]}
    bad = tmp_path / "bad.pt"
    save_checkpoint(bad, state)
    with pytest.raises(SpikedetError, match="weights do not match architecture") as err:
        load_model(bad)
    assert "bad.pt" in str(err.value)
    with pytest.raises(SpikedetError, match="not plain data"):
        save_checkpoint(tmp_path / "obj.pt", {"config": {}, "model": {}, "x": object()})
    assert not (tmp_path / "obj.pt").exists()


def test_lr_schedule():
    lrs = [lr_at(s, 100, 10, 1e-2, 0.1) for s in range(100)]
    assert lrs[0] == pytest.approx(1e-3) and lrs[9] == pytest.approx(1e-2)
    assert lrs[10] == pytest.approx(1e-2) and lrs[-1] == pytest.approx(1e-3)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))


def test_bad_config_raises(data_root, tmp_path):
    with pytest.raises(SpikedetError, match="optimizer"):
        train(TrainConfig(data=str(data_root), out=str(tmp_path), optimizer="lion"), progress=False)
    with pytest.raises(SpikedetError, match="not found"):
        train(
            TrainConfig(data=str(tmp_path / "nothing"), out=str(tmp_path), epochs=1), progress=False
        )
