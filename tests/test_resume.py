"""Resume: a run SIGKILLed mid-epoch 2 and resumed ends bit-identical to an uninterrupted run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from spikedet.errors import SpikedetError
from spikedet.train.checkpoint import capture_rng_state, restore_rng_state
from spikedet.train.config import load_yaml_config, resolve_config
from spikedet.train.trainer import KILL_AT_STEP_ENV, train

# 16 train images at batch 8: 2 steps per epoch, so step 3 is in the middle of epoch 2.
CONFIG = """\
model: spikeyolo-pico
epochs: 3
batch: 8
lr: 0.003
ema_tau: 5.0
seed: 7
imgsz: 64
"""


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    from spikedet.data.synth_coco import write_synthetic_coco

    root = tmp_path_factory.mktemp("synth")
    write_synthetic_coco(root, n_train=16, n_val=8, imgsz=64, seed=3)
    return root


def _train_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "spikedet.cli.train_cmd", "train", "--quiet", *args]
    return subprocess.run(
        cmd, capture_output=True, text=True, timeout=120, env={**os.environ, **(env or {})}
    )


def _tensors(value) -> list[torch.Tensor]:
    """All tensors inside nested dicts/lists, in a fixed order."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, dict):
        return [t for k in sorted(value, key=str) for t in _tensors(value[k])]
    if isinstance(value, list | tuple):
        return [t for v in value for t in _tensors(v)]
    return []


def test_sigkill_then_resume_is_bit_identical(data_root, tmp_path):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(CONFIG)
    full, broken = tmp_path / "full", tmp_path / "broken"
    base = ["--config", str(cfg), "--data", str(data_root)]

    done = _train_cli(*base, "--out", str(full))
    assert done.returncode == 0, done.stderr

    killed = _train_cli(*base, "--out", str(broken), env={KILL_AT_STEP_ENV: "3"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    mid = torch.load(broken / "last.pt", weights_only=True)
    assert mid["epoch"] == 1 and mid["step"] == 2  # the crash lost half of epoch 2

    resumed = _train_cli("--out", str(broken), "--resume")
    assert resumed.returncode == 0, resumed.stderr
    a = torch.load(full / "last.pt", weights_only=True)
    b = torch.load(broken / "last.pt", weights_only=True)
    assert a["epoch"] == b["epoch"] == 3 and a["step"] == b["step"] == 6
    for key in ("model", "ema", "optimizer"):
        ta, tb = _tensors(a[key]), _tensors(b[key])
        assert len(ta) == len(tb) > 0
        assert all(torch.equal(x, y) for x, y in zip(ta, tb)), key
    assert a["optimizer"]["param_groups"] == b["optimizer"]["param_groups"]
    assert a["ema_updates"] == b["ema_updates"] and a["best_fitness"] == b["best_fitness"]
    assert (full / "results.csv").read_text() == (broken / "results.csv").read_text()
    assert torch.equal(a["rng"]["torch"], b["rng"]["torch"])

    # Control: the comparison can fail — a run with another seed differs.
    other = _train_cli(*base, "--out", str(tmp_path / "other"), "--seed", "8", "--epochs", "1")
    assert other.returncode == 0, other.stderr
    c = torch.load(tmp_path / "other" / "last.pt", weights_only=True)
    assert not all(torch.equal(x, y) for x, y in zip(_tensors(a["model"]), _tensors(c["model"])))


def test_resume_refuses_changed_config(data_root, tmp_path):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(CONFIG.replace("epochs: 3", "epochs: 1"))
    run = _train_cli("--config", str(cfg), "--data", str(data_root), "--out", str(tmp_path / "r"))
    assert run.returncode == 0, run.stderr
    changed = _train_cli("--out", str(tmp_path / "r"), "--resume", "--lr", "0.01")
    assert changed.returncode == 2
    assert changed.stderr.startswith("spikedet: error: --resume continues the stored config")
    assert "lr" in changed.stderr and len(changed.stderr.strip().splitlines()) == 1
    missing = _train_cli("--out", str(tmp_path / "nothing"), "--resume")
    assert missing.returncode == 2 and "checkpoint file not found" in missing.stderr
    # In process: the trainer itself rejects a config that differs from the checkpoint's.
    values = load_yaml_config(cfg)
    other = resolve_config(values, {"data": str(data_root), "out": str(tmp_path / "r"), "seed": 9})
    with pytest.raises(SpikedetError, match="seed"):
        train(other, progress=False, resume=True)
    # A finished run resumes to the same result without training further.
    same = resolve_config(values, {"data": str(data_root), "out": str(tmp_path / "r")})
    before = (tmp_path / "r" / "last.pt").read_bytes()
    result = train(same, progress=False, resume=True)
    assert len(result["history"]) == 1 and (tmp_path / "r" / "last.pt").read_bytes() == before


def test_rng_state_round_trip():
    import random

    state = capture_rng_state()
    first = (torch.rand(3), random.random())
    restore_rng_state(state)
    second = (torch.rand(3), random.random())
    assert torch.equal(first[0], second[0]) and first[1] == second[1]
